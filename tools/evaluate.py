"""Evaluate a trained generator: restore its best (or latest) checkpoint, write metrics JSON.

  python tools/evaluate.py --gin_file=gin_configs/runs/train_generator.gin \
    --semantic_ids=/tmp/ids/semantic_ids.npy --workdir=/tmp/tiger_beauty [--checkpoint=latest]

Pass the same gin files and --gin flags as tools/train.py, or a run's saved operative config
(`--gin_file=<run>/config.gin`): tools/run.py's binds the evaluation job (pass
--semantic_ids too); tools/train.py's binds only the training job, whose GeneratorConfig,
trainer, dataset and eval config are then evaluated. Writes
<workdir>/eval/<split>_metrics.json (full ranking, 95% bootstrap CIs) and
eval_config.gin.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from jaxrec import configs
from jaxrec.pipeline import system as system_pipeline
from jaxrec.jobs import generator_job

_GIN_FILES = flags.DEFINE_multi_string("gin_file", ["gin_configs/runs/train_generator.gin"],
                                       "gin files, in order.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "extra gin bindings.")
_WORKDIR = flags.DEFINE_string("workdir", None, "the run folder of tools/train.py.",
                               required=True)
_SEMANTIC_IDS = flags.DEFINE_string("semantic_ids", None, "binds SEMANTIC_IDS.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                "which checkpoint to evaluate.")
_FLAG_BINDINGS = []


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  extra = [f"WORKDIR = {_WORKDIR.value!r}"]
  if _SEMANTIC_IDS.value:
    extra.append(f"SEMANTIC_IDS = {_SEMANTIC_IDS.value!r}")
  configs.parse(_GIN_FILES.value, list(_GIN_BINDINGS.value) + _FLAG_BINDINGS + extra)
  # Passed directly too, so a workdir's saved operative config (which binds the job's
  # other arguments but not these two) evaluates as well as the training gin files.
  paths = {"workdir": _WORKDIR.value}
  if _SEMANTIC_IDS.value:
    paths["semantic_ids_path"] = _SEMANTIC_IDS.value
  bound = configs.bound_arguments(generator_job.evaluate_generator)
  if not bound:
    # A tools/train.py config.gin binds only the training job: evaluate what it trained
    # (the same GeneratorConfig, trainer, dataset and eval config).
    trained = configs.bound_arguments(generator_job.train_generator)
    if "generator" not in trained:
      raise app.UsageError(
          "the gin files bind neither generator_job.evaluate_generator nor the generator of "
          "generator_job.train_generator. Fix: pass the gin files and --gin flags the run was "
          "trained with (e.g. --gin_file=gin_configs/runs/train_generator.gin), or its "
          "saved <workdir>/config.gin.")
    paths.update({k: trained[k] for k in ("generator", "trainer_config", "eval_config",
                                          "dataset", "semantic_ids_path") if k in trained})
    if _SEMANTIC_IDS.value:
      paths["semantic_ids_path"] = _SEMANTIC_IDS.value
  elif "dataset" not in bound:
    # A pipeline's operative config binds the dataset of its entry point instead.
    dataset = configs.bound_arguments(system_pipeline.run_system).get("dataset")
    if dataset is not None:
      paths["dataset"] = dataset
  if bound:
    configs.run(generator_job.evaluate_generator, checkpoint=_CHECKPOINT.value, **paths)
  else:  # Not in the gin registry: called with the training job's configs.
    generator_job.evaluate_generator(checkpoint=_CHECKPOINT.value, **paths)
  configs.save_config(_WORKDIR.value, name="eval_config.gin")
  print(f"metrics in {_WORKDIR.value}/eval/")


if __name__ == "__main__":
  _FLAG_BINDINGS[:], remaining = configs.split_gin_flags(sys.argv)
  app.run(main, argv=remaining)
