"""The baselines job (data -> split -> fit -> full-ranking evaluation): random, most-popular,
co-occurrence.

It always computes (jobs never skip themselves): the pipeline's "baselines" stage
(`pipeline/system.py`, every system run and gin_configs/runs/baselines.gin) skips it when
its folder holds the result of the same configuration.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

from jaxrec import evaluation
from jaxrec.evaluation import EvalConfig
from jaxrec import files
from jaxrec.collaborative import heuristics
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.data.splits import leave_one_out

BASELINES = ("random", "most_popular", "cooccurrence")


def _make_baseline(name: str, split, seed: int):
  if name == "random":
    return heuristics.RandomRecommender(split.num_items, seed=seed)
  if name == "most_popular":
    return heuristics.MostPopular.fit(split)
  if name == "cooccurrence":
    return heuristics.CoOccurrence.fit(split)
  raise DataError(f"unknown baseline {name!r}",
                  fix=f"bind evaluate_baselines.baselines to names from {BASELINES}.")


def evaluate_baselines(workdir: str, dataset: DatasetConfig = DatasetConfig(),
                       eval_config: EvalConfig = EvalConfig(),
                       baselines: Sequence[str] = BASELINES, seed: int = 0,
                       progress: bool = True) -> dict:
  """Evaluates the simple baselines on a dataset; writes metrics and a table.

  Writes `<workdir>/dataset_stats.json`, `<workdir>/<baseline>/<split>_metrics.json`
  and `<workdir>/results.md` (test metrics with 95% CIs).

  Returns:
    {baseline: {split: metrics dict}}.
  """
  for name in baselines:
    if name not in BASELINES:
      raise DataError(f"unknown baseline {name!r} in evaluate_baselines.baselines",
                      fix=f"choose from {BASELINES}.")
  os.makedirs(workdir, exist_ok=True)
  started = time.perf_counter()
  data = dataset.load()
  split = leave_one_out(data)
  stats = data.stats()
  files.write_text(os.path.join(workdir, "dataset_stats.json"),
                   json.dumps(stats, indent=1, default=str) + "\n", if_changed=True)
  if progress:
    print(f"{data.name}: {stats['users']:,} users, {stats['items']:,} items, "
          f"{stats['interactions']:,} interactions (loaded and split in "
          f"{time.perf_counter() - started:.1f}s)")
  results = {}
  for name in baselines:
    results[name] = {}
    fit_start = time.perf_counter()
    model = _make_baseline(name, split, seed)
    fit_seconds = time.perf_counter() - fit_start
    for which in eval_config.splits:
      path = os.path.join(workdir, name, f"{which}_metrics.json")
      result = evaluation.evaluate(
          model, split, which=which, ks=eval_config.ks, batch_size=eval_config.batch_size,
          max_history=eval_config.max_history, exclude_history=eval_config.exclude_history,
          cold_start_threshold=eval_config.cold_start_threshold,
          num_bootstrap=eval_config.num_bootstrap, seed=seed, progress=progress)
      evaluation.save_ranks(os.path.join(workdir, name, f"{which}_ranks.npz"), result)
      result = {k: v for k, v in result.items() if k not in evaluation.ARRAY_KEYS}
      result.update(model=name, fit_seconds=fit_seconds)
      evaluation.write_json(result, path)
      results[name][which] = result
  table = results_table(results, data.name, eval_config)
  files.write_text(os.path.join(workdir, "results.md"), table, if_changed=True)
  if progress:
    print(table)
  return results


REFERENCE_BASELINES = ("most_popular", "cooccurrence")


def evaluate_reference_baselines(workdir: str, dataset: DatasetConfig = DatasetConfig(),
                                 progress: bool = True) -> dict:
  """Most-popular and co-occurrence on the test split: what every system run's results.md
  shows beside its model (the same users)."""
  return evaluate_baselines(workdir, dataset, EvalConfig(splits=("test",)),
                            baselines=REFERENCE_BASELINES, progress=progress)


def results_table(results: dict, dataset_name: str, eval_config: EvalConfig,
                  which: str = "test") -> str:
  """A Markdown table of one split's metrics with 95% CIs, a row per model."""
  cols = [f"{m}@{k}" for k in eval_config.ks if k in (5, 10, 20) for m in ("recall", "ndcg")]
  lines = [f"{dataset_name} ({which}, full ranking, history items "
           f"{'excluded' if eval_config.exclude_history else 'kept'}; 95% bootstrap CI)", "",
           "| model | " + " | ".join(cols) + " | cold R@10 |",
           "|---" * (len(cols) + 2) + "|"]
  for name, per_split in results.items():
    if which not in per_split:
      continue
    m = per_split[which]["metrics"]
    cells = [_cell(m["overall"][c]) for c in cols]
    cold = m["cold_start"].get("recall@10")
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(cold) if cold else '-'} |")
  return "\n".join(lines) + "\n"


def _cell(s: dict) -> str:
  if s.get("mean") is None:  # An empty slice (e.g. no cold-start users).
    return "n/a (no users)"
  return f"{s['mean']:.4f} ({s['ci_low']:.4f}-{s['ci_high']:.4f})"

