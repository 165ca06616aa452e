"""Leave-one-out splits as the papers do them, and the examples they yield.

Per user (chronological): the last item is the test target, the second last the
validation target, the rest is training. Training examples are every prefix of
the training sequence (target = next item, history = the last `max_history`
items before it); evaluation examples carry the full history before the
held-out item.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data.dataset import PAD_ITEM, SequentialDataset
from jaxrec.data.errors import DataError

MIN_LEAVE_ONE_OUT_LENGTH = 3  # one training item, one validation, one test.


@dataclasses.dataclass(frozen=True)
class EvalExamples:
  """Held-out targets with their full histories (CSR).

  Attributes:
    users: [n] int64 dataset rows.
    targets: [n] int32 held-out item ids.
    history_items: [total] int32, histories concatenated (oldest first).
    history_offsets: [n + 1] int64.
  """
  users: np.ndarray
  targets: np.ndarray
  history_items: np.ndarray
  history_offsets: np.ndarray

  def __len__(self) -> int:
    return len(self.users)

  def subset(self, rows: np.ndarray) -> "EvalExamples":
    """The examples at `rows` [m] (in that order)."""
    rows = np.asarray(rows, np.int64)
    starts, ends = self.history_offsets[rows], self.history_offsets[rows + 1]
    offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    take = (np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)])
            if len(rows) else np.zeros(0, np.int64))
    return EvalExamples(users=self.users[rows], targets=self.targets[rows],
                        history_items=self.history_items[take.astype(np.int64)],
                        history_offsets=offsets)

  @property
  def history_lengths(self) -> np.ndarray:
    """[n] int64."""
    return np.diff(self.history_offsets)

  def history(self, i: int) -> np.ndarray:
    return self.history_items[self.history_offsets[i]:self.history_offsets[i + 1]]

  def padded_histories(self, rows: np.ndarray, width: int,
                       keep_last: bool = True) -> np.ndarray:
    """[len(rows), width] int32 histories, oldest first, 0-padded at the end.

    Histories longer than `width` keep their last `width` items (or their
    first ones if keep_last is False).
    """
    return pad_ragged(self.history_items, self.history_offsets, rows, width, keep_last)


@dataclasses.dataclass(frozen=True)
class TrainExamples:
  """Every next-item prediction in the training sequences.

  Attributes:
    histories: [n, max_history] int32, oldest first, 0-padded at the end.
    lengths: [n] int32 number of real items in each history (>= 1).
    targets: [n] int32 next item.
    users: [n] int64 dataset rows.
  """
  histories: np.ndarray
  lengths: np.ndarray
  targets: np.ndarray
  users: np.ndarray

  def __len__(self) -> int:
    return len(self.targets)


@dataclasses.dataclass(frozen=True)
class LeaveOneOutSplit:
  """A dataset split leave-one-out.

  Attributes:
    dataset: the source dataset.
    train_items: [num_train] int32 training sequences concatenated.
    train_offsets: [num_users + 1] int64.
    valid: validation examples (history = training sequence).
    test: test examples (history = training sequence + validation item).
  """
  dataset: SequentialDataset
  train_items: np.ndarray
  train_offsets: np.ndarray
  valid: EvalExamples
  test: EvalExamples

  @property
  def num_items(self) -> int:
    return self.dataset.num_items

  def train_sequence(self, user: int) -> np.ndarray:
    return self.train_items[self.train_offsets[user]:self.train_offsets[user + 1]]

  def train_item_counts(self) -> np.ndarray:
    """[num_items + 1] int64 interactions of each item in the training part."""
    return np.bincount(self.train_items, minlength=self.num_items + 1)

  def cold_items(self, max_train_interactions: int = 5) -> np.ndarray:
    """[num_items + 1] bool: items with at most that many training interactions."""
    cold = self.train_item_counts() <= max_train_interactions
    cold[PAD_ITEM] = False
    return cold

  def eval_examples(self, split: str) -> EvalExamples:
    if split not in ("valid", "test"):
      raise DataError(f"unknown split {split!r}", fix="use 'valid' or 'test'.")
    return self.valid if split == "valid" else self.test

  def train_examples(self, max_history: int = 20) -> TrainExamples:
    """Every prefix of every training sequence (see module docstring)."""
    return training_prefixes(self.train_items, self.train_offsets, max_history)


def pad_ragged(items: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
               width: int, keep_last: bool = True) -> np.ndarray:
  """Gathers CSR rows into a [len(rows), width] int32 0-padded matrix."""
  rows = np.asarray(rows, np.int64)
  starts, ends = offsets[rows], offsets[rows + 1]
  lengths = np.minimum(ends - starts, width)
  first = ends - lengths if keep_last else starts
  col = np.arange(width)[None, :]
  idx = first[:, None] + col
  valid = col < lengths[:, None]
  out = np.where(valid, items[np.where(valid, idx, 0)] if len(items) else 0, PAD_ITEM)
  return out.astype(np.int32)


def training_prefixes(items: np.ndarray, offsets: np.ndarray,
                      max_history: int) -> TrainExamples:
  """Next-item examples at every position >= 1 of each CSR sequence."""
  if max_history < 1:
    raise DataError(f"max_history must be >= 1, got {max_history}",
                    fix="bind max_history to a positive integer.")
  lengths = np.diff(offsets)
  users = np.repeat(np.arange(len(lengths)), np.maximum(lengths - 1, 0))
  # Position (within its user) of every target: 1..len-1.
  starts = offsets[:-1][users]
  pos = np.arange(len(users)) - np.repeat(
      np.concatenate([[0], np.cumsum(np.maximum(lengths - 1, 0))[:-1]]),
      np.maximum(lengths - 1, 0)) + 1
  target_idx = starts + pos
  hist_len = np.minimum(pos, max_history)
  col = np.arange(max_history)[None, :]
  idx = (target_idx - hist_len)[:, None] + col
  valid = col < hist_len[:, None]
  histories = np.where(valid, items[np.where(valid, idx, 0)] if len(items) else 0, PAD_ITEM)
  return TrainExamples(histories=histories.astype(np.int32),
                       lengths=hist_len.astype(np.int32),
                       targets=items[target_idx].astype(np.int32),
                       users=users.astype(np.int64))


def leave_one_out(dataset: SequentialDataset) -> LeaveOneOutSplit:
  """Splits every user's sequence: last = test, second last = valid, rest = train.

  Raises:
    DataError: a user has fewer than 3 items (names the file and line).
  """
  lengths = dataset.lengths
  short = np.flatnonzero(lengths < MIN_LEAVE_ONE_OUT_LENGTH)
  if len(short):
    u = int(short[0])
    raise DataError(
        f"{dataset.where(u)} has {int(lengths[u])} item(s); leave-one-out needs at "
        f"least {MIN_LEAVE_ONE_OUT_LENGTH} (train, validation, test); "
        f"{len(short)} user(s) are that short.",
        fix="enable k-core filtering (min_user_interactions >= 3) when preparing "
            "the dataset, or remove those users from the file.")
  offsets = dataset.offsets
  users = np.arange(dataset.num_users, dtype=np.int64)
  keep = np.ones(len(dataset.items), bool)
  keep[offsets[1:] - 1] = False
  keep[offsets[1:] - 2] = False
  train_items = dataset.items[keep].astype(np.int32)
  train_offsets = np.concatenate([[0], np.cumsum(lengths - 2)]).astype(np.int64)
  valid = EvalExamples(users=users, targets=dataset.items[offsets[1:] - 2].astype(np.int32),
                       history_items=train_items, history_offsets=train_offsets)
  test_keep = np.ones(len(dataset.items), bool)
  test_keep[offsets[1:] - 1] = False
  test = EvalExamples(users=users, targets=dataset.items[offsets[1:] - 1].astype(np.int32),
                      history_items=dataset.items[test_keep].astype(np.int32),
                      history_offsets=np.concatenate([[0], np.cumsum(lengths - 1)]).astype(np.int64))
  return LeaveOneOutSplit(dataset=dataset, train_items=train_items,
                          train_offsets=train_offsets, valid=valid, test=test)
