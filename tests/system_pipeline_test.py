"""Every paper configuration end to end on the tiny synthetic catalog (with images), as
`tools/run.py --gin_file=gin_configs/papers/<system>.gin` runs it, at test size."""

import json

import numpy as np
import pytest

from jaxrec import configs
from jaxrec.data.errors import DataError

# Test-sized everything: the tiny catalog (60 items with 16 px images), small tokenizers,
# T5Config.tiny, a few steps of every trained model, greedy-free beam search of width 4.
TINY = [
    "NUM_STEPS = 3",
    "MODEL_CONFIG = @t5_config.T5Config.tiny",
    "batching.BatchingConfig.batch_size = 16",
    "batching.BatchingConfig.bucket_boundaries = ()",
    "rqvae.RqVaeConfig.hidden_dims = (32,)",
    "rqvae.RqVaeConfig.latent_dim = 8",
    "rqvae.RqVaeConfig.codebook_size = 8",
    "qtraining.TokenizerTrainConfig.num_steps = 10",
    "qtraining.TokenizerTrainConfig.batch_size = 64",
    "qtraining.TokenizerTrainConfig.warmup_steps = 2",
    "qtraining.TokenizerTrainConfig.kmeans_iters = 5",
    "pipeline.EvalConfig.num_bootstrap = 20",
    "pipeline.EvalConfig.splits = ('test',)",
    "beam_search.DecodingConfig.beam_size = 10",
    "beam_search.DecodingConfig.top_k = 10",
    "pipeline.EvalConfig.ks = (1, 5, 10)",
]
SASREC = [
    "COLLAB_STEPS = 4", "COLLAB_EVAL_EVERY = 4",
    "collab/batching.BatchingConfig.batch_size = 16",
    "collab/batching.BatchingConfig.bucket_boundaries = ()",
    "collab/sasrec.SasRecConfig.hidden = 16",
    "collab/sasrec.SasRecConfig.max_len = 10",
    "collab/trainer.TrainerConfig.max_history = 10",
    "collab/pipeline.EvalConfig.num_bootstrap = 10",
]
LIGHTGCN = [
    "COLLAB_EPOCHS = 2", "COLLAB_EVAL_EVERY = 1",
    "collab/lightgcn.LightGcnConfig.embed_dim = 16",
    "collab/lightgcn_job.LightGcnTrainConfig.batch_size = 256",
    "collab/pipeline.EvalConfig.num_bootstrap = 10",
]
DATA = "gin_configs/data/synthetic_tiny.gin"


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  configs.clear()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """One feature cache for the module: text, image and collaborative features are built once."""
  return tmp_path_factory.mktemp("features")


def _run(files, workdir, cache, extra=()):
  configs.parse(files, TINY + list(extra) + [f"WORKDIR = {str(workdir)!r}",
                                             f"FEATURE_CACHE = {str(cache)!r}"])
  summary = configs.run_job()
  configs.save_config(str(workdir))
  return summary


def _check_metrics(workdir, summary):
  metrics = json.loads((workdir / "generator" / "eval" / "test_metrics.json").read_text())
  assert metrics["num_examples"] == 80 and metrics["found_rate"] == 1.0
  overall = metrics["metrics"]["overall"]
  assert 0.0 <= overall["recall@10"]["mean"] <= 1.0
  assert summary["metrics"]["test"]["overall"]["recall@10"]["mean"] == overall["recall@10"]["mean"]
  assert (workdir / "results.md").read_text().count("| generator | 0.") == 1


def test_letter_aligns_the_text_ids_with_sasrec(tmp_path, cache):
  summary = _run(["gin_configs/papers/letter.gin", DATA], tmp_path, cache, SASREC)
  assert summary["system"] == "LETTER" and summary["modalities"] == ["text", "collab"]
  assert set(summary["stages"]) == {"embeddings", "collaborative", "semantic_ids", "generator",
                                    "evaluation"}
  stats = json.loads((tmp_path / "semantic_ids" / "tokenizer_stats.json").read_text())
  assert stats["align_targets"].endswith("item_embeddings.npy")
  assert stats["collision_strategy"] == "sinkhorn" and stats["after"]["collision_rate"] == 0
  assert np.load(summary["features"]["collab"]).shape == (60, 16)
  _check_metrics(tmp_path, summary)
