"""Trie-constrained beam search over the L code levels: one jittable program per shape.

The encoder runs once per user and each decoder layer's cross-attention keys/values
are projected once per user and shared by all beams (the beams' queries are folded
into one query axis, see `layers.MultiHeadDotProductAttention`). The decoder's
self-attention cache is gathered by parent beam after each level. At every level each
beam scores only the codes its trie state allows (`Trie.candidates`, a gather padded
to the level's max branching), and a top-k over beams x candidates keeps the best
`beam_size` prefixes. Scores are sums of full-softmax token log-probabilities, the
quantity `EncoderDecoderModel.score_codes` computes teacher-forced, so an exhaustive
scorer is an exact oracle for it.

`beam_search` is the `decode_fn` a job gives the model (`EncoderDecoderModel(...,
decoding=DecodingConfig(...), decode_fn=beam_search)`): with it, `predict_batch` is this
search; the model itself imports nothing from `decoding`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.decoding.trie import Trie

Array = jax.Array
PyTree = Any


class DecodingError(ValueError):
  """A bad decoding setting (`DecodingConfig`, beam_size / top_k); the message names it
  and, with `fix`, what to change ("<problem> Fix: <fix>", the form of `DataError`)."""

  def __init__(self, problem: str, *, fix: Optional[str] = None):
    super().__init__(f"{problem} Fix: {fix}" if fix else problem)
    self.problem = problem
    self.fix = fix


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """How the generator turns a history into a ranked list.

  Attributes:
    beam_size: beams kept per user at every level (TIGER: 20).
    top_k: items returned per user (<= beam_size); the evaluation asks for at most
      this many.
  """
  beam_size: int = 20
  top_k: int = 20

  def __post_init__(self):
    for name in ("beam_size", "top_k"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DecodingError(f"DecodingConfig.{name} must be a positive integer, got "
                            f"{value!r}.")
    if self.top_k > self.beam_size:
      raise DecodingError(f"DecodingConfig.top_k={self.top_k} exceeds beam_size="
                          f"{self.beam_size}: a beam search returns at most beam_size items.",
                          fix="raise beam_size to at least top_k.")


class BeamSearchOutput(NamedTuple):
  """items: [B, top_k] int32 item ids, best first (0 where fewer items exist, and always
  0 without a trie); scores: [B, top_k] float32 log-likelihoods (-inf where empty);
  codes: [B, top_k, L] int32 level-local codes of each result."""
  items: Array
  scores: Array
  codes: Array


def _all_codes(size: int, shape) -> tuple:
  codes = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), tuple(shape) + (size,))
  return codes, jnp.full(codes.shape, -1, jnp.int32), jnp.ones(codes.shape, bool)


def _top(scores: Array, count: int) -> tuple:
  """Top `count` along the last axis, padding with -inf when it is shorter."""
  if scores.shape[-1] < count:
    pad = [(0, 0)] * (scores.ndim - 1) + [(0, count - scores.shape[-1])]
    scores = jnp.pad(scores, pad, constant_values=-jnp.inf)
  return jax.lax.top_k(scores, count)


def _take(x: Array, idx: Array) -> Array:
  """x: [B, N, ...], idx: [B, W] -> [B, W, ...] (indices clipped into range)."""
  idx = jnp.minimum(idx, x.shape[1] - 1)
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def beam_search(model: Any, params: PyTree, encoder_input_tokens: Array,
                trie: Optional[Trie], beam_size: int, top_k: int) -> BeamSearchOutput:
  """Fixed-length beam search over the code levels (pure; jit it, see `make_beam_search`).

  Args:
    model: an `EncoderDecoderModel`.
    params: its "params" collection.
    encoder_input_tokens: [B, T] int32 from `vocab.make_token_batch`.
    trie: the semantic-ID `Trie` (only real items can come out), or None for the
      unconstrained search (every code of each level allowed; `items` is then 0 and
      `codes` may name no item).
    beam_size: W, beams per user.
    top_k: results per user (<= W).

  Returns:
    A `BeamSearchOutput`, best first.
  """
  if top_k > beam_size:
    raise DecodingError(f"top_k={top_k} exceeds beam_size={beam_size}.")
  layout = model.layout
  num_levels = layout.num_levels
  offsets = [int(o) for o in layout.level_offsets]
  tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
  size, width = tokens.shape[0], beam_size

  def candidates(level, nodes):
    if trie is None:
      return _all_codes(layout.codebook_sizes[level], nodes.shape)
    return trie.candidates(level, nodes)

  def candidate_scores(log_probs, level, codes, valid, base):
    picked = jnp.take_along_axis(log_probs, offsets[level] + codes, axis=-1)
    return jnp.where(valid, base + picked, -jnp.inf)

  encoded = model.encode(params, tokens)
  cross_kv = model.cross_attention_kv(params, encoded)
  cache = model.init_cache(params, size)
  bos = jnp.full((size,), layout.bos_id, jnp.int32)
  logits, cache = model.decode_step(params, cache, None, tokens, bos, cross_kv=cross_kv)
  log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, V]
  codes, children, valid = candidates(0, jnp.zeros((size,), jnp.int32))  # [B, C0]
  scores, idx = _top(candidate_scores(log_probs, 0, codes, valid, 0.0), width)
  beam_codes = _take(codes, idx)  # [B, W]
  nodes = jnp.where(scores > -jnp.inf, _take(children, idx), -1)
  sequences = beam_codes[..., None]  # [B, W, 1]
  cache = jax.tree.map(lambda x: jnp.repeat(x, width, axis=0) if x.ndim else x, cache)

  for level in range(1, num_levels):
    previous = (offsets[level - 1] + beam_codes).reshape(size * width)
    logits, cache = model.decode_step(params, cache, None, tokens, previous,
                                      cross_kv=cross_kv)
    log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(size, width, -1)
    codes, children, valid = candidates(level, nodes)  # [B, W, C]
    count = codes.shape[-1]
    flat = candidate_scores(log_probs, level, codes, valid, scores[..., None])
    scores, idx = _top(flat.reshape(size, width * count), width)
    parent = jnp.minimum(idx // count, width - 1)
    beam_codes = _take(codes.reshape(size, width * count), idx)
    nodes = jnp.where(scores > -jnp.inf, _take(children.reshape(size, -1), idx), -1)
    sequences = jnp.concatenate([_take(sequences, parent), beam_codes[..., None]], axis=-1)
    if level < num_levels - 1:
      cache = jax.tree.map(
          lambda x: _take(x.reshape((size, width) + x.shape[1:]), parent).reshape(x.shape)
          if x.ndim else x, cache)

  found = scores > -jnp.inf
  items = jnp.where(found, nodes, 0) if trie is not None else jnp.zeros_like(nodes)
  return BeamSearchOutput(items[:, :top_k].astype(jnp.int32), scores[:, :top_k],
                          sequences[:, :top_k].astype(jnp.int32))


def make_beam_search(model: Any, beam_size: int, top_k: int
                     ) -> Callable[[PyTree, Array, Optional[Trie]], BeamSearchOutput]:
  """`search(params, encoder_input_tokens, trie) -> BeamSearchOutput`, jitted: one trace
  per (batch shape, trie shapes); a batch sharded over a mesh stays sharded."""
  return jax.jit(functools.partial(beam_search, model, beam_size=beam_size, top_k=top_k))
