"""The validation curve of a training run: `metrics.jsonl` eval entries -> a PNG of the
validation metric against step and training minutes (matplotlib, written atomically)."""

from __future__ import annotations

import os
from typing import Optional

from jaxrec import files
from jaxrec import plots


def eval_points(metrics_path: str, metric: str) -> list:
  """[(step, minutes since the run's first entry, value)] of the "valid/<metric>" evals."""
  entries = files.read_jsonl(metrics_path)
  start = next((e["time"] for e in entries if "time" in e), None)
  return [(e["step"], (e["time"] - start) / 60.0 if start is not None and "time" in e else None,
           e[f"valid/{metric}"]) for e in entries
          if e.get("event") == "eval" and f"valid/{metric}" in e]


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
