"""The image-encoder front: item images -> [num_items, d] float32 features.

Encoders (`IMAGE_ENCODERS`):
  - "efficientnet_lite0" / "efficientnet_lite2": ImageNet-supervised EfficientNet-Lite
    (1280-d pooled features, 224 / 260 px; `efficientnet.py`), the only pretrained image
    encoders available offline. No DINO, DINOv2, CLIP, SigLIP or ViT weights ship in any
    PyPI, npm or Debian package, so there is no self-supervised or image-text encoder to
    load. The from-scratch ViT lives in `jaxrec/encoders/vit.py` and is trained with
    DINO-RQ.
  - "features": features the user computed with any model they have, read by
    `load_precomputed_features` from a .npy file.

On 2 busy CPU cores EfficientNet-Lite0 encodes about 7-10 images/s: compute the features once
and keep the array.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional, Union

import numpy as np

from jaxrec.data.errors import DataError
from jaxrec.encoders import efficientnet
from jaxrec.encoders.image_io import ItemImages

IMAGE_ENCODERS = ("efficientnet_lite0", "efficientnet_lite2", "features")


def load_precomputed_features(path: str, num_items: int) -> np.ndarray:
  """Reads user-computed item image features.

  Args:
    path: a .npy file holding a 2-D float array with one row per item 1..N
      ([N, d]), or N + 1 rows with row 0 being the padding item ([N + 1, d]; row 0
      is dropped).
    num_items: N.

  Returns:
    features: [num_items, d] float32; row r belongs to item id r + 1.

  Raises:
    DataError: missing/unreadable file, not 2-D, wrong row count, non-finite values.
  """
  path = os.fspath(path)
  fix = (f"save a [{num_items}, d] (items 1..{num_items} in id order) or "
         f"[{num_items + 1}, d] (row 0 = padding) float array with np.save.")
  if not os.path.isfile(path):
    raise DataError("image feature file not found", path=path, fix=fix)
  try:
    features = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise DataError(f"not a readable .npy file ({e})", path=path, fix=fix) from None
  if features.ndim != 2 or features.shape[1] < 1:
    raise DataError(f"features have shape {features.shape}, not [items, d]", path=path,
                    fix=fix)
  if not (np.issubdtype(features.dtype, np.floating) or
          np.issubdtype(features.dtype, np.integer)):
    raise DataError(f"features have dtype {features.dtype}, not a number", path=path, fix=fix)
  if len(features) == num_items + 1:
    features = features[1:]
  elif len(features) != num_items:
    raise DataError(f"features have {len(features)} rows for {num_items} items", path=path,
                    fix=fix)
  features = features.astype(np.float32)
  bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
  if len(bad):
    raise DataError(f"{len(bad)} rows hold NaN or inf (first: item {bad[0] + 1})", path=path,
                    fix="recompute those items' features or replace them by zeros.")
  return features


def encode_item_images(item_images: ItemImages, encoder: Union[str, Any], *,
                       features_path: Optional[str] = None, batch_size: int = 64,
                       progress: bool = True) -> tuple:
  """Image features of every item.

  Only items with an image are run through the encoder; items without one get an
  all-zero row. With encoder="features" the rows of `features_path` are returned as
  they are (the user decided what items without an image get); item_images then only
  gives the item count.

  Args:
    item_images: from `image_io.load_item_images` (ideally at the encoder's
      resolution; other sizes are resized again).
    encoder: a name in IMAGE_ENCODERS, or a loaded encoder (anything with
      `.name`, `.dim` and `.encode(images, batch_size=, progress=)`).
    features_path: the .npy file for encoder="features".
    batch_size: images per forward pass.
    progress: show progress bars.

  Returns:
    features: [num_items, d] float32 (row r = item id r + 1).
    meta: encoder, dim, num_items, with_image, without_image, resolution (None for
      "features"), image_size, seconds, images_per_second, source (weights or features
      file).

  Raises:
    DataError: unknown encoder, missing weights package, bad features file.
  """
  start = time.time()
  num_items = item_images.num_items
  with_image = np.flatnonzero(item_images.has_image[1:]) + 1
  meta = {"num_items": num_items, "with_image": len(with_image),
          "without_image": num_items - len(with_image), "image_size": item_images.size}
  precomputed = isinstance(encoder, str) and encoder == "features"
  if precomputed:
    if features_path is None:
      raise DataError("encoder='features' needs features_path",
                      fix="pass features_path=<a .npy file of precomputed features>.")
    features = load_precomputed_features(features_path, num_items)
    meta.update(encoder="features", dim=int(features.shape[1]), resolution=None,
                source=os.path.abspath(os.fspath(features_path)),
                zero_rows=int((~features.any(axis=1)).sum()))
  else:
    if isinstance(encoder, str):
      if encoder not in IMAGE_ENCODERS:
        raise DataError(f"unknown image encoder {encoder!r}", fix=f"use one of {IMAGE_ENCODERS}.")
      encoder = efficientnet.load_efficientnet(encoder)
    features = np.zeros([num_items, encoder.dim], np.float32)
    if len(with_image):
      features[with_image - 1] = encoder.encode(item_images.images[with_image],
                                                batch_size=batch_size, progress=progress)
    meta.update(encoder=encoder.name, dim=int(encoder.dim),
                resolution=getattr(encoder, "resolution", None),
                source=getattr(encoder, "weights_path", None))
  seconds = time.time() - start
  meta["seconds"] = round(seconds, 3)
  meta["images_per_second"] = (round(meta["with_image"] / seconds, 2)
                               if not precomputed and seconds > 0 else None)
  return features, meta
