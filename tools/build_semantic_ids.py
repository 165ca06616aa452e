"""Fit a tokenizer on item embeddings and write semantic IDs (gin-configured).

  python tools/build_semantic_ids.py --gin_file=gin_configs/runs/semantic_ids.gin \
    --embeddings=/tmp/enc/item_embeddings.npy --workdir=/tmp/ids \
    [--gin_file=gin_configs/tokenizers/rqkmeans.gin] [--gin.TokenizerJobConfig.collision='"sinkhorn"']

Writes semantic_ids.npy, tokenizer_stats.json, codebook_usage.png and the
operative config; an interrupted RQ-VAE run resumes from its last checkpoint.
"""

import sys

from absl import app
from absl import flags

from jaxrec import configs
from jaxrec.jobs import tokenizer_job

_GIN_FILES = flags.DEFINE_multi_string("gin_file", ["gin_configs/runs/semantic_ids.gin"],
                                       "gin files, in order.")
_WORKDIR = flags.DEFINE_string("workdir", None, "where artifacts go.", required=True)
_EMBEDDINGS = flags.DEFINE_string("embeddings", None,
                                  "[num_items, d] .npy from tools/encode_items.py.", required=True)
_REFERENCE = flags.DEFINE_string("reference_ids", None,
                                 "published IDs to compare with (LETTER json).")
_FLAG_BINDINGS = []


def main(argv):
  del argv
  extra = [f"WORKDIR = {_WORKDIR.value!r}", f"EMBEDDINGS = {_EMBEDDINGS.value!r}"]
  if _REFERENCE.value:
    extra.append(f"tokenizer_job.build_semantic_ids.reference_ids_path = {_REFERENCE.value!r}")
  configs.parse(_GIN_FILES.value, _FLAG_BINDINGS + extra)
  configs.run(tokenizer_job.build_semantic_ids)
  configs.save_config(_WORKDIR.value, name="tokenizer_config.gin")


if __name__ == "__main__":
  _FLAG_BINDINGS[:], remaining = configs.split_gin_flags(sys.argv)
  app.run(main, argv=remaining)
