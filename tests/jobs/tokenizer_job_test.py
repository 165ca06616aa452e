"""The semantic-ID job: artifacts, resume after a crash, a rerun resuming, and bad input."""

import json
import os

import numpy as np
import pytest

from jaxrec.data.errors import DataError
from jaxrec.quantizers import rqvae
from jaxrec.quantizers import training as qtraining
from jaxrec.training import checkpoints
from jaxrec.jobs import tokenizer_job

SMALL = rqvae.RqVaeConfig(hidden_dims=(32,), latent_dim=8, num_levels=2, codebook_size=8)
STEPS = qtraining.TokenizerTrainConfig(num_steps=12, batch_size=64, kmeans_iters=5,
                                       warmup_steps=2, log_every=4)
JOB = tokenizer_job.TokenizerJobConfig(checkpoint_every=4)


@pytest.fixture(scope="module")
def embeddings_file(tmp_path_factory):
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(16, 24))
  x = centers[rng.integers(0, 16, 200)] + 0.05 * rng.normal(size=(200, 24))
  path = tmp_path_factory.mktemp("emb") / "item_embeddings.npy"
  np.save(path, x.astype(np.float32))
  return str(path)


def _build(workdir, path, **kw):
  args = dict(model_config=SMALL, train_config=STEPS, job=JOB, progress=False)
  args.update(kw)
  return tokenizer_job.build_semantic_ids(str(workdir), path, **args)


def test_rqvae_job_writes_unique_ids_stats_and_plot(tmp_path, embeddings_file):
  stats = _build(tmp_path, embeddings_file)
  ids = np.load(tmp_path / "semantic_ids.npy")
  assert ids.shape == (200, 3) and ids.dtype == np.int32
  assert len(np.unique(ids, axis=0)) == 200
  saved = json.loads((tmp_path / "tokenizer_stats.json").read_text())
  assert saved == stats
  assert saved["after"]["collision_rate"] == 0.0
  assert saved["before"]["num_distinct_ids"] <= 64
  assert len(saved["before"]["levels"]) == 2 and saved["training_curve"][-1]["step"] == 12
  assert (tmp_path / "codebook_usage.png").stat().st_size > 1000
  assert sorted(os.listdir(tmp_path / "tokenizer_checkpoints")) == ["12", "8"]


def _crash_after_step_8(workdir, embeddings_file, monkeypatch):
  """A build killed right after its step-8 checkpoint (checkpoints kept: 4 and 8)."""
  original_save = checkpoints.Checkpointer.save

  def crash_after_step_8(self, step, state, meta=None, force=False):
    saved = original_save(self, step, state, meta, force)
    if step == 8:
      self.wait()
      raise KeyboardInterrupt("simulated kill")
    return saved

  with monkeypatch.context() as patch:
    patch.setattr(checkpoints.Checkpointer, "save", crash_after_step_8)
    with pytest.raises(KeyboardInterrupt):
      _build(workdir, embeddings_file)


def test_resume_after_crash_gives_the_uninterrupted_ids(tmp_path, embeddings_file, monkeypatch):
  _build(tmp_path / "whole", embeddings_file)
  _crash_after_step_8(tmp_path / "crashed", embeddings_file, monkeypatch)
  assert not (tmp_path / "crashed" / "semantic_ids.npy").exists()
  _build(tmp_path / "crashed", embeddings_file)
  np.testing.assert_array_equal(np.load(tmp_path / "crashed" / "semantic_ids.npy"),
                                np.load(tmp_path / "whole" / "semantic_ids.npy"))


def test_damaged_newest_checkpoint_resumes_from_the_older_with_the_same_ids(
    tmp_path, embeddings_file, monkeypatch):
  _build(tmp_path / "whole", embeddings_file)
  _crash_after_step_8(tmp_path / "crashed", embeddings_file, monkeypatch)
  ckpt_dir = tmp_path / "crashed" / "tokenizer_checkpoints"
  assert sorted(os.listdir(ckpt_dir)) == ["4", "8"]
  with open(ckpt_dir / "8" / "meta" / "metadata", "r+") as f:
    f.truncate(10)  # the newest checkpoint's metadata cut short
  with pytest.warns(checkpoints.CheckpointDamageWarning, match="resuming from step 4"):
    _build(tmp_path / "crashed", embeddings_file)
  assert "corrupt-8" in os.listdir(ckpt_dir)
  np.testing.assert_array_equal(np.load(tmp_path / "crashed" / "semantic_ids.npy"),
                                np.load(tmp_path / "whole" / "semantic_ids.npy"))


