"""Per-sequence training windows: every training target once per epoch, in a window that
holds up to `max_history` items before it (SASRec-style, for the per-sequence generator).

A user's training sequence s (m items) gives the window s[0 : min(m, H + 1)] (H =
max_history), whose positions 1.. are all targets with their whole history, and, when
m > H + 1, one window s[t - H : t + 1] per later target t (only its last position is a
target), so no target sees fewer than min(t, H) items before it, exactly as the
per-prefix examples of `splits.training_prefixes`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data.dataset import PAD_ITEM
from jaxrec.data.errors import DataError
from jaxrec.data.splits import LeaveOneOutSplit, TrainExamples


@dataclasses.dataclass(frozen=True)
class TrainWindows(TrainExamples):
  """Training windows, in the `TrainExamples` fields `batching` reads.

  Attributes:
    histories: [n, max_history + 1] int32, the window's items oldest first, 0-padded.
    lengths: [n] int32 items in each window (>= 2).
    targets: [n] int32 the window's last item.
    users: [n] int64 dataset rows.
    first_targets: [n] int32, the first window position that is a target (positions
      first_target .. length - 1 are trained).
  """
  first_targets: np.ndarray = None

  @property
  def num_targets(self) -> int:
    """Target exposures per epoch (equals the number of per-prefix examples)."""
    return int(np.sum(self.lengths - self.first_targets))


def training_windows(items: np.ndarray, offsets: np.ndarray, max_history: int
                     ) -> TrainWindows:
  """Windows of every CSR training sequence (see the module docstring).

  Args:
    items: [num_train] int32 concatenated sequences; offsets: [num_users + 1] int64.
    max_history: H, the most items before a target.
  """
  if isinstance(max_history, bool) or not isinstance(max_history, (int, np.integer)) or (
      max_history < 1):
    raise DataError(f"max_history must be a positive integer, got {max_history!r}",
                    fix="bind TrainerConfig.max_history to a positive integer.")
  width = max_history + 1
  lengths = np.diff(offsets).astype(np.int64)
  usable = lengths >= 2
  counts = np.where(usable, 1 + np.maximum(lengths - width, 0), 0)
  users = np.repeat(np.arange(len(lengths)), counts)
  # k-th window of its user: 0 = the head window, k >= 1 the tail target H + k.
  k = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)
  start = np.where(k == 0, 0, k)  # tail target t = H + k starts at t - H = k.
  size = np.where(k == 0, np.minimum(lengths[users], width), width)
  first = np.where(k == 0, 1, max_history)
  col = np.arange(width)[None, :]
  idx = (offsets[:-1][users] + start)[:, None] + col
  valid = col < size[:, None]
  histories = np.where(valid, items[np.where(valid, idx, 0)] if len(items) else 0, PAD_ITEM)
  last = histories[np.arange(len(users)), np.maximum(size - 1, 0)] if len(users) else (
      np.zeros(0, np.int32))
  return TrainWindows(histories=histories.astype(np.int32), lengths=size.astype(np.int32),
                      targets=np.asarray(last, np.int32), users=users.astype(np.int64),
                      first_targets=first.astype(np.int32))


def split_windows(split: LeaveOneOutSplit, max_history: int) -> TrainWindows:
  """`training_windows` of a leave-one-out split's training sequences."""
  return training_windows(split.train_items, split.train_offsets, max_history)
