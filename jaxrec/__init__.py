"""jaxrec: generative recommendation with semantic IDs in JAX/Flax."""

__version__ = "0.1.0"
