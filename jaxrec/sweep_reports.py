"""Sweep reports: the Markdown table, the CSV and the bar chart of `sweep.summarize` rows.

`jaxrec.sweep` summarizes and calls `write_reports`; this module imports nothing from it.
"""

from __future__ import annotations

import csv
import io
import os
import re
from typing import Dict, Optional, Sequence

from jaxrec import files
from jaxrec import plots
import numpy as np

REPORT_NAMES = ("sweep_results.md", "sweep_results.csv", "sweep_results.png")


def write_reports(sweep_dir: str, rows: Sequence[dict], all_rows: Sequence[dict],
                  metrics: Sequence[str], split: str, log_name: str) -> Dict[str, str]:
  """Writes sweep_results.md and .png (`rows`: the split's `sweep.summarize` rows) and .csv
  (`all_rows`: every split's), atomically; `log_name` is a run folder's log file.

  Returns:
    {"md", "csv", "png"} -> path.
  """
  paths = {k: os.path.join(sweep_dir, name) for k, name in zip(("md", "csv", "png"),
                                                               REPORT_NAMES)}
  files.write_text(paths["md"], markdown(rows, metrics, split, log_name))
  files.write_text(paths["csv"], to_csv(all_rows, metrics))
  figure = plot(rows, metrics, split)
  plots.save_png(figure, paths["png"])
  return paths


def _fmt(value: Optional[dict]) -> str:
  if value is None:
    return "-"
  if value.get("low") is None or value.get("high") is None:
    return f"{value['mean']:.4f}"
  return f"{value['mean']:.4f} ({value['low']:.4f}-{value['high']:.4f})"


def _seconds(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.1f}"


def _minutes(value: Optional[float]) -> str:
  return "-" if value is None else f"{value / 60:.1f}"


def _cell(text) -> str:
  return str(text).replace("|", "\\|").replace("\n", " / ")


def error_line(error: str, width: int = 240) -> str:
  """The line of a log tail that says what went wrong: its last exception line, else its last."""
  lines = error.splitlines() or [""]
  line = next((l for l in reversed(lines) if re.match(r"[\w.]*(Error|Exception|Exit)\b", l)),
              lines[-1])
  return line if len(line) <= width else line[:width - 3] + "..."


def _status(row: dict) -> str:
  if "failed" not in row["status"]:
    return row["status"]
  codes = sorted({("timeout" if s["returncode"] is None else str(s["returncode"]))
                  for s in row["per_seed"] if s["status"] == "failed"})
  return f"FAILED (exit {','.join(codes)}): {error_line(row['error'])}"


def markdown(rows: Sequence[dict], metrics: Sequence[str], split: str, log_name: str) -> str:
  """sweep_results.md: the aggregated table, the per-seed rows of runs with seeds, failures
  (with the path of each failed run's `log_name`)."""
  lines = [f"# Sweep results ({split} split)", "",
           "Mean (95% interval): with one seed the run's bootstrap CI, with several the "
           "t-interval of the mean over seeds. Run time: seconds this sweep spent on the run "
           "(mean over seeds; stages reused from a cache cost nothing). Training: minutes to "
           "build what the run evaluates, every stage but the evaluation, cached ones with "
           "their own build time (pipeline_summary.json or train_summary.json).", "",
           "| run | model | dataset | seeds | " + " | ".join(metrics)
           + " | run time (s) | training (min) | status |",
           "|---" * (len(metrics) + 7) + "|"]
  for r in rows:
    lines.append("| " + " | ".join(_cell(c) for c in (
        r["run"], r["model"] or "-", r["dataset"] or "-", len(r["seeds"]) or 1,
        *(_fmt(r["metrics"][m]) for m in metrics), _seconds(r["seconds"]),
        _minutes(r["train_seconds"]), _status(r))) + " |")
  if any(len(r["seeds"]) > 1 for r in rows):
    lines += ["", "## Per seed", "",
              "| run | model | seed | " + " | ".join(metrics)
              + " | run time (s) | training (min) | status |",
              "|---" * (len(metrics) + 6) + "|"]
    for r in (r for r in rows if len(r["per_seed"]) > 1):
      for s in r["per_seed"]:
        lines.append("| " + " | ".join(_cell(c) for c in (
            r["run"], r["model"] or "-", "-" if s["seed"] is None else s["seed"],
            *(_fmt(s["metrics"][m]) for m in metrics), _seconds(s["seconds"]),
            _minutes(s["train_seconds"]), s["status"])) + " |")
  lines += paired_table(rows, metrics)
  failed = {s["run_dir"]: (r["run"], s) for r in rows for s in r["per_seed"]
            if s["status"] == "failed"}
  lines += ["", "## Failed runs"] * bool(failed)
  for run, s in failed.values():
    code = "timed out" if s["returncode"] is None else f"exit {s['returncode']}"
    seed = "" if s["seed"] is None else f" seed {s['seed']}"
    log = os.path.join(s["run_dir"], log_name)
    lines += ["", f"`{run}`{seed}: {code}, log {log}", "", "```", s["error"], "```"]
  return "\n".join(lines) + "\n"


