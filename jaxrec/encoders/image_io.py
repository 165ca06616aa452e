"""Host-side item images: decode, convert to RGB, resize + centre-crop to a square.

`load_item_images` turns an ItemTable's image files (or the synthetic catalog's
in-memory images) into one [N + 1, size, size, 3] uint8 array with a has_image mask.
Every image is resized so that its SHORTER side is `size` (Pillow bicubic, which
low-pass filters when shrinking), then the central size x size square is cropped
(`resize_center_crop`). Bad files never stop the run: they are counted and listed in
the report and the item is treated as having no image.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from typing import Optional, Sequence

import numpy as np
import tqdm
from PIL import Image

from jaxrec.data.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # image_paths_from_dir's preference order.
MAX_LISTED = 100  # Skipped images listed in the report (all are counted).
NUM_WORKERS = 4  # Decoding threads (Pillow releases the GIL while decoding/resizing).
_SIXTEEN_BIT = ("I", "I;16", "I;16L", "I;16B", "I;16N")


@dataclasses.dataclass(frozen=True, eq=False)
class ItemImages:
  """Square RGB images of all items, indexed by item id (row 0 is the padding item).

  Attributes:
    images: [num_items + 1, size, size, 3] uint8; all zeros at row 0 and for items
      without a (readable) image.
    has_image: [num_items + 1] bool; False at row 0.
    report: num_items, with_image, missing (no path), skipped (list of at most 100
      {item, path, reason}), num_skipped, converted (images converted to RGB),
      converted_modes {mode: count}, size, seconds, source ("files" / "array").
  """
  images: np.ndarray
  has_image: np.ndarray
  report: dict

  @property
  def num_items(self) -> int:
    return len(self.has_image) - 1

  @property
  def size(self) -> int:
    return int(self.images.shape[1])


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
  """Shorter side to `size` (bicubic), then the centre size x size square.

  For a w x h image with w <= h the resize target is size x round(h * size / w); the
  crop drops floor(extra / 2) rows at the top and the rest at the bottom (columns the
  same way for landscape images). An image that is already size pixels on its shorter
  side is only cropped (no resampling).

  Args:
    image: an RGB (or L) PIL image.
    size: output side in pixels.

  Returns:
    [size, size, channels] uint8.
  """
  w, h = image.size
  scale = size / min(w, h)
  nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
  if (nw, nh) != (w, h):
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
  left, top = (nw - size) // 2, (nh - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)))


def resize_center_crop_batch(images: np.ndarray, size: int) -> np.ndarray:
  """`resize_center_crop` of each image: [n, h, w, 3] uint8 -> [n, size, size, 3] uint8."""
  if images.shape[1:3] == (size, size):
    return images
  out = np.zeros([len(images), size, size, 3], np.uint8)
  for i, image in enumerate(images):
    out[i] = resize_center_crop(Image.fromarray(image), size)
  return out


def to_rgb(image: Image.Image) -> tuple:
  """Any Pillow mode -> (RGB image, the original mode or None if it was RGB).

  Transparent images (RGBA, LA, P/L/RGB with a transparency key) are composited on
  white; 16-bit grey (I;16*, I) is scaled by 1/257 when it exceeds 255, F is clipped to
  0..255; everything else (L, 1, P, CMYK, YCbCr, ...) uses Pillow's conversion.
  """
  mode = image.mode
  if mode == "RGB":
    return image, None
  if mode in _SIXTEEN_BIT or mode == "F":
    grey = np.asarray(image).astype(np.float64)
    if mode != "F" and grey.size and grey.max() > 255:
      grey = grey / 257.0
    image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
  elif image.has_transparency_data:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    image = white
  return image.convert("RGB"), mode


def decode_image(path: str, size: int) -> tuple:
  """Reads one image file; never raises for a bad file.

  JPEGs are decoded at a reduced DCT scale that keeps both sides >= size (Pillow's
  `draft`), which is much faster for large photos and nearly identical after resizing.

  Returns:
    (pixels [size, size, 3] uint8 or None, converted-from mode or None, reason or None).
  """
  try:
    with Image.open(path) as image:
      image.draft(None, (size, size))
      image.load()
      rgb, mode = to_rgb(image)
      return resize_center_crop(rgb, size), mode, None
  except FileNotFoundError:
    return None, None, "file not found"
  except Image.UnidentifiedImageError:
    return None, None, "not an image (unknown format)"
  except Exception as e:  # pylint: disable=broad-except  Truncated, permissions, bombs, ...
    return None, None, f"unreadable: {type(e).__name__}: {e}"


def _check_images_array(images: np.ndarray, num_items: int) -> np.ndarray:
  images = np.asarray(images)
  fix = ("pass ItemTable.images as [num_items + 1, height, width, 3] uint8 RGB (row 0 = "
         "padding), e.g. np.clip(x * 255, 0, 255).astype(np.uint8) for floats in [0, 1].")
  if images.ndim != 4 or images.shape[-1] != 3:
    raise DataError(f"item_table.images has shape {images.shape}, not "
                    "[num_items + 1, height, width, 3]", fix=fix)
  if len(images) != num_items + 1:
    raise DataError(f"item_table.images has {len(images)} rows for {num_items} items "
                    f"(expected {num_items + 1}, row 0 = padding)", fix=fix)
  if images.dtype != np.uint8:
    raise DataError(f"item_table.images has dtype {images.dtype}, not uint8", fix=fix)
  return images


def load_item_images(item_table, size: int, *, progress: bool = True,
                     num_workers: int = NUM_WORKERS) -> ItemImages:
  """Decodes, converts and resizes the image of every item.

  Args:
    item_table: a `jaxrec.data.dataset.ItemTable`; its `images` array (synthetic
      catalog) is used when present, else its `image_paths` ("" = no image).
    size: side of the square output images (the encoder's resolution, e.g. 224).
    progress: show a tqdm bar over items.
    num_workers: decoding threads; results are in item order regardless.

  Returns:
    ItemImages (see its docstring for the report keys).

  Raises:
    DataError: `item_table.images` is not [N + 1, H, W, 3] uint8, or image_paths has
      the wrong length. Bad individual files are skipped, not raised.
  """
  if size < 1:
    raise ValueError(f"size must be >= 1, got {size}")
  start = time.time()
  n = item_table.num_items
  images = np.zeros([n + 1, size, size, 3], np.uint8)
  has_image = np.zeros([n + 1], bool)
  report = {"num_items": n, "with_image": 0, "missing": 0, "skipped": [], "num_skipped": 0,
            "converted": 0, "converted_modes": {}, "size": size, "seconds": 0.0}
  if item_table.images is not None:
    array = _check_images_array(item_table.images, n)
    report["source"] = "array"
    for item in tqdm.trange(1, n + 1, desc="images", unit="image", disable=not progress):
      images[item] = resize_center_crop_batch(array[item:item + 1], size)[0]
    has_image[1:] = True
  else:
    paths = item_table.image_paths
    if len(paths) != n + 1:
      raise DataError(f"image_paths has {len(paths)} rows for {n} items (expected {n + 1})",
                      fix="rebuild the ItemTable (row 0 is the padding item).")
    report["source"] = "files"
    todo = [i for i in range(1, n + 1) if paths[i]]
    report["missing"] = n - len(todo)
    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool, tqdm.tqdm(
        total=len(todo), desc="images", unit="image", disable=not progress) as bar:
      decoded = pool.map(lambda i: decode_image(os.fspath(paths[i]), size), todo)
      for item, (pixels, mode, reason) in zip(todo, decoded):
        bar.update(1)
        if pixels is None:
          report["num_skipped"] += 1
          if len(report["skipped"]) < MAX_LISTED:
            report["skipped"].append({"item": item, "path": str(paths[item]),
                                      "reason": reason})
          continue
        images[item] = pixels
        has_image[item] = True
        if mode is not None:
          report["converted"] += 1
          report["converted_modes"][mode] = report["converted_modes"].get(mode, 0) + 1
  report["with_image"] = int(has_image.sum())
  report["seconds"] = round(time.time() - start, 3)
  return ItemImages(images=images, has_image=has_image, report=report)


def image_paths_from_dir(directory: str, raw_ids: Sequence[str]) -> np.ndarray:
  """The image file of each item in a folder of `<raw item id>.jpg|jpeg|png`.

  Suffixes match case-insensitively; when several exist, .jpg wins over .jpeg over .png.

  Args:
    directory: the folder.
    raw_ids: [N + 1] upstream item ids (ItemTable.raw_ids; row 0 "").

  Returns:
    [N + 1] object array of absolute paths, "" where an item has no file (and row 0).

  Raises:
    DataError: the folder does not exist.
  """
  directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
  if not os.path.isdir(directory):
    raise DataError("image folder not found", path=directory,
                    fix="pass the folder holding <item_id>.jpg|jpeg|png files.")
  best: dict = {}
  for entry in os.scandir(directory):
    stem, suffix = os.path.splitext(entry.name)
    rank = IMAGE_SUFFIXES.index(suffix.lower()) if suffix.lower() in IMAGE_SUFFIXES else None
    if rank is not None and entry.is_file() and (stem not in best or rank < best[stem][0]):
      best[stem] = (rank, entry.path)
  return np.array([best[str(r)][1] if r and str(r) in best else "" for r in raw_ids],
                  dtype=object)


def with_image_dir(item_table, image_dir: Optional[str]):
  """The ItemTable with its image paths taken from `image_dir` (a folder of
  `<raw item id>.jpg|jpeg|png`; items without a file get none); unchanged for None."""
  if not image_dir:
    return item_table
  return dataclasses.replace(item_table, images=None,
                             image_paths=image_paths_from_dir(image_dir, item_table.raw_ids))


def load_readable_images(item_table, size: int, *, dataset_name: str = "",
                         image_dir: Optional[str] = None, progress: bool = True) -> ItemImages:
  """`load_item_images` of the table (its images from `image_dir` if given, see
  `with_image_dir`).

  Raises:
    DataError: no item has a readable image (names the counts and the binding).
  """
  images = load_item_images(with_image_dir(item_table, image_dir), size, progress=progress)
  if not images.has_image[1:].any():
    report = images.report
    raise DataError(f"none of the {len(images.has_image) - 1:,} items of dataset "
                    f"{dataset_name!r} has a readable image ({report.get('missing', 0)} "
                    f"without a path, {report.get('num_skipped', 0)} unreadable)",
                    path="DatasetConfig.name",
                    fix="use a dataset with images (ml100k, hm or synthetic), pass an image "
                        "folder, or check its image files.")
  return images


def skipped_summary(report: dict, limit: Optional[int] = 3) -> str:
  """A one-line summary of a load report, e.g. for logs."""
  first = "; ".join(f"{s['item']}: {s['reason']}" for s in report["skipped"][:limit])
  return (f"{report['with_image']}/{report['num_items']} items with an image, "
          f"{report['missing']} without a path, {report['num_skipped']} skipped"
          + (f" ({first})" if first else "") + f", {report['converted']} converted to RGB")
