"""Top-k ranking metrics for one held-out item per user, and bootstrap intervals.

Pure numpy; everything is per example first, then averaged by `summarize`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

NOT_FOUND = np.iinfo(np.int64).max  # rank of a target absent from the top-k list.
DEFAULT_KS = (1, 5, 10, 20)
METRIC_NAMES = ("recall", "ndcg", "mrr")
_BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22  # resample indices drawn per chunk (bounds memory).


def rank_of_target(top_items: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """0-based position of each target in its ranked list.

  Args:
    top_items: [n, k] int item ids, best first. If an id repeats, its first
      position counts.
    targets: [n] int held-out item ids.

  Returns:
    ranks: [n] int64, the position of the target, or NOT_FOUND when absent.
  """
  top_items = np.asarray(top_items)
  targets = np.asarray(targets)
  if top_items.ndim != 2 or targets.shape != top_items.shape[:1]:
    raise ValueError(f"expected top_items [n, k] and targets [n]; got shapes "
                     f"{top_items.shape} and {targets.shape}")
  hit = top_items == targets[:, None]
  found = hit.any(axis=1)
  first = np.argmax(hit, axis=1) if top_items.shape[1] else np.zeros(len(targets), np.int64)
  return np.where(found, first, NOT_FOUND).astype(np.int64)


def check_cutoff(k: int) -> int:
  """Returns k as an int; raises ValueError unless it is a positive integer."""
  try:
    ok = not isinstance(k, bool) and int(k) == k and k >= 1
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"cutoff k must be a positive integer, got {k!r}")
  return int(k)


def recall_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
  """[n] float64 Recall@k (= HR@k with one relevant item): 1 if rank < k."""
  k = check_cutoff(k)
  return (np.asarray(ranks) < k).astype(np.float64)


def ndcg_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
  """[n] float64 NDCG@k with one relevant item: 1 / log2(rank + 2) if rank < k."""
  k = check_cutoff(k)
  ranks = np.asarray(ranks)
  hit = ranks < k
  safe = np.where(hit, ranks, 0).astype(np.float64)
  return np.where(hit, 1.0 / np.log2(safe + 2.0), 0.0)


def mrr_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
  """[n] float64 MRR@k with one relevant item: 1 / (rank + 1) if rank < k."""
  k = check_cutoff(k)
  ranks = np.asarray(ranks)
  hit = ranks < k
  safe = np.where(hit, ranks, 0).astype(np.float64)
  return np.where(hit, 1.0 / (safe + 1.0), 0.0)


def per_example_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict:
  """All metrics at all cutoffs.

  Args:
    ranks: [n] int 0-based target ranks (NOT_FOUND = absent).
    ks: positive cutoffs.

  Returns:
    name -> [n] float64, names "recall@K", "ndcg@K", "mrr@K" (metric-major).
  """
  ks = [check_cutoff(k) for k in ks]
  fns = {"recall": recall_at_k, "ndcg": ndcg_at_k, "mrr": mrr_at_k}
  return {f"{name}@{k}": fns[name](ranks, k) for name in METRIC_NAMES for k in ks}


def _bootstrap_bounds(values: np.ndarray, num_resamples: int, confidence: float,
                      seed: int) -> np.ndarray:
  """[m, 2] percentile intervals of the mean for each row of `values` [m, n].

  All rows share the same resamples (users are resampled, not metrics). Each
  chunk of resamples is turned into per-user counts with one bincount, and the
  resampled means are a matrix product counts @ values.T.
  """
  values = np.asarray(values, np.float64)
  m, n = values.shape
  if n == 0:
    raise ValueError("bootstrap_ci needs at least one value")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
  if num_resamples < 1:
    raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
  rng = np.random.default_rng(seed)
  chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
  means = []
  for start in range(0, num_resamples, chunk):
    c = min(chunk, num_resamples - start)
    idx = rng.integers(0, n, size=(c, n))
    idx += (np.arange(c) * n)[:, None]
    counts = np.bincount(idx.ravel(), minlength=c * n).reshape(c, n)
    means.append(counts @ values.T / n)  # [c, m]
  means = np.concatenate(means, axis=0)
  alpha = (1.0 - confidence) / 2.0
  bounds = np.quantile(means, [alpha, 1.0 - alpha], axis=0).T  # [m, 2]
  constant = values.min(axis=1) == values.max(axis=1)
  bounds[constant] = values[constant, :1]  # exact zero width, no rounding noise.
  return bounds


def bootstrap_ci(values: np.ndarray, num_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple:
  """Percentile bootstrap interval of the mean, resampling examples (users).

  Args:
    values: [n] per-example metric values (n >= 1).
    num_resamples: bootstrap resamples.
    confidence: two-sided coverage, e.g. 0.95 -> 2.5th and 97.5th percentiles.
    seed: the same seed and values give the same interval.

  Returns:
    (low, high) floats; low == high when all values are equal.
  """
  values = np.asarray(values, np.float64).reshape(1, -1)
  low, high = _bootstrap_bounds(values, num_resamples, confidence, seed)[0]
  return float(low), float(high)


def summarize(per_example: dict, mask: Optional[np.ndarray] = None,
              num_resamples: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> dict:
  """Means and bootstrap intervals of per-example metrics.

  Args:
    per_example: name -> [n] float values (all the same n).
    mask: optional [n] bool, the examples to include (a slice, e.g. cold start).
    num_resamples: bootstrap resamples; 0 skips the intervals.
    confidence: two-sided interval coverage.
    seed: bootstrap seed (the resamples are shared by all metrics).

  Returns:
    name -> {"mean", "ci_low", "ci_high", "n"}. When the slice is empty, or
    num_resamples is 0, the missing numbers are None.
  """
  names = list(per_example)
  if not names:
    return {}
  matrix = np.stack([np.asarray(per_example[k], np.float64) for k in names])
  if mask is not None:
    mask = np.asarray(mask, bool)
    if mask.shape != matrix.shape[1:]:
      raise ValueError(f"mask has shape {mask.shape}; expected ({matrix.shape[1]},)")
    matrix = matrix[:, mask]
  n = matrix.shape[1]
  if n == 0:
    return {k: {"mean": None, "ci_low": None, "ci_high": None, "n": 0} for k in names}
  means = matrix.mean(axis=1)
  bounds = (_bootstrap_bounds(matrix, num_resamples, confidence, seed)
            if num_resamples > 0 else None)
  out = {}
  for i, name in enumerate(names):
    out[name] = {
        "mean": float(means[i]),
        "ci_low": None if bounds is None else float(bounds[i, 0]),
        "ci_high": None if bounds is None else float(bounds[i, 1]),
        "n": int(n),
    }
  return out


def paired_difference(ranks_a: np.ndarray, ranks_b: np.ndarray, metric: str = "recall@10",
                      num_resamples: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> dict:
  """Paired bootstrap of the per-user difference of one metric between two runs (A - B).

  Both runs must rank the same examples in the same order (the evaluation's users and
  targets; `evaluation.load_ranks` gives them); the users are resampled together, so the
  interval is of the difference on the same users, far narrower than two runs' intervals.

  Args:
    ranks_a, ranks_b: [n] int 0-based target ranks of the two runs (NOT_FOUND = absent).
    metric: "recall@K", "ndcg@K" or "mrr@K".
    num_resamples, confidence, seed: as `bootstrap_ci`.

  Returns:
    {"metric", "a", "b" (the two means), "diff" (mean of A - B), "ci_low", "ci_high",
    "excludes_zero" (the interval lies strictly on one side of 0), "n"}.
  """
  a, b = np.asarray(ranks_a), np.asarray(ranks_b)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"paired ranks must be two [n] arrays of the same examples, got shapes "
                     f"{a.shape} and {b.shape}")
  name, _, k = metric.partition("@")
  fns = {"recall": recall_at_k, "ndcg": ndcg_at_k, "mrr": mrr_at_k}
  if name not in fns or not k.isdigit():
    raise ValueError(f"metric must be one of recall@K, ndcg@K, mrr@K; got {metric!r}")
  va, vb = fns[name](a, int(k)), fns[name](b, int(k))
  diff = va - vb
  low, high = bootstrap_ci(diff, num_resamples, confidence, seed)
  return {"metric": metric, "a": float(va.mean()), "b": float(vb.mean()),
          "diff": float(diff.mean()), "ci_low": low, "ci_high": high,
          "excludes_zero": bool(low > 0 or high < 0), "n": int(len(diff))}
