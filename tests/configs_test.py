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
