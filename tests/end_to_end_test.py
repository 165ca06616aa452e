"""TIGER through the system job and gin (as tools/run.py runs it): artifacts, skipping,
re-running, tools/evaluate.py on the saved config."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from jaxrec import configs
from jaxrec.pipeline import system as system_pipeline
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.jobs import item_job

# A test-sized TIGER: the tiny catalog, a small RQ-VAE, T5Config.tiny, a few steps.
TINY = [
    "NUM_STEPS = 3",
    "MODEL_CONFIG = @t5_config.T5Config.tiny",
    "batching.BatchingConfig.batch_size = 16",
    "batching.BatchingConfig.bucket_boundaries = ()",  # One compiled shape.
    "rqvae.RqVaeConfig.hidden_dims = (32,)",
    "rqvae.RqVaeConfig.latent_dim = 8",
    "rqvae.RqVaeConfig.codebook_size = 8",
    "qtraining.TokenizerTrainConfig.num_steps = 10",
    "qtraining.TokenizerTrainConfig.batch_size = 64",
    "qtraining.TokenizerTrainConfig.warmup_steps = 2",
    "qtraining.TokenizerTrainConfig.kmeans_iters = 5",
    "evaluation.EvalConfig.num_bootstrap = 20",
    "evaluation.EvalConfig.splits = ('test',)",
    "DECODING = None",  # Greedy decoding: the cheapest evaluation.
]
FILES = ["gin_configs/papers/tiger.gin", "gin_configs/data/synthetic_tiny.gin"]


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  configs.clear()


def _run(workdir, extra=()):
  """What `tools/run.py --gin_file=... --workdir=...` does (in-process)."""
  configs.parse(FILES, TINY + list(extra) + [f"WORKDIR = {str(workdir)!r}"])
  summary = configs.run_job()
  configs.save_config(str(workdir))
  return summary


def _statuses(summary):
  return {name: s["status"] for name, s in summary["stages"].items()}


def test_pipeline_builds_skips_and_reruns_after_a_tokenizer_change(tmp_path, capsys):
  first = _run(tmp_path)
  assert _statuses(first) == {s: "ran" for s in ("baselines", "embeddings", "semantic_ids",
                                                 "generator", "evaluation")}
  emb = np.load(tmp_path / "embeddings" / "item_embeddings.npy")
  assert emb.shape == (60, 384) and emb.dtype == np.float32
  sidecar = json.loads((tmp_path / "embeddings" / "item_embeddings.json").read_text())
  assert sidecar["num_items"] == 60 and sidecar["encoder"] == "minilm"
  ids = np.load(tmp_path / "semantic_ids" / "semantic_ids.npy")
  assert ids.shape[0] == 60 and ids[:, :3].max() < 8
  assert json.loads((tmp_path / "generator" / "train_summary.json").read_text())["step"] == 3
  metrics = json.loads((tmp_path / "generator" / "eval" / "test_metrics.json").read_text())
  assert metrics["num_examples"] == 80 and "recall@10" in metrics["metrics"]["overall"]
  results = (tmp_path / "results.md").read_text()
  assert "| generator |" in results and "ndcg@5" in results and "| evaluation | ran |" in results
  saved = json.loads((tmp_path / "pipeline_summary.json").read_text())
  assert saved["metrics"]["test"]["overall"]["recall@5"]["ci_high"] <= 1.0
  assert saved["stages"]["semantic_ids"]["artifacts"]["semantic_ids.npy"].endswith(
      "semantic_ids/semantic_ids.npy")
  operative = (tmp_path / "config.gin").read_text()
  assert "system_pipeline.run_system.text_encoder = 'minilm'" in operative
  capsys.readouterr()

  # The same configuration again: every stage is skipped, nothing is rewritten.
  mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()
            and p.name not in ("results.md", "pipeline_summary.json", "config.gin")}
  second = _run(tmp_path)
  assert set(_statuses(second).values()) == {"skipped"}
  assert capsys.readouterr().out.count("skipped: up to date") == 5
  assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
  assert second["metrics"] == first["metrics"]

  # A changed tokenizer binding rebuilds the IDs and everything after them.
  third = _run(tmp_path, ["rqvae.RqVaeConfig.codebook_size = 4"])
  assert _statuses(third) == {"baselines": "skipped", "embeddings": "skipped",
                              "semantic_ids": "ran",
                              "generator": "ran", "evaluation": "ran"}
  assert np.load(tmp_path / "semantic_ids" / "semantic_ids.npy")[:, :3].max() < 4
  moved = sorted(p.name.split("-")[0] for p in (tmp_path / "superseded").iterdir())
  assert moved == ["generator", "semantic_ids"]  # The old folders are kept, not deleted.

  # tools/evaluate.py on the run's saved operative config gives the pipeline's figures.
  metrics_file = tmp_path / "generator" / "eval" / "test_metrics.json"
  expected = json.loads(metrics_file.read_text())["metrics"]
  metrics_file.unlink()
  subprocess.run([sys.executable, "tools/evaluate.py", f"--gin_file={tmp_path}/config.gin",
                  f"--workdir={tmp_path}/generator",
                  f"--semantic_ids={tmp_path}/semantic_ids/semantic_ids.npy"],
                 cwd=configs.REPO_ROOT, check=True, capture_output=True)
  assert json.loads(metrics_file.read_text())["metrics"] == expected


def test_stage_config_counts_gin_only_arguments_but_not_resumable_fields():
  configs.parse(FILES, TINY + ["WORKDIR = '/tmp/w'"])
  job = configs.bound_arguments(configs.selected_job())
  # run_system hashes each job with the arguments gin gives it (`configs.bound`).
  train = lambda: system_pipeline.job_config(  # noqa: E731
      configs.bound(job["train_job"]), {}, drop=system_pipeline.RESUMABLE_FIELDS)
  evaluate = lambda: system_pipeline.job_config(configs.bound(job["eval_job"]), {})  # noqa: E731
  before_train, before_eval = train(), evaluate()
  # T5Config.tiny's dropout, in the GeneratorConfig both jobs receive.
  assert before_train["generator"]["model_config"]["bindings"]["dropout_rate"] == 0.0
  assert before_eval["generator"] == before_train["generator"]
  configs.parse(FILES, TINY + ["WORKDIR = '/tmp/w'", "NUM_STEPS = 50"])
  assert train() == before_train  # Training longer resumes the run.
  configs.parse(FILES, TINY + ["WORKDIR = '/tmp/w'",
                               "generator_job.evaluate_generator.checkpoint = 'latest'"])
  assert train() == before_train and evaluate() != before_eval
  assert evaluate()["checkpoint"] == "latest"


def test_run_gin_files_select_their_jobs():
  for path, name in [("gin_configs/runs/baselines.gin", "run_system"),
                     ("gin_configs/papers/tiger.gin", "run_system")]:
    configs.parse([path], ["WORKDIR = '/tmp/w'"])
    assert configs.selected_job().__name__ == name


def test_no_job_selected_names_the_fix():
  configs.parse(["gin_configs/tokenizers/rqvae_tiger.gin"])
  with pytest.raises(configs.ConfigError, match=r"select no job.*JOB = @"):
    configs.run_job()
  configs.parse(["gin_configs/runs/baselines.gin"],
                ["WORKDIR = '/tmp/w'", "JOB = @evaluation.EvalConfig()"])
  with pytest.raises(configs.ConfigError, match="without parentheses"):
    configs.run_job()


@dataclasses.dataclass(frozen=True)
class _NoText(DatasetConfig):
  """The tiny synthetic catalog with every item text blanked."""

  def load(self):
    data = super().load()
    data.item_table.text[1:] = ""
    return data


def test_items_without_text_are_refused(tmp_path):
  dataset = _NoText(options={"num_items": 60, "num_users": 80, "image_size": 16})
  with pytest.raises(DataError, match="none of the 60 items"):
    item_job.encode_items(str(tmp_path / "e.npy"), dataset, progress=False)
