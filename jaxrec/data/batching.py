"""Training batches: static shapes padded on the host, a seeded resumable grain pipeline, per-process shards.

Each element of the pipeline is one *batch*, gathered with one vectorized
NumPy indexing step from the precomputed `TrainExamples` matrix, so the
per-example Python overhead of an element-wise pipeline never limits training.
The order is a pure function of (seed, epoch, step): the grain iterator state
(`get_state()` / `set_state()`) is all a checkpoint needs to resume exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import grain
import numpy as np

from jaxrec.data.dataset import PAD_ITEM
from jaxrec.data.errors import DataError
from jaxrec.data.splits import TrainExamples

UNLIMITED_EPOCHS_STEPS = 2**62


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
  """How training examples become batches.

  Attributes:
    batch_size: GLOBAL batch size (summed over processes).
    shuffle: reshuffle the examples every epoch.
    seed: seed of the shuffle; the order depends on nothing else.
    num_epochs: epochs to produce; None repeats forever.
    drop_remainder: drop the last partial batch of an epoch; if False it is
      padded to the full size with rows whose `weight` is 0.
    bucket_boundaries: history widths a batch may be padded to; each batch is
      padded to the smallest boundary that covers its longest history (the
      width is computed on the global batch so every process agrees). Empty:
      always pad to the full example width (`max_history`).
    sort_pool_batches: with bucket_boundaries, sort the examples of each pool of
      this many consecutive batches by length before cutting batches (then
      shuffle the batches inside the pool), so batches hold similar lengths
      and pad less. 0 or 1 disables.
    num_threads: grain prefetch threads.
    prefetch: grain prefetch buffer size (in batches).
  """
  batch_size: int = 256
  shuffle: bool = True
  seed: int = 0
  num_epochs: Optional[int] = None
  drop_remainder: bool = True
  bucket_boundaries: Sequence[int] = ()
  sort_pool_batches: int = 0
  num_threads: int = 2
  prefetch: int = 8

  def __post_init__(self):
    if self.batch_size < 1:
      raise DataError(f"BatchingConfig.batch_size must be >= 1, got {self.batch_size}",
                      fix="bind BatchingConfig.batch_size to a positive integer.")
    if self.num_epochs is not None and self.num_epochs < 1:
      raise DataError(f"BatchingConfig.num_epochs must be >= 1 or None, got {self.num_epochs}",
                      fix="use None to repeat forever.")
    if list(self.bucket_boundaries) != sorted(set(self.bucket_boundaries)) or any(
        b < 1 for b in self.bucket_boundaries):
      raise DataError(f"BatchingConfig.bucket_boundaries must be increasing positive "
                      f"integers, got {tuple(self.bucket_boundaries)}",
                      fix="e.g. bucket_boundaries = (5, 10, 20).")


class _BatchMaker:
  """Maps a global step to this process's rows of that step's batch."""

  def __init__(self, examples: TrainExamples, config: BatchingConfig,
               process_index: int, process_count: int):
    n = len(examples)
    if config.batch_size % process_count:
      raise DataError(f"BatchingConfig.batch_size={config.batch_size} is not divisible by "
                      f"the {process_count} processes",
                      fix="make the global batch size a multiple of jax.process_count().")
    if n == 0:
      raise DataError("no training examples: every training sequence has a single item",
                      fix="use a dataset whose users have at least 4 interactions.")
    if config.drop_remainder and n < config.batch_size:
      raise DataError(f"{n} training examples are fewer than one batch of "
                      f"{config.batch_size} with drop_remainder=True",
                      fix="lower BatchingConfig.batch_size or set drop_remainder=False.")
    width = examples.histories.shape[1]
    if config.bucket_boundaries and config.bucket_boundaries[-1] < width:
      config = dataclasses.replace(
          config, bucket_boundaries=tuple(config.bucket_boundaries) + (width,))
    self.examples = examples
    self.config = config
    self.local = config.batch_size // process_count
    self.process_count = process_count
    self.first_row = process_index * self.local
    full, rem = divmod(n, config.batch_size)
    self.batches_per_epoch = full if (config.drop_remainder or rem == 0) else full + 1

  @property
  def num_steps(self) -> int:
    if self.config.num_epochs is None:
      return UNLIMITED_EPOCHS_STEPS
    return self.batches_per_epoch * self.config.num_epochs

  @functools.lru_cache(maxsize=2)
  def epoch_order(self, epoch: int) -> np.ndarray:
    """[batches_per_epoch * batch_size] int64 example indices (-1 = padding row)."""
    n, bs = len(self.examples), self.config.batch_size
    if self.config.shuffle:
      order = np.random.default_rng([self.config.seed, epoch]).permutation(n)
    else:
      order = np.arange(n)
    order = order[:self.batches_per_epoch * bs]
    order = np.concatenate([order, np.full(self.batches_per_epoch * bs - len(order), -1)])
    pool = self.config.sort_pool_batches
    if self.config.bucket_boundaries and pool > 1:
      rng = np.random.default_rng([self.config.seed, epoch, 1])
      lengths = np.where(order >= 0, self.examples.lengths[np.maximum(order, 0)], -1)
      for start in range(0, len(order), pool * bs):
        chunk = slice(start, min(start + pool * bs, len(order)))
        sort = np.argsort(-lengths[chunk], kind="stable")
        batches = order[chunk][sort].reshape(-1, bs)
        order[chunk] = batches[rng.permutation(len(batches))].reshape(-1)
    return order

  def __call__(self, step: int) -> dict:
    epoch, b = divmod(int(step), self.batches_per_epoch)
    bs = self.config.batch_size
    global_rows = self.epoch_order(epoch)[b * bs:(b + 1) * bs]
    rows = global_rows[self.first_row:self.first_row + self.local]
    real = rows >= 0
    safe = np.maximum(rows, 0)
    ex = self.examples
    width = ex.histories.shape[1]
    if self.config.bucket_boundaries:
      longest = int(ex.lengths[np.maximum(global_rows, 0)].max())
      width = next(w for w in self.config.bucket_boundaries if w >= longest)
    history = ex.histories[safe, :width]
    out = {
        "history": np.where(real[:, None], history, PAD_ITEM).astype(np.int32),
        "length": np.where(real, ex.lengths[safe], 0).astype(np.int32),
        "target": np.where(real, ex.targets[safe], PAD_ITEM).astype(np.int32),
        "user": np.where(real, ex.users[safe], -1).astype(np.int32),
        "weight": real.astype(np.float32),
    }
    first = getattr(ex, "first_targets", None)
    if first is not None:  # per-sequence windows (`windows.TrainWindows`).
      out["first_target"] = np.where(real, first[safe], 0).astype(np.int32)
      out["most_targets"] = np.full(self.local, self._most_targets(global_rows), np.int32)
    return out

  def _most_targets(self, global_rows: np.ndarray) -> int:
    """The largest number of target positions in any process's share of a global batch
    (every process computes the same number, so packed rows agree on one shape)."""
    ex = self.examples
    safe = np.maximum(global_rows, 0)
    targets = np.where(global_rows >= 0, ex.lengths[safe] - ex.first_targets[safe], 0)
    return int(targets.reshape(self.process_count, self.local).sum(axis=1).max())


def train_dataset(examples: TrainExamples, config: BatchingConfig = BatchingConfig(),
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> grain.MapDataset:
  """A grain MapDataset whose element `step` is this process's batch at that step.

  Element fields (B = batch_size // process_count, W = padded history width):
    history: [B, W] int32, oldest first, 0-padded at the end.
    length: [B] int32 real history lengths (0 for padding rows).
    target: [B] int32 next item (0 for padding rows).
    user: [B] int32 dataset row (-1 for padding rows).
    weight: [B] float32, 1 for real rows, 0 for padding rows.
    first_target: [B] int32, with `windows.TrainWindows` only: the first window
      position that is a target (history is then the window).
    most_targets: [B] int32, with `windows.TrainWindows` only: the largest number of
      targets in any process's rows of this step (the same on every row and process;
      `sequence_batch.pack_target_rows` pads to it so all processes pack one shape).

  Args:
    examples: from `LeaveOneOutSplit.train_examples(max_history)`.
    config: batching options.
    process_index, process_count: default to jax.process_index()/process_count().
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  maker = _BatchMaker(examples, config, process_index, process_count)
  return grain.MapDataset.range(0, maker.num_steps).map(maker)


def train_iterator(examples: TrainExamples, config: BatchingConfig = BatchingConfig(),
                   state: Optional[dict] = None, transform: Optional[Callable] = None,
                   **shard_kwargs) -> grain.DatasetIterator:
  """A prefetching iterator over `train_dataset`, resumed from `state` if given.

  `transform` (e.g. the model's host batch conversion) runs on each batch inside the
  prefetching threads, so it overlaps the device step; the state still counts the
  batches handed out. `iterator.get_state()` is a small dict; store it in the checkpoint.
  """
  ds = train_dataset(examples, config, **shard_kwargs)
  if transform is not None:
    ds = ds.map(transform)
  ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=config.prefetch))
  it = iter(ds)
  if state is not None:
    it.set_state(state)
  return it


def steps_per_epoch(examples: TrainExamples, config: BatchingConfig) -> int:
  """Number of global batches in one epoch."""
  return _BatchMaker(examples, config, 0, 1).batches_per_epoch
