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


def _collaborative_fingerprint(gin_files, bindings=()):
  """The "collaborative" stage identity a config's run_system would build."""
  from jaxrec import fingerprints  # pylint: disable=g-import-not-at-top
  from jaxrec.pipeline import system  # pylint: disable=g-import-not-at-top
  configs.parse(gin_files, MACROS + list(bindings))
  run = configs.bound(system.run_system).arguments
  stage = system.collaborative_stage(run["dataset"], run["collaborative"], progress=False)
  # The resumable settings (steps, validation users, ...) too: a difference retrains it.
  return fingerprints.fingerprint({"config": stage.config, "settings": stage.resumable})


@pytest.mark.parametrize("data", ["gin_configs/data/hm.gin", "gin_configs/data/beauty.gin"])
@pytest.mark.parametrize("paper,baseline", [("letter", "sasrec"), ("musicrec", "sasrec"),
                                            ("mscgrec", "sasrec"), ("cemg", "lightgcn")])
def test_a_shared_baseline_trains_the_systems_collaborative_model(paper, baseline, data):
  """SHARED_MODEL = True makes the SASRec / LightGCN baseline run the same "collaborative"
  stage (same fingerprint, so one folder in the feature cache) as the systems that read it;
  the generator's unscoped bindings (its optimizer's grad_clip, its seed) must not leak
  into the collaborative model's config. A different COLLAB_SEED is another model."""
  system_fp = _collaborative_fingerprint([f"gin_configs/papers/{paper}.gin", data])
  shared = [f"gin_configs/papers/{baseline}.gin", data]
  assert _collaborative_fingerprint(shared, ["SHARED_MODEL = True"]) == system_fp
  assert _collaborative_fingerprint(shared, ["SHARED_MODEL = True", "SEED = 1"]) != system_fp
  assert _collaborative_fingerprint([f"gin_configs/papers/{paper}.gin", data],
                                    ["SEED = 1"]) == system_fp


def _seeds(value, path="", out=None) -> dict:
  """{dotted path: seed} of every `seed` field in a bound job's arguments."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from jaxrec import fingerprints  # pylint: disable=g-import-not-at-top
  out = {} if out is None else out
  if isinstance(value, fingerprints.Bound):
    for k, v in value.arguments.items():
      _seeds(v, f"{path}.{k}" if path else k, out)
  elif dataclasses.is_dataclass(value) and not isinstance(value, type):
    for f in dataclasses.fields(value):
      if f.name == "seed":
        out[f"{path}.seed"] = getattr(value, f.name)
      else:
        _seeds(getattr(value, f.name), f"{path}.{f.name}", out)
  return out


@pytest.mark.parametrize("paper", ["tiger", "letter", "cemg", "musicrec", "mscgrec",
                                   "sasrec", "lightgcn"])
def test_seed_reaches_every_seed_of_a_run_but_the_shared_collaborative_model(paper):
  """`--gin.SEED=7` (a sweep's --seed_binding=SEED) seeds the tokenizer(s), the generator's
  init and data order (SASRec's / LightGCN's for their own runs); a system's collaborative
  model keeps COLLAB_SEED (0), so every seed of a system reads the same SASRec / LightGCN."""
  from jaxrec.pipeline import system  # pylint: disable=g-import-not-at-top
  configs.parse([f"gin_configs/papers/{paper}.gin"], MACROS + ["SEED = 7"])
  seeds = _seeds(configs.bound(system.run_system))
  model = {k: v for k, v in seeds.items() if not k.startswith("collaborative.")}
  assert model and set(model.values()) == {7}, seeds
  if paper not in ("sasrec", "lightgcn"):
    assert any(k.startswith("semantic_ids_job.") for k in model), seeds
    assert any(k.startswith("train_job.trainer_config.batching") for k in model), seeds
  collab = {k: v for k, v in seeds.items() if k.startswith("collaborative.")}
  if paper in ("tiger",):
    assert not collab
  elif paper in ("sasrec", "lightgcn"):  # the shared model is the baseline's: seeded too.
    assert set(collab.values()) == {7}, seeds
  else:
    assert collab and set(collab.values()) == {0}, seeds
