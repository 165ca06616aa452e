"""Semantic-ID assembly: hand-made collisions for each strategy, statistics, validation."""

import chex
import numpy as np
import pytest

from jaxrec.data.errors import DataError
from jaxrec.quantizers import semantic_ids

SQUARE = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
# Items 0, 1, 3 share (0, 1); items 2, 4 share (2, 3); item 5 is alone.
CODES = np.array([[0, 1], [0, 1], [2, 3], [0, 1], [2, 3], [1, 0]])
RESIDUALS = np.array([[1.0, 0.0], [0.9, 0.4], [1.0, 1.0], [0.6, 0.1], [0.8, 0.9], [0.0, 0.0]])


def assert_unique(ids):
  assert len(np.unique(ids, axis=0)) == len(ids)


def test_extra_level_numbers_duplicates_in_item_order():
  ids = semantic_ids.assemble(CODES, "extra_level")
  chex.assert_shape(ids, (6, 3))
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids[:, :2], CODES)
  np.testing.assert_array_equal(ids[:, 2], [0, 1, 0, 2, 1, 0])
  # No collisions: the level is still appended (TIGER's fixed length), all zeros.
  np.testing.assert_array_equal(semantic_ids.assemble(np.eye(3, dtype=int))[:, 3], [0, 0, 0])


def test_nearest_unused_known_answer():
  ids = semantic_ids.assemble(CODES, "nearest_unused", last_residuals=RESIDUALS,
                              last_codebook=SQUARE)
  # Item 1's codes by distance: 1, 3 -> (0, 3) is free. Item 3's: 1, 0 -> (0, 0).
  # Item 4's: 3, 2 -> (2, 2). First items of each group and item 5 keep theirs.
  np.testing.assert_array_equal(ids, [[0, 1], [0, 3], [2, 3], [0, 0], [2, 2], [1, 0]])


def test_sinkhorn_moves_colliding_items_to_their_own_near_codes():
  codes = np.array([[5, 0], [5, 0], [6, 0]])
  residuals = np.array([[0.0, 1.1], [1.1, 1.0], [0.0, 0.0]])
  ids = semantic_ids.assemble(codes, "sinkhorn", last_residuals=residuals, last_codebook=SQUARE)
  np.testing.assert_array_equal(ids, [[5, 2], [5, 3], [6, 0]])


@pytest.mark.parametrize("strategy", semantic_ids.STRATEGIES)
def test_every_strategy_gives_unique_ids_deterministically(strategy):
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 3, size=(60, 3))  # 27 possible tuples for 60 items
  residuals = rng.normal(size=(60, 2))
  codebook = rng.normal(size=(3, 2))
  kwargs = dict(last_residuals=residuals, last_codebook=codebook)
  ids = semantic_ids.assemble(codes, strategy, **kwargs)
  assert_unique(ids)
  np.testing.assert_array_equal(ids, semantic_ids.assemble(codes, strategy, **kwargs))
  np.testing.assert_array_equal(ids[:, :2], codes[:, :2])  # prefixes never change
  assert ids.shape[1] == 4  # too many items per prefix: a fallback level is needed
  hand = semantic_ids.assemble(CODES, strategy, last_residuals=RESIDUALS, last_codebook=SQUARE)
  assert_unique(hand)
  assert hand.shape[1] == (3 if strategy == "extra_level" else 2)


def test_sinkhorn_separates_identical_residuals_round_by_round():
  codes = np.zeros((4, 2), int)
  residuals = np.zeros((4, 2))
  ids = semantic_ids.assemble(codes, "sinkhorn", last_residuals=residuals,
                              last_codebook=SQUARE, max_rounds=4)
  chex.assert_shape(ids, (4, 2))
  assert_unique(ids)
  # Too few rounds: the rest falls back to an extra level.
  fallback = semantic_ids.assemble(codes, "sinkhorn", last_residuals=residuals,
                                   last_codebook=SQUARE, max_rounds=2)
  chex.assert_shape(fallback, (4, 3))
  assert_unique(fallback)


def test_sinkhorn_plan_is_balanced():
  plan = semantic_ids.sinkhorn(np.random.default_rng(0).random((3, 5)), 0.1, 200)
  np.testing.assert_allclose(plan.sum(1), 1 / 3, atol=1e-6)
  np.testing.assert_allclose(plan.sum(0), 1 / 5, atol=1e-6)


def test_collision_stats_known_answer():
  stats = semantic_ids.collision_stats(np.array([[0, 1], [0, 1], [2, 3], [1, 0]]),
                                       codebook_size=4)
  assert stats["num_items"] == 4
  assert stats["num_distinct_ids"] == 3
  assert stats["collision_rate"] == 0.5
  assert stats["largest_collision_group"] == 2
  level = stats["levels"][0]
  assert level["used_codes"] == 3 and level["used_fraction"] == 0.75
  np.testing.assert_allclose([level["entropy_bits"], level["perplexity"]], [1.5, 2 ** 1.5])
  unique = semantic_ids.collision_stats(semantic_ids.assemble(CODES))
  assert unique["collision_rate"] == 0.0 and unique["largest_collision_group"] == 1


def test_validation_errors():
  with pytest.raises(DataError, match="shape"):
    semantic_ids.assemble(np.array([1, 2, 3]))
  with pytest.raises(DataError, match="integers"):
    semantic_ids.assemble(np.ones((3, 2)))
  with pytest.raises(DataError, match="non-negative"):
    semantic_ids.assemble(-np.ones((3, 2), int))
  with pytest.raises(DataError, match="strategy"):
    semantic_ids.assemble(CODES, "magic")
  with pytest.raises(DataError, match="last_residuals"):
    semantic_ids.assemble(CODES, "sinkhorn")
  with pytest.raises(DataError, match="last_residuals"):
    semantic_ids.assemble(CODES, "nearest_unused", last_residuals=RESIDUALS[:3],
                          last_codebook=SQUARE)
  with pytest.raises(DataError, match="last_codebook"):
    semantic_ids.assemble(CODES, "sinkhorn", last_residuals=RESIDUALS,
                          last_codebook=SQUARE[:2])
  bad = RESIDUALS.copy()
  bad[0, 0] = np.nan
  with pytest.raises(DataError, match="NaN"):
    semantic_ids.assemble(CODES, "sinkhorn", last_residuals=bad, last_codebook=SQUARE)
