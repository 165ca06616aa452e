"""Every gin file parses (with its REQUIRED macros supplied), and gin errors are named."""

import pathlib

import pytest

from jaxrec import configs
from jaxrec import sweep_spec

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin_configs"
MACROS = ["WORKDIR = '/tmp/w'", "EMBEDDINGS = '/tmp/e.npy'", "SEMANTIC_IDS = '/tmp/s.npy'"]


@pytest.fixture(autouse=True)
def _clear():
  yield
  configs.clear()


@pytest.mark.parametrize("path", sorted(str(p.relative_to(GIN_DIR.parent))
                                        for p in GIN_DIR.rglob("*.gin")))
def test_gin_file_parses(path):
  configs.parse([path], MACROS)
  assert configs.config_str()


def test_unknown_binding_is_named():
  with pytest.raises(configs.ConfigError, match="no_such_field"):
    configs.parse(["gin_configs/runs/baselines.gin"],
                  MACROS + ["evaluation.EvalConfig.no_such_field = 3"])


def test_split_gin_flags():
  bindings, rest = configs.split_gin_flags(["prog", "--gin.A.b=3", "--workdir=x"])
  assert bindings == ["A.b = 3"] and rest == ["prog", "--workdir=x"]


SPECS = sorted(str(p.relative_to(GIN_DIR.parent)) for p in (GIN_DIR / "sweeps").glob("*.txt"))


@pytest.mark.parametrize("spec", SPECS)
def test_every_run_of_every_sweep_spec_parses(spec):
  """The shipped sweep specs: each run's gin files and bindings form a config gin accepts
  (with a dataset's gin file, as their headers pass it)."""
  runs = sweep_spec.read_spec(str(GIN_DIR.parent / spec))
  assert runs and len({r.name for r in runs}) == len(runs)
  for run in sweep_spec.with_common(runs, gin_files=["gin_configs/data/synthetic_tiny.gin"]):
    configs.clear()
    configs.parse(list(run.gin_files), MACROS + list(run.bindings))
    assert configs.selected_job() is not None, (spec, run.name)


def test_bound_carries_what_gin_gives_each_job_and_calls_it_through_gin():
  """`configs.bound` reads a job's bindings once (jobs inside configs too), so the
  pipeline's fingerprints hash plain values; calling it still goes through gin."""
  from jaxrec import fingerprints  # pylint: disable=g-import-not-at-top
  from jaxrec.jobs import generator_job  # pylint: disable=g-import-not-at-top
  from jaxrec.pipeline import system  # pylint: disable=g-import-not-at-top
  configs.parse(["gin_configs/papers/tiger.gin"], MACROS)
  run = configs.bound(system.run_system)
  train = run.arguments["train_job"]
  assert isinstance(train, fingerprints.Bound)
  assert fingerprints.function_name(train) == "jaxrec.jobs.generator_job.train_generator"
  assert train.arguments.keys() == configs.bound_arguments(generator_job.train_generator).keys()
  # GeneratorConfig.model_config is a gin reference to a function: bound inside the config.
  model_config = train.arguments["generator"].model_config
  assert isinstance(model_config, fingerprints.Bound) and model_config.arguments
  before = fingerprints.fingerprint(train)
  configs.parse(["gin_configs/papers/tiger.gin"], MACROS + ["T5Config.tiger.num_heads = 2"])
  after = configs.bound(generator_job.train_generator)
  assert fingerprints.fingerprint(after) != before
  assert after.arguments["generator"].model_config.arguments["num_heads"] == 2
  # Not configured by gin: returned as it is.
  assert configs.bound(len) is len and configs.bound(None) is None
