"""Datasets: tfds builders, the synthetic catalog, leave-one-out splits and batching."""
