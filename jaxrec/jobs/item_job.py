"""The item-embedding job: every item's text -> [num_items, dim] float32 with a sentence encoder.

Artifacts: `<output>.npy` (row r = item id r + 1) and a JSON sidecar with the same
stem (encoder, dimensions, empty-text items, timing). The job always computes (jobs never
skip themselves: the pipeline's "embeddings" stage, `pipeline/system.py`, and
tools/encode_items.py skip it when its folder holds the result). Both files are written
atomically (temp name, then rename), the sidecar last, so a sidecar always describes the
.npy beside it.
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
from jaxrec.encoders import text

_MAX_LISTED = 100  # Empty-text item ids listed in the sidecar.


def sidecar_path(output_path: str) -> str:
  """`<dir>/item_embeddings.npy` -> `<dir>/item_embeddings.json`."""
  return os.path.splitext(output_path)[0] + ".json"


def read_sidecar(output_path: str) -> Optional[dict]:
  """The JSON sidecar of `output_path`, or None when missing or unreadable."""
  return files.read_json(sidecar_path(output_path))


# write(binary file) into a temp file in path's folder, then rename it to path (kept for
# callers of this name; the implementation is shared).
write_atomically = files.write_atomically


def encode_items(output_path: str, dataset: DatasetConfig = DatasetConfig(),
                 encoder: str = "minilm", model_dir: Optional[str] = None,
                 batch_size: int = 128, max_length: int = text.DEFAULT_MAX_LENGTH,
                 progress: bool = True) -> str:
  """Embeds every item's text into `output_path` (and its sidecar).

  Args:
    output_path: the .npy to write, [num_items, dim] float32, row r = item id r + 1;
      `<stem>.json` beside it describes it.
    dataset: which catalog (its `item_table.text`).
    encoder: "minilm" or "mpnet" (`jaxrec.encoders.text.ENCODERS`).
    model_dir: a sentence-transformers folder to load the weights from instead.
    batch_size: texts per forward pass (does not change the result).
    max_length: token limit per item text (special tokens included).
    progress: progress bar and prints.

  Returns:
    output_path.

  Raises:
    DataError: unknown encoder, weights missing, or no item of the dataset has text.
  """
  if encoder not in text.ENCODERS:
    raise DataError(f"unknown text encoder {encoder!r}", fix=f"use one of {text.ENCODERS}.")
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  start = time.time()
  data = dataset.load()
  texts = [str(t) for t in data.item_table.text[1:]]
  empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
  if len(empty) == len(texts):
    raise DataError(f"none of the {len(texts):,} items of dataset {dataset.name!r} has text",
                    path="DatasetConfig.name",
                    fix="use a dataset with item titles/descriptions (e.g. beauty, sports, "
                        "yelp, ml100k, hm or synthetic), or check its raw item files.")
  loaded = time.time()
  model = text.load_text_encoder(encoder, model_dir=model_dir, max_length=max_length)
  ready = time.time()
  embeddings = model.encode(texts, batch_size=batch_size, progress=progress)
  done = time.time()
  assert embeddings.shape == (data.num_items, model.dim), embeddings.shape
  # The sidecar goes first: a crash below must not leave an old sidecar vouching for new rows.
  if os.path.exists(sidecar_path(output_path)):
    os.remove(sidecar_path(output_path))
  files.save_npy(output_path, embeddings.astype(np.float32))
  meta = {
      "encoder": encoder, "model_dir": model.model_dir, "dim": model.dim,
      "dataset": dataset.name, "dataset_config": dataclasses.asdict(dataset),
      "num_items": data.num_items, "rows": "row r is item id r + 1",
      "max_length": max_length, "batch_size": batch_size, "normalized": model.normalize,
      "items_with_empty_text": len(empty), "empty_text_item_ids": empty[:_MAX_LISTED],
      "seconds": round(done - ready, 2), "seconds_total": round(time.time() - start, 2),
  }
  files.write_json(sidecar_path(output_path), meta, indent=2)
  if progress:
    print(f"{data.num_items:,} items ({len(empty):,} with empty text) -> {output_path} "
          f"[{data.num_items}, {model.dim}] float32")
    print(f"load data {loaded - start:.1f} s, load encoder {ready - loaded:.1f} s, encode "
          f"{done - ready:.1f} s ({data.num_items / max(done - ready, 1e-9):.0f} items/s)")
  return output_path
