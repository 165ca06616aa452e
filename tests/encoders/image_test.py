"""The image-encoder front: the precomputed-features adapter and encode_item_images."""

import dataclasses

import numpy as np
import pytest

from jaxrec.data.errors import DataError
from jaxrec.encoders import image
from jaxrec.encoders.image_io import ItemImages


def _item_images(has_image, size=4) -> ItemImages:
  has_image = np.asarray([False] + list(has_image))
  images = np.zeros([len(has_image), size, size, 3], np.uint8)
  for item in np.flatnonzero(has_image):
    images[item] = item * 10  # Item i is the constant colour 10 * i.
  return ItemImages(images=images, has_image=has_image, report={})


@dataclasses.dataclass
class MeanColour:
  """A fake encoder: the mean RGB of each image; records the batches it saw."""
  name: str = "mean_colour"
  dim: int = 3
  calls: list = dataclasses.field(default_factory=list)

  def encode(self, images, batch_size=64, progress=True):
    self.calls.append((len(images), batch_size, progress))
    return images.reshape(len(images), -1, 3).mean(1).astype(np.float32)


def test_precomputed_features(tmp_path):
  rows = np.arange(12, dtype=np.float64).reshape(4, 3)
  np.save(tmp_path / "n.npy", rows)
  got = image.load_precomputed_features(tmp_path / "n.npy", 4)
  assert got.dtype == np.float32 and got.shape == (4, 3)
  np.testing.assert_array_equal(got, rows)
  np.save(tmp_path / "n1.npy", np.concatenate([np.full((1, 3), 99.0), rows]))
  np.testing.assert_array_equal(image.load_precomputed_features(tmp_path / "n1.npy", 4), rows)


@pytest.mark.parametrize("array,match", [
    (np.zeros((3, 3)), "3 rows for 4 items"),
    (np.zeros((6, 3)), "6 rows for 4 items"),
    (np.zeros(4), r"shape \(4,\), not \[items, d\]"),
    (np.array([[0.0, 1.0]] * 2 + [[np.nan, 1.0]] + [[0.0, np.inf]]),
     r"2 rows hold NaN or inf \(first: item 3\)"),
    (np.array([["a"]] * 4), "dtype <U1, not a number"),
])
def test_precomputed_features_errors(tmp_path, array, match):
  np.save(tmp_path / "f.npy", array)
  with pytest.raises(DataError, match=match) as e:
    image.load_precomputed_features(tmp_path / "f.npy", 4)
  assert str(tmp_path / "f.npy") in str(e.value) and "Fix:" in str(e.value)


def test_precomputed_features_missing_or_garbage(tmp_path):
  with pytest.raises(DataError, match="absent.npy: image feature file not found.*Fix: save"):
    image.load_precomputed_features(tmp_path / "absent.npy", 4)
  (tmp_path / "garbage.npy").write_bytes(b"not numpy at all")
  with pytest.raises(DataError, match="garbage.npy: not a readable .npy file"):
    image.load_precomputed_features(tmp_path / "garbage.npy", 4)


def test_encode_item_images_zero_rows_for_missing_images():
  items = _item_images([True, False, True, True, False])
  fake = MeanColour()
  features, meta = image.encode_item_images(items, fake, batch_size=2, progress=False)
  np.testing.assert_array_equal(features, [[10] * 3, [0] * 3, [30] * 3, [40] * 3, [0] * 3])
  assert features.dtype == np.float32
  assert fake.calls == [(3, 2, False)]  # Only the three items with an image are encoded.
  assert meta["num_items"] == 5 and meta["with_image"] == 3 and meta["without_image"] == 2
  assert meta["encoder"] == "mean_colour" and meta["dim"] == 3 and meta["image_size"] == 4
  assert meta["seconds"] >= 0


def test_encode_item_images_precomputed(tmp_path):
  rows = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
  rows[1] = 0
  np.save(tmp_path / "f.npy", rows)
  items = _item_images([True, False, True])
  features, meta = image.encode_item_images(items, "features", features_path=tmp_path / "f.npy")
  np.testing.assert_array_equal(features, rows)
  assert meta["encoder"] == "features" and meta["dim"] == 5 and meta["zero_rows"] == 1
  assert meta["resolution"] is None and meta["source"].endswith("f.npy")
  with pytest.raises(DataError, match="needs features_path"):
    image.encode_item_images(items, "features")
  with pytest.raises(DataError, match="unknown image encoder 'clip'"):
    image.encode_item_images(items, "clip")


def test_encode_item_images_with_lite0():
  items = _item_images([True, False, True], size=32)
  features, meta = image.encode_item_images(items, "efficientnet_lite0", batch_size=2,
                                            progress=False)
  assert features.shape == (3, 1280) and features.dtype == np.float32
  assert not features[1].any() and features[0].any() and features[2].any()
  assert np.isfinite(features).all() and not np.allclose(features[0], features[2])
  assert meta["resolution"] == 224 and meta["source"].endswith(".pth")
  assert meta["images_per_second"] > 0
  assert image.IMAGE_ENCODERS == ("efficientnet_lite0", "efficientnet_lite2", "features")
