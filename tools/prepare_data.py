"""Prepares a dataset with tfds (array_record) and prints its statistics.

Usage: python tools/prepare_data.py --dataset=beauty --manual_dir=/path/to/beauty
"""

from __future__ import annotations

import time

from absl import app
from absl import flags

from jaxrec.data import loading

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, [n for n in loading.dataset_names() if n != "synthetic"],
                  "Dataset to prepare.")
flags.DEFINE_string("manual_dir", None, "Folder with the raw files "
                    "(default: $JAXREC_DATA_DIR/<dataset>).")
flags.DEFINE_string("data_dir", None, "Where tfds writes the prepared files "
                    "(default: $JAXREC_TFDS_DIR or ~/tensorflow_datasets).")
flags.DEFINE_integer("min_interactions", None, "k-core threshold for users and items "
                     "(default: the dataset's; 0 = off).")
flags.DEFINE_integer("min_user_interactions", None, "k-core threshold for users.")
flags.DEFINE_integer("min_item_interactions", None, "k-core threshold for items.")
flags.DEFINE_boolean("chronological", None, "ml100k/hm: sort by timestamp (default on).")
flags.DEFINE_boolean("dedup", None, "hm: keep the first purchase of each (customer, item).")
flags.DEFINE_enum("item_level", None, ["product_code", "article"], "hm: item granularity.")
flags.DEFINE_float("min_rating", None, "ml100k: keep ratings >= this (default: all).")
flags.DEFINE_string("sequences_file", None, "s3rec: the sequences file in manual_dir.")
flags.DEFINE_string("items_file", None, "s3rec: the items.tsv in manual_dir.")
flags.DEFINE_list("text_fields", None, "s3rec: items.tsv columns composing the text.")
flags.mark_flag_as_required("dataset")

OPTION_FLAGS = ("min_interactions", "min_user_interactions", "min_item_interactions",
                "chronological", "dedup", "item_level", "min_rating", "sequences_file",
                "items_file", "text_fields")


def format_stats(stats: dict) -> str:
  """The statistics as aligned lines with thousands separators."""
  rows = [("users", f"{stats['users']:,}"), ("items", f"{stats['items']:,}"),
          ("interactions", f"{stats['interactions']:,}"),
          ("average length", f"{stats['avg_length']:,.2f} "
                             f"(min {stats['min_length']:,}, max {stats['max_length']:,})"),
          ("items with text", f"{stats['items_with_text']:,}"),
          ("items with image", f"{stats['items_with_image']:,}")]
  return "\n".join(f"{k:>17}: {v}" for k, v in rows)


def main(argv):
  del argv
  options = {k: FLAGS[k].value for k in OPTION_FLAGS if FLAGS[k].value is not None}
  start = time.time()
  builder = loading.prepare(FLAGS.dataset, FLAGS.manual_dir, FLAGS.data_dir, **options)
  prepared = time.time()
  dataset = loading.read_prepared(builder)
  done = time.time()
  print(f"{FLAGS.dataset} ({builder.info.full_name}) at {builder.data_path}")
  print(format_stats(dataset.stats()))
  print(f"prepare {prepared - start:.1f} s, load {done - prepared:.1f} s")


if __name__ == "__main__":
  app.run(main)
