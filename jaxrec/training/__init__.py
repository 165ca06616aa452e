"""Training: checkpoints, jobs that fit models (tokenizers now; the generator trainer next)."""
