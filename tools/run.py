"""Run a gin-configured job end to end: `python tools/run.py --gin_file=... --workdir=...`.

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



def gin_flag_bindings(argv):
  """Splits t5x-style `--gin.NAME=VALUE` arguments off argv."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      name, _, value = arg[len("--gin."):].partition("=")
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return bindings, rest


def main(argv):
  del argv
  workdir_binding = f"WORKDIR = {_WORKDIR.value!r}"
  configs.parse(_GIN_FILES.value,
                list(_GIN_BINDINGS.value) + _EXTRA_BINDINGS + [workdir_binding])
  configs.run(pipeline.evaluate_baselines)
  path = configs.save_config(_WORKDIR.value)
  print(f"artifacts in {_WORKDIR.value} (operative config: {path})")


_EXTRA_BINDINGS = []

if __name__ == "__main__":
  _EXTRA_BINDINGS, remaining = gin_flag_bindings(sys.argv)
  app.run(main, argv=remaining)