def test_second_fit_in_the_same_folder_is_refused(tmp_path, embeddings_file):
  with checkpoints.workdir_lock(str(tmp_path)):
    with pytest.raises(checkpoints.WorkdirError, match="is in use: another process is running "
                                                       "a RQ-VAE fit"):
      _build(tmp_path, embeddings_file)


def test_rerun_resumes_to_the_same_ids_and_other_config_refuses_old_checkpoint(
    tmp_path, embeddings_file):
  """Jobs never skip themselves: a rerun resumes from the final checkpoint (nothing left to
  train) and writes the same IDs; another configuration is refused the old checkpoints."""
  first = _build(tmp_path, embeddings_file)
  ids = np.load(tmp_path / "semantic_ids.npy")
  steps = sorted(os.listdir(tmp_path / "tokenizer_checkpoints"))
  assert _build(tmp_path, embeddings_file)["fingerprint"] == first["fingerprint"]
  np.testing.assert_array_equal(np.load(tmp_path / "semantic_ids.npy"), ids)
  assert sorted(os.listdir(tmp_path / "tokenizer_checkpoints")) == steps
  with pytest.raises(checkpoints.CheckpointError, match="another configuration"):
    _build(tmp_path, embeddings_file, model_config=rqvae.RqVaeConfig(
        hidden_dims=(32,), latent_dim=8, num_levels=2, codebook_size=4))


@pytest.mark.parametrize("collision", ["extra_level", "sinkhorn", "nearest_unused"])
def test_rqkmeans_job_with_each_collision_strategy(tmp_path, embeddings_file, collision):
  job = tokenizer_job.TokenizerJobConfig(method="rqkmeans", collision=collision,
                                         rqkmeans_iters=5)
  stats = _build(tmp_path, embeddings_file, job=job)
  ids = np.load(tmp_path / "semantic_ids.npy")
  assert len(np.unique(ids, axis=0)) == 200 == stats["num_items"]
  assert stats["after"]["collision_rate"] == 0.0


def test_bad_embeddings_are_named(tmp_path, embeddings_file):
  x = np.load(embeddings_file)
  bad = x.copy()
  bad[7, 3] = np.nan
  np.save(tmp_path / "nan.npy", bad)
  with pytest.raises(DataError, match=r"nan.npy: 1 row\(s\) contain NaN or Inf .*\[7\]"):
    _build(tmp_path / "w1", str(tmp_path / "nan.npy"))
  with pytest.raises(DataError, match="catalog has 150 items"):
    _build(tmp_path / "w2", embeddings_file, job=tokenizer_job.TokenizerJobConfig(
        expected_num_items=150))
  with pytest.raises(DataError, match=r"RqVaeConfig.codebook_size=256 is larger than the number of items \(200\)"):
    _build(tmp_path / "w3", embeddings_file, model_config=rqvae.RqVaeConfig())
  with pytest.raises(DataError, match="not found"):
    _build(tmp_path / "w4", str(tmp_path / "missing.npy"))
  with pytest.raises(DataError, match="TokenizerJobConfig.collision"):
    _build(tmp_path / "w5", embeddings_file, job=tokenizer_job.TokenizerJobConfig(collision="x"))
  assert not (tmp_path / "w1" / "semantic_ids.npy").exists()


def test_sidecar_row_count_is_checked(tmp_path, embeddings_file):
  x = np.load(embeddings_file)
  np.save(tmp_path / "item_embeddings.npy", x)
  (tmp_path / "item_embeddings.json").write_text(json.dumps({"num_items": 201}))
  with pytest.raises(DataError, match="catalog has 201 items"):
    _build(tmp_path / "w", str(tmp_path / "item_embeddings.npy"))


def test_reference_ids_reader(tmp_path):
  path = tmp_path / "ref.json"
  path.write_text(json.dumps({"2": ["<a_1>", "<b_5>"], "1": ["<a_1>", "<b_5>"],
                              "10": ["<a_0>", "<b_2>"]}))
  ids = tokenizer_job.read_reference_ids(str(path))
  np.testing.assert_array_equal(ids, [[1, 5], [1, 5], [0, 2]])

