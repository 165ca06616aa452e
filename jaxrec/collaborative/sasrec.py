"""SASRec (Kang & McAuley, 2018, "Self-Attentive Sequential Recommendation") in Flax linen,
and `SasRecModel`, the t5x-style wrapper (`get_initial_variables`, `loss_fn`,
`predict_batch`) the shared trainer (`jaxrec.training.trainer`) trains.

Architecture (as the paper and its reference implementations):
  input  = item_embedding[history] * sqrt(d) + position_embedding[...], dropout;
  blocks = `num_blocks` x (causal multi-head self-attention, point-wise feed-forward
           Dense(d) -> ReLU -> dropout -> Dense(d), dropout), residual connections;
  output = LayerNorm of the last block; the score of item i is <output, item_embedding[i]>
           (the item table is shared with the output layer; row 0 is padding).

Layer-norm placement (`SasRecConfig.norm`):
  "original": the paper's code (TF, and the PyTorch port): q = LN(x);
              x = q + Attn(q, keys=x, values=x); y = LN(x); x = y + FFN(y).
  "pre":      the standard pre-LN Transformer: x = x + Attn(LN(x)); x = x + FFN(LN(x)).
  Both end with a final LayerNorm.

Alignment and positions: histories arrive as the data pipeline makes them, oldest
first, 0-padded at the END (left-aligned); the representation of a history is the
output at position `length - 1` (gathered). With the causal mask, a real position
attends only to real positions before it, so the end padding never reaches it and
no key-padding mask is needed; padded positions are zeroed after every block (the
paper's timeline mask). Positions are counted from the END of the history (the last
item has position 0): the original left-pads to a fixed max_len, so there too the
last item always has the same position embedding, whatever the history's length;
counting from the end keeps that for any padded width (bucketed batches,
power-of-two evaluation widths).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any

NEG_INF = -1e10
LOSSES = ("ce", "bce")
NORMS = ("original", "pre")
PAD_ITEM = 0

kernel_init = nn.initializers.xavier_uniform()
embedding_init = nn.initializers.xavier_normal()


class SasRecError(ValueError):
  """A bad SasRecConfig or batch; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class SasRecConfig:
  """SASRec hyper-parameters (defaults: the paper's / RecBole's Amazon settings).

  Attributes:
    hidden: embedding and model width d.
    num_blocks: self-attention blocks.
    num_heads: attention heads (hidden must be divisible by it).
    max_len: longest history (position embeddings); histories must fit
      (TrainerConfig.max_history <= max_len).
    dropout: dropout rate on the input embeddings, attention weights, feed-forward.
    loss: "ce" (softmax over all items at the last position; the strong variant)
      or "bce" (the paper: one uniformly sampled negative per positive, binary
      cross-entropy).
    norm: layer-norm placement, "original" or "pre" (see the module docstring).
    ffn_hidden: feed-forward inner width; 0 = hidden (the paper).
    scale_embeddings: multiply looked-up item embeddings by sqrt(hidden) (the
      reference code does).
    layer_norm_epsilon: LayerNorm epsilon (1e-8 in the reference code).
  """
  hidden: int = 64
  num_blocks: int = 2
  num_heads: int = 1
  max_len: int = 50
  dropout: float = 0.2
  loss: str = "ce"
  norm: str = "original"
  ffn_hidden: int = 0
  scale_embeddings: bool = True
  layer_norm_epsilon: float = 1e-8

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise SasRecError(f"SasRecConfig.loss = {self.loss!r} is unknown. Fix: use one of "
                        f"{LOSSES}.")
    if self.norm not in NORMS:
      raise SasRecError(f"SasRecConfig.norm = {self.norm!r} is unknown. Fix: use one of "
                        f"{NORMS}.")
    if self.hidden < 1 or self.num_heads < 1 or self.hidden % self.num_heads:
      raise SasRecError(f"SasRecConfig.hidden = {self.hidden} must be a positive multiple "
                        f"of num_heads = {self.num_heads}. Fix: change either.")
    if self.num_blocks < 0 or self.max_len < 1 or not 0.0 <= self.dropout < 1.0:
      raise SasRecError(f"SasRecConfig needs num_blocks >= 0, max_len >= 1 and dropout in "
                        f"[0, 1); got {self}.")

  @property
  def ffn_width(self) -> int:
    return self.ffn_hidden or self.hidden


