"""Embeds every item's text with a pretrained sentence encoder into [num_items, dim] float32.

Row r of the output is item id r + 1. Usage:
  python tools/encode_items.py --dataset=beauty --encoder=minilm --workdir=/tmp/enc_beauty
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from jaxrec.data import loading
from jaxrec.encoders import text

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "synthetic", "Dataset name for load_dataset "
                    f"({', '.join(loading.dataset_names())}).")
flags.DEFINE_string("manual_dir", None, "Folder with the raw files "
                    "(default: $JAXREC_DATA_DIR/<dataset>).")
flags.DEFINE_string("data_dir", None, "Where tfds keeps prepared data "
                    "(default: $JAXREC_TFDS_DIR or ~/tensorflow_datasets).")
flags.DEFINE_enum("encoder", "minilm", list(text.ENCODERS), "Text encoder.")
flags.DEFINE_string("model_dir", None, "Use this sentence-transformers folder for the weights.")
flags.DEFINE_integer("batch_size", 128, "Texts per forward pass.")
flags.DEFINE_integer("max_length", text.DEFAULT_MAX_LENGTH,
                     "Token limit per item text (special tokens included).")
flags.DEFINE_string("workdir", None, "Output folder (for the default --output).")
flags.DEFINE_string("output", None, "The .npy to write (default <workdir>/item_embeddings.npy); "
                    "a .json sidecar with the same stem describes it.")

_MAX_LISTED = 100  # Empty-text item ids listed in the sidecar.


def _write_atomically(path: str, write) -> None:
  """write(file) into a temp file in path's folder, then rename it to path."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, 0o644)  # mkstemp makes it private.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def main(argv):
  del argv
  if not FLAGS.output and not FLAGS.workdir:
    raise app.UsageError("pass --workdir or --output")
  output = FLAGS.output or os.path.join(FLAGS.workdir, "item_embeddings.npy")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  start = time.time()
  dataset = loading.load_dataset(FLAGS.dataset, FLAGS.manual_dir, FLAGS.data_dir)
  texts = [str(t) for t in dataset.item_table.text[1:]]
  empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
  loaded = time.time()
  encoder = text.load_text_encoder(FLAGS.encoder, model_dir=FLAGS.model_dir,
                                   max_length=FLAGS.max_length)
  ready = time.time()
  embeddings = encoder.encode(texts, batch_size=FLAGS.batch_size)
  done = time.time()
  assert embeddings.shape == (dataset.num_items, encoder.dim), embeddings.shape
  _write_atomically(output, lambda f: np.save(f, embeddings.astype(np.float32)))
  meta = {
      "encoder": FLAGS.encoder, "model_dir": encoder.model_dir, "dim": encoder.dim,
      "dataset": FLAGS.dataset, "num_items": dataset.num_items,
      "rows": "row r is item id r + 1", "max_length": FLAGS.max_length,
      "batch_size": FLAGS.batch_size, "normalized": encoder.normalize,
      "items_with_empty_text": len(empty), "empty_text_item_ids": empty[:_MAX_LISTED],
      "seconds": round(done - ready, 2),
      "seconds_total": round(time.time() - start, 2),
  }
  sidecar = os.path.splitext(output)[0] + ".json"
  _write_atomically(sidecar, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
  print(f"{dataset.num_items:,} items ({len(empty):,} with empty text) -> {output} "
        f"[{dataset.num_items}, {encoder.dim}] float32")
  print(f"load data {loaded - start:.1f} s, load encoder {ready - loaded:.1f} s, "
        f"encode {done - ready:.1f} s ({dataset.num_items / max(done - ready, 1e-9):.0f} items/s)")


if __name__ == "__main__":
  app.run(main)
