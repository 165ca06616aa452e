"""The baselines job (data -> split -> fit -> full-ranking evaluation): random, most-popular,
co-occurrence.

Each stage writes its artifact under the workdir and is skipped when the
artifact for the same configuration already exists (its fingerprint matches).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Optional, Sequence

from jaxrec import evaluation
from jaxrec.evaluation import EvalConfig
from jaxrec import files
from jaxrec.collaborative import heuristics
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.data.splits import leave_one_out

BASELINES = ("random", "most_popular", "cooccurrence")


def fingerprint(*configs) -> str:
  """A short stable hash of dataclass configs (which artifacts they produce)."""
  blob = json.dumps([dataclasses.asdict(c) if dataclasses.is_dataclass(c) else c
                     for c in configs], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _make_baseline(name: str, split, seed: int):
  if name == "random":
    return heuristics.RandomRecommender(split.num_items, seed=seed)
  if name == "most_popular":
    return heuristics.MostPopular.fit(split)
  if name == "cooccurrence":
    return heuristics.CoOccurrence.fit(split)
  raise DataError(f"unknown baseline {name!r}",
                  fix=f"bind evaluate_baselines.baselines to names from {BASELINES}.")


def _read_if_fresh(path: str, fp: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    result = json.load(f)
  return result if result.get("fingerprint") == fp else None


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
    fp = fingerprint(dataset, eval_config, name, seed)
    results[name] = {}
    model = None
    for which in eval_config.splits:
      path = os.path.join(workdir, name, f"{which}_metrics.json")
      cached = _read_if_fresh(path, fp)
      if cached is not None:
        results[name][which] = cached
        continue
      if model is None:
        fit_start = time.perf_counter()
        model = _make_baseline(name, split, seed)
        fit_seconds = time.perf_counter() - fit_start
      result = evaluation.evaluate(
          model, split, which=which, ks=eval_config.ks, batch_size=eval_config.batch_size,
          max_history=eval_config.max_history, exclude_history=eval_config.exclude_history,
          cold_start_threshold=eval_config.cold_start_threshold,
          num_bootstrap=eval_config.num_bootstrap, seed=seed, progress=progress)
      result = {k: v for k, v in result.items()
                if k not in ("ranks", "users", "targets", "is_cold")}
      result.update(model=name, fingerprint=fp, fit_seconds=fit_seconds)
      evaluation.write_json(result, path)
      results[name][which] = result
  table = results_table(results, data.name, eval_config)
  files.write_text(os.path.join(workdir, "results.md"), table, if_changed=True)
  if progress:
    print(table)
  return results


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

