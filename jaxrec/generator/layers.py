"""T5 1.1 building blocks (t5x layering): RMS norm, dense, attention with a KV cache,
bucketed relative position bias, gated MLP and token embedding, all with logical axes.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
DType = jnp.dtype
Initializer = Callable[..., Array]

NEG_INF = -1e10
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
embedding_init = nn.initializers.normal(stddev=1.0)
relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def _activation(name: str) -> Callable[[Array], Array]:
  return {
      "gelu": functools.partial(jax.nn.gelu, approximate=True),
      "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
      "relu": jax.nn.relu, "silu": jax.nn.silu, "swish": jax.nn.silu,
      "tanh": jnp.tanh, "linear": lambda x: x,
  }[name]


class RMSNorm(nn.Module):
  """T5 layer norm: scale by the root mean square, no mean subtraction, no bias.

  Attributes:
    epsilon: added to the mean square.
    dtype: output dtype (the statistics are float32).
  """
  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., embed] -> [..., embed] in `dtype`."""
    x = jnp.asarray(x, jnp.float32)
    mean2 = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = x * lax.rsqrt(mean2 + self.epsilon)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    return jnp.asarray(y * scale, self.dtype)


class DenseGeneral(nn.Module):
  """A bias-free dense layer over `axis` to `features`, with a 2-D float32 kernel.

  As in t5x, the kernel is stored as [prod(in dims), prod(features)] (so attention
  projections are ("embed", "joined_kv")) and reshaped at use.

  Attributes:
    features: output dims (int or tuple).
    kernel_axes: logical names of the 2 kernel dims.
    axis: input dims contracted (int or tuple; negative ok).
    dtype: computation dtype.
    kernel_init: initializer of the 2-D kernel (fan_in = its first dim).
  """
  features: Union[int, Tuple[int, ...]]
  kernel_axes: Tuple[str, str]
  axis: Union[int, Tuple[int, ...]] = -1
  dtype: DType = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    """inputs: [..., *in dims] -> [..., *features]."""
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    axis = tuple(a % inputs.ndim for a in axis)
    in_shape = tuple(inputs.shape[a] for a in axis)
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (int(np.prod(in_shape)), int(np.prod(features))), jnp.float32)
    kernel = jnp.reshape(jnp.asarray(kernel, self.dtype), in_shape + features)
    inputs = jnp.asarray(inputs, self.dtype)
    contract = (axis, tuple(range(len(axis))))
    return lax.dot_general(inputs, kernel, (contract, ((), ())))


