"""Embeds every item's text with a pretrained sentence encoder into [num_items, dim] float32.

Row r of the output is item id r + 1. Usage:
  python tools/encode_items.py --dataset=beauty --encoder=minilm --workdir=/tmp/enc_beauty

A rerun with the same dataset, encoder and max_length is skipped (see
`jaxrec.encoders.item_job.encode_items`, which the TIGER pipeline also calls).
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from jaxrec.data import loading
from jaxrec.data.config import DatasetConfig
from jaxrec.encoders import item_job
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


def main(argv):
  del argv
  if not FLAGS.output and not FLAGS.workdir:
    raise app.UsageError("pass --workdir or --output")
  output = FLAGS.output or os.path.join(FLAGS.workdir, "item_embeddings.npy")
  dataset = DatasetConfig(name=FLAGS.dataset, manual_dir=FLAGS.manual_dir,
                          data_dir=FLAGS.data_dir)
  item_job.encode_items(output, dataset, encoder=FLAGS.encoder, model_dir=FLAGS.model_dir,
                        batch_size=FLAGS.batch_size, max_length=FLAGS.max_length)


if __name__ == "__main__":
  app.run(main)
