"""Beam search: known best paths of a hand-built Markov table, agreement with the exact
scorer, only real items, one trace per shape, a sharded batch, the model's predict path."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrec.decoding import (DecodingConfig, DecodingError, build_trie, exact_top_k,
                             make_beam_search)
from jaxrec.decoding.beam_search import beam_search
from jaxrec.generator import EncoderDecoderModel, ModelConfigError, T5Config, TokenLayout


class MarkovModel:
  """A stand-in generator: logits = table[previous token] + bonus[sum of the prefix % 5].

  The bonus depends on the whole prefix through the cache, so a wrong cache gather by
  parent beam changes the answer.
  """

  def __init__(self, layout):
    self.layout = layout

  def encode(self, params, tokens):
    return jnp.zeros(tokens.shape + (1,))

  def cross_attention_kv(self, params, encoded):
    return []

  def init_cache(self, params, rows):
    return {"prefix_sum": jnp.zeros((rows,), jnp.int32), "index": jnp.array(0, jnp.int32)}

  def decode_step(self, params, cache, encoded, tokens, decoder_tokens, cross_kv=None):
    prefix = cache["prefix_sum"] + jnp.where(decoder_tokens == 1, 0, decoder_tokens)
    logits = params["table"][decoder_tokens] + params["bonus"][prefix % 5]
    return logits, {"prefix_sum": prefix, "index": cache["index"] + 1}


def markov_score(params, layout, codes):
  """The log-likelihood of one code sequence under MarkovModel (NumPy, by hand)."""
  table, bonus = np.asarray(params["table"]), np.asarray(params["bonus"])
  prev, prefix, total = 1, 0, 0.0
  for level, code in enumerate(codes):
    logits = table[prev] + bonus[prefix % 5]
    log_probs = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    token = int(layout.level_offsets[level]) + int(code)
    total += log_probs[token]
    prefix += token
    prev = token
  return total


def markov_setup(seed=0, users=3):
  rng = np.random.default_rng(seed)
  sizes = (4, 5, 3)
  rows = np.array(list(itertools.product(*[range(s) for s in sizes])))
  rows = rows[rng.permutation(len(rows))[:40]]
  ids = np.concatenate([np.zeros((1, 3), int), rows])
  layout = TokenLayout(num_levels=3, codebook_sizes=sizes, num_user_buckets=0)
  vocab = layout.vocab_size
  params = {"table": jnp.asarray(rng.normal(0, 2, (vocab, vocab)), jnp.float32),
            "bonus": jnp.asarray(rng.normal(0, 2, (5, vocab)), jnp.float32)}
  tokens = jnp.ones((users, 4), jnp.int32)
  return ids, layout, params, tokens


def test_markov_best_paths_are_the_enumerated_best():
  ids, layout, params, tokens = markov_setup()
  model = MarkovModel(layout)
  trie = build_trie(ids, codebook_sizes=layout.codebook_sizes)
  scores = np.array([markov_score(params, layout, row) for row in ids[1:]])
  best = np.argsort(-scores, kind="stable")[:5] + 1
  # A beam as wide as the catalog is exhaustive: it must return the enumerated best.
  out = beam_search(model, params, tokens, trie, beam_size=40, top_k=5)
  np.testing.assert_array_equal(out.items[0], best)
  np.testing.assert_allclose(out.scores[0], scores[best - 1], rtol=1e-5)
  np.testing.assert_array_equal(out.codes[0], ids[best])


def reference_beam(params, layout, ids, width, k):
  """A plain Python beam search over the item prefixes (the same pruning rule)."""
  items = {tuple(r): i for i, r in enumerate(ids[1:].tolist(), start=1)}
  beams = [((), 0.0)]
  for level in range(layout.num_levels):
    expanded = []
    for prefix, _ in beams:
      children = sorted({key[level] for key in items if key[:level] == prefix})
      for code in children:
        seq = prefix + (code,)
        expanded.append((seq, markov_score(params, layout, seq)))
    expanded.sort(key=lambda x: -x[1])
    beams = expanded[:width]
  return [items[b[0]] for b in beams[:k]]


def test_narrow_beam_matches_a_python_beam_search():
  ids, layout, params, tokens = markov_setup(seed=3)
  trie = build_trie(ids, codebook_sizes=layout.codebook_sizes)
  out = beam_search(MarkovModel(layout), params, tokens, trie, beam_size=3, top_k=3)
  assert out.items[0].tolist() == reference_beam(params, layout, ids, 3, 3)


def test_unconstrained_search_can_leave_the_catalog_but_constrained_cannot():
  ids, layout, params, tokens = markov_setup(seed=1)
  model = MarkovModel(layout)
  free = beam_search(model, params, tokens, None, beam_size=60, top_k=60)
  real = {tuple(r) for r in ids[1:].tolist()}
  codes = [tuple(c) for c in np.asarray(free.codes[0]).tolist()]
  assert any(c not in real for c in codes)  # 40 of 60 sequences are items
  assert np.all(np.asarray(free.items) == 0)
  trie = build_trie(ids, codebook_sizes=layout.codebook_sizes)
  out = beam_search(model, params, tokens, trie, beam_size=60, top_k=60)
  found = np.asarray(out.items[0])
  assert (found[:40] > 0).all() and (found[40:] == 0).all()  # only 40 items exist
  assert np.isneginf(np.asarray(out.scores[0, 40:])).all()
  assert sorted(found[:40].tolist()) == list(range(1, 41))


@pytest.fixture(scope="module")
def t5_setup():
  rng = np.random.default_rng(0)
  n = 300
  first = rng.integers(0, 8, (n, 2))
  ids = np.zeros((n + 1, 3), int)
  ids[1:, :2] = first
  seen = {}
  for i in range(1, n + 1):
    key = tuple(ids[i, :2])
    ids[i, 2] = seen.get(key, 0)
    seen[key] = ids[i, 2] + 1
  layout = TokenLayout.for_semantic_ids(ids, num_user_buckets=0)
  config = T5Config.tiny(layout.vocab_size, emb_dim=32, head_dim=16, mlp_dim=64)
  trie = build_trie(ids, codebook_sizes=layout.codebook_sizes)
  model = EncoderDecoderModel.from_config(config, layout, trie,
                                          decoding=DecodingConfig(beam_size=30, top_k=10),
                                          decode_fn=beam_search)
  params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(1))["params"])
  params = jax.tree.map(lambda x: 3.0 * x, params)  # peakier distributions
  tokens = jnp.asarray(rng.integers(2, layout.code_to_token(np.array([7, 7, 0]))[2], (8, 9)),
                       jnp.int32).at[:, 7:].set(0)  # padded histories
  return ids, model, params, tokens


def test_wide_beam_agrees_with_the_exact_scorer(t5_setup):
  ids, model, params, tokens = t5_setup
  out = make_beam_search(model, 30, 10)(params, tokens, model.trie)
  items, scores = exact_top_k(model, params, tokens, ids, 10, chunk_size=64)
  agree = np.mean([len(set(a) & set(b)) / 10 for a, b in
                   zip(np.asarray(out.items).tolist(), np.asarray(items).tolist())])
  assert agree >= 0.99
  np.testing.assert_allclose(out.scores, scores, rtol=1e-4, atol=1e-4)
  assert (ids[np.asarray(out.items)] == np.asarray(out.codes)).all()  # real items


def test_exact_scores_equal_the_model_score_batch(t5_setup):
  ids, model, params, tokens = t5_setup
  items = np.array([5, 17, 230])
  scores = model.score_codes(params, tokens[:2], jnp.asarray(ids[items]))
  for b in range(2):
    targets = jnp.asarray(model.layout.code_to_token(ids[items]), jnp.int32)
    batch = {"encoder_input_tokens": jnp.repeat(tokens[b:b + 1], 3, 0),
             "decoder_input_tokens": jnp.concatenate(
                 [jnp.ones((3, 1), jnp.int32), targets[:, :-1]], 1),
             "decoder_target_tokens": targets}
    np.testing.assert_allclose(scores[b], model.score_batch(params, batch), rtol=1e-5,
                               atol=1e-5)


def test_traces_once_per_shape(t5_setup):
  ids, model, params, tokens = t5_setup
  traces = []

  def counted(params, tokens, trie):
    traces.append(tokens.shape)
    return beam_search(model, params, tokens, trie, beam_size=4, top_k=2)

  search = jax.jit(counted)
  for _ in range(3):
    search(params, tokens, model.trie)
  search(jax.tree.map(lambda x: x * 1.01, params), tokens + 0, model.trie)
  assert len(traces) == 1
  search(params, tokens[:4], model.trie)
  assert len(traces) == 2


def test_sharded_batch_gives_the_same_answer(t5_setup):
  ids, model, params, tokens = t5_setup
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  sharded = jax.device_put(tokens, NamedSharding(mesh, P("data")))
  search = make_beam_search(model, 30, 10)
  local = search(params, tokens, model.trie)
  spread = search(params, sharded, model.trie)
  np.testing.assert_array_equal(local.items, spread.items)
  np.testing.assert_allclose(local.scores, spread.scores, rtol=1e-4, atol=1e-3)


def test_model_predict_batch_is_the_beam_search(t5_setup):
  ids, model, params, tokens = t5_setup
  items = model.predict_batch(params, {"encoder_input_tokens": tokens})
  assert items.shape == (8, 10)
  out = beam_search(model, params, tokens, model.trie, beam_size=30, top_k=10)
  np.testing.assert_array_equal(items, out.items)


def test_a_model_with_decoding_and_a_trie_needs_its_decode_fn(t5_setup):
  ids, model, params, tokens = t5_setup
  with pytest.raises(ModelConfigError, match="decode_fn"):
    EncoderDecoderModel.from_config(model.config, model.layout, model.trie,
                                    decoding=DecodingConfig(beam_size=30, top_k=10))
  greedy = EncoderDecoderModel.from_config(model.config, model.layout, model.trie)
  assert not greedy.beam_search_enabled  # no DecodingConfig: greedy, no decode_fn needed


def test_decoding_config_errors():
  with pytest.raises(DecodingError, match="beam_size"):
    DecodingConfig(beam_size=5, top_k=10)
  with pytest.raises(DecodingError, match="positive"):
    DecodingConfig(beam_size=0)
  with pytest.raises(DecodingError, match="exceeds"):
    beam_search(None, None, jnp.zeros((1, 2), jnp.int32), None, beam_size=2, top_k=3)