def dot_product_attention(query: Array, key: Array, value: Array,
                          bias: Optional[Array] = None, dropout_rate: float = 0.0,
                          dropout_rng: Optional[Array] = None,
                          dtype: DType = jnp.float32) -> Array:
  """Softmax attention without the 1/sqrt(d) factor (T5 folds it into the query init).

  Args:
    query: [batch, q_length, heads, head_dim].
    key: [batch, kv_length, heads, head_dim].
    value: [batch, kv_length, heads, head_dim].
    bias: [batch or 1, heads or 1, q_length, kv_length] added to the logits.
    dropout_rate: dropout on the attention weights (needs dropout_rng).
    dropout_rng: PRNG key, or None for no dropout.
    dtype: output dtype; logits and softmax are float32.

  Returns:
    [batch, q_length, heads, head_dim] in `dtype`.
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + jnp.asarray(bias, jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = weights * keep / (1.0 - dropout_rate)
  return jnp.einsum("bhqk,bkhd->bqhd", jnp.asarray(weights, dtype), jnp.asarray(value, dtype))


def dot_product_attention_with_prefix(query: Array, key: Array, value: Array,
                                      bias: Optional[Array], prefix_key: Array,
                                      prefix_value: Array, prefix_bias: Array,
                                      dtype: DType = jnp.float32) -> Array:
  """One softmax over a shared prefix's keys and the rows' own keys (no dropout: decoding).

  The prefix (e.g. a decoder-only model's history) is stored once per user and shared by
  a group of query rows (the user's beams or candidates): rows [b * group, (b + 1) *
  group) read prefix row b, without copying it per row.

  Args:
    query: [rows, q_length, heads, head_dim], rows = group * users.
    key, value: [rows, kv_length, heads, head_dim], the rows' own keys/values.
    bias: [rows or 1, heads or 1, q_length, kv_length] (mask and relative positions).
    prefix_key, prefix_value: [users, prefix_length, heads, head_dim].
    prefix_bias: [users or 1, heads or 1, q_length, prefix_length].
    dtype: output dtype; logits and softmax are float32.

  Returns:
    [rows, q_length, heads, head_dim] in `dtype`.
  """
  rows, length_q, heads, head_dim = query.shape
  users, prefix_length = prefix_key.shape[:2]
  group = rows // users
  grouped = query.reshape(users, group, length_q, heads, head_dim)
  prefix_logits = jnp.einsum("bgqhd,bphd->bghqp", grouped, prefix_key,
                             preferred_element_type=jnp.float32)
  prefix_logits = prefix_logits + jnp.asarray(prefix_bias, jnp.float32)[:, None]
  own_logits = jnp.einsum("rqhd,rkhd->rhqk", query, key, preferred_element_type=jnp.float32)
  if bias is not None:
    own_logits = own_logits + jnp.asarray(bias, jnp.float32)
  logits = jnp.concatenate(
      [prefix_logits.reshape(rows, heads, length_q, prefix_length), own_logits], axis=-1)
  weights = jnp.asarray(jax.nn.softmax(logits, axis=-1), dtype)
  prefix_weights = weights[..., :prefix_length].reshape(users, group, heads, length_q,
                                                        prefix_length)
  out = jnp.einsum("bghqp,bphd->bgqhd", prefix_weights, jnp.asarray(prefix_value, dtype))
  out = out.reshape(rows, length_q, heads, head_dim)
  return out + jnp.einsum("rhqk,rkhd->rqhd", weights[..., prefix_length:],
                          jnp.asarray(value, dtype))


def make_attention_mask(query_input: Array, key_input: Array, dtype: DType = jnp.float32
                        ) -> Array:
  """[batch, q] and [batch, k] truthy arrays -> [batch, 1, q, k] mask (1 = attend)."""
  mask = jnp.logical_and(query_input[..., :, None], key_input[..., None, :])
  return jnp.asarray(mask[..., None, :, :], dtype)


def make_causal_mask(x: Array, dtype: DType = jnp.float32) -> Array:
  """x: [batch, length] -> [batch, 1, length, length] lower-triangular mask."""
  idx = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
  return jnp.asarray(idx[..., :, None] >= idx[..., None, :], dtype)[..., None, :, :]


def combine_masks(*masks: Optional[Array]) -> Optional[Array]:
  """Logical AND of the non-None masks (same dtype as the first), or None."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return jnp.asarray(out, masks[0].dtype)


def mask_to_bias(mask: Optional[Array], dtype: DType = jnp.float32) -> Optional[Array]:
  """1/0 mask -> 0/-1e10 additive bias."""
  if mask is None:
    return None
  return jnp.where(mask > 0, 0.0, NEG_INF).astype(dtype)


class MultiHeadDotProductAttention(nn.Module):
  """T5 multi-head attention: no biases, 1/sqrt(head_dim) folded into the query init.

  With `decode=True` it keeps a key/value cache in the "cache" collection
  (`cached_key`, `cached_value`: [batch, max_length, heads, head_dim], `cache_index`:
  [] int32). The first call (when the cache does not exist) only creates it; each
  later call takes ONE query position, writes its key/value at `cache_index` and
  attends to positions <= cache_index.

  Attributes:
    num_heads: heads.
    head_dim: width per head.
    dtype: activation dtype.
    dropout_rate: dropout on attention weights.
    kernel_init: projection initializer.
  """
  num_heads: int
  head_dim: int
  dtype: DType = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Initializer = attention_kernel_init

  @nn.compact
  def __call__(self, inputs_q: Optional[Array], inputs_kv: Optional[Array],
               mask: Optional[Array] = None, bias: Optional[Array] = None, *,
               decode: bool = False, deterministic: bool = True,
               kv: Optional[Tuple[Array, Array]] = None,
               prefix: Optional[Tuple[Array, Array, Array]] = None) -> Array:
    """Attention from inputs_q to inputs_kv.

    Args:
      inputs_q: [batch, q_length, embed]; None returns the projected (key, value)
        of inputs_kv, each [batch, kv_length, heads, head_dim] (to reuse as `kv`).
      inputs_kv: [batch, kv_length, embed]; unused when `kv` is given.
      mask: [batch, 1, q_length, kv_length] (1 = attend) or None; with a grouped
        `kv`, [kv_batch, 1, 1, kv_length] (a key mask shared by the group).
      bias: [1, heads, q_length, kv_length] (e.g. relative positions) or None; when
        decoding a step, the full [1, heads, max_length, max_length] bias, whose row
        `cache_index` is used.
      decode: use and update the key/value cache (self-attention only).
      deterministic: disable dropout.
      kv: precomputed (key, value), each [kv_batch, kv_length, heads, head_dim], with
        batch = group * kv_batch: query rows [b * group, (b + 1) * group) share kv
        row b (e.g. the beams of one user). The group's queries are folded into one
        query axis, so keys/values are neither recomputed nor copied per beam.
      prefix: (key, value, bias) of a shared self-attention prefix (a decoder-only
        model's history, see `dot_product_attention_with_prefix`): key/value [users,
        P, heads, head_dim], bias [users or 1, heads or 1, q_length, P] (mask and
        relative positions; when decoding a step, [.., max_length, P], row
        `cache_index` used). The softmax runs over prefix and own keys together.
        Inference only (no dropout).

    Returns:
      [batch, q_length, embed] in `dtype`.
    """
    depth_scaling = jnp.sqrt(self.head_dim).astype(jnp.float32)
    query_init = lambda *args: self.kernel_init(*args) / depth_scaling  # noqa: E731
    projection = functools.partial(DenseGeneral, features=(self.num_heads, self.head_dim),
                                   kernel_axes=("embed", "joined_kv"), dtype=self.dtype)
    axes = ("batch", "length", "heads", "kv")
    if kv is None:
      key = projection(kernel_init=self.kernel_init, name="key")(inputs_kv)
      value = projection(kernel_init=self.kernel_init, name="value")(inputs_kv)
      key = nn.with_logical_constraint(key, axes)
      value = nn.with_logical_constraint(value, axes)
      if inputs_q is None:
        return key, value
    else:
      key, value = kv
    query = projection(kernel_init=query_init, name="query")(inputs_q)
    query = nn.with_logical_constraint(query, axes)
    batch_q, length_q = query.shape[:2]
    group = batch_q // key.shape[0]
    if kv is not None:
      if decode or group * key.shape[0] != batch_q:
        raise ValueError(f"precomputed kv of batch {key.shape[0]} cannot serve {batch_q} "
                         "query rows (needs a whole multiple, and no self-attention cache)")
      query = query.reshape((key.shape[0], group * length_q) + query.shape[2:])

    if decode:
      is_initialized = self.has_variable("cache", "cached_key")
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
      cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
      if is_initialized:
        batch, length, num_heads, head_dim = cached_key.value.shape
        if query.shape != (batch, 1, num_heads, head_dim):
          raise ValueError(f"cached decoding takes one position at a time: query shape "
                           f"{query.shape}, cache expects {(batch, 1, num_heads, head_dim)}")
        cur = cache_index.value
        zero = jnp.array(0, jnp.int32)
        key = lax.dynamic_update_slice(cached_key.value, key, (zero, cur, zero, zero))
        value = lax.dynamic_update_slice(cached_value.value, value, (zero, cur, zero, zero))
        cached_key.value = key
        cached_value.value = value
        cache_index.value = cur + 1
        step_mask = jnp.broadcast_to(jnp.arange(length) <= cur, (batch, 1, 1, length))
        mask = combine_masks(mask, jnp.asarray(step_mask, jnp.float32))
        if bias is not None:
          bias = lax.dynamic_slice_in_dim(bias, cur, 1, axis=-2)
        if prefix is not None:
          prefix = prefix[:2] + (lax.dynamic_slice_in_dim(prefix[2], cur, 1, axis=-2),)

    attention_bias = mask_to_bias(mask)
    if bias is not None:
      attention_bias = bias if attention_bias is None else attention_bias + bias
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    if prefix is not None:
      if kv is not None:
        raise ValueError("a shared prefix and precomputed kv cannot be combined")
      x = dot_product_attention_with_prefix(query, key, value, attention_bias, *prefix,
                                            dtype=self.dtype)
    else:
      x = dot_product_attention(query, key, value, attention_bias, self.dropout_rate,
                                dropout_rng, self.dtype)
    if kv is not None:
      x = x.reshape((batch_q, length_q) + x.shape[2:])
    x = nn.with_logical_constraint(x, axes)
    out = DenseGeneral(features=inputs_q.shape[-1], axis=(-2, -1),
                       kernel_axes=("joined_kv", "embed"), kernel_init=self.kernel_init,
                       dtype=self.dtype, name="out")(x)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))


