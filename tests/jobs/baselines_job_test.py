"""The baselines job: artifacts, the ordering of baselines, and (through the engine's
"baselines" stage, gin_configs/runs/baselines.gin) skipping on rerun."""

import json
import os
import subprocess
import sys

import pytest

from jaxrec import configs
from jaxrec import evaluation
from jaxrec.jobs import baselines_job
from jaxrec.data.config import DatasetConfig

REPO = str(configs.REPO_ROOT)


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  configs.clear()


def test_baselines_on_synthetic_cooccurrence_beats_popular_beats_random(tmp_path):
  dataset = DatasetConfig(name="synthetic", options={"num_items": 400, "num_users": 800})
  results = baselines_job.evaluate_baselines(
      str(tmp_path), dataset=dataset,
      eval_config=evaluation.EvalConfig(num_bootstrap=200), progress=False)
  ndcg = {name: r["test"]["metrics"]["overall"]["ndcg@10"]["mean"] for name, r in results.items()}
  recall = {name: r["test"]["metrics"]["overall"]["recall@10"]["mean"]
            for name, r in results.items()}
  assert ndcg["cooccurrence"] > ndcg["most_popular"] > ndcg["random"]
  assert recall["cooccurrence"] > recall["most_popular"] > recall["random"]
  # Random is near chance: recall@10 ~ 10 / 400.
  assert recall["random"] < 0.06
  for name in baselines_job.BASELINES:
    for which in ("valid", "test"):
      with open(tmp_path / name / f"{which}_metrics.json") as f:
        saved = json.load(f)
      assert saved["split"] == which and saved["exclude_history"] is False
      assert saved["num_examples"] == 800
  assert "| cooccurrence |" in (tmp_path / "results.md").read_text()
  stats = json.loads((tmp_path / "dataset_stats.json").read_text())
  assert stats["users"] == 800 and stats["items"] == 400


def test_the_job_always_computes_and_the_engine_stage_skips_and_reruns(tmp_path):
  """Jobs never skip themselves; run_system's "baselines" stage skips an up-to-date result
  and reruns when a binding of the job changes."""
  from jaxrec.pipeline import system  # pylint: disable=g-import-not-at-top
  dataset = DatasetConfig(name="synthetic", options={"num_items": 60, "num_users": 80,
                                                     "image_size": 16})
  cfg = evaluation.EvalConfig(num_bootstrap=10)
  baselines_job.evaluate_baselines(str(tmp_path / "job"), dataset, cfg,
                                   baselines=("most_popular",), progress=False)
  path = tmp_path / "job" / "most_popular" / "test_metrics.json"
  first = path.stat().st_mtime_ns
  baselines_job.evaluate_baselines(str(tmp_path / "job"), dataset, cfg,
                                   baselines=("most_popular",), progress=False)
  assert path.stat().st_mtime_ns != first  # the job itself recomputes

  def run():
    return system.run_system(str(tmp_path / "run"), dataset, modalities=(),
                             semantic_ids_job=None, train_job=None, eval_job=None,
                             progress=False, **bindings)
  configs.parse(["gin_configs/runs/baselines.gin"], ["WORKDIR = '/unused'",
                                                     "evaluation.EvalConfig.num_bootstrap = 10"])
  bindings = {"baselines_job": configs.bound_arguments(system.run_system)["baselines_job"]}
  summary = run()
  assert summary["stages"]["baselines"]["status"] == "ran"
  assert set(summary["baselines"]) == set(baselines_job.BASELINES)
  saved = tmp_path / "run" / "baselines" / "most_popular" / "test_metrics.json"
  first = saved.stat().st_mtime_ns
  assert run()["stages"]["baselines"]["status"] == "skipped"
  assert saved.stat().st_mtime_ns == first
  table = (tmp_path / "run" / "results.md").read_text()
  assert "| cooccurrence |" in table and "| random |" in table
  configs.parse(["gin_configs/runs/baselines.gin"], [
      "WORKDIR = '/unused'", "evaluation.EvalConfig.num_bootstrap = 10",
      "evaluation.EvalConfig.exclude_history = True"])
  bindings = {"baselines_job": configs.bound_arguments(system.run_system)["baselines_job"]}
  assert run()["stages"]["baselines"]["status"] == "ran"
  assert json.loads(saved.read_text())["exclude_history"] is True


def test_unknown_baseline_is_named(tmp_path):
  with pytest.raises(ValueError, match="unknown baseline 'svd'"):
    baselines_job.evaluate_baselines(str(tmp_path), baselines=("svd",), progress=False)


def test_gin_run_tool_end_to_end(tmp_path):
  """tools/run.py with the run gin file, a data gin file and a --gin. override."""
  out = subprocess.run(
      [sys.executable, "tools/run.py", "--gin_file=gin_configs/runs/baselines.gin",
       "--gin_file=gin_configs/data/synthetic_tiny.gin", f"--workdir={tmp_path}",
       "--gin.evaluation.EvalConfig.num_bootstrap=20", "--gin.baselines_job.evaluate_baselines.progress=False"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  operative = (tmp_path / "config.gin").read_text()
  assert "num_bootstrap = 20" in operative
  assert "'num_items': 60" in operative
  saved = json.loads((tmp_path / "baselines" / "cooccurrence" / "test_metrics.json").read_text())
  assert saved["num_examples"] == 80
  assert "| cooccurrence |" in (tmp_path / "results.md").read_text()


def test_bad_gin_file_and_missing_binding_are_named(tmp_path):
  with pytest.raises(configs.ConfigError, match="no_such.gin"):
    configs.parse(["gin_configs/runs/no_such.gin"])
  with pytest.raises(configs.ConfigError, match="WORKDIR"):
    configs.parse(["gin_configs/runs/baselines.gin"])


def test_results_table_shows_an_empty_cold_start_slice():
  """No cold-start users: the bootstrap mean is None; the table says so instead of crashing."""
  stat = {"mean": 0.25, "ci_low": 0.2, "ci_high": 0.3, "n": 10}
  empty = {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
  metrics = {"overall": {f"{m}@{k}": stat for m in ("recall", "ndcg") for k in (5, 10, 20)},
             "cold_start": {"recall@10": empty}}
  table = baselines_job.results_table({"pop": {"test": {"metrics": metrics}}}, "tiny",
                                 evaluation.EvalConfig())
  assert "| pop | 0.2500 (0.2000-0.3000)" in table and "n/a (no users)" in table
