"""The exhaustive scorer: the teacher-forced log-likelihood of every item's semantic ID.

An oracle for beam search on small catalogs (and a reranker for candidate sets): cost
grows with the catalog, unlike the beam search.
"""

from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def exact_scores(model: Any, params: Any, encoder_input_tokens: Array,
                 semantic_ids: np.ndarray, chunk_size: int = 256) -> Array:
  """Log-likelihood of every item for every user.

  Args:
    model: an `EncoderDecoderModel`.
    params: its "params" collection.
    encoder_input_tokens: [B, T] int32.
    semantic_ids: [num_items + 1, L] int codes (row 0 = padding, not scored).
    chunk_size: items scored per decoder call.

  Returns:
    [B, num_items] float32; column i - 1 is item i (as `EncoderDecoderModel.score_codes`).
  """
  codes = np.asarray(semantic_ids, np.int32)[1:]
  num_items = codes.shape[0]
  chunks = -(-num_items // chunk_size)
  padded = np.concatenate([codes, np.repeat(codes[-1:], chunks * chunk_size - num_items, 0)])
  tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
  cross_kv = model.cross_attention_kv(params, model.encode(params, tokens))
  scores = jax.lax.map(lambda c: model.score_codes(params, tokens, c, cross_kv),
                       jnp.asarray(padded.reshape(chunks, chunk_size, -1)))  # [chunks, B, c]
  return jnp.moveaxis(scores, 0, 1).reshape(tokens.shape[0], -1)[:, :num_items]


def exact_top_k(model: Any, params: Any, encoder_input_tokens: Array,
                semantic_ids: np.ndarray, k: int, chunk_size: int = 256
                ) -> Tuple[Array, Array]:
  """The k most likely items per user: items [B, k] int32 (ids >= 1), scores [B, k]."""
  scores, idx = jax.lax.top_k(
      exact_scores(model, params, encoder_input_tokens, semantic_ids, chunk_size), k)
  return (idx + 1).astype(jnp.int32), scores