class CausalSelfAttention(nn.Module):
  """Multi-head attention of every position over itself and the positions before it.

  Attributes:
    num_heads: heads; features = input width.
    dropout: dropout on the attention weights.
  """
  num_heads: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, queries: Array, keys: Array, enable_dropout: bool = False) -> Array:
    """queries, keys: [batch, length, embed] -> [batch, length, embed] (keys are also values)."""
    d = queries.shape[-1]
    head_dim = d // self.num_heads

    def dense(name, x, features, axes):
      return nn.Dense(features, name=name,
                      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))(x)

    def heads(name, x):  # [B, L, embed] -> [B, L, heads, head_dim]; kernels stay 2-D (t5x).
      y = dense(name, x, d, ("embed", "joined_kv"))
      y = y.reshape(y.shape[:-1] + (self.num_heads, head_dim))
      return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

    q, k, v = heads("query", queries), heads("key", keys), heads("value", keys)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim).astype(np.float32)
    length = queries.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    logits = jnp.where(causal[None, None], logits, NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1)
    weights = nn.Dropout(self.dropout)(weights, deterministic=not enable_dropout)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return dense("out", out.reshape(out.shape[:-2] + (d,)), d, ("joined_kv", "embed"))


class PointWiseFeedForward(nn.Module):
  """Dense(ffn) -> ReLU -> dropout -> Dense(embed) -> dropout (the paper's two 1x1 convs)."""
  ffn_width: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: Array, enable_dropout: bool = False) -> Array:
    """x: [batch, length, embed] -> [batch, length, embed] (no residual)."""
    d = x.shape[-1]
    h = nn.Dense(self.ffn_width, name="wi",
                 kernel_init=nn.with_logical_partitioning(kernel_init, ("embed", "mlp")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x)
    h = nn.Dropout(self.dropout)(jax.nn.relu(h), deterministic=not enable_dropout)
    h = nn.Dense(d, name="wo",
                 kernel_init=nn.with_logical_partitioning(kernel_init, ("mlp", "embed")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(h)
    return nn.Dropout(self.dropout)(h, deterministic=not enable_dropout)


def _layer_norm(config: SasRecConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_epsilon, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class SasRecBlock(nn.Module):
  """One self-attention block with the configured layer-norm placement."""
  config: SasRecConfig

  @nn.compact
  def __call__(self, x: Array, enable_dropout: bool = False) -> Array:
    """x: [batch, length, embed] -> [batch, length, embed]."""
    c = self.config
    attention = CausalSelfAttention(c.num_heads, c.dropout, name="self_attention")
    ffn = PointWiseFeedForward(c.ffn_width, c.dropout, name="mlp")
    if c.norm == "pre":
      y = _layer_norm(c, "attention_norm")(x)
      x = x + attention(y, y, enable_dropout)
      return x + ffn(_layer_norm(c, "mlp_norm")(x), enable_dropout)
    q = _layer_norm(c, "attention_norm")(x)
    x = q + attention(q, x, enable_dropout)
    y = _layer_norm(c, "mlp_norm")(x)
    return y + ffn(y, enable_dropout)


class SasRec(nn.Module):
  """The SASRec network.

  Attributes:
    config: hyper-parameters.
    num_items: catalog size N; the item table has N + 1 rows (row 0 = padding).
  """
  config: SasRecConfig
  num_items: int

  def setup(self):
    c = self.config
    self.item_embedding = self.param(
        "item_embedding", nn.with_logical_partitioning(embedding_init, ("vocab", "embed")),
        (self.num_items + 1, c.hidden), jnp.float32)
    self.position_embedding = self.param(
        "position_embedding", nn.with_logical_partitioning(embedding_init, ("length", "embed")),
        (c.max_len, c.hidden), jnp.float32)
    self.embed_dropout = nn.Dropout(c.dropout)
    self.blocks = [SasRecBlock(c, name=f"block_{i}") for i in range(c.num_blocks)]
    self.final_norm = _layer_norm(c, "final_norm")

  def encode(self, history: Array, length: Array, enable_dropout: bool = False) -> Array:
    """Every position's output.

    Args:
      history: [batch, width] int32 item ids, oldest first, 0-padded at the end;
        width <= max_len.
      length: [batch] int32 real items per row.
      enable_dropout: training mode (needs a "dropout" rng).

    Returns:
      [batch, width, hidden] float32; position t sees items 0..t only; padded
      positions are 0.
    """
    width = history.shape[1]
    if width > self.config.max_len:
      raise SasRecError(f"histories of width {width} exceed SasRecConfig.max_len = "
                        f"{self.config.max_len}. Fix: raise max_len or lower "
                        f"TrainerConfig.max_history / EvalConfig.max_history.")
    mask = (jnp.arange(width)[None, :] < length[:, None])[..., None]  # [B, W, 1]
    x = self.item_embedding[history]
    if self.config.scale_embeddings:
      x = x * np.float32(np.sqrt(self.config.hidden))
    # Positions counted from the end: the last real item has position 0.
    positions = jnp.clip(length[:, None] - 1 - jnp.arange(width)[None, :], 0,
                         self.config.max_len - 1)
    x = x + self.position_embedding[positions]
    x = self.embed_dropout(x, deterministic=not enable_dropout) * mask
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    for block in self.blocks:
      x = block(x, enable_dropout) * mask
    return self.final_norm(x) * mask

  def __call__(self, history: Array, length: Array, enable_dropout: bool = False) -> Array:
    """history [batch, width], length [batch] -> [batch, hidden]: the output at length - 1."""
    out = self.encode(history, length, enable_dropout)
    last = jnp.clip(length - 1, 0, history.shape[1] - 1)
    return jnp.take_along_axis(out, last[:, None, None], axis=1)[:, 0]

  def logits(self, hidden: Array) -> Array:
    """hidden [batch, d] -> [batch, N + 1] scores of every item (column 0 = padding)."""
    return jnp.dot(hidden, self.item_embedding.T)

  def item_scores(self, hidden: Array, items: Array) -> Array:
    """hidden [batch, d], items [batch, C] int -> [batch, C] scores."""
    return jnp.einsum("bd,bcd->bc", hidden, self.item_embedding[items])


def _check_batch(batch: Mapping[str, Array], keys: Tuple[str, ...]) -> None:
  missing = [k for k in keys if k not in batch]
  if missing:
    raise SasRecError(f"SASRec batch lacks {missing} (has {sorted(batch)}). Fix: convert "
                      f"data batches with sasrec_job.make_batch_fn.")


def last_position_ce(logits: Array, targets: Array) -> Array:
  """Softmax cross-entropy over items 1..N (the padding column excluded).

  logits: [B, N + 1] float32; targets: [B] int32 -> [B] float32.
  """
  logits = logits.at[:, PAD_ITEM].set(NEG_INF)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  return log_z - jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]


def sample_negatives(rng: Array, targets: Array, num_items: int) -> Array:
  """[B] int32 uniform over 1..N without the target (and never padding)."""
  if num_items < 2:
    raise SasRecError("the BCE loss needs at least 2 items to sample a negative. Fix: use "
                      "loss='ce'.")
  draw = jax.random.randint(rng, targets.shape, 1, num_items, dtype=jnp.int32)  # 1..N-1
  return jnp.where(draw >= targets, draw + 1, draw)


class SasRecModel:
  """Loss and top-K prediction around a `SasRec` module (pure functions of params).

  Model batch (`sasrec_job.make_batch_fn`): history [B, W] int32 (oldest first,
  0-padded at the end), length [B] int32; training adds target [B] int32 and
  weight [B] float32 (0 for padding rows).

  Attributes:
    module: the `SasRec` network.
    config: its `SasRecConfig`.
    num_items: N.
    top_k: items `predict_batch` returns per row.
  """

  def __init__(self, config: SasRecConfig, num_items: int, top_k: int = 20):
    if num_items < 1:
      raise SasRecError(f"num_items = {num_items}: the catalog is empty.")
    self.config = config
    self.num_items = int(num_items)
    self.top_k = int(min(top_k, num_items))
    if self.top_k < 1:
      raise SasRecError(f"top_k = {top_k} must be >= 1.")
    self.module = SasRec(config, self.num_items)

  def get_initial_variables(self, rng: Array, input_shapes: Optional[Mapping] = None,
                            input_types: Optional[Mapping] = None) -> PyTree:
    """{"params": ...} with `nn.LogicallyPartitioned` leaves; shapes do not matter."""
    del input_types
    shape = tuple((input_shapes or {}).get("history", (1, self.config.max_len)))
    history = jnp.ones(shape, jnp.int32)
    length = jnp.full(shape[:1], shape[1], jnp.int32)
    params_rng, dropout_rng = jax.random.split(rng)
    return self.module.init({"params": params_rng, "dropout": dropout_rng}, history, length)

  def logical_axes(self, input_shapes: Optional[Mapping] = None) -> PyTree:
    return nn.get_partition_spec(jax.eval_shape(
        functools.partial(self.get_initial_variables, input_shapes=input_shapes),
        jax.random.PRNGKey(0)))

  def hidden(self, params: PyTree, batch: Mapping[str, Array],
             dropout_rng: Optional[Array] = None) -> Array:
    """[B, hidden]: the representation of each history (output at length - 1)."""
    _check_batch(batch, ("history", "length"))
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply({"params": params}, batch["history"], batch["length"],
                             enable_dropout=rngs is not None, rngs=rngs)

  def scores(self, params: PyTree, batch: Mapping[str, Array]) -> Array:
    """[B, N + 1] float32 item scores at the last position (column 0 = padding)."""
    h = self.hidden(params, batch)
    return self.module.apply({"params": params}, h, method=SasRec.logits)

  def loss_fn(self, params: PyTree, batch: Mapping[str, Array],
              dropout_rng: Optional[Array]) -> Tuple[Array, dict]:
    """The loss at the last real position of every history, weighted by batch["weight"].

    "ce": softmax cross-entropy over items 1..N. "bce": -log sigmoid(s_target)
    - log sigmoid(-s_negative) with one negative per row drawn uniformly from the
    items other than the target (from dropout_rng, or a fixed key without it).

    Returns:
      loss: [] float32 (weighted mean); metrics: loss, accuracy (CE: the target is
      the arg-max over all items; BCE: it outscores its negative), num_examples.
    """
    _check_batch(batch, ("history", "length", "target"))
    targets = batch["target"].astype(jnp.int32)
    weights = batch.get("weight")
    weights = (targets > 0).astype(jnp.float32) if weights is None else weights
    if dropout_rng is None:
      model_rng, negative_rng = None, jax.random.PRNGKey(0)
    else:
      model_rng, negative_rng = jax.random.split(dropout_rng)
    h = self.hidden(params, batch, model_rng)
    if self.config.loss == "ce":
      logits = self.module.apply({"params": params}, h, method=SasRec.logits)
      per_row = last_position_ce(logits, targets)
      correct = jnp.argmax(logits.at[:, PAD_ITEM].set(NEG_INF), -1) == targets
    else:
      negatives = sample_negatives(negative_rng, targets, self.num_items)
      s = self.module.apply({"params": params}, h, jnp.stack([targets, negatives], 1),
                            method=SasRec.item_scores)
      per_row = -jax.nn.log_sigmoid(s[:, 0]) - jax.nn.log_sigmoid(-s[:, 1])
      correct = s[:, 0] > s[:, 1]
    total = jnp.sum(weights)
    denom = jnp.where(total > 0, total, 1.0)
    loss = jnp.sum(per_row * weights) / denom
    metrics = {"loss": loss, "accuracy": jnp.sum(correct * weights) / denom,
               "num_examples": total}
    return loss, metrics

  def predict_batch(self, params: PyTree, batch: Mapping[str, Array]) -> Array:
    """[B, top_k] int32 item ids in 1..N, best first (padding never recommended)."""
    scores = self.scores(params, batch)[:, 1:]
    return jax.lax.top_k(scores, self.top_k)[1].astype(jnp.int32) + 1
