"""Known-answer tests for the ranking metrics and the bootstrap intervals."""

import numpy as np
import pytest

from jaxrec import metrics


def test_rank_of_target_positions_and_absent():
  top = np.array([[5, 6, 7], [5, 6, 7], [5, 6, 7], [1, 1, 2]])
  ranks = metrics.rank_of_target(top, np.array([5, 7, 9, 1]))
  assert ranks.dtype == np.int64
  np.testing.assert_array_equal(ranks[[0, 1, 3]], [0, 2, 0])
  assert ranks[2] == metrics.NOT_FOUND


def test_rank_of_target_rejects_bad_shapes():
  with pytest.raises(ValueError, match="shapes"):
    metrics.rank_of_target(np.zeros([3, 2]), np.zeros([2]))


def test_metric_values_by_hand():
  ranks = np.array([0, 2, 9, metrics.NOT_FOUND])
  np.testing.assert_allclose(metrics.recall_at_k(ranks, 3), [1, 1, 0, 0])
  np.testing.assert_allclose(metrics.ndcg_at_k(ranks, 3), [1.0, 0.5, 0.0, 0.0])
  np.testing.assert_allclose(metrics.mrr_at_k(ranks, 3), [1.0, 1 / 3, 0.0, 0.0])
  np.testing.assert_allclose(metrics.ndcg_at_k(ranks, 10), [1.0, 0.5, 1 / np.log2(11), 0.0])
  np.testing.assert_allclose(metrics.recall_at_k(ranks, 1), [1, 0, 0, 0])


def test_per_example_metrics_keys_and_bad_k():
  out = metrics.per_example_metrics(np.array([0, 4]), ks=(1, 5))
  assert list(out) == ["recall@1", "recall@5", "ndcg@1", "ndcg@5", "mrr@1", "mrr@5"]
  np.testing.assert_allclose(out["mrr@5"], [1.0, 0.2])
  for bad in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match="positive integer"):
      metrics.per_example_metrics(np.array([0]), ks=(bad,))


def test_bootstrap_ci_contains_mean_and_is_deterministic():
  values = (np.random.default_rng(1).random(500) < 0.3).astype(float)
  low, high = metrics.bootstrap_ci(values, num_resamples=500, seed=3)
  assert low < values.mean() < high
  assert (low, high) == metrics.bootstrap_ci(values, num_resamples=500, seed=3)
  assert (low, high) != metrics.bootstrap_ci(values, num_resamples=500, seed=4)
  # The interval is roughly mean +- 2 standard errors.
  se = values.std() / np.sqrt(len(values))
  assert abs((high - low) - 2 * 1.96 * se) < se


def test_bootstrap_ci_constant_values_zero_width():
  assert metrics.bootstrap_ci(np.full(50, 1 / np.log2(3))) == (1 / np.log2(3),) * 2
  assert metrics.bootstrap_ci(np.array([0.25])) == (0.25, 0.25)
  with pytest.raises(ValueError):
    metrics.bootstrap_ci(np.array([]))


def test_bootstrap_ci_chunked_matches_small_chunks(monkeypatch):
  values = np.random.default_rng(0).random(100)
  whole = metrics.bootstrap_ci(values, num_resamples=300, seed=7)
  monkeypatch.setattr(metrics, "_BOOTSTRAP_CHUNK_ELEMENTS", 1000)  # 10 per chunk.
  assert metrics.bootstrap_ci(values, num_resamples=300, seed=7) == pytest.approx(whole)


def test_summarize_with_mask_and_empty_slice():
  per = metrics.per_example_metrics(np.array([0, 1, metrics.NOT_FOUND, 0]), ks=(1, 2))
  out = metrics.summarize(per, num_resamples=200)
  assert out["recall@2"]["mean"] == pytest.approx(0.75)
  assert out["recall@2"]["n"] == 4
  assert out["recall@2"]["ci_low"] <= 0.75 <= out["recall@2"]["ci_high"]
  sliced = metrics.summarize(per, mask=np.array([True, False, False, True]))
  assert sliced["ndcg@2"] == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 2}
  empty = metrics.summarize(per, mask=np.zeros(4, bool))
  assert empty["mrr@1"] == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
  no_ci = metrics.summarize(per, num_resamples=0)
  assert no_ci["recall@1"]["ci_low"] is None and no_ci["recall@1"]["mean"] == 0.5


def test_paired_difference_known_answers():
  nf = metrics.NOT_FOUND
  a, b = np.array([0, 5, nf, 2]), np.array([nf, 5, 1, nf])
  out = metrics.paired_difference(a, b, "recall@3", num_resamples=200)
  assert (out["a"], out["b"], out["diff"], out["n"]) == (0.5, 0.25, 0.25, 4)
  assert out["ci_low"] <= 0.25 <= out["ci_high"] and not out["excludes_zero"]
  # One run better on every user: the interval is exactly that and excludes 0.
  same = metrics.paired_difference(np.zeros(50, int), np.full(50, nf), "ndcg@1")
  assert same["diff"] == same["ci_low"] == same["ci_high"] == 1.0 and same["excludes_zero"]
  # The same run: a zero-width interval at 0, which does not exclude 0.
  zero = metrics.paired_difference(a, a)
  assert zero["diff"] == zero["ci_low"] == zero["ci_high"] == 0.0 and not zero["excludes_zero"]
  # Paired beats unpaired: a small shared-user gain shows where the two runs' own CIs overlap.
  rng = np.random.default_rng(0)
  base = np.where(rng.random(4000) < 0.3, 0, nf)
  better = np.where(rng.random(4000) < 0.03, 0, base)  # 3 % of the users gain a hit.
  paired = metrics.paired_difference(better, base, "recall@10")
  lo_a, _ = metrics.bootstrap_ci(metrics.recall_at_k(better, 10))
  _, hi_b = metrics.bootstrap_ci(metrics.recall_at_k(base, 10))
  assert paired["excludes_zero"] and paired["ci_low"] > 0 and lo_a < hi_b
  with pytest.raises(ValueError, match="same examples"):
    metrics.paired_difference(a, a[:3])
  with pytest.raises(ValueError, match="recall@K"):
    metrics.paired_difference(a, b, "hits@10")
