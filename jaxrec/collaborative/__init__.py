"""Collaborative-filtering baselines fitted on the training part of a split."""
