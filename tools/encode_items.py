"""Embeds every item's text (or image) with a pretrained encoder into [num_items, dim] float32.

Row r of the output is item id r + 1. Usage:
  python tools/encode_items.py --dataset=beauty --encoder=minilm --workdir=/tmp/enc_beauty
      # -> /tmp/enc_beauty/embeddings/item_embeddings.npy (+ item_embeddings.json)
  python tools/encode_items.py --modality=image --dataset=ml100k --workdir=/tmp/img_ml100k \
      [--image_encoder=efficientnet_lite0|efficientnet_lite2|features --features=my.npy]
      # -> /tmp/img_ml100k/image_features/image_features.npy

The encoding runs as a one-stage pipeline in --workdir, the same "embeddings" /
"image_features" stage every system run has (`pipeline.system.text_stage` /
`image_stage` over `jobs.item_job.encode_items` / `jobs.image_job.encode_images`: items
without a readable image get a zero row, counted with the reasons in the sidecar), so a
rerun with the same dataset, encoder and settings is skipped by the engine and a changed
one rebuilds.
"""

from __future__ import annotations

from absl import app
from absl import flags

from jaxrec.data import loading
from jaxrec.data.config import DatasetConfig
from jaxrec.encoders import image
from jaxrec.encoders import text
from jaxrec.pipeline import stage as stage_lib
from jaxrec.pipeline import system

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
flags.DEFINE_string("workdir", None, "The pipeline folder; the features go to "
                    "<workdir>/embeddings/ or <workdir>/image_features/.")


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("pass --workdir")
  dataset = DatasetConfig(name=FLAGS.dataset, manual_dir=FLAGS.manual_dir,
                          data_dir=FLAGS.data_dir)
  if FLAGS.modality == "image":
    stage = system.image_stage(dataset, FLAGS.image_encoder, image_size=FLAGS.image_size,
                               features_path=FLAGS.features, image_dir=FLAGS.image_dir,
                               batch_size=FLAGS.batch_size or 64)
  else:
    stage = system.text_stage(dataset, FLAGS.encoder, FLAGS.model_dir,
                              FLAGS.batch_size or 128, FLAGS.max_length)
  summary = stage_lib.run_pipeline(FLAGS.workdir, [stage])
  features = system.FEATURE_STAGES[stage.name][1]
  print(summary["stages"][stage.name]["artifacts"][features])


if __name__ == "__main__":
  app.run(main)
