"""The per-sequence generators (causal item encoder + code decoder, and decoder-only):
windows hold every
training target once with its whole history; the per-sequence loss at target t equals the
per-example score of the prefix that ends before t; the constrained per-position loss
matches a hand computation on a three-item trie; beam search on it returns real items and
agrees with exact scoring; bad bindings raise clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data import batching
from jaxrec.data.errors import DataError
from jaxrec.data.windows import training_windows
from jaxrec.data.splits import training_prefixes
from jaxrec.decoding import build_trie, exact_top_k, make_beam_search
from jaxrec.generator import T5Config, TokenLayout, make_token_batch
from jaxrec.generator.decoder_only_model import DecoderOnlyModel
from jaxrec.generator.sequence_batch import (make_decoder_only_batch, make_sequence_token_batch,
                                             pack_target_rows, row_capacity)
from jaxrec.generator.sequence_model import ItemEncoderDecoderModel

MAX_HISTORY = 4


def _ids(num_items=10, seed=0):
  rng = np.random.default_rng(seed)
  codes = rng.permutation(64)[:num_items]
  ids = np.stack([codes // 16, (codes // 4) % 4, codes % 4], 1)
  return np.concatenate([np.zeros((1, 3), int), ids]).astype(np.int32)


def _unbox(tree):
  return jax.tree.map(lambda x: getattr(x, "value", x), tree,
                      is_leaf=lambda x: hasattr(x, "value"))


# Each per-sequence architecture: its model class and its window-batch conversion.
ARCHITECTURES = {"item_encoder": (ItemEncoderDecoderModel, make_sequence_token_batch),
                 "decoder_only": (DecoderOnlyModel, make_decoder_only_batch)}


def _model(layout, arch="item_encoder", positions=False, **kwargs):
  extra = {}
  if positions:  # MSCGRec's dual position embeddings (slots of MAX_HISTORY, 3 codes).
    extra = dict(item_position_embeddings=MAX_HISTORY, code_position_embeddings=3,
                 encoder_prefix_tokens=1 if layout.num_user_buckets else 0)
  cfg = T5Config.tiny(layout.vocab_size, num_encoder_layers=2, num_decoder_layers=2, **extra)
  return ARCHITECTURES[arch][0].from_config(cfg, layout, **kwargs)


def _batch(arch, *args, **kwargs):
  return ARCHITECTURES[arch][1](*args, **kwargs)


def _window_batch(windows, **extra):
  return {"history": windows.histories, "length": windows.lengths,
          "first_target": windows.first_targets, "user": windows.users.astype(np.int32),
          "weight": np.ones(len(windows), np.float32), **extra}


def test_windows_known_answer_and_every_prefix_target_once():
  seq = np.array([3, 5, 1, 7, 2, 9, 4, 8, 6, 2, 1])
  offsets = np.array([0, 6, 8, 9, 11])  # users of 6, 2, 1 (no target) and 2 items.
  w = training_windows(seq, offsets, MAX_HISTORY)
  np.testing.assert_array_equal(w.histories, [[3, 5, 1, 7, 2], [5, 1, 7, 2, 9], [4, 8, 0, 0, 0],
                                              [2, 1, 0, 0, 0]])
  np.testing.assert_array_equal(w.first_targets, [1, 4, 1, 1])
  np.testing.assert_array_equal(w.users, [0, 0, 1, 3])
  # Every (history, target) of the per-prefix examples appears exactly once.
  prefixes = training_prefixes(seq, offsets, MAX_HISTORY)
  assert w.num_targets == len(prefixes)
  found = []
  for row, first, length in zip(w.histories, w.first_targets, w.lengths):
    for t in range(first, length):
      found.append((tuple(row[max(0, t - MAX_HISTORY):t]), int(row[t])))
  expected = [(tuple(h[:n]), int(t)) for h, n, t in
              zip(prefixes.histories, prefixes.lengths, prefixes.targets)]
  assert sorted(found) == sorted(expected)
  with pytest.raises(DataError, match="max_history"):
    training_windows(seq, offsets, 0)


@pytest.mark.parametrize("arch,positions", [("item_encoder", False), ("decoder_only", False),
                                            ("item_encoder", True)])
@pytest.mark.parametrize("user_buckets", [0, 7])
def test_per_sequence_loss_equals_the_per_example_loss_of_each_prefix(user_buckets, arch,
                                                                      positions):
  ids = _ids()
  layout = TokenLayout(num_levels=3, codebook_sizes=4, num_user_buckets=user_buckets)
  model = _model(layout, arch, positions)
  seq, offsets = np.array([3, 5, 1, 7, 2, 9, 4]), np.array([0, 7])
  w = training_windows(seq, offsets, MAX_HISTORY)
  batch = _batch(arch, _window_batch(w), ids, layout)
  params = _unbox(model.get_initial_variables(
      jax.random.PRNGKey(1), {k: v.shape for k, v in batch.items()})["params"])
  per_sequence = np.asarray(model.score_batch(params, batch))  # [windows, positions]
  for row, (first, length) in enumerate(zip(w.first_targets, w.lengths)):
    for t in range(1, w.histories.shape[1]):
      if not first <= t < length:
        assert per_sequence[row, t - 1] == 0.0
        continue
      history = w.histories[row, max(0, t - MAX_HISTORY):t]
      example = {"history": np.pad(history, (0, MAX_HISTORY - len(history)))[None],
                 "length": np.array([len(history)]), "user": np.array([0]),
                 "target": np.array([w.histories[row, t]])}
      tokens = make_token_batch(example, ids, layout, MAX_HISTORY)["encoder_input_tokens"]
      score = model.score_codes(params, jnp.asarray(tokens), jnp.asarray(ids[example["target"]]))
      np.testing.assert_allclose(per_sequence[row, t - 1], np.asarray(score)[0, 0],
                                 rtol=1e-5, atol=1e-5)
  loss, metrics = model.loss_fn(params, batch, None)
  assert metrics["num_tokens"] == 3 * w.num_targets
  np.testing.assert_allclose(metrics["cross_ent_loss"],
                             -per_sequence.sum() / (3 * w.num_targets), rtol=1e-5)


def test_row_capacity_known_answers():
  assert [row_capacity(c) for c in (0, 1, 64, 65, 96, 97, 129, 193, 300, 385, 600, 1200)] == [
      64, 64, 64, 96, 96, 128, 192, 256, 384, 512, 768, 1536]
  assert row_capacity(5, quantum=8) == 8 and row_capacity(9, quantum=8) == 12


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("user_buckets", [0, 7])
def test_packed_target_rows_give_the_same_loss_gradients_and_scores(user_buckets, constrained):
  ids = _ids()
  layout = TokenLayout(num_levels=3, codebook_sizes=4, num_user_buckets=user_buckets)
  model = _model(layout, trie=build_trie(ids) if constrained else None,
                 constrained_loss=constrained)
  # A head window, two tail windows (one target each) and a short user's window.
  seq, offsets = np.array([3, 5, 1, 7, 2, 9, 4, 8, 6]), np.array([0, 7, 9])
  w = training_windows(seq, offsets, MAX_HISTORY)
  batch = make_sequence_token_batch(_window_batch(w), ids, layout)
  packed = pack_target_rows(batch, quantum=4)
  assert len(packed["decoder_row_window"]) == row_capacity(w.num_targets, 4) == 8
  assert w.num_targets == 7 and np.sum(packed["decoder_loss_weights"][:, 0]) == 7
  np.testing.assert_array_equal(packed["decoder_row_window"][:7], [0, 0, 0, 0, 1, 2, 3])
  np.testing.assert_array_equal(packed["decoder_row_position"][:7], [0, 1, 2, 3, 3, 3, 0])
  np.testing.assert_array_equal(pack_target_rows(batch, window_offset=5, quantum=4)[
      "decoder_row_window"], packed["decoder_row_window"] + 5)
  params = _unbox(model.get_initial_variables(
      jax.random.PRNGKey(3), {k: v.shape for k, v in batch.items()})["params"])
  (loss, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, None)
  (p_loss, p_metrics), p_grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
      params, packed, None)
  np.testing.assert_allclose(p_loss, loss, rtol=1e-6)
  for key in metrics:
    np.testing.assert_allclose(p_metrics[key], metrics[key], rtol=1e-6, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               p_grads, grads)
  full = np.asarray(model.score_batch(params, batch))
  rows = np.asarray(model.score_batch(params, packed))
  np.testing.assert_allclose(rows[:7], full[packed["decoder_row_window"][:7],
                                           packed["decoder_row_position"][:7]], rtol=1e-5)
  np.testing.assert_array_equal(rows[7:], 0.0)


def test_processes_pack_one_shape_and_their_global_batch_is_the_whole_batch():
  """A 2-process run: each process packs its own windows to the step's most_targets
  (`batching`), so both packed batches have one shape, and their concatenation (what
  make_array_from_process_local_data builds) gives the loss of the whole batch."""
  ids = _ids()
  layout = TokenLayout(num_levels=3, codebook_sizes=4)
  model = _model(layout)
  rng = np.random.default_rng(4)
  lengths = rng.integers(2, 12, size=12)
  seq = rng.integers(1, 11, size=lengths.sum())
  w = training_windows(seq, np.concatenate([[0], np.cumsum(lengths)]), MAX_HISTORY)
  config = batching.BatchingConfig(batch_size=8, seed=1)
  whole = batching.train_dataset(w, config, 0, 1)
  parts = [batching.train_dataset(w, config, p, 2) for p in range(2)]
  uneven = 0
  for step in range(6):
    shards = [part[step] for part in parts]
    counts = [int(np.sum(s["length"] - s["first_target"])) for s in shards]
    uneven += row_capacity(counts[0], 4) != row_capacity(counts[1], 4)
    assert [int(s["most_targets"][0]) for s in shards] == [max(counts)] * 2
    packed = [pack_target_rows(make_sequence_token_batch(s, ids, layout), window_offset=4 * p,
                               quantum=4, min_rows=int(s["most_targets"][0]))
              for p, s in enumerate(shards)]
    assert packed[0]["decoder_row_window"].shape == packed[1]["decoder_row_window"].shape
    joined = {k: np.concatenate([b[k] for b in packed]) for k in packed[0]}
    alone = pack_target_rows(make_sequence_token_batch(whole[step], ids, layout), quantum=4)
    if step == 0:
      params = _unbox(model.get_initial_variables(
          jax.random.PRNGKey(3), {k: v.shape for k, v in alone.items()})["params"])
    np.testing.assert_allclose(model.loss_fn(params, joined, None)[0],
                               model.loss_fn(params, alone, None)[0], rtol=1e-5)
  assert uneven  # the case the agreed capacity is for: unequal capacities of their own.
  with pytest.raises(DataError, match="most_targets"):
    pack_target_rows(make_sequence_token_batch(parts[0][0], ids, layout), min_rows=1)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_constrained_per_position_loss_matches_a_hand_computation_on_three_items(arch):
  ids = np.array([[0, 0, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0]], np.int32)  # items 1..3
  layout = TokenLayout(num_levels=3, codebook_sizes=2, num_user_buckets=0)
  trie = build_trie(ids)
  model = _model(layout, arch, trie=trie, constrained_loss=True)
  w = training_windows(np.array([1, 3, 2, 1]), np.array([0, 4]), MAX_HISTORY)
  batch = _batch(arch, _window_batch(w), ids, layout)
  params = _unbox(model.get_initial_variables(
      jax.random.PRNGKey(2), {k: v.shape for k, v in batch.items()})["params"])
  logits = np.asarray(model.position_logits(params, batch))[0]  # [positions, L, V]
  offsets = layout.level_offsets
  # Allowed codes after each prefix, enumerated by hand from the three IDs.
  allowed = {(): [0, 1], (0,): [1], (1,): [0], (0, 1): [0, 1], (1, 0): [0]}
  total = []
  for t, item in enumerate([3, 2, 1]):
    code = ids[item]
    for level in range(3):
      tokens = offsets[level] + np.array(allowed[tuple(code[:level])])
      z = np.log(np.sum(np.exp(logits[t, level, tokens])))
      total.append(z - logits[t, level, offsets[level] + code[level]])
  _, metrics = model.loss_fn(params, batch, None)
  np.testing.assert_allclose(metrics["cross_ent_loss"], np.mean(total), rtol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_beam_search_returns_real_items_and_matches_exact_scoring(arch):
  ids = _ids(12)
  layout = TokenLayout(num_levels=3, codebook_sizes=4, num_user_buckets=0)
  trie = build_trie(ids)
  model = _model(layout, arch)
  params = _unbox(model.get_initial_variables(jax.random.PRNGKey(3))["params"])
  histories = np.array([[3, 5, 1, 0], [7, 0, 0, 0], [2, 9, 11, 12]], np.int32)
  batch = {"history": histories, "length": (histories > 0).sum(1)}
  tokens = jnp.asarray(make_token_batch(batch, ids, layout, 4)["encoder_input_tokens"])
  search = make_beam_search(model, beam_size=12, top_k=12)
  out = search(params, tokens, trie)
  items = np.asarray(out.items)
  assert ((items >= 1) & (items <= 12)).all()
  np.testing.assert_array_equal(np.sort(items, 1), np.tile(np.arange(1, 13), (3, 1)))
  exact_items, exact_scores = exact_top_k(model, params, tokens, ids, 12)
  np.testing.assert_array_equal(items, np.asarray(exact_items))
  np.testing.assert_allclose(out.scores, exact_scores, rtol=1e-4, atol=1e-4)
  search(params, tokens, trie)
  assert search._cache_size() == 1  # one trace per shape.
  # Greedy decoding (no DecodingConfig): the best code of each level given the previous.
  codes, aux = model.predict_batch_with_aux(params, {"encoder_input_tokens": tokens})
  assert codes.shape == (3, 3) and ((np.asarray(codes) >= 0) & (np.asarray(codes) < 4)).all()
  full = np.asarray(model.score_codes(params, tokens, jnp.asarray(codes[:1])))
  np.testing.assert_allclose(full[0, 0], np.asarray(aux["scores"])[0], rtol=1e-4, atol=1e-4)


def test_bad_input_is_named():
  ids = _ids()
  layout = TokenLayout(num_levels=3, codebook_sizes=4, num_user_buckets=0)
  w = training_windows(np.array([3, 5, 1]), np.array([0, 3]), MAX_HISTORY)
  batch = _window_batch(w)
  del batch["first_target"]
  with pytest.raises(DataError, match="first_target"):
    make_sequence_token_batch(batch, ids, layout)
  with pytest.raises(DataError, match="num_items \\+ 1, 3"):  # IDs with the wrong levels.
    make_sequence_token_batch(_window_batch(w), ids[:, :2], layout)

