"""The validation-curve plot reads the eval entries of metrics.jsonl."""

import json
import os

import pytest

from jaxrec.training import curves


def test_validation_curve_points_and_png(tmp_path):
  entries = [{"step": 0, "event": "start", "time": 100.0},
             {"step": 10, "loss": 1.0, "time": 130.0},
             {"step": 10, "event": "eval", "valid/ndcg@10": 0.1, "time": 160.0},
             {"step": 20, "event": "eval", "valid/ndcg@10": 0.3, "time": 220.0}]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(e) + "\n" for e in entries))
  assert curves.eval_points(str(tmp_path / "metrics.jsonl"), "ndcg@10") == [
      (10, 1.0, 0.1), (20, 2.0, 0.3)]
  path = curves.plot_validation_curve(str(tmp_path))
  assert path == os.path.join(tmp_path, "valid_curve.png") and os.path.getsize(path) > 1000
  assert curves.plot_validation_curve(str(tmp_path / "missing")) is None


def test_training_minutes_leave_out_the_downtime_before_a_resume(tmp_path):
  # Killed at 400 s after its last checkpoint (step 10, logged at 160 s), restarted at
  # 1000 s: the 600 s of downtime are not training time; the 240 s after the checkpoint are.
  entries = [{"step": 0, "event": "start", "time": 100.0},
             {"step": 10, "event": "eval", "valid/recall@10": 0.1, "time": 160.0},
             {"step": 20, "loss": 1.0, "time": 400.0},
             {"step": 10, "event": "resume", "time": 1000.0},
             {"step": 20, "event": "eval", "valid/recall@10": 0.2, "time": 1120.0},
             {"step": 20, "note": "no time"}]
  assert curves.training_minutes(entries) == [0.0, 1.0, 5.0, 5.0, 7.0, None]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(e) + "\n" for e in entries))
  assert curves.eval_points(str(tmp_path / "metrics.jsonl"), "recall@10") == [
      (10, 1.0, 0.1), (20, 7.0, 0.2)]


def test_plot_runs_one_figure_of_several_runs(tmp_path):
  for name, value in (("a", 0.1), ("b", 0.2)):
    os.makedirs(tmp_path / name)
    with open(tmp_path / name / "metrics.jsonl", "w") as f:
      f.write(json.dumps({"step": 5, "event": "eval", "valid/recall@10": value,
                          "time": 10.0}) + "\n")
  out = curves.plot_runs({"run a": str(tmp_path / "a"), "run b": str(tmp_path / "b")},
                         "recall@10", str(tmp_path / "runs.png"))
  assert out == str(tmp_path / "runs.png") and os.path.getsize(out) > 1000
  os.makedirs(tmp_path / "empty")
  open(tmp_path / "empty" / "metrics.jsonl", "w").close()
  with pytest.raises(ValueError, match="empty/metrics.jsonl has no timed eval entries"):
    curves.plot_runs({"e": str(tmp_path / "empty")}, "recall@10", str(tmp_path / "e.png"))


def test_plots_never_switch_the_callers_backend(tmp_path, monkeypatch):
  # matplotlib.use("Agg") inside a job silenced every later inline plot of the quickstart
  # notebook (the trainer writes valid_curve.png at the end of train_generator).
  import matplotlib
  import numpy as np
  from jaxrec import sweep_reports
  from jaxrec.jobs import tokenizer_job

  def refuse(*args, **kwargs):
    raise AssertionError(f"matplotlib.use{args} called by a library plot")
  monkeypatch.setattr(matplotlib, "use", refuse)
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 5, "event": "eval", "valid/ndcg@10": 0.2}) + "\n")
  assert curves.plot_validation_curve(str(tmp_path)) is not None
  tokenizer_job.plot_usage(np.array([[0, 1], [1, 1]]), 2, str(tmp_path / "usage.png"))
  assert os.path.getsize(tmp_path / "usage.png") > 1000
  fig = sweep_reports.plot([], ["recall@10"], "test")
  assert fig.canvas is not None


def test_plot_curves_tool(tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  os.makedirs(tmp_path / "a")
  with open(tmp_path / "a" / "metrics.jsonl", "w") as f:
    for step, t in ((5, 60.0), (10, 120.0)):
      f.write(json.dumps({"step": step, "event": "eval", "valid/recall@10": 0.1,
                          "time": t}) + "\n")
  out = tmp_path / "curves.png"
  tool = os.path.join(root, "tools", "plot_curves.py")
  done = subprocess.run([sys.executable, tool, f"--run=run a={tmp_path / 'a'}",
                         f"--output={out}"], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert out.stat().st_size > 1000
  bad = subprocess.run([sys.executable, tool, "--run=no-equals-sign", f"--output={out}"],
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "expected LABEL=WORKDIR" in bad.stderr
