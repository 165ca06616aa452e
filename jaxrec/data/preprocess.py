"""Interaction lists -> SequentialDataset: chronological sort, dedup, k-core, item remap.

Everything is vectorized NumPy; file order breaks every tie.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jaxrec.data.dataset import ItemTable, SequentialDataset
from jaxrec.data.errors import DataError

ITEM_ORDERS = ("appearance", "catalog")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """How interactions become sequences.

  Attributes:
    chronological: sort each user's interactions by timestamp (stable: ties
      keep file order); if False, keep file order.
    dedup: keep only the first interaction of each (user, item) pair (after
      sorting, before filtering).
    min_user_interactions: k-core: drop users with fewer interactions
      (iterated together with the item rule until stable); 0 disables.
    min_item_interactions: k-core: drop items with fewer interactions; 0 disables.
    item_order: "appearance": new ids 1..N in order of first appearance in the
      final sequences (users in order, each chronological); "catalog": in item
      table order (ids are kept when nothing is filtered out).
  """
  chronological: bool = True
  dedup: bool = False
  min_user_interactions: int = 0
  min_item_interactions: int = 0
  item_order: str = "appearance"

  def __post_init__(self):
    if self.item_order not in ITEM_ORDERS:
      raise DataError(f"unknown item_order {self.item_order!r}",
                      fix=f"use one of {ITEM_ORDERS}.")
    for name in ("min_user_interactions", "min_item_interactions"):
      if getattr(self, name) < 0:
        raise DataError(f"{name} must be >= 0, got {getattr(self, name)}",
                        fix="use 0 to disable k-core filtering.")


def first_appearance_codes(values: np.ndarray) -> tuple:
  """Codes values by order of first appearance.

  Args:
    values: [n] hashable values (str or int).

  Returns:
    codes: [n] int64 in 0..k-1, and uniques: [k] the distinct values in order
    of first appearance (uniques[codes] == values).
  """
  values = np.asarray(values)
  if not len(values):
    return np.zeros([0], np.int64), values[:0]
  keys = values.astype(str) if values.dtype == object else values
  _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
  order = np.argsort(first, kind="stable")
  rank = np.empty_like(order)
  rank[order] = np.arange(len(order))
  return rank[inverse.reshape(-1)].astype(np.int64), values[first[order]]


def chronological_order(users: np.ndarray,
                        timestamps: Optional[np.ndarray] = None) -> np.ndarray:
  """[n] int64 permutation grouping rows by user (ascending code), each user by time.

  Ties (same user and timestamp) keep file order; without timestamps every
  user keeps file order.
  """
  n = len(users)
  keys = (np.arange(n),) if timestamps is None else (np.arange(n), timestamps)
  return np.lexsort(keys + (users,)).astype(np.int64)


def dedup_mask(users: np.ndarray, items: np.ndarray) -> np.ndarray:
  """[n] bool, True at the first row of each (user, item) pair."""
  keep = np.zeros(len(users), bool)
  if len(users):
    keys = users.astype(np.int64) * (int(items.max()) + 1) + items
    _, first = np.unique(keys, return_index=True)
    keep[first] = True
  return keep


def k_core_mask(users: np.ndarray, items: np.ndarray, min_user_interactions: int,
                min_item_interactions: int) -> np.ndarray:
  """[n] bool rows of the iterated k-core (users >= min_user, items >= min_item).

  Every row counts (repeats included). The result is the unique largest subset
  where both rules hold, reached by removing violators until stable.
  """
  keep = np.ones(len(users), bool)
  if not len(users) or (min_user_interactions <= 1 and min_item_interactions <= 1):
    return keep
  while True:
    user_count = np.bincount(users[keep], minlength=int(users.max()) + 1)
    item_count = np.bincount(items[keep], minlength=int(items.max()) + 1)
    new = keep & (user_count[users] >= min_user_interactions) & (
        item_count[items] >= min_item_interactions)
    if new.sum() == keep.sum():
      return new
    keep = new


def build_dataset(name: str, users: np.ndarray, items: np.ndarray, item_table: ItemTable,
                  user_ids: np.ndarray, config: PreprocessConfig = PreprocessConfig(),
                  timestamps: Optional[np.ndarray] = None, source: str = "",
                  user_lines: Optional[np.ndarray] = None) -> SequentialDataset:
  """Builds the dataset from one row per interaction.

  Args:
    name: dataset name.
    users: [n] int64 user codes (rows of `user_ids`); users keep this order.
    items: [n] int64 rows of `item_table` (1..item_table.num_items).
    item_table: the full catalog; subset and renumbered to the kept items.
    user_ids: [num_users] str upstream id of each user code.
    config: sorting / dedup / k-core / remapping options.
    timestamps: optional [n] float64 interaction times (needed for
      chronological sorting; kept in the dataset).
    source: file the interactions came from (for error messages).
    user_lines: optional [num_users] int64 source line of each user code.

  Raises:
    DataError: nothing is left after filtering, or ids out of range.
  """
  users = np.asarray(users, np.int64)
  items = np.asarray(items, np.int64)
  if len(items) and (items.min() < 1 or items.max() > item_table.num_items):
    raise DataError(f"item rows must lie in 1..{item_table.num_items}", path=source or None)
  ts = None if timestamps is None else np.asarray(timestamps, np.float64)
  order = chronological_order(users, ts if config.chronological else None)
  users, items = users[order], items[order]
  ts = None if ts is None else ts[order]
  keep = np.ones(len(users), bool)
  if config.dedup:
    keep &= dedup_mask(users, items)
  users, items = users[keep], items[keep]
  ts = None if ts is None else ts[keep]
  keep = k_core_mask(users, items, config.min_user_interactions,
                     config.min_item_interactions)
  users, items = users[keep], items[keep]
  ts = None if ts is None else ts[keep]
  if not len(items):
    raise DataError(
        f"no interactions are left after preprocessing (dedup={config.dedup}, "
        f"min_user_interactions={config.min_user_interactions}, "
        f"min_item_interactions={config.min_item_interactions})",
        path=source or None,
        fix="lower the k-core thresholds, turn off dedup, or use a coarser item level.")
  kept_users, counts = np.unique(users, return_counts=True)
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  if config.item_order == "appearance":
    new_ids, old_ids = first_appearance_codes(items)
  else:
    old_ids, new_ids = np.unique(items, return_inverse=True)
  return SequentialDataset(
      name=name, items=(new_ids.reshape(-1) + 1).astype(np.int32), offsets=offsets,
      user_ids=np.asarray(user_ids, dtype=object)[kept_users],
      item_table=item_table.subset(np.asarray(old_ids, np.int64)), timestamps=ts,
      source=source,
      user_lines=None if user_lines is None else np.asarray(user_lines, np.int64)[kept_users])
