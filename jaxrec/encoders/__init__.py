"""Pretrained text encoders (BERT / MPNet sentence encoders ported to Flax) for item text."""
