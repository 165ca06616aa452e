"""Non-learned baselines: random, most popular, and item-to-item co-occurrence.

Each is fitted on the training part of a LeaveOneOutSplit only and follows the
evaluation protocol `recommender(histories: [batch, width], k) -> [batch, k]`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data.dataset import PAD_ITEM
from jaxrec.data.splits import LeaveOneOutSplit



def _check_request(histories, k: int, num_items: int) -> np.ndarray:
  """Validates a call; returns histories as [batch, width] int64."""
  histories = np.asarray(histories)
  if histories.ndim != 2:
    raise ValueError(f"histories must be [batch, width]; got shape {histories.shape}")
  if isinstance(k, bool) or int(k) != k or not 1 <= k <= num_items:
    raise ValueError(f"k must be an integer in 1..{num_items} (the catalogue size), got {k!r}")
  if histories.size and (histories.min() < 0 or histories.max() > num_items):
    raise ValueError(f"history item ids must lie in 0..{num_items} (0 = padding); got "
                     f"{histories.min()}..{histories.max()}")
  return histories.astype(np.int64)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
  """[batch, k] int64 column ids of the k largest scores, best first.

  Args:
    scores: [batch, num_columns] float; ties are broken by the lower column id
      among the selected columns.
    k: 1..num_columns.
  """
  part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  vals = np.take_along_axis(scores, part, axis=1)
  order = np.lexsort((part, -vals), axis=1)
  return np.take_along_axis(part, order, axis=1).astype(np.int64)


class RandomRecommender:
  """Uniformly random distinct items for every row: the chance baseline."""

  def __init__(self, num_items: int, seed: int = 0):
    self.num_items = int(num_items)
    self._rng = np.random.default_rng(seed)

  def __call__(self, histories: np.ndarray, k: int) -> np.ndarray:
    """[batch, k] int64 random distinct ids in 1..num_items."""
    histories = _check_request(histories, k, self.num_items)
    keys = self._rng.random((len(histories), self.num_items), dtype=np.float32)
    return np.argpartition(keys, k - 1, axis=1)[:, :k].astype(np.int64) + 1


@dataclasses.dataclass(frozen=True, eq=False)
class MostPopular:
  """The same list for everyone: items by training interaction count.

  Attributes:
    counts: [num_items + 1] int64 training interactions per item (row 0 = pad).
    ranking: [num_items] int64 item ids, most popular first (ties: lower id).
  """
  counts: np.ndarray
  ranking: np.ndarray

  @property
  def num_items(self) -> int:
    return len(self.ranking)

  @classmethod
  def fit(cls, split: LeaveOneOutSplit) -> "MostPopular":
    """Counts items in the training sequences (never the held-out targets)."""
    counts = split.train_item_counts().astype(np.int64)
    ranking = np.argsort(-counts[1:], kind="stable").astype(np.int64) + 1
    return cls(counts=counts, ranking=ranking)

  def __call__(self, histories: np.ndarray, k: int) -> np.ndarray:
    """[batch, k] int64, the k most popular items in every row."""
    histories = _check_request(histories, k, self.num_items)
    return np.broadcast_to(self.ranking[:k], (len(histories), k)).copy()


@dataclasses.dataclass(frozen=True, eq=False)
class CoOccurrence:
  """Item-to-item scores from "j follows i within `window` steps" in training.

  The counts live in a CSR matrix (row i = items that followed i), each pair
  weighted by 1 / distance. A user's score for j sums the rows of the last
  `num_recent` history items, the t-th most recent weighted recency_decay**t.
  Every item also gets fallback_epsilon * popularity / max popularity, so
  users whose recent items have few successors still get k items, ranked by
  popularity after the co-occurring ones.

  Attributes:
    indptr: [num_items + 2] int64, row i is indices[indptr[i]:indptr[i + 1]].
    indices: [nnz] int32 successor item ids (sorted within a row).
    weights: [nnz] float64 summed 1 / distance weights.
    popularity: [num_items + 1] float64 training counts / max count (row 0 = 0).
    ranking: [num_items] int64 item ids by popularity (ties: lower id).
    window: the largest distance counted.
    num_recent: history items used to score.
    recency_decay: weight factor per step back in the history.
    fallback_epsilon: scale of the popularity fallback.
  """
  indptr: np.ndarray
  indices: np.ndarray
  weights: np.ndarray
  popularity: np.ndarray
  ranking: np.ndarray
  window: int
  num_recent: int
  recency_decay: float
  fallback_epsilon: float

  @property
  def num_items(self) -> int:
    return len(self.popularity) - 1

  @property
  def num_pairs(self) -> int:
    return len(self.indices)

  @classmethod
  def fit(cls, split: LeaveOneOutSplit, window: int = 3, num_recent: int = 5,
          recency_decay: float = 0.7, fallback_epsilon: float = 1e-6) -> "CoOccurrence":
    """Counts directional pairs in split.train_items only (no held-out targets)."""
    if window < 1 or num_recent < 1:
      raise ValueError(f"window and num_recent must be >= 1, got {window}, {num_recent}")
    if not 0.0 < recency_decay <= 1.0:
      raise ValueError(f"recency_decay must lie in (0, 1], got {recency_decay}")
    num_items = split.num_items
    items = split.train_items.astype(np.int64)
    lengths = np.diff(split.train_offsets)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    keys, vals = [], []
    for d in range(1, window + 1):
      same = owner[d:] == owner[:-d]
      keys.append(items[:-d][same] * (num_items + 1) + items[d:][same])
      vals.append(np.full(int(same.sum()), 1.0 / d))
    keys = np.concatenate(keys) if keys else np.zeros([0], np.int64)
    unique, inverse = np.unique(keys, return_inverse=True)
    weights = np.bincount(inverse.ravel(), weights=np.concatenate(vals),
                          minlength=len(unique))
    rows = unique // (num_items + 1)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=num_items + 1))])
    counts = split.train_item_counts().astype(np.float64)
    counts[PAD_ITEM] = 0.0
    popularity = counts / max(counts.max(), 1.0)
    return cls(indptr=indptr.astype(np.int64),
               indices=(unique % (num_items + 1)).astype(np.int32),
               weights=weights.astype(np.float64), popularity=popularity,
               ranking=np.argsort(-counts[1:], kind="stable").astype(np.int64) + 1,
               window=int(window), num_recent=int(num_recent),
               recency_decay=float(recency_decay), fallback_epsilon=float(fallback_epsilon))

  def neighbors(self, item: int) -> tuple:
    """(successors [m] int32, weights [m] float64) of `item`, strongest first."""
    lo, hi = self.indptr[item], self.indptr[item + 1]
    order = np.argsort(-self.weights[lo:hi], kind="stable")
    return self.indices[lo:hi][order], self.weights[lo:hi][order]

  def _recent_pairs(self, h: np.ndarray) -> tuple:
    """(row [m], item [m], weight [m]) contributions of the recent history items."""
    width = h.shape[1]
    lengths = (h != PAD_ITEM).sum(axis=1)
    back = lengths[:, None] - 1 - np.arange(width)[None, :]  # 0 = most recent.
    row, col = np.nonzero((h != PAD_ITEM) & (back < self.num_recent))
    src = h[row, col]
    src_weight = self.recency_decay ** back[row, col].astype(np.float64)
    starts = self.indptr[src]
    sizes = self.indptr[src + 1] - starts
    which = np.repeat(np.arange(len(src)), sizes)
    nz = starts[which] + np.arange(len(which)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return row[which], self.indices[nz].astype(np.int64), src_weight[which] * self.weights[nz]

  def scores(self, histories: np.ndarray) -> np.ndarray:
    """[batch, num_items + 1] float64 dense scores (column 0, padding, is -inf).

    Args:
      histories: [batch, width] int item ids, oldest first, 0-padded at the end.
    """
    h = np.asarray(histories, np.int64)
    n = self.num_items + 1
    row, item, weight = self._recent_pairs(h)
    scores = np.bincount(row * n + item, weights=weight,
                         minlength=len(h) * n).astype(np.float64).reshape(len(h), n)
    scores += self.fallback_epsilon * self.popularity[None, :]
    scores[:, PAD_ITEM] = -np.inf
    return scores

  def __call__(self, histories: np.ndarray, k: int) -> np.ndarray:
    """[batch, k] int64 highest-scoring items, best first (never item 0).

    Equals top_k(self.scores(histories), k) (ties: lower id), but ranks only
    each row's candidates: its co-occurring items plus the k most popular
    ones. That is exact, because an item outside both scores
    fallback_epsilon * popularity, which each of the k popular items matches
    or beats (ties going to the lower id), and it avoids a full pass over the
    catalogue per user.
    """
    h = _check_request(histories, k, self.num_items)
    batch, n = len(h), self.num_items + 1
    popular = self.ranking[:k]
    row, item, weight = self._recent_pairs(h)
    keys = np.concatenate([row * n + item,
                           (np.arange(batch)[:, None] * n + popular[None, :]).ravel()])
    weight = np.concatenate([weight, np.zeros(batch * k)])
    unique, inverse = np.unique(keys, return_inverse=True)
    cand_row, cand_item = unique // n, unique % n
    score = (np.bincount(inverse.ravel(), weights=weight, minlength=len(unique))
             + self.fallback_epsilon * self.popularity[cand_item])
    # `unique` is sorted by (row, item) and lexsort is stable: (row, -score, item).
    order = np.lexsort((-score, cand_row))
    cand_row, cand_item = cand_row[order], cand_item[order]
    first = np.searchsorted(cand_row, np.arange(batch))
    take = first[:, None] + np.arange(k)[None, :]
    return cand_item[take].astype(np.int64)
