"""Tokenizers: VQ primitives, RQ-VAE, residual k-means, semantic-ID assembly and training."""
