"""Input-pipeline throughput: examples/s of the training batches at batch 256.

Measures, in one run on the same data, jaxrec's batch-level grain pipeline
(`jaxrec.data.batching`) against the baseline of an element-wise grain pipeline
(`MapDataset.source(examples).shuffle().batch()`), and prints both and the ratio.

  python tools/benchmark_data.py --dataset=beauty           # $JAXREC_DATA_DIR/beauty
  python tools/benchmark_data.py --dataset=synthetic
"""

import json
import time

from absl import app
from absl import flags
import grain

from jaxrec.data import batching
from jaxrec.data import loading
from jaxrec.data.splits import leave_one_out

_DATASET = flags.DEFINE_string("dataset", "beauty", "dataset name (see loading.dataset_names()).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "upstream files; default $JAXREC_DATA_DIR/<dataset>.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds folder for prepared files.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "global batch size.")
_STEPS = flags.DEFINE_integer("steps", 2000, "batches to time for jaxrec's pipeline.")
_BASELINE_STEPS = flags.DEFINE_integer("baseline_steps", 200, "batches to time for the baseline.")
_MAX_HISTORY = flags.DEFINE_integer("max_history", 20, "history window.")
_JSON = flags.DEFINE_string("json", None, "also write the figures to this JSON file.")


def _time(iterator, steps: int) -> float:
  """Examples/s over `steps` batches after one warm-up batch."""
  next(iterator)
  n = 0
  start = time.perf_counter()
  for _ in range(steps):
    batch = next(iterator)
    n += len(batch["target"]) if isinstance(batch, dict) else len(batch)
  return n / (time.perf_counter() - start)


def _elementwise_baseline(examples, batch_size: int):
  """The straightforward grain pipeline: one element per example, batched by grain."""

  class Source:
    def __len__(self):
      return len(examples)

    def __getitem__(self, i):
      return {"history": examples.histories[i], "length": examples.lengths[i],
              "target": examples.targets[i]}

  ds = grain.MapDataset.source(Source()).shuffle(seed=0).repeat().batch(batch_size)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)))


def main(argv):
  del argv
  t0 = time.perf_counter()
  dataset = loading.load_dataset(_DATASET.value, manual_dir=_MANUAL_DIR.value,
                                 data_dir=_DATA_DIR.value)
  split = leave_one_out(dataset)
  examples = split.train_examples(_MAX_HISTORY.value)
  setup_s = time.perf_counter() - t0
  cfg = batching.BatchingConfig(batch_size=_BATCH.value, seed=0)
  ours = _time(batching.train_iterator(examples, cfg), _STEPS.value)
  bucketed = _time(batching.train_iterator(examples, batching.BatchingConfig(
      batch_size=_BATCH.value, bucket_boundaries=(5, 10, 20), sort_pool_batches=32)),
                   _STEPS.value)
  base = _time(_elementwise_baseline(examples, _BATCH.value), _BASELINE_STEPS.value)
  result = {
      "dataset": _DATASET.value, "train_examples": len(examples),
      "batch_size": _BATCH.value, "load_split_seconds": round(setup_s, 2),
      "jaxrec_examples_per_s": round(ours), "jaxrec_bucketed_examples_per_s": round(bucketed),
      "elementwise_grain_examples_per_s": round(base),
      "speedup_vs_elementwise": round(ours / base, 1),
  }
  print(json.dumps(result, indent=1))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
