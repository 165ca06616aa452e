"""BERT in Flax linen (post-norm encoder as in all-MiniLM-L6-v2), sentence pooling, weight import.

The blocks here (embeddings, attention, layer, encoder) are shared with `mpnet.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.errors import DataError

Params = Any


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters of a BERT encoder; the defaults are all-MiniLM-L6-v2's.

  Attributes:
    vocab_size: word-piece vocabulary size.
    hidden_size: model width.
    num_layers: number of transformer layers.
    num_heads: attention heads (hidden_size must be a multiple).
    intermediate_size: feed-forward width.
    max_position_embeddings: rows of the absolute position table.
    type_vocab_size: rows of the token-type table (0 = no token types).
    layer_norm_eps: LayerNorm epsilon.
    pad_token_id: id the tokenizer pads with.
    precision: matmul precision ("highest" keeps float32 on GPU/TPU too).
  """
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  precision: str = "highest"

  @property
  def max_tokens(self) -> int:
    """The longest input (special tokens included) the position table allows."""
    return self.max_position_embeddings

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "BertConfig":
    """The config from a Hugging Face config.json dict (BERT field names)."""
    if hf.get("hidden_act", "gelu") != "gelu":
      raise DataError(f"hidden_act {hf.get('hidden_act')!r} is not supported",
                      fix="only the exact (erf) GELU of BERT/MPNet is implemented.")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise DataError(f"position_embedding_type {hf['position_embedding_type']!r} "
                      "is not supported", fix="use a model with absolute positions.")
    return cls(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
               num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
               intermediate_size=hf["intermediate_size"],
               max_position_embeddings=hf["max_position_embeddings"],
               type_vocab_size=hf.get("type_vocab_size", 0),
               layer_norm_eps=hf["layer_norm_eps"],
               pad_token_id=hf.get("pad_token_id", 0), **overrides)


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
  # Two-pass variance, as torch computes it.
  return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, name=name)


class Embeddings(nn.Module):
  """Word + absolute position (+ token type) embeddings, then LayerNorm."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, positions: jax.Array) -> jax.Array:
    """Embeds tokens.

    Args:
      input_ids: [batch, length] int32 token ids.
      positions: [batch, length] or [length] int32 rows of the position table.

    Returns:
      embeddings: [batch, length, hidden] float32.
    """
    cfg = self.config
    x = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word")(input_ids)
    x = x + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position")(positions)
    if cfg.type_vocab_size:  # Sentence encoders embed single segments: type 0.
      x = x + nn.Embed(cfg.type_vocab_size, cfg.hidden_size, name="token_type")(
          jnp.zeros_like(input_ids))
    return _layer_norm(cfg, "norm")(x)


class SelfAttention(nn.Module):
  """Multi-head self-attention with an optional additive bias (MPNet's relative positions)."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array,
               bias: Optional[jax.Array] = None) -> jax.Array:
    """Attends over the unmasked keys.

    Args:
      x: [batch, length, hidden] float32.
      mask: [batch, length] int32/bool, 1 for real tokens (keys), 0 for padding.
      bias: optional [batch or 1, heads, length, length] float32 added to the scores.

    Returns:
      outputs: [batch, length, hidden] float32 (after the output projection).
    """
    cfg = self.config
    head_dim = cfg.hidden_size // cfg.num_heads
    dense = lambda name: nn.Dense(cfg.hidden_size, precision=cfg.precision, name=name)
    split = lambda t: t.reshape(t.shape[:2] + (cfg.num_heads, head_dim))
    q, k, v = (split(dense(n)(x)) for n in ("query", "key", "value"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=cfg.precision)
    scores = scores / np.sqrt(head_dim).astype(np.float32)
    if bias is not None:
      scores = scores + bias
    keep = mask.astype(bool)[:, None, None, :]
    scores = jnp.where(keep, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=cfg.precision)
    return dense("out")(out.reshape(x.shape[:2] + (cfg.hidden_size,)))


class TransformerLayer(nn.Module):
  """Post-norm layer: x = LN(x + attn(x)); x = LN(x + W2 gelu(W1 x))."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array,
               bias: Optional[jax.Array] = None) -> jax.Array:
    """Args as `SelfAttention`; returns [batch, length, hidden] float32."""
    cfg = self.config
    x = _layer_norm(cfg, "attention_norm")(x + SelfAttention(cfg, name="attention")(x, mask, bias))
    h = nn.Dense(cfg.intermediate_size, precision=cfg.precision, name="mlp_in")(x)
    h = nn.Dense(cfg.hidden_size, precision=cfg.precision, name="mlp_out")(
        jax.nn.gelu(h, approximate=False))
    return _layer_norm(cfg, "mlp_norm")(x + h)


class Encoder(nn.Module):
  """The stack of `num_layers` TransformerLayers (params layer_0 ... layer_{n-1})."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array,
               bias: Optional[jax.Array] = None) -> jax.Array:
    for i in range(self.config.num_layers):
      x = TransformerLayer(self.config, name=f"layer_{i}")(x, mask, bias)
    return x


