"""Train the generator (gin-configured): `python tools/train.py --workdir=... --semantic_ids=...`.

  python tools/train.py --gin_file=gin_configs/runs/train_generator.gin \
    --gin_file=gin_configs/data/beauty.gin --semantic_ids=/tmp/ids/semantic_ids.npy \
    --workdir=/tmp/tiger_beauty [--gin.TrainerConfig.num_steps=1000] [--multihost]

t5x-style flags: repeated --gin_file (later files override earlier ones) and
--gin.BINDING=value. The same command resumes an interrupted run; a workdir of
another configuration is refused. With --multihost, run it once per host
(`jax.distributed.initialize()`; see docs/launching.md).
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax

from jaxrec import configs
from jaxrec.jobs import generator_job

_GIN_FILES = flags.DEFINE_multi_string("gin_file", ["gin_configs/runs/train_generator.gin"],
                                       "gin files, in order.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "extra gin bindings.")
_WORKDIR = flags.DEFINE_string("workdir", None, "the run folder.", required=True)
_SEMANTIC_IDS = flags.DEFINE_string("semantic_ids", None,
                                    "semantic_ids.npy from tools/build_semantic_ids.py "
                                    "(binds SEMANTIC_IDS).")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "call jax.distributed.initialize() first (one process per host; "
                               "TPU, SLURM and Open MPI are auto-detected).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "with --multihost elsewhere: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "with --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "with --coordinator_address.")
_FLAG_BINDINGS = []


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  if _MULTIHOST.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  extra = [f"WORKDIR = {_WORKDIR.value!r}"]
  if _SEMANTIC_IDS.value:
    extra.append(f"SEMANTIC_IDS = {_SEMANTIC_IDS.value!r}")
  configs.parse(_GIN_FILES.value, list(_GIN_BINDINGS.value) + _FLAG_BINDINGS + extra)
  summary = configs.run(generator_job.train_generator,
                        operative_config=configs.operative_config,
                        progress=jax.process_index() == 0)
  if jax.process_index() == 0:
    print(f"trained to step {summary['step']}; best {summary['valid_metric']} = "
          f"{summary['best_value']} at step {summary['best_step']} ({_WORKDIR.value})")


if __name__ == "__main__":
  _FLAG_BINDINGS[:], remaining = configs.split_gin_flags(sys.argv)
  app.run(main, argv=remaining)
