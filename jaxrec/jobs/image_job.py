"""The image-feature job: every item's image -> [num_items, dim] float32 with a pretrained encoder.

The input of the post-quantization baseline (features, then an RQ-VAE: MSCGRec's ablation
of DINO-RQ) and of the fusion layers (CEMG, MusicRec). Artifacts, as the text job's
(`item_job`): `<output>.npy` (row r = item id r + 1; items without a readable image get a
zero row) and a JSON sidecar with the same stem (encoder, dimensions, the image report:
items with an image, missing, skipped with reasons; timing). The job always computes (the
pipeline's "image_features" stage and tools/encode_items.py skip it when up to date);
both files are written atomically, the sidecar last.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import numpy as np

from jaxrec import files
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.encoders import image
from jaxrec.encoders import image_io
from jaxrec.jobs import item_job

# Host image size the items are loaded at, per encoder (the encoder resizes again to its
# own resolution; loading at that size makes the second resize a no-op).
LOAD_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite2": 260, "features": 0}


def encode_images(output_path: str, dataset: DatasetConfig = DatasetConfig(),
                  encoder: str = "efficientnet_lite0", image_size: Optional[int] = None,
                  features_path: Optional[str] = None, batch_size: int = 64,
                  image_dir: Optional[str] = None, progress: bool = True) -> str:
  """Encodes every item's image into `output_path` (and its sidecar).

  Args:
    output_path: the .npy to write, [num_items, dim] float32, row r = item id r + 1.
    dataset: which catalog (its `item_table.image_paths`, or the synthetic images).
    encoder: one of `image.IMAGE_ENCODERS`; "features" copies (and checks) the
      precomputed `[num_items, d]` file `features_path` from any model you have.
    image_size: host load size; default: the encoder's resolution.
    features_path: the precomputed features for encoder "features".
    batch_size: images per forward pass (does not change the result).
    image_dir: read the images from this folder of `<raw item id>.jpg|jpeg|png`
      instead of the dataset's own (any dataset).
    progress: progress bars and prints.

  Returns:
    output_path.

  Raises:
    DataError: unknown encoder, no features_path for "features", or no item of the
      dataset has a readable image.
  """
  if encoder not in image.IMAGE_ENCODERS:
    raise DataError(f"unknown image encoder {encoder!r}", path="encode_images.encoder",
                    fix=f"use one of {image.IMAGE_ENCODERS}.")
  if encoder == "features" and not features_path:
    raise DataError("encoder 'features' needs the precomputed features file",
                    path="encode_images.features_path",
                    fix="bind features_path to a [num_items, d] .npy (row r = item r + 1).")
  size = int(image_size or LOAD_SIZES[encoder] or 64)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  start = time.time()
  data = dataset.load()
  if encoder == "features":
    item_images, report = None, {"source": os.path.abspath(features_path)}
    loaded = time.time()
    features = image.load_precomputed_features(features_path, data.num_items)
    meta = {"encoder": "features", "dim": int(features.shape[1]),
            "zero_rows": int((~features.any(axis=1)).sum())}
  else:
    item_images = image_io.load_readable_images(data.item_table, size, dataset_name=dataset.name,
                                                image_dir=image_dir, progress=progress)
    report = item_images.report
    loaded = time.time()
    features, meta = image.encode_item_images(item_images, encoder, batch_size=batch_size,
                                              progress=progress)
  done = time.time()
  sidecar = item_job.sidecar_path(output_path)
  if os.path.exists(sidecar):
    os.remove(sidecar)  # A crash below must not leave an old sidecar vouching for new rows.
  files.save_npy(output_path, np.asarray(features, np.float32))
  out = {
      "modality": "image", "encoder": encoder, "dim": int(features.shape[1]),
      "dataset": dataset.name, "dataset_config": dataclasses.asdict(dataset),
      "num_items": int(data.num_items), "rows": "row r is item id r + 1 (zero row: no image)",
      "image_size": size, "batch_size": batch_size, "image_report": report, "encoder_meta": meta,
      "seconds_load_images": round(loaded - start, 2), "seconds_encode": round(done - loaded, 2),
      "seconds_total": round(time.time() - start, 2),
  }
  files.write_json(sidecar, out, indent=2, default=str)
  if progress:
    with_image = int(item_images.has_image.sum()) if item_images is not None else data.num_items
    print(f"{data.num_items:,} items ({with_image:,} with an image) -> {output_path} "
          f"[{data.num_items}, {features.shape[1]}] float32; load {loaded - start:.1f} s, "
          f"encode {done - loaded:.1f} s")
  return output_path
