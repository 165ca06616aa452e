"""The validation curve of a training run: `metrics.jsonl` eval entries -> a PNG of the
validation metric against step and training minutes (matplotlib, written atomically)."""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Union

from jaxrec import files
from jaxrec import plots


def training_minutes(entries: Sequence[dict]) -> list:
  """Minutes of training at each entry of a metrics.jsonl (None without a "time"): wall
  time since the first entry, minus the gaps before each "resume" entry (a killed run's
  downtime; the time after its last checkpoint counts, as in a real restart)."""
  out, total, previous = [], 0.0, None
  for e in entries:
    t = e.get("time")
    if t is None:
      out.append(None)
      continue
    if previous is not None and e.get("event") != "resume":
      total += max(t - previous, 0.0)
    previous = t
    out.append(total / 60.0)
  return out


def eval_points(metrics_path: str, metric: str) -> list:
  """[(step, training minutes (`training_minutes`), value)] of the "valid/<metric>" evals."""
  entries = files.read_jsonl(metrics_path)
  return [(e["step"], minutes, e[f"valid/{metric}"])
          for e, minutes in zip(entries, training_minutes(entries))
          if e.get("event") == "eval" and f"valid/{metric}" in e]


def plot_runs(runs: Mapping[str, str], metric: Union[str, Sequence[str]], output: str,
              title: Optional[str] = None) -> str:
  """One figure of several runs' validation metric(s) against training minutes.

  Args:
    runs: {label: workdir (holding metrics.jsonl)}, in legend order.
    metric: e.g. "recall@10", or several (one panel each).
    output: the PNG path (written atomically).
    title: the figure's title.

  Raises:
    ValueError: a run without eval entries carrying times.
  """
  metrics = [metric] if isinstance(metric, str) else list(metric)
  fig = plots.figure(figsize=(1 + 6 * len(metrics), 4.2))
  axes = fig.subplots(1, len(metrics), squeeze=False)[0]
  for ax, name in zip(axes, metrics):
    for label, workdir in runs.items():
      points = timed_points(workdir, name)
      if not points:
        raise ValueError(f"{workdir}/metrics.jsonl has no timed eval entries of {name}.")
      _, minutes, values = zip(*points)
      ax.plot(minutes, values, marker="o", markersize=3, label=label)
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel(f"valid {name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return plots.save_png(fig, output)


def timed_points(workdir: str, metric: str) -> list:
  """`eval_points` of `<workdir>/metrics.jsonl` that carry training minutes ([] without)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  return [p for p in eval_points(path, metric) if p[1] is not None]


def plot_validation_curve(workdir: str, metric: str = "ndcg@10",
                          output: Optional[str] = None) -> Optional[str]:
  """Writes <workdir>/valid_curve.png (validation `metric` vs step, and vs minutes on a top
  axis when the entries carry times); returns its path, or None without any eval entry."""
  points = eval_points(os.path.join(workdir, "metrics.jsonl"), metric)
  if not points:
    return None
  steps, minutes, values = zip(*points)
  fig = plots.figure(figsize=(6, 3.5))
  ax = fig.subplots()
  ax.plot(steps, values, marker="o")
  ax.set_xlabel("step")
  ax.set_ylabel(f"valid {metric}")
  if all(m is not None for m in minutes):
    ax.set_title(f"validation {metric}: {values[-1]:.4f} at step {steps[-1]} "
                 f"({minutes[-1]:.1f} min)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return plots.save_png(fig, output or os.path.join(workdir, "valid_curve.png"))
