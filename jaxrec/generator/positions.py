"""MSCGRec's dual absolute position embeddings of the encoder input: the item's recency in
the history and the token's position inside its item (on device, from the tokens alone).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.generator import layers
from jaxrec.generator.config import T5Config
from jaxrec.generator.errors import ModelConfigError

Array = jax.Array
# Logical axis of absolute-position tables (t5x's name); unmapped in
# training/partitioning.LOGICAL_AXIS_RULES, i.e. replicated like "relpos_buckets".
ABSPOS_BUCKETS = "abspos_buckets"


def _slots(length: int, prefix: int, item_width: int) -> int:
  """Number of history item slots in an encoder input of `length` tokens."""
  body = length - prefix
  if item_width < 1 or body < 0 or body % item_width:
    raise ModelConfigError(f"the encoder input has {length} tokens, which is not "
                           f"{prefix} prefix tokens + whole history items of {item_width} "
                           "tokens.",
                           fix="bind T5Config.encoder_prefix_tokens (1 with a user token) and "
                               "encoder_tokens_per_item to the encoder columns per item of "
                               "make_token_batch.")
  return body // item_width


def item_recency(tokens: Array, prefix: int, item_width: int) -> Array:
  """Recency of the history item each encoder token belongs to.

  Args:
    tokens: [batch, prefix + n * item_width] int32 (0 = PAD): optional prefix tokens,
      then n item slots, oldest first, 0-padded at the end (`make_token_batch`).
    prefix: tokens before the first item (1 with a user token).
    item_width: tokens per item slot.

  Returns:
    [batch, length] int32: for a token of slot j, the number of non-empty slots after
    j (0 = the most recent item); 0 for prefix tokens and empty slots. A slot is
    non-empty when any of its tokens is not PAD (so a modality-masked item still counts).
  """
  size, length = tokens.shape
  n = _slots(length, prefix, item_width)
  present = jnp.any(tokens[:, prefix:].reshape(size, n, item_width) > 0, axis=-1)
  present = present.astype(jnp.int32)  # [batch, n]
  after = jnp.flip(jnp.cumsum(jnp.flip(present, -1), -1), -1) - present
  recency = jnp.repeat(after * present, item_width, axis=1)  # [batch, n * width]
  return jnp.pad(recency, ((0, 0), (prefix, 0)))


def item_slot(tokens: Array, prefix: int, item_width: int) -> Array:
  """[batch, length] int32: the history slot j of each encoder token's item (0 = the
  oldest item of the window; 0 for prefix tokens). The per-sequence item encoder uses this
  instead of `item_recency`: at window position t the recency would count the items after
  t, which the causal state at t must not see."""
  size, length = tokens.shape
  n = _slots(length, prefix, item_width)
  slots = jnp.repeat(jnp.arange(n, dtype=jnp.int32), item_width)
  return jnp.broadcast_to(jnp.pad(slots, (prefix, 0)), (size, length))


def code_position(length: int, prefix: int, item_width: int) -> Array:
  """[length] int32: t % item_width for item tokens (t counted after the prefix), 0 for
  prefix tokens."""
  _slots(length, prefix, item_width)
  inside = jnp.arange(length - prefix, dtype=jnp.int32) % item_width
  return jnp.pad(inside, (prefix, 0))


class PositionEmbed(nn.Module):
  """A learned absolute-position table [num_positions, embed] (t5x `position_embedder`)."""
  num_positions: int
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, positions: Array) -> Array:
    """positions: [...] int32 (clipped into the table) -> [..., embed] in `dtype`."""
    table = self.param(
        "embedding", nn.with_logical_partitioning(layers.embedding_init,
                                                  (ABSPOS_BUCKETS, "embed")),
        (self.num_positions, self.features), jnp.float32)
    positions = jnp.clip(positions, 0, self.num_positions - 1)
    return jnp.asarray(table, self.dtype)[positions]


def encoder_position_embeddings(cfg: T5Config, tokens: Array, causal: bool = False) -> Array:
  """The sum of the enabled dual position embeddings of each encoder token (0 for PAD and
  prefix tokens). Called inside the encoder's compact `__call__`, so its tables are the
  encoder's parameters `item_position_embedder/embedding` [item_position_embeddings,
  embed] and `code_position_embedder/embedding` [code_position_embeddings, embed], with
  logical axes ("abspos_buckets", "embed").

  tokens: [batch, length] int32 -> [batch, length, embed] in the activation dtype.
  causal: index items by their slot from the window start (`item_slot`, the per-sequence
    item encoder) instead of their recency (`item_recency`, the per-example encoder).
  """
  dtype = cfg.activation_dtype
  prefix, width = cfg.encoder_prefix_tokens, cfg.item_width
  size, length = tokens.shape
  out = jnp.zeros((size, length, cfg.emb_dim), dtype)
  if cfg.item_position_embeddings:
    index = (item_slot if causal else item_recency)(tokens, prefix, width)
    out = out + PositionEmbed(cfg.item_position_embeddings, cfg.emb_dim, dtype,
                              name="item_position_embedder")(index)
  if cfg.code_position_embeddings:
    out = out + PositionEmbed(cfg.code_position_embeddings, cfg.emb_dim, dtype,
                              name="code_position_embedder")(
                                  code_position(length, prefix, width))[None]
  is_item = (tokens > 0) & (jnp.arange(length) >= prefix)[None, :]
  return jnp.where(is_item[..., None], out, jnp.zeros((), dtype))
