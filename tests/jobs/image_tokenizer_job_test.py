"""The image semantic-ID job through gin: artifacts, agreement stats, a rerun resuming, bad input."""

import json
import os

import numpy as np
import pytest

from jaxrec import configs
from jaxrec.data.errors import DataError
from jaxrec.jobs import image_tokenizer_job

TINY = ["gin_configs/runs/image_ids.gin", "gin_configs/data/synthetic_tiny.gin"]
SMALL = ["dino_rq.DinoRqTrainConfig.num_steps = 6", "dino_rq.DinoRqTrainConfig.batch_size = 16",
         "IMAGE_SIZE = 16", "augment.MultiCropConfig.local_size = 8",
         "dino_rq.DinoRqConfig.codebook_size = 8",
         "image_tokenizer_job.ImageIdsJobConfig.checkpoint_every = 3"]


def _run(workdir, extra=()):
  configs.parse(TINY, SMALL + list(extra) + [f"WORKDIR = {str(workdir)!r}"])
  return configs.run_job(progress=False)


def test_job_writes_ids_embeddings_stats_and_a_rerun_resumes_to_the_same_ids(tmp_path):
  stats = _run(tmp_path)
  ids = np.load(tmp_path / "semantic_ids.npy")
  assert ids.shape == (60, 4) and ids.dtype == np.int32
  assert len({tuple(r) for r in ids}) == 60  # The collision level makes every ID unique.
  assert (ids[:, :3] < 8).all() and (ids >= 0).all()
  emb = np.load(tmp_path / "image_embeddings.npy")
  assert emb.shape == (60, 32) and np.isfinite(emb).all()
  sidecar = json.load(open(tmp_path / "image_embeddings.json"))
  assert sidecar["num_items"] == 60 and sidecar["modality"] == "image"
  saved = json.load(open(tmp_path / "tokenizer_stats.json"))
  assert saved["fingerprint"] == stats["fingerprint"] and saved["items_fitted"] == 60
  assert saved["after"]["collision_rate"] == 0.0 and saved["train_steps"] == 6
  # One NMI report per synthetic attribute, each with its shuffled baseline.
  assert {"color", "category", "shape"} <= set(saved["agreement"])
  color = saved["agreement"]["color"]
  assert 0.0 <= color["nmi_first"] <= 1.0 and "shuffled_first_max" in color
  assert saved["image_report"]["with_image"] == 60
  assert os.path.isfile(tmp_path / "codebook_usage.png")
  assert sorted(os.listdir(tmp_path / "dino_rq_checkpoints"))  # Checkpoints were written.
  # Jobs never skip themselves: a rerun resumes from the final checkpoint (no step left)
  # and writes the same IDs.
  steps = sorted(os.listdir(tmp_path / "dino_rq_checkpoints"))
  assert _run(tmp_path)["fingerprint"] == stats["fingerprint"]
  np.testing.assert_array_equal(np.load(tmp_path / "semantic_ids.npy"), ids)
  assert sorted(os.listdir(tmp_path / "dino_rq_checkpoints")) == steps


def test_bad_collision_strategy_names_the_binding(tmp_path):
  with pytest.raises(DataError, match="ImageIdsJobConfig.collision"):
    _run(tmp_path, ['image_tokenizer_job.ImageIdsJobConfig.collision = "random"'])
  assert not os.path.exists(tmp_path / "semantic_ids.npy")


def test_a_dataset_without_images_is_refused(tmp_path, monkeypatch):
  from jaxrec.data.dataset import ItemTable  # pylint: disable=g-import-not-at-top
  from jaxrec.data.config import DatasetConfig  # pylint: disable=g-import-not-at-top
  data = DatasetConfig(name="synthetic", options={"num_items": 12, "num_users": 30}).load()
  blank = ItemTable.empty(12)
  monkeypatch.setattr(DatasetConfig, "load",
                      lambda self: type(data)(**{**data.__dict__, "item_table": blank}))
  with pytest.raises(DataError, match="readable image"):
    image_tokenizer_job.load_images(DatasetConfig(name="synthetic"), 16, progress=False)
