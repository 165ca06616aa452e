"""Embeds every item's text (or image) with a pretrained encoder into [num_items, dim] float32.

Row r of the output is item id r + 1. Usage:
  python tools/encode_items.py --dataset=beauty --encoder=minilm --workdir=/tmp/enc_beauty
  python tools/encode_items.py --modality=image --dataset=ml100k --workdir=/tmp/img_ml100k \
      [--image_encoder=efficientnet_lite0|efficientnet_lite2|features --features=my.npy]

A rerun with the same dataset, encoder and max_length is skipped (see
`jaxrec.jobs.item_job.encode_items`, which the TIGER pipeline also calls, and
`jaxrec.jobs.image_job.encode_images`: items without a readable image get a zero row,
counted with the reasons in the sidecar).
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from jaxrec.data import loading
from jaxrec.data.config import DatasetConfig
from jaxrec.encoders import image
from jaxrec.jobs import image_job
from jaxrec.jobs import item_job
from jaxrec.encoders import text

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "synthetic", "Dataset name for load_dataset "
                    f"({', '.join(loading.dataset_names())}).")
flags.DEFINE_string("manual_dir", None, "Folder with the raw files "
                    "(default: $JAXREC_DATA_DIR/<dataset>).")
flags.DEFINE_string("data_dir", None, "Where tfds keeps prepared data "
                    "(default: $JAXREC_TFDS_DIR or ~/tensorflow_datasets).")
flags.DEFINE_enum("modality", "text", ["text", "image"], "What to embed.")
flags.DEFINE_enum("image_encoder", "efficientnet_lite0", list(image.IMAGE_ENCODERS),
                  "Image encoder (--modality=image); 'features' adopts --features.")
flags.DEFINE_string("features", None, "Precomputed [num_items, d] .npy image features from any "
                    "model (--image_encoder=features).")
flags.DEFINE_string("image_dir", None, "Read item images from this folder of "
                    "<raw item id>.jpg|jpeg|png instead of the dataset's own.")
flags.DEFINE_integer("image_size", None, "Host image load size (default: the encoder's).")
flags.DEFINE_enum("encoder", "minilm", list(text.ENCODERS), "Text encoder.")
flags.DEFINE_string("model_dir", None, "Use this sentence-transformers folder for the weights.")
flags.DEFINE_integer("batch_size", None, "Texts (default 128) or images (default 64) per "
                     "forward pass.")
flags.DEFINE_integer("max_length", text.DEFAULT_MAX_LENGTH,
                     "Token limit per item text (special tokens included).")
flags.DEFINE_string("workdir", None, "Output folder (for the default --output).")
flags.DEFINE_string("output", None, "The .npy to write (default <workdir>/item_embeddings.npy); "
                    "a .json sidecar with the same stem describes it.")


def main(argv):
  del argv
  if not FLAGS.output and not FLAGS.workdir:
    raise app.UsageError("pass --workdir or --output")
  dataset = DatasetConfig(name=FLAGS.dataset, manual_dir=FLAGS.manual_dir,
                          data_dir=FLAGS.data_dir)
  if FLAGS.modality == "image":
    output = FLAGS.output or os.path.join(FLAGS.workdir, "image_features.npy")
    image_job.encode_images(output, dataset, encoder=FLAGS.image_encoder,
                            image_size=FLAGS.image_size, features_path=FLAGS.features,
                            batch_size=FLAGS.batch_size or 64, image_dir=FLAGS.image_dir)
    return
  output = FLAGS.output or os.path.join(FLAGS.workdir, "item_embeddings.npy")
  item_job.encode_items(output, dataset, encoder=FLAGS.encoder, model_dir=FLAGS.model_dir,
                        batch_size=FLAGS.batch_size or 128, max_length=FLAGS.max_length)


if __name__ == "__main__":
  app.run(main)
