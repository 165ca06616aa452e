"""t5x-style `EncoderDecoderModel`: initial variables, loss, scores, greedy level-restricted
prediction and the encode / cached decode-step helpers a beam search uses. No jit here.

The beam search is injected (t5x's `decode_fn`): the job that builds the model passes
`decode_fn=jaxrec.decoding.beam_search.beam_search`, so nothing here imports `decoding`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxrec.data.errors import DataError
from jaxrec.generator import layers
from jaxrec.generator import masking
from jaxrec.generator.config import T5Config
from jaxrec.generator.errors import ModelConfigError
from jaxrec.generator.network import Transformer
from jaxrec.generator.vocab import TargetLayout, TokenLayout

Array = jax.Array
PyTree = Any
TRAIN_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
_MASK_SALT = 0x6d61736b  # folded into the dropout key for modality masking ("mask").


def cross_entropy_with_logits(logits: Array, targets: Array, z_loss: float
                              ) -> Tuple[Array, Array]:
  """Softmax cross-entropy against soft targets plus t5x's z-loss.

  Args:
    logits: [..., vocab] float32.
    targets: [..., vocab] float32 target distribution.
    z_loss: weight of log(Z)^2.

  Returns:
    loss: [...] cross-entropy + z-loss term; z_loss: [...] the z-loss term alone.
  """
  log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  loss = -jnp.sum(targets * (logits - log_z), axis=-1)
  total_z_loss = z_loss * jnp.square(jnp.squeeze(log_z, -1))
  return loss + total_z_loss, total_z_loss


def token_cross_entropy(logits: Array, targets: Array, label_smoothing: float = 0.0,
                        z_loss: float = 0.0, allowed: Optional[Array] = None
                        ) -> Tuple[Array, Array]:
  """Per-token loss with label smoothing (the smoothed entropy subtracted, as t5x).

  Args:
    logits: [batch, length, vocab] float32.
    targets: [batch, length] int32 token ids.
    label_smoothing: mass spread uniformly over the other allowed tokens.
    z_loss: z-loss weight.
    allowed: [batch, length, vocab] bool or None (all tokens). With it, the softmax
      normalizes over the allowed tokens only (MSCGRec's constrained sequence
      learning); the target token always counts as allowed.

  Returns:
    loss: [batch, length] float32 (0 at the optimum without z-loss); z_loss: [batch, length].
  """
  vocab = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  target_hot = jax.nn.one_hot(targets, vocab, dtype=jnp.float32)
  confidence = 1.0 - label_smoothing
  if allowed is None:
    count = float(vocab)
    rest = jnp.ones_like(logits)
  else:
    rest = (jnp.asarray(allowed, bool) | (target_hot > 0)).astype(jnp.float32)
    logits = jnp.where(rest > 0, logits, layers.NEG_INF)
    count = jnp.sum(rest, axis=-1)
  low = label_smoothing / jnp.maximum(count - 1.0, 1.0)
  normalizer = -(confidence * np.log(confidence) +
                 (count - 1.0) * low * jnp.log(low + 1e-20))
  soft = target_hot * confidence + (rest - target_hot) * jnp.expand_dims(low, -1)
  loss, z = cross_entropy_with_logits(logits, soft, z_loss)
  return loss - normalizer, z


class EncoderDecoderModel:
  """Loss, scoring and prediction around a `Transformer` (pure functions of params).

  Attributes:
    module: the `Transformer` (t5x name; `network` is an alias).
    layout: the decoder's `TargetLayout` (the target columns of the vocabulary's
      `TokenLayout`; a `TokenLayout` passed in becomes its all-columns view).
    config: the `T5Config` (loss settings: z_loss, label_smoothing).
    trie: the `decoding.trie.Trie` of the catalog's semantic IDs, or None; needed by
      the constrained loss and by beam-search prediction.
    constrained_loss: normalize the training softmax over the codes the trie allows
      after the target's prefix (MSCGRec); needs `trie`.
    decoding: a `decoding.DecodingConfig` (beam_size, top_k): with it and a trie,
      `predict_batch` is the constrained beam search (`decode_fn`); without, greedy
      decoding.
    decode_fn: the beam search, `decode_fn(model, params, encoder_input_tokens, trie,
      beam_size, top_k)` returning `(items, scores, codes)`, e.g.
      `decoding.beam_search.beam_search`; required with `decoding` and a trie.
    modality_mask_rate: MSCGRec's modality masking: in training (`loss_fn` with a
      dropout key) each example, with this probability, loses all history tokens of
      one uniformly drawn encoder modality. Never with fewer than two modalities.
    encoder_token_modalities: the modality index of each encoder token of a history
      item (one per encoder column, e.g. (0, 0, 1, 1, 2, 2)); None = one modality.
  """

  def __init__(self, network: Transformer, layout: Union[TokenLayout, TargetLayout],
               config: Optional[T5Config] = None, trie: Any = None,
               constrained_loss: bool = False, decoding: Any = None,
               modality_mask_rate: float = 0.0,
               encoder_token_modalities: Optional[Sequence[int]] = None,
               decode_fn: Optional[Callable[..., Any]] = None):
    self.module = network
    self.decoding = decoding
    self.decode_fn = decode_fn
    self.layout = layout.target() if isinstance(layout, TokenLayout) else layout
    self.config = network.config if config is None else config
    self.modality_mask_rate = float(modality_mask_rate)
    self.encoder_token_modalities = (None if encoder_token_modalities is None else
                                     tuple(int(m) for m in encoder_token_modalities))
    if not 0.0 <= self.modality_mask_rate < 1.0:
      raise ModelConfigError(f"modality_mask_rate must be in [0, 1), got {modality_mask_rate}.",
                             fix="MSCGRec masks with a small rate; 0 disables it.")
    if self.encoder_token_modalities is not None and (
        not self.encoder_token_modalities or min(self.encoder_token_modalities) < 0):
      raise ModelConfigError(f"encoder_token_modalities must hold one modality index >= 0 "
                             f"per encoder column, got {encoder_token_modalities!r}.")
    if self.config.position_embeddings and (
        self.config.encoder_prefix_tokens != self.prefix_tokens):
      raise ModelConfigError(
          f"T5Config.encoder_prefix_tokens={self.config.encoder_prefix_tokens} but the "
          f"token layout puts {self.prefix_tokens} user token(s) before the history items.",
          fix="bind it to 1 with user buckets, else 0.")
    self.trie = trie
    self.constrained_loss = bool(constrained_loss)
    if self.constrained_loss and trie is None:
      raise ModelConfigError("constrained_loss needs the trie of the semantic IDs.",
                             fix="pass trie=decoding.build_trie(semantic_ids) to the model.")
    if self.beam_search_enabled and decode_fn is None:
      raise ModelConfigError("decoding (a DecodingConfig) with a trie needs decode_fn, the "
                             "beam search predict_batch runs.",
                             fix="pass decode_fn=jaxrec.decoding.beam_search.beam_search "
                                 "to the model.")
    if self.config.vocab_size < layout.vocab_size:
      raise ModelConfigError(f"T5Config.vocab_size={self.config.vocab_size} is smaller than "
                             f"the token layout's {layout.vocab_size} tokens.",
                             fix="bind T5Config.vocab_size to TokenLayout.vocab_size (or "
                                 "more).")

  @classmethod
  def from_config(cls, config: T5Config, layout: Union[TokenLayout, TargetLayout],
                  trie: Any = None, constrained_loss: bool = False, decoding: Any = None,
                  modality_mask_rate: float = 0.0,
                  encoder_token_modalities: Optional[Sequence[int]] = None,
                  decode_fn: Optional[Callable[..., Any]] = None) -> "EncoderDecoderModel":
    """The model with the network `make_network` builds for this class (arguments as
    `__init__`'s)."""
    network = cls.make_network(config, layout, encoder_token_modalities)
    return cls(network, layout, config, trie, constrained_loss, decoding,
               modality_mask_rate, encoder_token_modalities, decode_fn)

  @classmethod
  def make_network(cls, config: T5Config, layout: Union[TokenLayout, TargetLayout],
                   encoder_token_modalities: Optional[Sequence[int]] = None) -> Any:
    """The Flax network of this model class: T5 1.1's encoder-decoder."""
    del layout, encoder_token_modalities
    return Transformer(config)

  @property
  def prefix_tokens(self) -> int:
    """Encoder tokens before the history items (1 with user buckets, else 0)."""
    return 1 if self.layout.num_user_buckets else 0

  @property
  def encoder_tokens_per_item(self) -> int:
    """Encoder tokens per history item (the target length unless configured)."""
    if self.encoder_token_modalities is not None:
      return len(self.encoder_token_modalities)
    return self.config.item_width or self.target_length

  def mask_modalities(self, rng: Array, encoder_input_tokens: Array) -> Tuple[Array, Array]:
    """Modality masking of encoder tokens [B, T] (see `masking.mask_modalities`): returns
    the masked tokens [B, T] and the masked modality per row [B] (-1 = none)."""
    modalities = self.encoder_token_modalities or (0,) * self.encoder_tokens_per_item
    return masking.mask_modalities(rng, encoder_input_tokens, modalities,
                                   self.prefix_tokens, self.modality_mask_rate)

  @property
  def beam_search_enabled(self) -> bool:
    """Whether `predict_batch` returns beam-searched item ids (trie and decoding set)."""
    return self.trie is not None and self.decoding is not None

  def allowed_tokens(self, targets: Array) -> Array:
    """decoder_target_tokens [B, L] -> [B, L, vocab] bool: the tokens the trie allows at
    each position given the target's prefix (see `token_cross_entropy`)."""
    codes = self.layout.token_to_code(jnp.asarray(targets, jnp.int32))
    return self.trie.token_mask(codes, self.layout.level_offsets, self.config.vocab_size)

  @property
  def network(self) -> Transformer:
    return self.module

  @property
  def target_length(self) -> int:
    """L, decoder tokens per item."""
    return self.layout.num_levels

  # ---------------------------------------------------------------- variables
  def default_input_shapes(self, batch_size: int = 1, max_history: int = 1) -> dict:
    """Shapes of the token arrays of `vocab.make_token_batch`."""
    return {"encoder_input_tokens": (batch_size, self.prefix_tokens +
                                     max_history * self.encoder_tokens_per_item),
            "decoder_input_tokens": (batch_size, self.target_length)}

  def get_initial_variables(self, rng: Array, input_shapes: Optional[Mapping] = None,
                            input_types: Optional[Mapping] = None) -> PyTree:
    """Initial variables {"params": ...} with `nn.LogicallyPartitioned` leaves.

    Args:
      rng: PRNG key.
      input_shapes: {"encoder_input_tokens": (B, T), "decoder_input_tokens": (B, L)}
        (parameters do not depend on them); default `default_input_shapes()`.
      input_types: ignored dtypes (tokens are int32), for t5x compatibility.

    Returns:
      variables; `nn.get_partition_spec(jax.eval_shape(...))` gives logical axes,
      `nn.meta.unbox` plain arrays. `apply` accepts boxed or unboxed params.
    """
    del input_types
    shapes = dict(self.default_input_shapes())
    shapes.update(input_shapes or {})
    encoder_tokens = jnp.ones(shapes["encoder_input_tokens"], jnp.int32)
    decoder_tokens = jnp.ones(shapes["decoder_input_tokens"], jnp.int32)
    params_rng, dropout_rng = jax.random.split(rng)
    return self.module.init({"params": params_rng, "dropout": dropout_rng}, encoder_tokens,
                            decoder_tokens, decoder_tokens, enable_dropout=False)

  def logical_axes(self, input_shapes: Optional[Mapping] = None) -> PyTree:
    """PartitionSpec tree of logical axis names, shaped like the variables."""
    return nn.get_partition_spec(jax.eval_shape(
        functools.partial(self.get_initial_variables, input_shapes=input_shapes),
        jax.random.PRNGKey(0)))

  # ---------------------------------------------------------------- training
  def _logits(self, params: PyTree, batch: Mapping[str, Array],
              dropout_rng: Optional[Array] = None) -> Array:
    _check_batch(batch, TRAIN_KEYS)
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply({"params": params}, batch["encoder_input_tokens"],
                             batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                             enable_dropout=rngs is not None, rngs=rngs)

  def loss_fn(self, params: PyTree, batch: Mapping[str, Array],
              dropout_rng: Optional[Array]) -> Tuple[Array, dict]:
    """Weighted token cross-entropy (+ z-loss), normalized by the sum of the weights.

    Args:
      params: the "params" collection.
      batch: encoder_input_tokens [B, T], decoder_input_tokens [B, L],
        decoder_target_tokens [B, L] int32, decoder_loss_weights [B, L] float32
        (default: targets > 0), from `vocab.make_token_batch`.
      dropout_rng: PRNG key enabling dropout (and modality masking, when
        `modality_mask_rate` > 0), or None (deterministic).

    Returns:
      loss: [] float32; metrics: [] float32 each: loss, z_loss, cross_ent_loss,
      accuracy (token argmax over the full vocabulary), sequence_accuracy (all L tokens
      right, among weighted rows), num_tokens (weight sum).
    """
    if dropout_rng is not None and self.modality_mask_rate > 0.0:
      _check_batch(batch, TRAIN_KEYS)
      encoder_tokens, _ = self.mask_modalities(
          jax.random.fold_in(dropout_rng, _MASK_SALT), batch["encoder_input_tokens"])
      batch = dict(batch, encoder_input_tokens=encoder_tokens)
    logits = self._logits(params, batch, dropout_rng)
    return self.token_loss(logits, batch["decoder_target_tokens"], _weights(batch))

  def token_loss(self, logits: Array, targets: Array, weights: Array) -> Tuple[Array, dict]:
    """The loss and metrics of `loss_fn` from logits [R, L, vocab], targets [R, L] int32
    and weights [R, L] float32 (R rows of L tokens: examples, or window positions)."""
    allowed = self.allowed_tokens(targets) if self.constrained_loss else None
    token_loss, token_z = token_cross_entropy(logits, targets, self.config.label_smoothing,
                                              self.config.z_loss, allowed)
    num_tokens = jnp.sum(weights)
    denom = jnp.where(num_tokens > 0, num_tokens, 1.0)
    loss = jnp.sum(token_loss * weights) / denom
    z_loss = jnp.sum(token_z * weights) / denom
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    rows = (jnp.sum(weights, -1) > 0).astype(jnp.float32)
    row_correct = jnp.all((correct > 0) | (weights <= 0), axis=-1).astype(jnp.float32)
    metrics = {
        "loss": loss,
        "z_loss": z_loss,
        "cross_ent_loss": loss - z_loss,
        "accuracy": jnp.sum(correct * weights) / denom,
        "sequence_accuracy": jnp.sum(row_correct * rows) / jnp.maximum(jnp.sum(rows), 1.0),
        "num_tokens": num_tokens,
    }
    return loss, metrics

  def score_batch(self, params: PyTree, batch: Mapping[str, Array]) -> Array:
    """Log-likelihood of the targets under the full-vocabulary softmax.

    Returns:
      [B] float32: sum over tokens with weight > 0 (all tokens > 0 without weights) of
      log p(target token | prefix, encoder input); no z-loss, no smoothing.
    """
    logits = self._logits(params, batch)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    targets = batch["decoder_target_tokens"]
    token_scores = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(_weights(batch) > 0, token_scores, 0.0), axis=-1)

  # ---------------------------------------------------------------- decoding
  def encode(self, params: PyTree, encoder_input_tokens: Array) -> Array:
    """encoder_input_tokens: [B, T] int32 -> encoded [B, T, emb_dim] (run once per batch)."""
    return self.module.apply({"params": params}, encoder_input_tokens, enable_dropout=False,
                             method=self.module.encode)

  def init_cache(self, params: PyTree, batch_size: int) -> PyTree:
    """An empty "cache" collection for `batch_size` decoder rows (e.g. batch * beams).

    Per decoder layer: self_attention/cached_key, cached_value [rows, L, heads, head_dim]
    (activation dtype) and cache_index [] int32 (the same scalar for all rows: map
    row-wise operations over the other leaves only).
    """
    tokens = jnp.ones((batch_size, self.target_length), jnp.int32)
    # A dummy encoder input of one whole history item (position embeddings check the
    # width); the cache does not depend on it.
    encoder_tokens = jnp.ones((batch_size, self.prefix_tokens + self.encoder_tokens_per_item),
                              jnp.int32)

    def create(params):
      _, variables = self.module.apply(
          {"params": params}, encoder_tokens, tokens, enable_dropout=False, decode=True,
          max_decode_length=self.target_length, mutable=["cache"])
      return variables["cache"]

    shapes = jax.eval_shape(create, params)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def cross_attention_kv(self, params: PyTree, encoded: Array) -> list:
    """encoded [B, T, emb_dim] -> per decoder layer (key, value) [B, T, heads, head_dim]
    (computed once per user; `decode_step` and `score_items` share them across beams)."""
    return self.module.apply({"params": params}, encoded,
                             method=self.module.cross_attention_kv)

  def decode_step(self, params: PyTree, cache: PyTree, encoded: Optional[Array],
                  encoder_input_tokens: Array, decoder_tokens: Array,
                  cross_kv: Optional[list] = None) -> Tuple[Array, PyTree]:
    """One cached decoder step.

    Args:
      params: the "params" collection.
      cache: from `init_cache` or the previous step.
      encoded: [rows, T, emb_dim] from `encode`; unused (may be None) with cross_kv.
      encoder_input_tokens: [rows, T] int32 (for the cross-attention padding mask);
        with cross_kv, [B, T] (rows = B * beams).
      decoder_tokens: [rows] int32, the token at the current position (BOS first).
      cross_kv: from `cross_attention_kv` on B users; decoder rows
        [b * beams, (b + 1) * beams) are user b's beams.

    Returns:
      logits: [rows, vocab] float32 for the next token; the updated cache.
    """
    logits, variables = self.module.apply(
        {"params": params, "cache": cache}, encoded, encoder_input_tokens,
        decoder_tokens[:, None], enable_dropout=False, decode=True,
        max_decode_length=self.target_length, mutable=["cache"], method=self.module.decode,
        cross_kv=cross_kv)
    return logits[:, 0], variables["cache"]

  def score_codes(self, params: PyTree, encoder_input_tokens: Array, codes: Array,
                  cross_kv: Optional[list] = None) -> Array:
    """Teacher-forced log-likelihood of C candidate code sequences for each user.

    Args:
      params: the "params" collection.
      encoder_input_tokens: [B, T] int32.
      codes: [C, L] int32 level-local codes (the same candidates for every user).
      cross_kv: `cross_attention_kv` of these users (computed here if None).

    Returns:
      [B, C] float32: sum over the L tokens of the full-softmax log-probability (as
      `score_batch`), computed with the users' keys/values shared by the candidates.
    """
    if cross_kv is None:
      cross_kv = self.cross_attention_kv(params, self.encode(params, encoder_input_tokens))
    size, count = encoder_input_tokens.shape[0], codes.shape[0]
    targets = jnp.asarray(self.layout.code_to_token(codes), jnp.int32)
    inputs = jnp.concatenate([jnp.full((count, 1), self.layout.bos_id, jnp.int32),
                              targets[:, :-1]], axis=1)
    tile = lambda x: jnp.tile(x, (size, 1))  # noqa: E731  rows b * C + c
    logits = self.module.apply({"params": params}, None, encoder_input_tokens, tile(inputs),
                               tile(targets), enable_dropout=False, cross_kv=cross_kv,
                               method=self.module.decode)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    scores = jnp.take_along_axis(log_probs, tile(targets)[..., None], axis=-1)[..., 0]
    return scores.sum(-1).reshape(size, count)

  def predict_batch_with_aux(self, params: PyTree, batch: Mapping[str, Array]
                             ) -> Tuple[Array, dict]:
    """Beam search when `beam_search_enabled`, else greedy decoding.

    Beam search (trie-constrained, `decode_fn`): items [B, top_k] int32,
    best first (0 where fewer items exist); aux: scores [B, top_k], codes
    [B, top_k, L].

    Greedy: step l restricted to level l's tokens (so every output is a code):
    codes [B, L] int32 level-local codes (compare with semantic-ID rows); aux: tokens
    [B, L] int32, scores [B] float32 (sum of full-softmax log-probs).
    """
    _check_batch(batch, ("encoder_input_tokens",))
    encoder_tokens = batch["encoder_input_tokens"]
    if self.beam_search_enabled:
      items, scores, codes = self.decode_fn(self, params, encoder_tokens, self.trie,
                                            self.decoding.beam_size, self.decoding.top_k)
      return items, {"scores": scores, "codes": codes}
    size = encoder_tokens.shape[0]
    encoded = self.encode(params, encoder_tokens)
    cache = self.init_cache(params, size)
    level_masks = jnp.asarray(self.layout.level_mask())
    if level_masks.shape[1] < self.config.vocab_size:
      level_masks = jnp.pad(level_masks,
                            ((0, 0), (0, self.config.vocab_size - level_masks.shape[1])))

    def step(carry, mask):
      cache, token = carry
      logits, cache = self.decode_step(params, cache, encoded, encoder_tokens, token)
      log_probs = jax.nn.log_softmax(logits, axis=-1)
      token = jnp.argmax(jnp.where(mask, log_probs, -jnp.inf), axis=-1).astype(jnp.int32)
      score = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
      return (cache, token), (token, score)

    start = jnp.full((size,), self.layout.bos_id, jnp.int32)
    _, (tokens, scores) = jax.lax.scan(step, (cache, start), level_masks)
    tokens = tokens.T
    return self.layout.token_to_code(tokens), {"tokens": tokens, "scores": scores.sum(0)}

  def predict_batch(self, params: PyTree, batch: Mapping[str, Array]) -> Array:
    """Beam-searched items [B, top_k] or greedy codes [B, L] (see
    `predict_batch_with_aux`)."""
    return self.predict_batch_with_aux(params, batch)[0]