def relative_position_bucket(relative_position, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
  """T5's bucketing of key_position - query_position (Mesh TensorFlow / t5x formula).

  Small distances get one bucket each, larger ones logarithmically wider buckets up to
  max_distance; with `bidirectional`, half the buckets are for keys after the query.
  Causal (not bidirectional): keys after the query share bucket 0.

  Args:
    relative_position: int array, memory_position - query_position.
    bidirectional: encoder (True) or decoder (False) bucketing.
    num_buckets: buckets in all.
    max_distance: distances >= this share the last bucket.

  Returns:
    int32 array of the same shape, in [0, num_buckets).
  """
  ret = 0
  n = -np.asarray(relative_position)
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps) /
      np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return (ret + np.where(is_small, n, val_if_large)).astype(np.int32)


class RelativePositionBiases(nn.Module):
  """Learned per-head bias for each relative position bucket (one table per stack).

  Attributes:
    num_buckets: buckets.
    max_distance: saturation distance.
    num_heads: heads.
    dtype: output dtype.
  """
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool = True) -> Array:
    """Returns the bias [1, heads, qlen, klen] (static lengths)."""
    rp = np.arange(klen)[None, :] - np.arange(qlen)[:, None]
    buckets = relative_position_bucket(rp, bidirectional, self.num_buckets, self.max_distance)
    table = self.param("rel_embedding",
                       nn.with_logical_partitioning(relpos_init, ("heads", "relpos_buckets")),
                       (self.num_heads, self.num_buckets), jnp.float32)
    one_hot = jnp.asarray(buckets[None] == np.arange(self.num_buckets)[:, None, None],
                          jnp.float32)
    values = jnp.einsum("hn,nqk->hqk", table, one_hot)  # one-hot matmul: TPU friendly
    return jnp.asarray(values[None], self.dtype)


