"""Image loading: known resize/crop answers, mode conversions, bad files, folders."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from jaxrec.data.dataset import ItemTable
from jaxrec.data.errors import DataError
from jaxrec.encoders import image_io


def _table(paths) -> ItemTable:
  table = ItemTable.empty(len(paths))
  table.image_paths[1:] = [str(p) for p in paths]
  return table


def test_resize_center_crop_known_answers():
  # Landscape 4x8 (h x w) at size 4: no resampling, columns 2..5 are kept.
  image = np.arange(4 * 8 * 3, dtype=np.uint8).reshape(4, 8, 3)
  np.testing.assert_array_equal(image_io.resize_center_crop(Image.fromarray(image), 4),
                                image[:, 2:6])
  # Portrait 7x4 at size 4: rows 1..4 (floor(3 / 2) = 1 dropped at the top, 2 at the bottom).
  tall = np.arange(7 * 4 * 3, dtype=np.uint8).reshape(7, 4, 3)
  np.testing.assert_array_equal(image_io.resize_center_crop(Image.fromarray(tall), 4),
                                tall[1:5])
  # A constant 2x3 image upscaled (shorter side 2 -> 6, width 9, crop 6) stays constant.
  flat = np.full((2, 3, 3), (10, 200, 90), np.uint8)
  out = image_io.resize_center_crop(Image.fromarray(flat), 6)
  assert out.shape == (6, 6, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.broadcast_to([10, 200, 90], (6, 6, 3)))
  # Halving a 2-pixel checker keeps the left/right halves' colours apart.
  halves = np.zeros((8, 8, 3), np.uint8)
  halves[:, 4:] = 255
  small = image_io.resize_center_crop(Image.fromarray(halves), 4)
  assert small[:, 0].max() < 30 and small[:, 3].min() > 225
  batch = image_io.resize_center_crop_batch(np.stack([image, image]), 4)
  np.testing.assert_array_equal(batch[1], image[:, 2:6])


def test_modes_bad_files_and_report(tmp_path):
  rgb = np.zeros((6, 6, 3), np.uint8)
  rgb[..., 0] = 200
  Image.fromarray(rgb).save(tmp_path / "good.png")
  Image.fromarray(rgb).save(tmp_path / "good.jpg", quality=95)
  Image.fromarray(np.full((6, 6), 77, np.uint8), "L").save(tmp_path / "grey.png")
  rgba = np.zeros((6, 6, 4), np.uint8)
  rgba[:3] = (0, 0, 255, 255)  # Opaque blue top half, fully transparent bottom half.
  rgba[3:] = (255, 0, 0, 0)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
  palette = Image.fromarray(np.full((6, 6, 3), (0, 128, 0), np.uint8)).convert(
      "P", palette=Image.Palette.ADAPTIVE)
  palette.save(tmp_path / "palette.png")
  Image.fromarray(np.full((6, 6), 65535, np.uint16)).save(tmp_path / "sixteen.png")
  Image.new("CMYK", (6, 6), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
  full = (tmp_path / "good.jpg").read_bytes()
  (tmp_path / "truncated.jpg").write_bytes(full[:len(full) // 2])
  (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
  names = ["good.png", "grey.png", None, "rgba.png", "palette.png", "sixteen.png",
           "cmyk.jpg", "truncated.jpg", "noise.jpg", "missing.jpg", "good.jpg"]
  table = _table([tmp_path / n if n else "" for n in names])

  loaded = image_io.load_item_images(table, 4, progress=False)

  ok = [1, 2, 4, 5, 6, 7, 11]
  expected_has = np.zeros(len(names) + 1, bool)
  expected_has[ok] = True
  np.testing.assert_array_equal(loaded.has_image, expected_has)
  assert loaded.images.shape == (12, 4, 4, 3) and loaded.images.dtype == np.uint8
  assert not loaded.images[~loaded.has_image].any()  # Row 0, missing and skipped are zeros.
  np.testing.assert_array_equal(loaded.images[1], np.broadcast_to([200, 0, 0], (4, 4, 3)))
  np.testing.assert_array_equal(loaded.images[2], np.full((4, 4, 3), 77))
  np.testing.assert_array_equal(loaded.images[4][0], np.broadcast_to([0, 0, 255], (4, 3)))
  np.testing.assert_array_equal(loaded.images[4][-1], np.full((4, 3), 255))  # On white.
  np.testing.assert_array_equal(loaded.images[5], np.broadcast_to([0, 128, 0], (4, 4, 3)))
  np.testing.assert_array_equal(loaded.images[6], np.full((4, 4, 3), 255))  # 65535 -> 255.
  assert loaded.images[7].min() > 240  # CMYK (0, 0, 0, 0) is white.
  assert np.abs(loaded.images[11].astype(int) - [200, 0, 0]).max() < 8

  report = loaded.report
  assert report["num_items"] == 11 and report["with_image"] == 7 and report["size"] == 4
  assert report["missing"] == 1 and report["num_skipped"] == 3
  assert [s["item"] for s in report["skipped"]] == [8, 9, 10]
  reasons = {s["item"]: s["reason"] for s in report["skipped"]}
  assert "truncated" in reasons[8].lower() and "not an image" in reasons[9]
  assert reasons[10] == "file not found"
  assert report["skipped"][2]["path"] == str(tmp_path / "missing.jpg")
  assert report["converted"] == 5
  assert set(report["converted_modes"]) == {"L", "RGBA", "P", "CMYK", "I;16"}
  assert report["seconds"] >= 0 and report["source"] == "files"
  assert "3 skipped" in image_io.skipped_summary(report)


def test_skipped_list_is_capped(tmp_path, monkeypatch):
  monkeypatch.setattr(image_io, "MAX_LISTED", 2)
  loaded = image_io.load_item_images(_table([tmp_path / f"{i}.jpg" for i in range(5)]), 4,
                                     progress=False, num_workers=2)
  assert loaded.report["num_skipped"] == 5 and len(loaded.report["skipped"]) == 2


def test_synthetic_table_array():
  table = ItemTable.empty(3)
  images = np.zeros((4, 6, 6, 3), np.uint8)
  images[1:] = np.arange(1, 4, dtype=np.uint8)[:, None, None, None] * 50
  same = image_io.load_item_images(dataclasses.replace(table, images=images), 6,
                                   progress=False)
  np.testing.assert_array_equal(same.images, images)
  np.testing.assert_array_equal(same.has_image, [False, True, True, True])
  assert same.report["source"] == "array" and same.report["with_image"] == 3
  resized = image_io.load_item_images(dataclasses.replace(table, images=images), 3,
                                      progress=False)
  assert resized.images.shape == (4, 3, 3, 3)
  np.testing.assert_array_equal(resized.images[2], np.full((3, 3, 3), 100))


@pytest.mark.parametrize("bad", [np.zeros((4, 6, 6), np.uint8), np.zeros((4, 6, 6, 4), np.uint8),
                                 np.zeros((3, 6, 6, 3), np.uint8),
                                 np.zeros((4, 6, 6, 3), np.float32)])
def test_bad_images_array(bad):
  table = dataclasses.replace(ItemTable.empty(3), images=bad)
  with pytest.raises(DataError, match="item_table.images.*Fix: pass ItemTable.images"):
    image_io.load_item_images(table, 4, progress=False)


def test_image_paths_from_dir(tmp_path):
  for name in ["0108775015.jpg", "7.png", "7.JPG", "8.jpeg", "8.png", "notes.txt", "9.gif"]:
    (tmp_path / name).write_bytes(b"x")
  raw_ids = np.array(["", "0108775015", "7", "8", "9", "10"], dtype=object)
  paths = image_io.image_paths_from_dir(tmp_path, raw_ids)
  assert paths.dtype == object and len(paths) == 6
  assert list(paths) == ["", str(tmp_path / "0108775015.jpg"), str(tmp_path / "7.JPG"),
                         str(tmp_path / "8.jpeg"), "", ""]
  with pytest.raises(DataError, match="nowhere: image folder not found"):
    image_io.image_paths_from_dir(tmp_path / "nowhere", raw_ids)