class BertModel(nn.Module):
  """BERT without the pooler: token ids -> last hidden states."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Encodes right-padded token ids.

    Args:
      input_ids: [batch, length] int32.
      mask: [batch, length] int32, 1 for real tokens.

    Returns:
      hidden: [batch, length, hidden] float32.
    """
    positions = jnp.arange(input_ids.shape[1], dtype=jnp.int32)
    x = Embeddings(self.config, name="embeddings")(input_ids, positions)
    return Encoder(self.config, name="encoder")(x, mask)


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of the hidden states over the real tokens (sentence-transformers' Pooling).

  Args:
    hidden: [batch, length, dim] float32.
    mask: [batch, length] int32, 1 for real tokens.

  Returns:
    pooled: [batch, dim] float32 (zeros for an all-padding row).
  """
  m = mask.astype(hidden.dtype)[..., None]
  return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along the last axis (torch's F.normalize, as in Normalize)."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


# -- Weight import from Hugging Face safetensors ---------------------------------------------

def dense_params(tensors: Mapping[str, np.ndarray], name: str) -> dict:
  """A torch Linear `name` ([out, in] weight) as Flax Dense params ([in, out] kernel)."""
  return {"kernel": np.ascontiguousarray(tensors[name + ".weight"].T),
          "bias": tensors[name + ".bias"]}


def norm_params(tensors: Mapping[str, np.ndarray], name: str) -> dict:
  """A torch LayerNorm `name` as Flax LayerNorm params."""
  return {"scale": tensors[name + ".weight"], "bias": tensors[name + ".bias"]}


def embed_params(tensors: Mapping[str, np.ndarray], name: str) -> dict:
  return {"embedding": tensors[name + ".weight"]}


# Flax layer param path -> torch submodule under encoder.layer.N.
BERT_LAYER_NAMES = {
    ("attention", "query"): "attention.self.query",
    ("attention", "key"): "attention.self.key",
    ("attention", "value"): "attention.self.value",
    ("attention", "out"): "attention.output.dense",
    ("attention_norm",): "attention.output.LayerNorm",
    ("mlp_in",): "intermediate.dense",
    ("mlp_out",): "output.dense",
    ("mlp_norm",): "output.LayerNorm",
}


def encoder_params(tensors: Mapping[str, np.ndarray], num_layers: int,
                   names: Mapping[tuple, str], prefix: str = "encoder.layer") -> dict:
  """The `Encoder` params from torch layers `{prefix}.N.<names[path]>`."""
  out = {}
  for i in range(num_layers):
    layer = {}
    for path, torch_name in names.items():
      full = f"{prefix}.{i}.{torch_name}"
      convert = norm_params if torch_name.endswith("LayerNorm") else dense_params
      node = layer
      for key in path[:-1]:
        node = node.setdefault(key, {})
      node[path[-1]] = convert(tensors, full)
    out[f"layer_{i}"] = layer
  return out


def bert_params(tensors: Mapping[str, np.ndarray], config: BertConfig) -> dict:
  """`BertModel` params from the tensors of a HF BertModel (no `bert.` prefix)."""
  embeddings = {"word": embed_params(tensors, "embeddings.word_embeddings"),
                "position": embed_params(tensors, "embeddings.position_embeddings"),
                "norm": norm_params(tensors, "embeddings.LayerNorm")}
  if config.type_vocab_size:
    embeddings["token_type"] = embed_params(tensors, "embeddings.token_type_embeddings")
  return {"embeddings": embeddings,
          "encoder": encoder_params(tensors, config.num_layers, BERT_LAYER_NAMES)}


def read_safetensors(path: str, strip_prefix: str = "") -> dict:
  """All tensors of a .safetensors file as numpy arrays, without torch."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise DataError("model weights not found", path=path,
                    fix="reinstall the model package or pass the right model_dir.")
  tensors = load_file(path)
  if strip_prefix:
    tensors = {k.removeprefix(strip_prefix): v for k, v in tensors.items()}
  return tensors


def check_params(model: nn.Module, params: Params, *example_inputs) -> Params:
  """Checks converted `params` against `model`'s own param shapes; returns them as jnp arrays.

  Raises:
    DataError: a missing, extra or mis-shaped parameter (all of them are named).
  """
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs))["params"]
  want = {jax.tree_util.keystr(p): x.shape
          for p, x in jax.tree_util.tree_leaves_with_path(expected)}
  got = {jax.tree_util.keystr(p): np.shape(x)
         for p, x in jax.tree_util.tree_leaves_with_path(params)}
  problems = [f"missing {k}" for k in want if k not in got]
  problems += [f"unexpected {k}" for k in got if k not in want]
  problems += [f"{k}: shape {got[k]} != {want[k]}" for k in want if k in got and got[k] != want[k]]
  if problems:
    raise DataError("converted weights do not fit the model: " + "; ".join(problems[:10]),
                    fix="check that config.json matches model.safetensors.")
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def read_hf_config(model_dir: str) -> dict:
  """The model's config.json as a dict."""
  path = os.path.join(model_dir, "config.json")
  if not os.path.isfile(path):
    raise DataError("no config.json in the model folder", path=model_dir,
                    fix="pass the folder holding config.json, tokenizer.json and "
                        "model.safetensors.")
  with open(path) as f:
    return json.load(f)


def load_bert(model_dir: str, **overrides) -> tuple:
  """Reads a HF BERT folder (config.json + model.safetensors).

  Returns:
    (BertModel, params): the module and its params (float32 jnp arrays).
  """
  hf = read_hf_config(model_dir)
  if hf.get("model_type", "bert") != "bert":
    raise DataError(f"model_type {hf.get('model_type')!r} is not 'bert'", path=model_dir)
  config = BertConfig.from_hf(hf, **overrides)
  tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"), "bert.")
  model = BertModel(config)
  dummy = jnp.zeros([1, 4], jnp.int32)
  return model, check_params(model, bert_params(tensors, config), dummy, dummy)