class MlpBlock(nn.Module):
  """Gated feed-forward: prod_i act_i(x wi_i) -> dropout -> wo.

  Attributes:
    mlp_dim: hidden width.
    activations: one per `wi_i` (a single one is named `wi`).
    dropout_rate: dropout on the hidden activations (broadcast over length).
    dtype: activation dtype.
  """
  mlp_dim: int
  activations: Sequence[str] = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
    """inputs: [batch, length, embed] -> [batch, length, embed]."""
    hidden = None
    for i, name in enumerate(self.activations):
      dense_name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      x = DenseGeneral(self.mlp_dim, kernel_axes=("embed", "mlp"), dtype=self.dtype,
                       name=dense_name)(inputs)
      x = _activation(name)(x)
      hidden = x if hidden is None else hidden * x
    hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(hidden, deterministic)
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    out = DenseGeneral(inputs.shape[-1], kernel_axes=("mlp", "embed"), dtype=self.dtype,
                       name="wo")(hidden)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class Embed(nn.Module):
  """Token embedding table [vocab, embed]; `attend` gives tied logits.

  Attributes:
    num_embeddings: vocabulary size.
    features: embedding width.
    dtype: activation dtype of the looked-up vectors.
    one_hot: look up by one-hot matmul (TPU friendly with a sharded vocab) instead of
      a gather.
  """
  num_embeddings: int
  features: int
  dtype: DType = jnp.float32
  one_hot: bool = False

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(embedding_init, ("vocab", "embed")),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, inputs: Array) -> Array:
    """inputs: [batch, length] int -> [batch, length, embed] in `dtype`."""
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f"token ids must be integers, got {inputs.dtype}")
    if self.one_hot:
      iota = lax.iota(jnp.int32, self.num_embeddings)
      one_hot = jnp.asarray(inputs[..., None] == iota, self.dtype)
      out = jnp.dot(one_hot, jnp.asarray(self.embedding, self.dtype))
    else:
      out = jnp.asarray(self.embedding, self.dtype)[inputs]
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))

  def attend(self, query: Array) -> Array:
    """query: [..., embed] -> float32 logits [..., vocab] against the table."""
    return jnp.dot(jnp.asarray(query, jnp.float32), self.embedding.T)
