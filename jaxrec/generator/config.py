"""T5 1.1 generator hyperparameters: one frozen dataclass, TIGER and tiny presets."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Sequence

import jax.numpy as jnp

from jaxrec.data.errors import DataError

ACTIVATIONS = ("gelu", "gelu_exact", "relu", "silu", "swish", "tanh", "linear")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and loss settings of the T5 1.1 encoder-decoder (defaults: TIGER).

  Attributes:
    vocab_size: number of tokens (see `vocab.TokenLayout.vocab_size`).
    emb_dim: d_model.
    num_heads: attention heads.
    head_dim: width of each head (num_heads * head_dim need not equal emb_dim).
    mlp_dim: hidden width of the feed-forward block.
    num_encoder_layers: encoder depth.
    num_decoder_layers: decoder depth.
    dropout_rate: dropout after embeddings, attention weights, sublayers and the
      final norms (T5 places).
    mlp_activations: one activation per input projection `wi_i`, multiplied
      together; ("gelu", "linear") is T5 1.1 gated-GELU, ("relu",) is T5 1.0.
    relative_attention_num_buckets: buckets of the relative position bias.
    relative_attention_max_distance: distance beyond which buckets saturate.
    dtype: activation dtype ("bfloat16" on GPU/TPU); parameters are always float32,
      softmax, norms and logits are computed in float32.
    logits_via_embedding: tie the output projection to `token_embedder`
      (T5 1.0); T5 1.1 unties it (`logits_dense`).
    z_loss: weight of the auxiliary log(Z)^2 loss (t5x default 1e-4).
    label_smoothing: label smoothing of the token cross-entropy.
  """
  vocab_size: int
  emb_dim: int = 128
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 4
  num_decoder_layers: int = 4
  dropout_rate: float = 0.1
  mlp_activations: Sequence[str] = ("gelu", "linear")
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dtype: str = "float32"
  logits_via_embedding: bool = False
  z_loss: float = 1e-4
  label_smoothing: float = 0.0

  def __post_init__(self):
    if isinstance(self.mlp_activations, str):
      object.__setattr__(self, "mlp_activations", (self.mlp_activations,))
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                 "num_encoder_layers", "num_decoder_layers",
                 "relative_attention_num_buckets", "relative_attention_max_distance"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        _fail(name, f"must be a positive integer, got {value!r}", "bind a positive integer.")
    if self.relative_attention_num_buckets < 4:
      _fail("relative_attention_num_buckets",
            f"must be >= 4, got {self.relative_attention_num_buckets}", "T5 uses 32.")
    if not 0.0 <= self.dropout_rate < 1.0:
      _fail("dropout_rate", f"must be in [0, 1), got {self.dropout_rate}", "TIGER uses 0.1.")
    if not self.mlp_activations:
      _fail("mlp_activations", "must name at least one activation",
            "use ('gelu', 'linear') (T5 1.1) or ('relu',) (T5 1.0).")
    unknown = [a for a in self.mlp_activations if a not in ACTIVATIONS]
    if unknown:
      _fail("mlp_activations", f"has unknown activations {unknown}",
            f"use names from {ACTIVATIONS}.")
    if self.dtype not in DTYPES:
      _fail("dtype", f"must be one of {DTYPES}, got {self.dtype!r}",
            "use 'float32' on CPU, 'bfloat16' on GPU/TPU.")
    if self.z_loss < 0.0:
      _fail("z_loss", f"must be >= 0, got {self.z_loss}", "t5x uses 1e-4; 0 disables it.")
    if not 0.0 <= self.label_smoothing < 1.0:
      _fail("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}",
            "0 disables it.")

  @property
  def activation_dtype(self) -> jnp.dtype:
    """The activation dtype as a jnp dtype."""
    return jnp.dtype(self.dtype)

  @classmethod
  def tiger(cls, vocab_size: int, **overrides) -> "T5Config":
    """TIGER's generator: 4 + 4 layers, d_model 128, 6 heads x 64, MLP 1024, dropout 0.1."""
    values = dict(emb_dim=128, num_heads=6, head_dim=64, mlp_dim=1024,
                  num_encoder_layers=4, num_decoder_layers=4, dropout_rate=0.1)
    values.update(overrides)
    return cls(vocab_size=vocab_size, **values)

  @classmethod
  def tiny(cls, vocab_size: int, **overrides) -> "T5Config":
    """A test-sized model: 1 + 1 layers, d_model 16, 2 heads x 8, MLP 32, no dropout."""
    values = dict(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
    values.update(overrides)
    return cls(vocab_size=vocab_size, **values)


def _fail(field: str, problem: str, fix: str):
  raise DataError(f"T5Config.{field} {problem}.", fix=fix)