def logical_axes(config: T5Config, input_shapes: Optional[Mapping] = None) -> PyTree:
  """PartitionSpec tree (logical names) of the variables of `Transformer(config)`."""
  shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 4)}
  shapes.update(input_shapes or {})

  def init(rng):
    tokens = {k: jnp.ones(v, jnp.int32) for k, v in shapes.items()}
    return Transformer(config).init(rng, tokens["encoder_input_tokens"],
                                    tokens["decoder_input_tokens"], enable_dropout=False)

  return nn.get_partition_spec(jax.eval_shape(init, jax.random.PRNGKey(0)))


def flatten_logical_axes(specs: PyTree) -> dict:
  """{"params/encoder/layers_0/attention/query/kernel": ["embed", "joined_kv"], ...}."""
  flat = traverse_util.flatten_dict(specs, sep="/")
  return {k: list(v) for k, v in sorted(flat.items())}


def _weights(batch: Mapping[str, Array]) -> Array:
  if "decoder_loss_weights" in batch and batch["decoder_loss_weights"] is not None:
    return jnp.asarray(batch["decoder_loss_weights"], jnp.float32)
  return (batch["decoder_target_tokens"] > 0).astype(jnp.float32)


def _check_batch(batch: Mapping[str, Array], keys):
  missing = [k for k in keys if k not in batch]
  if missing:
    raise DataError(f"the generator batch lacks {missing} (it has {sorted(batch)}).",
                    fix="convert item batches with jaxrec.generator.vocab.make_token_batch.")
