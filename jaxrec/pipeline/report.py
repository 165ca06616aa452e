"""What a system run reports: `results.md` (the test metrics with 95% CIs beside most-popular
and co-occurrence on the same users, and the stage times) and the summary fields."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from jaxrec import files
from jaxrec.data.config import DatasetConfig
from jaxrec.pipeline.stage import StageResult, canonical, duration

TABLE_METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
RESULTS = "results.md"


def report(workdir: str, dataset: DatasetConfig, results: Sequence[StageResult],
           progress: bool = True, model_stage: Optional[str] = "generator",
           seconds: Optional[float] = None, extra: Optional[dict] = None,
           trained_stage: Optional[str] = None) -> dict:
  """The summary fields of a system run (metrics, baselines, curve, `extra`); writes
  `<workdir>/results.md`. `model_stage` names the trained model's stage and table row
  (None: a run of the "baselines" stage alone, whose rows make the table), `trained_stage`
  the stage that trained it when that is another one (a shared model: "collaborative");
  `seconds` is the run's wall time (default: the sum of its stages')."""
  trained = [r for r in results if r.name == (trained_stage or model_stage)]
  train_summary = (files.read_json(os.path.join(trained[0].folder, "train_summary.json")) or {}
                   if trained else {})
  by_name = {r.name: r for r in results}
  summary = {"dataset": dataset.name, "dataset_config": canonical(dataset),
             "trained_steps": train_summary.get("step"), "model": model_stage,
             "metrics": _metrics(results[-1]) if model_stage else {}, **(extra or {})}
  summary["baselines"] = baseline_metrics(by_name["baselines"]) if "baselines" in by_name else {}
  if model_stage is None:  # the baselines are the table's rows, on the test split's users
    summary["metrics"] = {"test": {"num_examples": next(iter(summary["baselines"].values()), {})
                                   .get("num_examples")}} if summary["baselines"] else {}
  curve = os.path.join(workdir, model_stage or "", "valid_curve.png")
  if model_stage and os.path.isfile(curve):
    summary["valid_curve"] = curve
  table = results_markdown({**summary, "workdir": os.path.abspath(workdir),
                            "stages": {r.name: vars(r) for r in results},
                            "seconds": (sum(r.seconds for r in results) if seconds is None
                                        else seconds),
                            "build_seconds": sum(r.build_seconds for r in results)})
  files.write_text(os.path.join(workdir, RESULTS), table)
  if progress:
    print(table, flush=True)
  return summary


def baseline_metrics(stage: StageResult, which: str = "test") -> dict:
  """{baseline: {"overall": the table's metrics, "num_examples"}} of the "baselines" stage's
  `<baseline>/<which>_metrics.json` files."""
  out = {}
  for name, path in sorted(stage.artifacts.items()):
    parts = name.split("/")
    result = files.read_json(path) if parts[-1] == f"{which}_metrics.json" else None
    if result and len(parts) == 2:
      overall = (result.get("metrics") or {}).get("overall", {})
      out[parts[0]] = {"overall": {k: v for k, v in overall.items() if k in TABLE_METRICS},
                       "num_examples": result.get("num_examples")}
  return out


def _metrics(evaluation: StageResult) -> dict:
  """{split: the table's metrics and the evaluation's settings} from its *_metrics.json files."""
  metrics = {}
  suffix = "_metrics.json"
  for name, path in sorted(evaluation.artifacts.items()):
    result = files.read_json(path) if name.endswith(suffix) else None
    if result:
      overall = (result.get("metrics") or {}).get("overall", {})
      metrics[name[:-len(suffix)]] = {
          "overall": {k: v for k, v in overall.items() if k in TABLE_METRICS},
          **{k: result.get(k) for k in ("num_examples", "checkpoint_step", "decoding",
                                        "exclude_history", "dataset")}}
  return metrics


def results_markdown(summary: dict, which: str = "test") -> str:
  """`<workdir>/results.md`: the split's R@5/N@5/R@10/N@10 with 95% CIs and stage times."""
  lines = [f"# {summary.get('system') or 'Generative retrieval pipeline'}: "
           f"{summary['dataset']}", ""]
  if summary.get("modalities"):
    absent = summary.get("absent_modalities") or {}
    lines += [f"Modalities: {', '.join(summary['modalities'])}" + "".join(
        f"; {name} absent ({why})" for name, why in sorted(absent.items())) + ".", ""]
  m = summary["metrics"].get(which)
  if m:
    model = summary.get("model")
    lines += [f"{which} split, full ranking, {m.get('num_examples')} users"
              + (f", checkpoint step {m.get('checkpoint_step')}, decoding: "
                 f"{_decoding(m.get('decoding'))}" if model else "")
              + "; mean (95% bootstrap CI)", "",
              "| model | " + " | ".join(TABLE_METRICS) + " |",
              "|---" * (len(TABLE_METRICS) + 1) + "|"]
    if model:
      lines.append(f"| {model} | " + " | ".join(_cell(m["overall"].get(k))
                                               for k in TABLE_METRICS) + " |")
    for name, b in sorted((summary.get("baselines") or {}).items()):
      lines.append(f"| {name} | " + " | ".join(_cell(b["overall"].get(k))
                                               for k in TABLE_METRICS) + " |")
    lines.append("")
    if summary.get("valid_curve"):
      lines += [f"Validation curve: {summary['valid_curve']}", ""]
  else:
    lines += [f"(no {which} metrics: add {which!r} to EvalConfig.splits)", ""]
  lines += ["| stage | this run | wall time (this run) | wall time (when built) |",
            "|---|---|---|---|"]
  for s in summary["stages"].values():
    lines.append(f"| {s['name']} | {s['status']} | {duration(s['seconds'])} | "
                 f"{duration(s['build_seconds'])} |")
  lines += ["", f"Total this run: {duration(summary['seconds'])} (wall time); to build every "
            f"stage: {duration(summary.get('build_seconds', summary['seconds']))}. Artifacts: "
            f"{summary['workdir']} (pipeline_summary.json lists them)."]
  return "\n".join(lines) + "\n"


def _decoding(value: Any) -> str:
  """The metrics JSON's "decoding" entry (a string or a dict with "method") in a few words."""
  if isinstance(value, dict):
    rest = ", ".join(f"{k} {v}" for k, v in sorted(value.items()) if k != "method")
    return f"{value.get('method', 'decoding')} ({rest})" if rest else str(value.get("method"))
  return str(value)


def _cell(s: Optional[dict]) -> str:
  if not s:
    return "-"
  return f"{s['mean']:.4f} ({s['ci_low']:.4f}-{s['ci_high']:.4f})"
