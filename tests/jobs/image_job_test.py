"""The image-feature job: artifacts, its stage skipping a rerun, the precomputed-features adapter, bad input."""

import json
import os

import numpy as np
import pytest

from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.jobs import image_job
from jaxrec.pipeline import stage as stage_lib
from jaxrec.pipeline import system

TINY = DatasetConfig(name="synthetic", options={"num_items": 12, "num_users": 40,
                                                "image_size": 16})


def test_features_adapter_writes_npy_and_sidecar(tmp_path):
  features = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
  features[3] = 0.0
  src = tmp_path / "mine.npy"
  np.save(src, features)
  out = str(tmp_path / "out" / "image_features.npy")
  assert image_job.encode_images(out, TINY, encoder="features", features_path=str(src),
                                 progress=False) == out
  np.testing.assert_array_equal(np.load(out), features)
  meta = json.load(open(tmp_path / "out" / "image_features.json"))
  assert meta["modality"] == "image" and meta["dim"] == 5 and meta["num_items"] == 12
  assert meta["encoder_meta"]["zero_rows"] == 1



def test_the_image_stage_skips_a_rerun_and_rebuilds_for_other_features(tmp_path, capsys):
  """tools/encode_items.py's one-stage pipeline (the job itself always computes): the same
  precomputed features are skipped, other content rebuilds."""
  src = tmp_path / "mine.npy"
  np.save(src, np.ones((12, 5), np.float32))

  def run():
    stage = system.image_stage(TINY, "features", progress=False, features_path=str(src))
    return stage_lib.run_pipeline(str(tmp_path / "work"), [stage], progress=False)[
        "stages"]["image_features"]
  first = run()
  assert first["status"] == "ran" and run()["status"] == "skipped"
  np.save(src, np.full((12, 5), 2.0, np.float32))
  again = run()
  assert again["status"] == "ran" and again["fingerprint"] != first["fingerprint"]
  np.testing.assert_array_equal(np.load(again["artifacts"]["image_features.npy"]), 2.0)


def test_efficientnet_features_of_the_synthetic_images(tmp_path):
  out = str(tmp_path / "f.npy")
  image_job.encode_images(out, TINY, encoder="efficientnet_lite0", image_size=32,
                          batch_size=12, progress=False)
  x = np.load(out)
  assert x.shape == (12, 1280) and x.dtype == np.float32 and np.isfinite(x).all()
  assert (np.abs(x).sum(1) > 0).all()  # Every synthetic item has an image.
  meta = json.load(open(tmp_path / "f.json"))
  assert meta["image_report"]["with_image"] == 12 and meta["encoder"] == "efficientnet_lite0"


def test_bad_input_names_the_binding_and_writes_nothing(tmp_path):
  out = str(tmp_path / "f.npy")
  with pytest.raises(DataError, match="encode_images.encoder"):
    image_job.encode_images(out, TINY, encoder="clip", progress=False)
  with pytest.raises(DataError, match="features_path"):
    image_job.encode_images(out, TINY, encoder="features", progress=False)
  wrong = tmp_path / "wrong.npy"
  np.save(wrong, np.ones((7, 3), np.float32))
  with pytest.raises(DataError, match="wrong.npy"):
    image_job.encode_images(out, TINY, encoder="features", features_path=str(wrong),
                            progress=False)
  assert not os.path.exists(out) and not os.path.exists(tmp_path / "f.json")


def test_image_dir_replaces_the_dataset_images_and_counts_skips(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  raw = TINY.load().item_table.raw_ids
  folder = tmp_path / "photos"
  folder.mkdir()
  for r in raw[1:4]:
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(folder / f"{r}.png")
  (folder / f"{raw[4]}.jpg").write_bytes(b"not an image")
  out = str(tmp_path / "f.npy")
  image_job.encode_images(out, TINY, encoder="efficientnet_lite0", image_size=32,
                          image_dir=str(folder), progress=False)
  x = np.load(out)
  assert (np.abs(x[:3]).sum(1) > 0).all() and not x[3:].any()  # Zero rows: no image.
  report = json.load(open(tmp_path / "f.json"))["image_report"]
  assert report["with_image"] == 3 and report["num_skipped"] == 1
  assert report["missing"] == 12 - 4
  with pytest.raises(DataError, match="image folder not found"):
    image_job.encode_images(str(tmp_path / "g.npy"), TINY, encoder="efficientnet_lite0",
                            image_dir=str(tmp_path / "nowhere"), progress=False)
