"""The peers' way of constraining decoding, kept as a baseline: a Python dict trie asked
from the host at every step for every beam (HuggingFace `prefix_allowed_tokens_fn` with
`PrefixConstrainedLogitsProcessor`), around jitted model parts.

`tools/benchmark_decode.py` times it against `beam_search.beam_search` (the trie on the
device, one program); tests check both return the same items. Not for production use; it
lives in tools/, not in `jaxrec.decoding`, because it drives a `jaxrec.generator` model from
the host and the library's `decoding/` imports nothing from `generator/`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.decoding.beam_search import BeamSearchOutput
from jaxrec.generator import model as model_lib
from jaxrec.generator import vocab


class HostTrie:
  """The peers' trie: a Python dict {token prefix (BOS first): allowed next tokens}.

  `prefix_allowed_tokens_fn(batch_id, input_ids)` has HuggingFace's signature (the
  decoder tokens so far, BOS first) and returns the allowed next tokens; `item` maps a
  full token sequence (without BOS) to its item id (0 if none).
  """

  def __init__(self, semantic_ids: np.ndarray, layout: vocab.TokenLayout):
    ids = np.asarray(semantic_ids)
    tokens = layout.code_to_token(ids[1:].astype(np.int64)).tolist()
    bos = layout.bos_id
    children: Dict[tuple, set] = {}
    self.items: Dict[tuple, int] = {}
    for item, row in enumerate(tokens, start=1):
      prefix = (bos,)
      for token in row:
        children.setdefault(prefix, set()).add(token)
        prefix = prefix + (token,)
      self.items[tuple(row)] = item
    self.allowed = {prefix: sorted(next_tokens) for prefix, next_tokens in children.items()}

  def prefix_allowed_tokens_fn(self, batch_id: int, input_ids: np.ndarray) -> List[int]:
    del batch_id  # one catalog for every user
    return self.allowed.get(tuple(input_ids.tolist()), [])

  def item(self, tokens: Sequence[int]) -> int:
    return self.items.get(tuple(int(t) for t in tokens), 0)


def prefix_mask(input_ids: np.ndarray, num_beams: int, vocab_size: int,
                prefix_allowed_tokens_fn: Callable[[int, np.ndarray], List[int]]
                ) -> np.ndarray:
  """HuggingFace's `PrefixConstrainedLogitsProcessor` mask, in NumPy.

  Args:
    input_ids: [batch * num_beams, length] decoder tokens so far (BOS first).

  Returns:
    [batch * num_beams, vocab_size] float32: 0 where allowed, -inf elsewhere.
  """
  mask = np.full((input_ids.shape[0], vocab_size), -np.inf, np.float32)
  for batch_id, beam_sent in enumerate(input_ids.reshape(-1, num_beams, input_ids.shape[-1])):
    for beam_id, sent in enumerate(beam_sent):
      allowed = prefix_allowed_tokens_fn(batch_id, sent)
      mask[batch_id * num_beams + beam_id, allowed] = 0
  return mask


def make_host_pieces(model: model_lib.EncoderDecoderModel, beam_size: int) -> dict:
  """The jitted model parts the host-driven search calls between its host steps."""
  width = beam_size

  @jax.jit
  def start(params, tokens):
    """Encoder, cross-attention K/V and the BOS step -> cross_kv, the cache repeated to
    B * W rows, log-probs [B, V]."""
    size = tokens.shape[0]
    cross_kv = model.cross_attention_kv(params, model.encode(params, tokens))
    cache = model.init_cache(params, size)
    bos = jnp.full((size,), model.layout.bos_id, jnp.int32)
    logits, cache = model.decode_step(params, cache, None, tokens, bos, cross_kv=cross_kv)
    cache = jax.tree.map(lambda x: jnp.repeat(x, width, axis=0) if x.ndim else x, cache)
    return cross_kv, cache, jax.nn.log_softmax(logits, axis=-1)

  @jax.jit
  def select(scores, log_probs, mask):
    """scores [B, W'] (W' = 1 at the first level), log_probs [B * W', V], mask likewise
    -> the best W (scores, parent beam, token) over beams x vocabulary."""
    size, vocab_size = scores.shape[0], log_probs.shape[-1]
    flat = scores[..., None] + (log_probs + mask).reshape(size, -1, vocab_size)
    top, idx = jax.lax.top_k(flat.reshape(size, -1), width)
    return top, (idx // vocab_size).astype(jnp.int32), (idx % vocab_size).astype(jnp.int32)

  @jax.jit
  def step(params, cache, cross_kv, tokens, parent, previous):
    """Reorders the cache by parent beam ([B, W]), then one decode step of the W beams."""
    size = tokens.shape[0]
    cache = jax.tree.map(
        lambda x: jnp.take_along_axis(
            x.reshape((size, width) + x.shape[1:]),
            parent.reshape(parent.shape + (1,) * (x.ndim - 1)), axis=1).reshape(x.shape)
        if x.ndim else x, cache)
    logits, cache = model.decode_step(params, cache, None, tokens, previous.reshape(-1),
                                      cross_kv=cross_kv)
    return jax.nn.log_softmax(logits, axis=-1), cache

  return {"start": start, "select": select, "step": step}


def host_trie_beam_search(model: model_lib.EncoderDecoderModel, params: Any,
                          encoder_input_tokens: Any, host_trie: HostTrie, beam_size: int,
                          top_k: int, pieces: Optional[dict] = None,
                          stats: Optional[dict] = None) -> BeamSearchOutput:
  """The same beam search as `decoding.beam_search`, constrained from the host.

  At every level the decoder tokens so far are brought to the host, the Python trie is
  asked for each of the batch x beam rows (`prefix_allowed_tokens_fn`), the -inf/0 mask
  [rows, vocab] is built in NumPy and sent to the device, where it is added to the
  log-probabilities before the top-k over beams x vocabulary (beam-major, as jaxrec's,
  so ties break alike). The model parts are jitted (`make_host_pieces`) and do the same
  work as jaxrec's search (the first level decodes one row per user, not batch x beam
  rows as HuggingFace does). The mask of a level is built while the device runs that
  level's decoder step (JAX dispatches asynchronously): both only favour this baseline.

  Args:
    stats: if given, "host_constraint_seconds" accumulates the time spent asking the
      Python trie and building the masks (the host work the constraint adds).

  Returns:
    A `BeamSearchOutput` of NumPy arrays: items [B, top_k] (0 where empty), scores,
    codes [B, top_k, L].
  """
  pieces = pieces or make_host_pieces(model, beam_size)
  layout = model.layout
  vocab_size = model.config.vocab_size
  tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
  size = tokens.shape[0]
  fn = host_trie.prefix_allowed_tokens_fn
  host_seconds = 0.0
  cross_kv, cache, log_probs = pieces["start"](params, tokens)
  input_ids = np.full((size, 1), layout.bos_id, np.int64)  # one row per user at level 0
  start = time.perf_counter()
  mask = prefix_mask(input_ids, 1, vocab_size, fn)
  host_seconds += time.perf_counter() - start
  scores, parent, token = pieces["select"](jnp.zeros((size, 1), jnp.float32), log_probs,
                                           jnp.asarray(mask))
  input_ids = np.repeat(input_ids, beam_size, axis=0)  # [B * W, 1]
  for _ in range(1, layout.num_levels):
    parent_np, token_np = np.asarray(parent), np.asarray(token)  # the host needs the prefixes
    log_probs, cache = pieces["step"](params, cache, cross_kv, tokens, parent, token)
    rows = (np.arange(size)[:, None] * beam_size + parent_np).reshape(-1)
    input_ids = np.concatenate([input_ids[rows], token_np.reshape(-1, 1)], axis=1)
    start = time.perf_counter()
    mask = prefix_mask(input_ids, beam_size, vocab_size, fn)
    host_seconds += time.perf_counter() - start
    scores, parent, token = pieces["select"](scores, log_probs, jnp.asarray(mask))
  parent_np, token_np, scores_np = np.asarray(parent), np.asarray(token), np.asarray(scores)
  rows = (np.arange(size)[:, None] * beam_size + parent_np).reshape(-1)
  sequences = np.concatenate([input_ids[rows], token_np.reshape(-1, 1)], axis=1)[:, 1:]
  sequences = sequences.reshape(size, beam_size, -1)[:, :top_k]
  scores_np = scores_np[:, :top_k]
  items = np.array([[host_trie.item(seq) for seq in user] for user in sequences.tolist()],
                   np.int32).reshape(size, top_k)
  items = np.where(np.isfinite(scores_np), items, 0)
  codes = layout.token_to_code(sequences.astype(np.int32))
  if stats is not None:
    stats["host_constraint_seconds"] = stats.get("host_constraint_seconds", 0.0) + host_seconds
  return BeamSearchOutput(items, scores_np, codes)
