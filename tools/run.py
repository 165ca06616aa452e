"""Run the baselines job (gin-configured): `python tools/run.py --gin_file=... --workdir=...`.

t5x-style flags: repeated --gin_file (later files override earlier ones) and
--gin.BINDING=value overrides; the operative config is saved in the workdir.
"""

import sys

from absl import app
from absl import flags

from jaxrec import configs
from jaxrec import pipeline

_GIN_FILES = flags.DEFINE_multi_string("gin_file", ["gin_configs/runs/baselines.gin"],
                                       "gin files, in order.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "extra gin bindings.")
_WORKDIR = flags.DEFINE_string("workdir", None, "where artifacts go.", required=True)
_FLAG_BINDINGS = []


def main(argv):
  del argv
  configs.parse(_GIN_FILES.value, list(_GIN_BINDINGS.value) + _FLAG_BINDINGS +
                [f"WORKDIR = {_WORKDIR.value!r}"])
  configs.run(pipeline.evaluate_baselines)
  path = configs.save_config(_WORKDIR.value)
  print(f"artifacts in {_WORKDIR.value} (operative config: {path})")


if __name__ == "__main__":
  _FLAG_BINDINGS[:], remaining = configs.split_gin_flags(sys.argv)
  app.run(main, argv=remaining)
