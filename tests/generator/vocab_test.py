"""Token layout and make_token_batch: offsets, round trips, user hashing, exact arrays."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.errors import DataError
from jaxrec.generator.errors import ModelConfigError
from jaxrec.generator.vocab import BOS_ID, PAD_ID, TokenLayout, make_token_batch


def test_tiger_layout():
  layout = TokenLayout(4, 256)
  assert layout.codebook_sizes == (256,) * 4
  assert layout.vocab_size == 2 + 4 * 256 + 2000 == 3026
  assert [layout.level_token_range(l) for l in range(4)] == [
      (2, 258), (258, 514), (514, 770), (770, 1026)]
  assert (layout.user_offset, layout.reserved_offset) == (1026, 3026)
  with pytest.raises(ModelConfigError):
    layout.level_token_range(4)


def test_level_ranges_disjoint_and_cover_the_code_block():
  layout = TokenLayout(3, (5, 7, 2), num_user_buckets=4, num_special=3, num_reserved=6)
  mask = layout.level_mask()
  chex.assert_shape(mask, (3, layout.vocab_size))
  assert mask.sum(0).max() == 1  # disjoint
  np.testing.assert_array_equal(mask.sum(1), [5, 7, 2])
  covered = np.flatnonzero(mask.any(0))
  np.testing.assert_array_equal(covered, np.arange(3, 3 + 14))
  assert layout.vocab_size == 3 + 14 + 4 + 6


def test_code_token_round_trip_numpy_and_jax():
  layout = TokenLayout(3, (5, 7, 2))
  codes = np.array([[0, 0, 0], [4, 6, 1], [2, 3, 1]], np.int32)
  tokens = layout.code_to_token(codes)
  np.testing.assert_array_equal(tokens, [[2, 7, 14], [6, 13, 15], [4, 10, 15]])
  np.testing.assert_array_equal(layout.token_to_code(tokens), codes)
  jax_tokens = layout.code_to_token(jnp.asarray(codes))
  assert isinstance(jax_tokens, type(jnp.zeros(1))) and jax_tokens.dtype == jnp.int32
  np.testing.assert_array_equal(layout.token_to_code(jax_tokens), codes)
  for level in range(3):
    start, end = layout.level_token_range(level)
    assert (start <= tokens[:, level]).all() and (tokens[:, level] < end).all()


def test_user_hash_deterministic_in_range_and_spread():
  layout = TokenLayout(4, 256)
  users = np.arange(10_000)
  tokens = layout.user_token(users)
  assert tokens.dtype == np.int32
  np.testing.assert_array_equal(tokens, TokenLayout(4, 256).user_token(users))
  assert tokens.min() >= layout.user_offset and tokens.max() < layout.reserved_offset
  assert len(np.unique(tokens)) > 1900  # consecutive rows spread over the buckets
  # Fixed values: the hash must never change between versions (checkpoints depend on it).
  np.testing.assert_array_equal(layout.user_token(np.array([0, 1, 7])),
                                [1026, 1026 + 1878, 1026 + 1763])
  np.testing.assert_array_equal(layout.user_token(np.array([-1, 3])[:1]), [PAD_ID])
  assert layout.user_token(np.int32(5)).shape == ()


def test_make_token_batch_exact_arrays():
  layout = TokenLayout(2, (3, 4), num_user_buckets=5)  # levels at 2..4 and 5..8, users 9..13
  sids = np.array([[0, 0], [1, 2], [2, 3], [0, 1]])  # row 0 = padding
  batch = {
      "history": np.array([[1, 2, 0], [3, 0, 0], [0, 0, 0]], np.int32),
      "length": np.array([2, 1, 0], np.int32),
      "target": np.array([3, 1, 0], np.int32),
      "user": np.array([0, 4, -1], np.int32),
      "weight": np.array([1.0, 1.0, 0.0], np.float32),
  }
  out = make_token_batch(batch, sids, layout)
  users = layout.user_token(np.array([0, 4]))
  np.testing.assert_array_equal(out["encoder_input_tokens"], [
      [users[0], 3, 7, 4, 8, 0, 0],
      [users[1], 2, 6, 0, 0, 0, 0],
      [0, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["decoder_target_tokens"], [[2, 6], [3, 7], [2, 5]])
  np.testing.assert_array_equal(out["decoder_input_tokens"], [[BOS_ID, 2], [BOS_ID, 3],
                                                              [BOS_ID, 2]])
  np.testing.assert_array_equal(out["decoder_loss_weights"], [[1, 1], [1, 1], [0, 0]])
  for key in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"):
    assert out[key].dtype == np.int32
  assert out["decoder_loss_weights"].dtype == np.float32


def test_make_token_batch_keeps_the_most_recent_items():
  layout = TokenLayout(1, 10, num_user_buckets=0)
  sids = np.arange(10)[:, None]
  batch = {"history": np.array([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]], np.int32),
           "length": np.array([5, 2], np.int32)}
  out = make_token_batch(batch, sids, layout, max_history=3)
  assert set(out) == {"encoder_input_tokens"}
  np.testing.assert_array_equal(out["encoder_input_tokens"], [[5, 6, 7], [8, 9, 0]])
  # The width follows the batch width W, so bucketed batches give few shapes.
  narrow = make_token_batch({"history": batch["history"][:, :2], "length": np.array([2, 2])},
                            sids, layout, max_history=3)
  chex.assert_shape(narrow["encoder_input_tokens"], (2, 2))


def test_errors_name_the_problem():
  layout = TokenLayout(2, 4, num_user_buckets=3)
  sids = np.array([[0, 0], [1, 3]])
  good = {"history": np.array([[1]]), "length": np.array([1]), "target": np.array([1])}
  with pytest.raises(DataError, match="item id 2"):
    make_token_batch({**good, "target": np.array([2])}, sids, layout)
  with pytest.raises(DataError, match=r"semantic_ids\[1, 1\] = 4"):
    make_token_batch(good, np.array([[0, 0], [1, 4]]), layout)
  with pytest.raises(DataError, match="semantic_ids must be"):
    make_token_batch(good, np.array([[0, 0, 0]]), layout)
  with pytest.raises(DataError, match="length"):
    make_token_batch({**good, "length": np.array([2])}, sids, layout)
  with pytest.raises(ModelConfigError, match="codebook_sizes"):
    TokenLayout(3, (4, 4))


def test_for_semantic_ids():
  layout = TokenLayout.for_semantic_ids(np.array([[0, 0, 0], [3, 1, 0], [2, 5, 1]]),
                                        num_user_buckets=0)
  assert layout.codebook_sizes == (4, 6, 2) and layout.vocab_size == 2 + 12
