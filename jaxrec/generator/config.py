"""T5 1.1 generator hyperparameters: one frozen dataclass, TIGER and tiny presets."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Sequence

import jax.numpy as jnp

from jaxrec.generator.errors import ModelConfigError

ACTIVATIONS = ("gelu", "gelu_exact", "relu", "silu", "swish", "tanh", "linear")
DTYPES = ("float32", "bfloat16", "float16")
# MSCGRec's dual position embeddings (added later: off by default, see fingerprint_dict).
POSITION_FIELDS = ("item_position_embeddings", "code_position_embeddings",
                   "encoder_tokens_per_item", "encoder_prefix_tokens")


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
    num_decoder_layers: decoder depth. The decoder-only layout stacks
      num_encoder_layers + num_decoder_layers layers (`decoder_only_layers`: the
      encoder-decoder's layer budget in one causal stack).
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
    item_position_embeddings: MSCGRec's item-recency embedding: rows of a learned
      table added to every encoder token of a history item, indexed by how many items
      follow it (0 = the most recent; larger recencies share the last row); 0 = off.
    code_position_embeddings: MSCGRec's within-item embedding: rows of a learned table
      indexed by the token's position inside its history item (t % tokens per item),
      i.e. the tokens per history item; 0 = off.
    encoder_tokens_per_item: width of one history item in encoder tokens, for the
      item-recency embedding; 0 = `code_position_embeddings`.
    encoder_prefix_tokens: encoder tokens before the history items (1 with a user
      token); they get no position embedding.
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
  item_position_embeddings: int = 0
  code_position_embeddings: int = 0
  encoder_tokens_per_item: int = 0
  encoder_prefix_tokens: int = 0

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
    for name in POSITION_FIELDS:
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        _fail(name, f"must be an integer >= 0, got {value!r}", "0 disables it.")
    if (self.code_position_embeddings and self.encoder_tokens_per_item and
        self.code_position_embeddings != self.encoder_tokens_per_item):
      _fail("code_position_embeddings", f"({self.code_position_embeddings}) differs from "
            f"encoder_tokens_per_item ({self.encoder_tokens_per_item})",
            "both are the number of encoder tokens per history item.")
    if self.item_position_embeddings and not self.item_width:
      _fail("item_position_embeddings", "needs the width of a history item",
            "bind encoder_tokens_per_item (or code_position_embeddings) to the encoder "
            "tokens per history item.")

  @property
  def item_width(self) -> int:
    """Encoder tokens per history item (0 when no position embedding needs it)."""
    return int(self.encoder_tokens_per_item or self.code_position_embeddings)

  @property
  def decoder_only_layers(self) -> int:
    """Depth of the decoder-only network: the encoder's and the decoder's layers."""
    return int(self.num_encoder_layers + self.num_decoder_layers)

  @property
  def position_embeddings(self) -> bool:
    """Whether the encoder adds any absolute (MSCGRec dual) position embedding."""
    return bool(self.item_position_embeddings or self.code_position_embeddings)

  def fingerprint_dict(self) -> dict:
    """`dataclasses.asdict` without the fields added after checkpoints already existed
    while they hold their defaults (so old run fingerprints stay valid)."""
    values = dataclasses.asdict(self)
    for name in POSITION_FIELDS:
      if values[name] == 0:
        del values[name]
    return values

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
  raise ModelConfigError(f"T5Config.{field} {problem}.", fix=fix)
