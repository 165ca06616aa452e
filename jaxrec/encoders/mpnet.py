"""MPNet (all-mpnet-base-v2) in Flax: BERT's blocks plus a T5-style relative position bias.

Only what differs from BERT lives here; the layers come from `bert.py`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.errors import DataError
from jaxrec.encoders import bert


@dataclasses.dataclass(frozen=True)
class MpnetConfig(bert.BertConfig):
  """A BertConfig with MPNet's defaults (all-mpnet-base-v2) and relative-position buckets.

  MPNet has no token types; its position table starts at pad_token_id + 1.

  Attributes:
    num_buckets: relative-position buckets (shared by all layers).
    max_distance: distance at which the log-spaced buckets saturate.
  """
  vocab_size: int = 30527
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 514
  type_vocab_size: int = 0
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 1
  num_buckets: int = 32
  max_distance: int = 128

  @property
  def max_tokens(self) -> int:
    return self.max_position_embeddings - self.pad_token_id - 1

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "MpnetConfig":
    hf = dict(hf, type_vocab_size=0)
    overrides.setdefault("num_buckets", hf.get("relative_attention_num_buckets", 32))
    return super().from_hf(hf, **overrides)


def relative_position_bucket(relative_position: jax.Array, num_buckets: int = 32,
                             max_distance: int = 128) -> jax.Array:
  """Bucket of each key-minus-query offset (as `MPNetEncoder.relative_position_bucket`).

  Half the buckets are for keys before the query, half for keys after; in each
  half, distances below num_buckets / 4 get their own bucket and the rest share
  log-spaced buckets up to max_distance.

  Args:
    relative_position: [...] int32, key position - query position.
    num_buckets: total number of buckets (even).
    max_distance: distances >= this share the last bucket of their half.

  Returns:
    buckets: [...] int32 in [0, num_buckets).
  """
  n = -jnp.asarray(relative_position, jnp.int32)
  half = num_buckets // 2
  ret = (n < 0).astype(jnp.int32) * half
  n = jnp.abs(n)
  max_exact = half // 2
  # log(0) is never used (those are exact buckets); keep it finite anyway.
  scaled = (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
            / math.log(max_distance / max_exact) * (half - max_exact))
  large = jnp.minimum(max_exact + scaled.astype(jnp.int32), half - 1)
  return ret + jnp.where(n < max_exact, n, large)


class MpnetModel(nn.Module):
  """MPNet without the pooler: token ids -> last hidden states."""
  config: MpnetConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Encodes right-padded token ids.

    Positions count real tokens from pad_token_id + 1 (padding gets pad_token_id),
    as in transformers' create_position_ids_from_input_ids but taken from the mask.

    Args:
      input_ids: [batch, length] int32.
      mask: [batch, length] int32, 1 for real tokens.

    Returns:
      hidden: [batch, length, hidden] float32.
    """
    cfg = self.config
    mask = mask.astype(jnp.int32)
    positions = jnp.cumsum(mask, axis=1) * mask + cfg.pad_token_id
    x = bert.Embeddings(cfg, name="embeddings")(input_ids, positions)
    length = input_ids.shape[1]
    offsets = jnp.arange(length)[None, :] - jnp.arange(length)[:, None]  # key - query
    buckets = relative_position_bucket(offsets, cfg.num_buckets, cfg.max_distance)
    bias = nn.Embed(cfg.num_buckets, cfg.num_heads, name="relative_attention_bias")(buckets)
    bias = jnp.transpose(bias, (2, 0, 1))[None]  # [1, heads, length, length]
    return bert.Encoder(cfg, name="encoder")(x, mask, bias)


MPNET_LAYER_NAMES = {
    ("attention", "query"): "attention.attn.q",
    ("attention", "key"): "attention.attn.k",
    ("attention", "value"): "attention.attn.v",
    ("attention", "out"): "attention.attn.o",
    ("attention_norm",): "attention.LayerNorm",
    ("mlp_in",): "intermediate.dense",
    ("mlp_out",): "output.dense",
    ("mlp_norm",): "output.LayerNorm",
}


def mpnet_params(tensors: Mapping[str, np.ndarray], config: MpnetConfig) -> dict:
  """`MpnetModel` params from the tensors of a HF MPNetModel (no `mpnet.` prefix)."""
  return {
      "embeddings": {"word": bert.embed_params(tensors, "embeddings.word_embeddings"),
                     "position": bert.embed_params(tensors, "embeddings.position_embeddings"),
                     "norm": bert.norm_params(tensors, "embeddings.LayerNorm")},
      "relative_attention_bias": bert.embed_params(tensors, "encoder.relative_attention_bias"),
      "encoder": bert.encoder_params(tensors, config.num_layers, MPNET_LAYER_NAMES),
  }


def load_mpnet(model_dir: str, **overrides) -> tuple:
  """Reads a HF MPNet folder (config.json + model.safetensors).

  Returns:
    (MpnetModel, params): the module and its params (float32 jnp arrays).
  """
  hf = bert.read_hf_config(model_dir)
  if hf.get("model_type") != "mpnet":
    raise DataError(f"model_type {hf.get('model_type')!r} is not 'mpnet'", path=model_dir)
  config = MpnetConfig.from_hf(hf, **overrides)
  tensors = bert.read_safetensors(os.path.join(model_dir, "model.safetensors"), "mpnet.")
  model = MpnetModel(config)
  dummy = jnp.zeros([1, 4], jnp.int32)
  return model, bert.check_params(model, mpnet_params(tensors, config), dummy, dummy)
