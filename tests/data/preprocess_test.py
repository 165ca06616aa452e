"""Known answers for sorting, dedup, k-core and item remapping of interaction lists."""

import time

import numpy as np
import pytest

from jaxrec.data import preprocess
from jaxrec.data.dataset import ItemTable
from jaxrec.data.errors import DataError


def _table(n):
  table = ItemTable.empty(n)
  text = np.array([""] + [f"item {i}" for i in range(1, n + 1)], dtype=object)
  return ItemTable(raw_ids=np.array([""] + [f"r{i}" for i in range(1, n + 1)], dtype=object),
                   text=text, image_paths=table.image_paths,
                   attributes={"a": np.arange(n + 1, dtype=np.int32)})


def test_first_appearance_codes():
  codes, uniq = preprocess.first_appearance_codes(np.array(["b", "a", "b", "c", "a"], dtype=object))
  np.testing.assert_array_equal(codes, [0, 1, 0, 2, 1])
  assert list(uniq) == ["b", "a", "c"]
  codes, uniq = preprocess.first_appearance_codes(np.array([30, 10, 30, 20]))
  np.testing.assert_array_equal(codes, [0, 1, 0, 2])
  np.testing.assert_array_equal(uniq, [30, 10, 20])
  codes, uniq = preprocess.first_appearance_codes(np.array([], dtype=object))
  assert len(codes) == 0 and len(uniq) == 0


def test_chronological_order_is_stable():
  users = np.array([1, 0, 1, 0, 1, 0])
  ts = np.array([5.0, 2.0, 5.0, 1.0, 3.0, 2.0])
  order = preprocess.chronological_order(users, ts)
  # user 0: rows 3 (t=1), then 1 and 5 (t=2, file order); user 1: 4 (t=3), 0, 2 (t=5).
  np.testing.assert_array_equal(order, [3, 1, 5, 4, 0, 2])
  np.testing.assert_array_equal(preprocess.chronological_order(users), [1, 3, 5, 0, 2, 4])


def test_dedup_keeps_first():
  users = np.array([0, 0, 0, 1, 1, 0])
  items = np.array([3, 4, 3, 3, 3, 4])
  np.testing.assert_array_equal(preprocess.dedup_mask(users, items),
                                [True, True, False, True, False, False])


def test_k_core_is_iterated():
  # Round 1 drops user 2 (2 rows) and items 4, 5 (< 3 rows); that leaves user 1
  # with 2 rows, dropped in round 2; users 0, 3, 4 and items 1, 2, 3 remain.
  users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4])
  items = np.array([1, 2, 3, 1, 2, 4, 4, 5, 1, 2, 3, 3, 1, 2])
  keep = preprocess.k_core_mask(users, items, 3, 3)
  np.testing.assert_array_equal(np.flatnonzero(keep), [0, 1, 2, 8, 9, 10, 11, 12, 13])
  assert preprocess.k_core_mask(users, items, 0, 0).all()
  assert not preprocess.k_core_mask(users, items, 5, 5).any()
  keep = preprocess.k_core_mask(users, items, 0, 3)  # Item rule only.
  np.testing.assert_array_equal(np.flatnonzero(keep), [0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13])


def test_build_dataset_known_answer():
  # Rows: (user, item, ts) in file order; user codes 0="u0", 1="u1", 2="u2".
  users = np.array([1, 0, 1, 0, 2, 0, 1])
  items = np.array([4, 2, 3, 4, 1, 2, 4])
  ts = np.array([9.0, 1.0, 3.0, 2.0, 5.0, 2.0, 3.0])
  cfg = preprocess.PreprocessConfig(min_user_interactions=2, min_item_interactions=1)
  ds = preprocess.build_dataset("toy", users, items, _table(5), user_ids=["u0", "u1", "u2"],
                                config=cfg, timestamps=ts, source="toy.inter",
                                user_lines=[10, 11, 12])
  # u0: rows 1 (t1, item 2), 3 (t2, item 4), 5 (t2, item 2); u1: rows 2 (t3, 3),
  # 6 (t3, 4), 0 (t9, 4); u2 has one row -> dropped. Items by first appearance:
  # 2 -> 1, 4 -> 2, 3 -> 3.
  assert list(ds.user_ids) == ["u0", "u1"]
  assert [list(s) for s in ds.sequences()] == [[1, 2, 1], [3, 2, 2]]
  np.testing.assert_array_equal(ds.timestamps, [1, 2, 2, 3, 3, 9])
  assert list(ds.item_table.raw_ids) == ["", "r2", "r4", "r3"]
  assert list(ds.item_table.text) == ["", "item 2", "item 4", "item 3"]
  np.testing.assert_array_equal(ds.item_table.attributes["a"], [0, 2, 4, 3])
  np.testing.assert_array_equal(ds.user_lines, [10, 11])
  assert ds.source == "toy.inter" and ds.items.dtype == np.int32


def test_build_dataset_options():
  users = np.array([0, 0, 0, 1, 1])
  items = np.array([3, 1, 3, 2, 3])
  ts = np.array([3.0, 1.0, 2.0, 0.0, 0.0])
  plain = preprocess.PreprocessConfig(chronological=False, item_order="catalog")
  ds = preprocess.build_dataset("t", users, items, _table(3), ["a", "b"], plain, timestamps=ts)
  assert [list(s) for s in ds.sequences()] == [[3, 1, 3], [2, 3]]  # ids kept
  dedup = preprocess.PreprocessConfig(dedup=True)
  ds = preprocess.build_dataset("t", users, items, _table(3), ["a", "b"], dedup, timestamps=ts)
  # u0 chronological: 1 (t1), 3 (t2), 3 (t3) -> dedup drops the second 3.
  assert [list(s) for s in ds.sequences()] == [[1, 2], [3, 2]]
  assert list(ds.item_table.raw_ids) == ["", "r1", "r3", "r2"]


def test_build_dataset_errors():
  with pytest.raises(DataError, match="no interactions are left"):
    preprocess.build_dataset("t", np.array([0, 1]), np.array([1, 2]), _table(2), ["a", "b"],
                             preprocess.PreprocessConfig(min_user_interactions=2),
                             source="x.tsv")
  with pytest.raises(DataError, match="item_order"):
    preprocess.PreprocessConfig(item_order="random")
  with pytest.raises(DataError, match=">= 0"):
    preprocess.PreprocessConfig(min_item_interactions=-1)


def test_vectorized_speed():
  rng = np.random.default_rng(0)
  n = 100_000
  users = rng.integers(0, 1000, n)
  items = rng.integers(1, 2001, n)
  ts = rng.integers(0, 1000, n).astype(np.float64)
  start = time.time()
  ds = preprocess.build_dataset("big", users, items, ItemTable.empty(2000),
                                [str(u) for u in range(1000)],
                                preprocess.PreprocessConfig(dedup=True, min_user_interactions=5,
                                                            min_item_interactions=5),
                                timestamps=ts)
  assert time.time() - start < 1.0
  assert ds.num_interactions > 90_000
