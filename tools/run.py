"""Run the job the gin files select: `python tools/run.py --gin_file=... --workdir=...`.

The run gin file names its job with the macro JOB: `JOB = @system_pipeline.run_system` in
gin_configs/runs/baselines.gin (the default: the "baselines" stage alone) and in
gin_configs/runs/system.gin, which every gin_configs/papers/*.gin system includes. t5x-style flags: repeated --gin_file (later files override
earlier ones) and --gin.BINDING=value overrides; the operative config is saved in the workdir.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from jaxrec import configs

_GIN_FILES = flags.DEFINE_multi_string("gin_file", ["gin_configs/runs/baselines.gin"],
                                       "gin files, in order.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "extra gin bindings.")
_WORKDIR = flags.DEFINE_string("workdir", None, "where artifacts go.", required=True)
_FLAG_BINDINGS = []


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  configs.parse(_GIN_FILES.value, list(_GIN_BINDINGS.value) + _FLAG_BINDINGS +
                [f"WORKDIR = {_WORKDIR.value!r}"])
  configs.run_job()
  path = configs.save_config(_WORKDIR.value)
  print(f"artifacts in {_WORKDIR.value} (operative config: {path})")


if __name__ == "__main__":
  _FLAG_BINDINGS[:], remaining = configs.split_gin_flags(sys.argv)
  app.run(main, argv=remaining)
