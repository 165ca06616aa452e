"""Random, most-popular and co-occurrence baselines: hand checks and a ranking sanity test."""

import numpy as np
import pytest

from jaxrec import evaluation
from jaxrec.collaborative import heuristics
from jaxrec.data.dataset import ItemTable, SequentialDataset
from jaxrec.data.splits import leave_one_out


def make_split(sequences, num_items):
  return leave_one_out(SequentialDataset.from_sequences(
      "hand", sequences, ItemTable.empty(num_items)))


# Training parts: [1,2,3], [1,2,4], [5,1,2]; held out: 7,8 / 9,10 / 6,7.
HAND = [[1, 2, 3, 7, 8], [1, 2, 4, 9, 10], [5, 1, 2, 6, 7]]


def clustered_split(seed=0, num_items=100, num_users=400, follow=0.7):
  """Users walk a fixed successor graph; with prob 1 - follow they jump to a popular item."""
  rng = np.random.default_rng(seed)
  successor = rng.permutation(num_items) + 1
  popularity = 1.0 / np.arange(1, num_items + 1)
  popularity /= popularity.sum()
  sequences = []
  for _ in range(num_users):
    item = rng.choice(num_items, p=popularity) + 1
    seq = [item]
    for _ in range(rng.integers(6, 15)):
      if rng.random() < follow:
        item = successor[item - 1]
      else:
        item = rng.choice(num_items, p=popularity) + 1
      seq.append(int(item))
    sequences.append(seq)
  return make_split(sequences, num_items)


def test_most_popular_by_hand():
  model = heuristics.MostPopular.fit(make_split(HAND, 10))
  # Training counts: 1 -> 3, 2 -> 3, 3/4/5 -> 1; ties go to the lower id.
  np.testing.assert_array_equal(model.ranking[:6], [1, 2, 3, 4, 5, 6])
  out = model(np.zeros([2, 8], np.int32), 3)
  assert out.dtype == np.int64
  np.testing.assert_array_equal(out, [[1, 2, 3], [1, 2, 3]])
  with pytest.raises(ValueError, match="1..10"):
    model(np.zeros([2, 8], np.int32), 11)


def test_random_recommender_distinct_in_range():
  model = heuristics.RandomRecommender(num_items=30, seed=0)
  out = model(np.zeros([50, 8], np.int32), 30)
  assert out.shape == (50, 30) and out.dtype == np.int64
  np.testing.assert_array_equal(np.sort(out, axis=1), np.tile(np.arange(1, 31), (50, 1)))
  again = heuristics.RandomRecommender(num_items=30, seed=0)(np.zeros([50, 8], np.int32), 30)
  np.testing.assert_array_equal(out, again)


def test_co_occurrence_pairs_by_hand():
  model = heuristics.CoOccurrence.fit(make_split(HAND, 10), window=2)
  items, weights = model.neighbors(1)
  # 1->2 three times at distance 1; 1->3 and 1->4 once at distance 2.
  np.testing.assert_array_equal(items, [2, 3, 4])
  np.testing.assert_allclose(weights, [3.0, 0.5, 0.5])
  items, weights = model.neighbors(5)
  np.testing.assert_array_equal(items, [1, 2])
  np.testing.assert_allclose(weights, [1.0, 0.5])
  assert model.num_pairs == 7  # 1->{2,3,4}, 2->{3,4}, 5->{1,2}; nothing from 3 or 4.
  assert len(model.neighbors(3)[0]) == 0


def test_co_occurrence_recommends_known_successor_and_never_pad():
  model = heuristics.CoOccurrence.fit(make_split(HAND, 10), window=1)
  histories = np.array([[4, 5, 1, 0], [3, 1, 0, 0], [0, 0, 0, 0], [9, 10, 0, 0]], np.int32)
  out = model(histories, 10)
  assert out[0, 0] == 2 and out[1, 0] == 2
  # No co-occurrence: the popularity fallback (1, 2 most popular).
  np.testing.assert_array_equal(out[2, :2], [1, 2])
  np.testing.assert_array_equal(out[3, :2], [1, 2])
  assert out.min() >= 1 and out.max() <= 10
  np.testing.assert_array_equal(np.sort(out, axis=1), np.tile(np.arange(1, 11), (4, 1)))


def test_co_occurrence_no_training_leakage():
  model = heuristics.CoOccurrence.fit(make_split(HAND, 10), window=3)
  scores = model.scores(np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], np.int32))
  # 3 is followed by 7 and 8 only in held-out positions; 6..10 never train.
  assert len(model.neighbors(3)[0]) == 0
  np.testing.assert_array_equal(scores[0, 6:], 0.0)
  assert scores[0, 0] == -np.inf
  assert model.popularity[6:].sum() == 0.0


def test_co_occurrence_sparse_top_k_matches_dense_scores():
  split = clustered_split(seed=1)
  model = heuristics.CoOccurrence.fit(split, window=3)
  histories = split.test.padded_histories(np.arange(64), 16)
  top = model(histories, 20)
  dense = model.scores(histories)
  np.testing.assert_allclose(np.take_along_axis(dense, top, axis=1),
                             -np.sort(-dense, axis=1)[:, :20])
  np.testing.assert_array_equal(heuristics.top_k(dense, 20)[:, 0], top[:, 0])


def test_co_occurrence_beats_popularity_beats_random():
  split = clustered_split(seed=0)
  recall = {}
  for name, model in [("random", heuristics.RandomRecommender(split.num_items, seed=0)),
                      ("popular", heuristics.MostPopular.fit(split)),
                      ("cooc", heuristics.CoOccurrence.fit(split))]:
    result = evaluation.evaluate(model, split, ks=(10,), num_bootstrap=0, progress=False)
    recall[name] = result["metrics"]["overall"]["recall@10"]["mean"]
  assert recall["cooc"] > recall["popular"] + 0.2, recall
  assert recall["popular"] > recall["random"] + 0.05, recall
  assert 0.03 < recall["random"] < 0.2, recall
