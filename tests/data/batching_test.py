"""Batching: static shapes, determinism, resumption, per-process shards, bucketing."""

import numpy as np
import pytest

from jaxrec.data import batching
from jaxrec.data.dataset import ItemTable, SequentialDataset
from jaxrec.data.errors import DataError
from jaxrec.data.splits import leave_one_out


@pytest.fixture(scope="module")
def examples():
  rng = np.random.default_rng(0)
  seqs = [rng.integers(1, 50, size=rng.integers(4, 30)) for _ in range(60)]
  ds = SequentialDataset.from_sequences("rand", seqs, ItemTable.empty(50))
  return leave_one_out(ds).train_examples(max_history=12)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_shapes_and_one_epoch_covers_every_example_once(examples):
  cfg = batching.BatchingConfig(batch_size=32, num_epochs=1, drop_remainder=False)
  batches = list(batching.train_dataset(examples, cfg, 0, 1))
  assert len(batches) == -(-len(examples) // 32) == batching.steps_per_epoch(examples, cfg)
  for b in batches:
    assert b["history"].shape == (32, 12) and b["history"].dtype == np.int32
    assert b["target"].shape == b["length"].shape == b["weight"].shape == (32,)
  real = np.concatenate([b["weight"] for b in batches]) > 0
  targets = np.concatenate([b["target"] for b in batches])[real]
  hist = np.concatenate([b["history"] for b in batches])[real]
  assert real.sum() == len(examples)
  # Every example appears exactly once: compare sorted (target, history) rows.
  got = np.sort(np.concatenate([targets[:, None], hist], 1).view([("", np.int32)] * 13), axis=0)
  want = np.sort(np.concatenate([examples.targets[:, None], examples.histories], 1)
                 .view([("", np.int32)] * 13), axis=0)
  np.testing.assert_array_equal(got, want)
  last = batches[-1]
  assert (last["target"][last["weight"] == 0] == 0).all()


def test_deterministic_per_seed_and_epochs_differ(examples):
  cfg = batching.BatchingConfig(batch_size=16, seed=3)
  per_epoch = batching.steps_per_epoch(examples, cfg)
  n = per_epoch + 2
  a = _take(batching.train_iterator(examples, cfg, process_index=0, process_count=1), n)
  b = _take(batching.train_iterator(examples, cfg, process_index=0, process_count=1), n)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["history"], y["history"])
  assert not np.array_equal(a[0]["target"], a[per_epoch]["target"])
  other = _take(batching.train_iterator(
      examples, batching.BatchingConfig(batch_size=16, seed=4), process_index=0,
      process_count=1), 1)
  assert not np.array_equal(a[0]["target"], other[0]["target"])


def test_resume_from_iterator_state(examples):
  cfg = batching.BatchingConfig(batch_size=16, seed=1)
  it = batching.train_iterator(examples, cfg, process_index=0, process_count=1)
  _take(it, 7)
  state = it.get_state()
  expected = _take(it, 5)
  resumed = batching.train_iterator(examples, cfg, state=state, process_index=0,
                                    process_count=1)
  for x, y in zip(expected, _take(resumed, 5)):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_process_shards_partition_the_global_batch(examples):
  cfg = batching.BatchingConfig(batch_size=16, seed=2)
  whole = batching.train_dataset(examples, cfg, 0, 1)
  parts = [batching.train_dataset(examples, cfg, p, 4) for p in range(4)]
  for step in (0, 5, 11):
    joined = np.concatenate([p[step]["history"] for p in parts])
    np.testing.assert_array_equal(joined, whole[step]["history"])
    assert parts[0][step]["history"].shape == (4, 12)
  with pytest.raises(DataError, match="not divisible"):
    batching.train_dataset(examples, batching.BatchingConfig(batch_size=10), 0, 4)


def test_bucketing_pads_to_boundary_and_pools_reduce_padding(examples):
  cfg = batching.BatchingConfig(batch_size=8, bucket_boundaries=(4, 8), num_epochs=1)
  widths = {b["history"].shape[1] for b in batching.train_dataset(examples, cfg, 0, 1)}
  assert widths <= {4, 8, 12}
  for b in batching.train_dataset(examples, cfg, 0, 1):
    assert b["length"].max() <= b["history"].shape[1]
  pooled = batching.BatchingConfig(batch_size=8, bucket_boundaries=(4, 8), num_epochs=1,
                                   sort_pool_batches=8)
  def padded_cells(c):
    return sum(b["history"].size for b in batching.train_dataset(examples, c, 0, 1))
  assert padded_cells(pooled) < padded_cells(cfg)
  # Pools still give every example exactly once.
  real = sum(int(b["weight"].sum()) for b in batching.train_dataset(examples, pooled, 0, 1))
  assert real == batching.steps_per_epoch(examples, pooled) * 8


def test_bad_config():
  with pytest.raises(DataError, match="batch_size"):
    batching.BatchingConfig(batch_size=0)
  with pytest.raises(DataError, match="bucket_boundaries"):
    batching.BatchingConfig(bucket_boundaries=(10, 5))
