"""MSCGRec's modality masking: during training, a random example's history loses one
modality's tokens (set to PAD), so the generator learns to recommend from the others.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.generator.errors import ModelConfigError
from jaxrec.generator.vocab import PAD_ID

Array = jax.Array


def token_modalities(length: int, prefix: int, item_modalities: Sequence[int]) -> np.ndarray:
  """[length] int32: the modality of each encoder token (-1 for the prefix tokens).

  Args:
    length: encoder input length, prefix + n * len(item_modalities).
    prefix: tokens before the history items (1 with a user token).
    item_modalities: the modality index of each of an item's encoder tokens.

  Raises:
    ModelConfigError: a length that is not prefix + whole items.
  """
  width = len(item_modalities)
  body = length - prefix
  if width < 1 or body < 0 or body % width:
    raise ModelConfigError(f"the encoder input has {length} tokens, which is not {prefix} "
                           f"prefix tokens + whole history items of {width} tokens.",
                           fix="pass encoder_token_modalities with one entry per encoder "
                               "column of make_token_batch.")
  return np.concatenate([np.full(prefix, -1), np.tile(np.asarray(item_modalities),
                                                      body // width)]).astype(np.int32)


def mask_modalities(rng: Array, tokens: Array, item_modalities: Sequence[int], prefix: int,
                    rate: float) -> Tuple[Array, Array]:
  """With probability `rate` per example, sets all tokens of one uniformly drawn modality
  (of those in `item_modalities`) to PAD. Never masks when there is only one modality.

  Args:
    rng: PRNG key (the result is a deterministic function of it).
    tokens: [batch, length] int32 encoder input (`make_token_batch`).
    item_modalities: the modality index of each of an item's encoder tokens, e.g.
      (0, 0, 1, 1, 2, 2) for text, image and collaborative columns.
    prefix: tokens before the history items (kept).
    rate: masking probability per example, in [0, 1].

  Returns:
    tokens: [batch, length] int32 with the masked tokens set to PAD; chosen: [batch]
    int32, the masked modality of each row (-1 = row unchanged).
  """
  size, length = tokens.shape
  modality = jnp.asarray(token_modalities(length, prefix, item_modalities))
  present = np.unique(np.asarray(item_modalities))
  if present.size < 2 or rate <= 0.0:
    return tokens, jnp.full((size,), -1, jnp.int32)
  masked_rng, pick_rng = jax.random.split(rng)
  masked = jax.random.bernoulli(masked_rng, rate, (size,))
  pick = jax.random.randint(pick_rng, (size,), 0, present.size)
  chosen = jnp.where(masked, jnp.asarray(present, jnp.int32)[pick], -1)
  drop = (modality[None, :] == chosen[:, None]) & masked[:, None]
  return jnp.where(drop, jnp.asarray(PAD_ID, tokens.dtype), tokens), chosen