def paired_table(rows: Sequence[dict], metrics: Sequence[str]) -> list:
  """The "## Paired with REF" section (lines) of the rows that have a "paired" entry
  (`sweep.paired_with`); [] when none has."""
  paired = [r for r in rows if r.get("paired")]
  if not paired:
    return []
  lines = ["", f"## Paired with `{paired[0]['paired']['reference']}` (same users)", "",
           "Difference of the per-user metric, run minus reference, on the same users: mean "
           "(95% paired bootstrap interval; the users of every paired seed resampled together). "
           "**bold**: the interval excludes 0, so the two differ on these users.", "",
           "| run | model | seeds paired | " + " | ".join(f"{m} difference" for m in metrics)
           + " |", "|---" * (len(metrics) + 3) + "|"]
  for r in paired:
    p = r["paired"]
    seeds = ",".join("-" if s is None else str(s) for s in p["seeds"]) or "none"
    lines.append("| " + " | ".join(_cell(c) for c in (
        r["run"], r["model"], seeds, *(_difference(p.get(m)) for m in metrics))) + " |")
  return lines


def _difference(value: Optional[dict]) -> str:
  if not value:
    return "-"
  if "error" in value:
    return f"- ({value['error']})"
  text = f"{value['diff']:+.4f} ({value['ci_low']:+.4f} to {value['ci_high']:+.4f})"
  return f"**{text}**" if value["excludes_zero"] else text


def to_csv(rows: Sequence[dict], metrics: Sequence[str]) -> str:
  """sweep_results.csv: a line per (run, model, split, seed); seed "mean": over several seeds."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["run", "model", "dataset", "split", "seed", "interval"]
                  + [f"{m}{suffix}" for m in metrics for suffix in ("", "_low", "_high")]
                  + ["seconds", "train_seconds", "status", "error", "run_dir"])

  def rounded(value):
    return "" if value is None else round(value, 3)

  def values(by_metric):
    return [("" if (v := by_metric[m]) is None or v.get(k) is None else repr(v[k]))
            for m in metrics for k in ("mean", "low", "high")]

  for r in rows:
    split = r["split"] if r["model"] is not None else ""
    for s in r["per_seed"]:
      writer.writerow([r["run"], r["model"] or "", r["dataset"] or "", split,
                       "" if s["seed"] is None else s["seed"],
                       "bootstrap" if r["model"] else "", *values(s["metrics"]),
                       rounded(s["seconds"]), rounded(s["train_seconds"]), s["status"],
                       s["error"], s["run_dir"]])
    if len(r["per_seed"]) > 1:
      interval = next((v["interval"] for v in r["metrics"].values() if v), "")
      writer.writerow([r["run"], r["model"] or "", r["dataset"] or "", split, "mean",
                       interval, *values(r["metrics"]),
                       rounded(r["seconds"]), rounded(r["train_seconds"]), r["status"],
                       r["error"], ""])
  return out.getvalue()


def plot(rows: Sequence[dict], metrics: Sequence[str], split: str):
  """A matplotlib Figure (Agg): per metric a horizontal bar per (run, model) with its interval."""
  rows = [r for r in rows if r["model"] is not None]
  labels = [f"{r['run']} / {r['model']}" + (f" ({len(r['seeds'])} seeds)" if len(r["seeds"]) > 1
                                             else "") for r in rows]
  fig = plots.figure(figsize=(2.5 + 4 * len(metrics), 1.2 + 0.3 * max(len(rows), 1)))
  axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
  y = np.arange(len(rows))
  for ax, m in zip(axes, metrics):
    values = [r["metrics"][m] for r in rows]
    means = np.array([v["mean"] if v else 0.0 for v in values])
    err = np.array([[max(0.0, v["mean"] - v["low"]) if v and v.get("low") is not None else 0.0,
                     max(0.0, v["high"] - v["mean"]) if v and v.get("high") is not None else 0.0]
                    for v in values]).reshape(-1, 2).T
    ax.barh(y, means, xerr=err, capsize=3, color="tab:blue", alpha=0.8)
    ax.set_title(f"{m} ({split})")
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(left=0)
  axes[0].set_yticks(y, labels)
  axes[0].invert_yaxis()
  if not rows:
    axes[0].text(0.5, 0.5, "no metrics", ha="center", transform=axes[0].transAxes)
  fig.tight_layout()
  return fig
