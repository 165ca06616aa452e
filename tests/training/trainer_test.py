"""The trainer: 1-device step == 4x2-mesh step, kill/resume == uninterrupted, loss falls,
best checkpoint and early stopping, another run's workdir is refused, gin errors are named.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrec import configs
from jaxrec.data import batching
from jaxrec.data.errors import DataError
from jaxrec.training import checkpoints
from jaxrec.training import loop
from jaxrec.training import optimizers
from jaxrec.training import partitioning
from jaxrec.training import trainer as trainer_lib

_path = pathlib.Path(__file__).with_name("multihost_worker.py")
_spec = importlib.util.spec_from_file_location("multihost_worker", _path)
w = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(w)

CONFIG = trainer_lib.TrainerConfig(
    num_steps=6, eval_every=0, checkpoint_every=3, log_every=1, max_history=6, seed=0,
    batching=batching.BatchingConfig(batch_size=8, seed=1, num_threads=0, prefetch=0),
    mesh=partitioning.MeshConfig(model=2),
    optimizer=optimizers.OptimizerConfig(name="adamw", schedule="constant", learning_rate=0.01))


@pytest.fixture(scope="module")
def split():
  return w.make_split()


def _losses(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {e["step"]: e["loss"] for e in lines if "loss" in e and "event" not in e}


def _meta(workdir, step):
  with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), "",
                                async_save=False) as ckpt:
    return ckpt.read_meta(step)


def _train(split, workdir, config=CONFIG, **kwargs):
  kwargs.setdefault("progress", False)
  return trainer_lib.train(w.StandInModel(), split, kwargs.pop("batch_fn", w.make_batch_fn()),
                           config, str(workdir), **kwargs)


def test_one_step_on_one_device_equals_a_4x2_mesh_step(split):
  examples = split.train_examples(CONFIG.max_history)
  batch_fn = w.make_batch_fn()
  host = batch_fn(trainer_lib.example_batch(examples, 8))
  shapes = {k: v.shape for k, v in host.items()}
  results = []
  for config, devices in [(dataclasses.replace(CONFIG, mesh=partitioning.MeshConfig()),
                           jax.devices()[:1]), (CONFIG, jax.devices())]:
    tr = trainer_lib.Trainer(w.StandInModel(), config, shapes, devices)
    assert tr.mesh.size == len(devices)
    state, metrics = tr.step(tr.init_state(), host)
    results.append(jax.device_get((state.params, state.opt_state, metrics["loss"])))
  assert results[1][2] > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               results[0], results[1])


def test_kill_and_resume_gives_the_uninterrupted_losses_and_batches(split, tmp_path):
  seen = {"whole": [], "killed": [], "resumed": []}

  def recording(key):
    fn = w.make_batch_fn()
    def batch_fn(batch):
      seen[key].append(batch["target"].copy())
      return fn(batch)
    return batch_fn

  _train(split, tmp_path / "whole", batch_fn=recording("whole"))

  def kill_at_4(step, state):
    if step == 4:
      raise KeyboardInterrupt("simulated kill after the step-3 checkpoint")

  with pytest.raises(KeyboardInterrupt):
    _train(split, tmp_path / "run", batch_fn=recording("killed"), on_step=kill_at_4)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["3"]
  assert sorted(_losses(tmp_path / "run")) == [1, 2, 3, 4]
  killed_seconds = _meta(tmp_path / "run", 3)["train_seconds"]
  summary = _train(split, tmp_path / "run", batch_fn=recording("resumed"))
  assert summary["step"] == 6
  # Training time adds up over the runs: the killed run's (to its checkpoint) + this one's.
  assert killed_seconds > 0 and summary["run_seconds"] > 0
  assert summary["seconds"] == pytest.approx(killed_seconds + summary["run_seconds"])
  whole, resumed = _losses(tmp_path / "whole"), _losses(tmp_path / "run")
  assert sorted(resumed) == list(range(1, 7))
  np.testing.assert_allclose([resumed[s] for s in range(1, 7)],
                             [whole[s] for s in range(1, 7)], rtol=1e-6)
  # The data iterator continued exactly at the checkpoint (batch 4 onwards).
  inits = 1  # example_batch for the init shapes goes through batch_fn first.
  np.testing.assert_array_equal(np.stack(seen["resumed"][inits:]),
                                np.stack(seen["whole"][inits + 3:]))
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["3", "6"]
  # Rerunning a finished run changes nothing.
  again = _train(split, tmp_path / "run")
  assert again["step"] == 6
  assert again["seconds"] == pytest.approx(_meta(tmp_path / "run", 6)["train_seconds"]
                                           + again["run_seconds"])
  # The last checkpoint holds the total up to its save (the summary adds the closing tail),
  # and the rerun starts from it: no wall-clock margin needed.
  assert killed_seconds < _meta(tmp_path / "run", 6)["train_seconds"] <= summary["seconds"]
  assert sorted(_losses(tmp_path / "run")) == list(range(1, 7))


def test_loss_falls_validation_and_best_checkpoint(split, tmp_path):
  config = dataclasses.replace(CONFIG, num_steps=60, eval_every=30, checkpoint_every=30,
                               log_every=10, batching=dataclasses.replace(
                                   CONFIG.batching, batch_size=16))

  def make_recommender(predict):
    def recommend(histories, k):
      tokens = {"encoder_input_tokens": histories.astype(np.int32)}
      codes = predict(tokens)
      items = codes[:, 0] * w.CODE_VOCAB + codes[:, 1]
      items = np.clip(items, 1, w.NUM_ITEMS)
      return np.repeat(items[:, None], k, 1)
    return recommend

  summary = _train(split, tmp_path, config, make_recommender=make_recommender,
                   eval_options={"batch_size": 16})
  entries = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  losses = [e["loss"] for e in entries if "loss" in e and "event" not in e]
  assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
  assert all(e["examples_per_s"] > 0 and e["lr"] == pytest.approx(0.01)
             for e in entries if "examples_per_s" in e)
  evals = [e for e in entries if e.get("event") == "eval"]
  assert [e["step"] for e in evals] == [30, 60] and "valid/ndcg@10" in evals[0]
  assert summary["best_step"] in (30, 60)
  assert os.listdir(tmp_path / "best") == [str(summary["best_step"])]
  assert summary["best_value"] == max(e["valid/ndcg@10"] for e in evals)


def test_early_stopping_keeps_the_best(split, tmp_path, monkeypatch):
  values = iter([0.1, 0.3, 0.2, 0.25, 0.9, 0.5, 0.5, 0.5, 0.5])

  def fake_validation(*args, **kwargs):
    m = {"ndcg@10": {"mean": next(values)}}
    return {"metrics": {"overall": m}, "seconds": 0.0}

  monkeypatch.setattr(trainer_lib, "run_validation", fake_validation)
  config = dataclasses.replace(CONFIG, num_steps=10, eval_every=1, checkpoint_every=100,
                               early_stopping_patience=2)
  summary = _train(split, tmp_path, config, make_recommender=lambda predict: None)
  assert summary["stopped_early"] and summary["step"] == 4
  assert summary["best_step"] == 2 and summary["best_value"] == 0.3
  assert os.listdir(tmp_path / "best") == ["2"]
  assert os.listdir(tmp_path / "checkpoints") == ["4"]
  # A rerun sees the stop in the checkpoint and does not train on.
  assert _train(split, tmp_path, config, make_recommender=lambda predict: None)["step"] == 4
  # A raised patience (a resumable field) trains on from the stop: a new best at step 5
  # (0.9), then 4 validations without one.
  longer = dataclasses.replace(config, early_stopping_patience=4)
  summary = _train(split, tmp_path, longer, make_recommender=lambda predict: None)
  assert summary["stopped_early"] and summary["step"] == 9
  assert summary["best_step"] == 5 and summary["best_value"] == 0.9



def test_best_record_judges_a_stop_by_the_current_patience():
  """The one place both loops (trainer, LightGCN) read a checkpoint's stop from."""
  meta = {"best_step": 2, "best_value": 0.3, "evals_since_best": 2, "stopped_early": True}
  assert loop.best_record(meta, 2) == dict(meta)
  assert loop.best_record(meta, 1)["stopped_early"]
  assert not loop.best_record(meta, 3)["stopped_early"]  # raised patience: trains on
  assert not loop.best_record(meta, 0)["stopped_early"]  # early stopping switched off
  assert loop.best_record({}, 2) == {"best_step": None, "best_value": None,
                                     "evals_since_best": 0, "stopped_early": False}

def _snapshot(root):
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(root).rglob("*")) if p.is_file()}


def test_workdir_of_another_run_is_refused_and_untouched(split, tmp_path):
  config = dataclasses.replace(CONFIG, num_steps=3)
  _train(split, tmp_path, config, config_text="a = 1\n")
  before = _snapshot(tmp_path)
  other = dataclasses.replace(config, optimizer=dataclasses.replace(
      config.optimizer, learning_rate=0.02))
  with pytest.raises(checkpoints.CheckpointError, match="another run"):
    _train(split, tmp_path, other, config_text="a = 1\n")
  with pytest.raises(trainer_lib.WorkdirError, match="config.gin differs.*'a = 1' vs 'a = 2'"):
    _train(split, tmp_path, config, config_text="a = 2\n")
  assert _snapshot(tmp_path) == before
  # Steps, logging, checkpointing and the mesh may change on resume; nothing else.
  fp = trainer_lib.trajectory_fingerprint(config, "")
  assert fp == trainer_lib.trajectory_fingerprint(dataclasses.replace(
      config, num_steps=9, mesh=partitioning.MeshConfig()), "")
  gin_a = "# Parameters\nS/trainer.TrainerConfig.num_steps = 3\nx.MeshConfig.model = 2\na = 1\n"
  gin_b = "S/trainer.TrainerConfig.num_steps = 9\nx.MeshConfig.model = 1\na = 1\n"
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "config.gin").write_text(gin_a)
  trainer_lib.check_workdir(str(tmp_path / "other"), fp, gin_b)
  with pytest.raises(trainer_lib.WorkdirError, match="'a = 1' vs 'a = 3'"):
    trainer_lib.check_workdir(str(tmp_path / "other"), fp, gin_b.replace("a = 1", "a = 3"))
  tr = trainer_lib.Trainer(w.StandInModel(), config, trainer_lib.input_shapes(
      split, w.make_batch_fn(), config))
  with pytest.raises(checkpoints.CheckpointError, match="another configuration"):
    trainer_lib.restore_state(tr, str(tmp_path), "not-this-fingerprint", "latest")
  state, _ = trainer_lib.restore_state(
      tr, str(tmp_path), trainer_lib.trajectory_fingerprint(config, ""), "best")
  assert int(state.step) == 3   # no validation ran: "best" falls back to the latest.


def test_gin_errors_are_named(tmp_path):
  macros = [f"WORKDIR = '{tmp_path}'", "SEMANTIC_IDS = '/nonexistent.npy'"]
  try:
    with pytest.raises(configs.ConfigError, match="no_such_field"):
      configs.parse(["gin_configs/runs/train_generator.gin"],
                    macros + ["trainer.TrainerConfig.no_such_field = 3"])
    with pytest.raises(configs.ConfigError, match="SEMANTIC_IDS"):
      configs.parse(["gin_configs/runs/train_generator.gin"], macros[:1])
    configs.parse(["gin_configs/runs/train_generator.gin", "gin_configs/data/synthetic_tiny.gin"],
                  macros)
    from jaxrec.jobs import generator_job  # pylint: disable=g-import-not-at-top
    with pytest.raises(DataError, match="semantic IDs not found"):
      configs.run(generator_job.train_generator)
  finally:
    configs.clear()
  assert not os.listdir(tmp_path)


# ------------------------------------------------------------------ the T5 generator


def _tiny_generator_setup(tmp_path):
  from jaxrec.data.config import DatasetConfig  # pylint: disable=g-import-not-at-top
  from jaxrec.generator import T5Config  # pylint: disable=g-import-not-at-top
  from jaxrec.jobs import generator_job  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  codes = rng.permutation(64)[:60]
  path = tmp_path / "semantic_ids.npy"
  np.save(path, np.stack([codes // 16, (codes // 4) % 4, codes % 4], 1).astype(np.int32))
  dataset = DatasetConfig(name="synthetic", options={"num_items": 60, "num_users": 80,
                                                     "image_size": 16})
  config = dataclasses.replace(
      CONFIG, num_steps=4, eval_every=4, checkpoint_every=4, log_every=2, max_history=8,
      optimizer=optimizers.OptimizerConfig(warmup_steps=2))  # Adafactor, rsqrt (TIGER).
  return generator_job, dict(semantic_ids_path=str(path), dataset=dataset,
                             trainer_config=config,
                             generator=generator_job.GeneratorConfig(T5Config.tiny))


def _with(kw, **fields):
  """The job arguments `kw` with these GeneratorConfig fields replaced."""
  return dict(kw, generator=dataclasses.replace(kw["generator"], **fields))


@pytest.mark.slow
def test_t5_generator_step_on_one_device_equals_a_4x2_mesh_step(tmp_path):
  job, kw = _tiny_generator_setup(tmp_path)
  s = job.setup(**kw)
  config = kw["trainer_config"]
  host = s.batch_fn(trainer_lib.example_batch(s.split.train_examples(config.max_history), 8))
  shapes = {k: v.shape for k, v in host.items()}
  results = []
  for cfg, devices in [(dataclasses.replace(config, mesh=partitioning.MeshConfig()),
                        jax.devices()[:1]), (config, jax.devices())]:
    tr = trainer_lib.Trainer(s.model, cfg, shapes, devices)
    state, metrics = tr.step(tr.init_state(), host)
    if len(devices) > 1:
      q = state.params["encoder"]["layers_0"]["attention"]["query"]["kernel"]
      assert q.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    results.append(jax.device_get((state.params, metrics["loss"])))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               results[0], results[1])


@pytest.mark.slow
def test_t5_generator_job_trains_validates_and_evaluates(tmp_path):
  from jaxrec.evaluation import EvalConfig  # pylint: disable=g-import-not-at-top
  job, kw = _tiny_generator_setup(tmp_path)
  eval_config = EvalConfig(batch_size=16, num_bootstrap=10)
  workdir = str(tmp_path / "run")
  summary = job.train_generator(workdir, eval_config=eval_config, progress=False, **kw)
  assert summary["step"] == 4 and summary["best_step"] == 4
  assert json.load(open(os.path.join(workdir, "train_summary.json")))["step"] == 4
  results = job.evaluate_generator(workdir, eval_config=eval_config, progress=False, **kw)
  assert set(results) == {"valid", "test"}
  saved = json.load(open(os.path.join(workdir, "eval", "test_metrics.json")))
  assert saved["checkpoint_step"] == 4 and saved["found_rate"] == 1.0
  assert results["valid"]["metrics"]["overall"]["ndcg@10"]["mean"] == pytest.approx(
      summary["best_value"])


def test_code_lookup_exact_and_prefix_fallback():
  from jaxrec.jobs import generator_job  # pylint: disable=g-import-not-at-top
  ids = np.array([[0, 0], [1, 2], [1, 3], [2, 0]])  # row 0 padding; items 1..3.
  lookup = generator_job.CodeLookup(ids, fallback_item=3)
  items, exact = lookup(np.array([[1, 3], [1, 2], [1, 7], [5, 5], [2, 0]]))
  np.testing.assert_array_equal(items, [2, 1, 1, 3, 3])
  np.testing.assert_array_equal(exact, [True, True, False, False, True])


@pytest.mark.slow
def test_train_and_evaluate_tools(tmp_path):
  repo = pathlib.Path(__file__).resolve().parent.parent.parent
  _, kw = _tiny_generator_setup(tmp_path)
  workdir = tmp_path / "run"
  common = ["--gin_file=gin_configs/runs/train_generator.gin",
            "--gin_file=gin_configs/data/synthetic_tiny.gin",
            f"--semantic_ids={kw['semantic_ids_path']}", f"--workdir={workdir}",
            "--gin.MODEL_CONFIG=@t5_config.T5Config.tiny",
            "--gin.trainer.TrainerConfig.num_steps=4", "--gin.trainer.TrainerConfig.eval_every=4",
            "--gin.trainer.TrainerConfig.log_every=2", "--gin.trainer.TrainerConfig.max_history=8",
            "--gin.batching.BatchingConfig.batch_size=16", "--gin.evaluation.EvalConfig.batch_size=16",
            "--gin.evaluation.EvalConfig.num_bootstrap=10"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(repo),
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  run = lambda tool, *extra: subprocess.run(  # noqa: E731
      [sys.executable, f"tools/{tool}.py", *common, *extra], cwd=repo, env=env,
      capture_output=True, text=True, timeout=300)
  done = run("train")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "trained to step 4" in done.stdout
  assert "t5_config.T5Config.tiny" in (workdir / "config.gin").read_text()
  again = run("train", "--gin.optimizers.OptimizerConfig.learning_rate=0.02")
  assert again.returncode != 0 and "holds another run" in again.stderr
  evaluated = run("evaluate")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  saved = json.loads((workdir / "eval" / "test_metrics.json").read_text())
  assert saved["checkpoint"] == "best" and saved["checkpoint_step"] == 4
  # The run's own config.gin (tools/train.py's: only the training job is bound) evaluates
  # the same GeneratorConfig, trainer and dataset: the same figures.
  (workdir / "eval" / "test_metrics.json").unlink()
  from_saved = subprocess.run(
      [sys.executable, "tools/evaluate.py", f"--gin_file={workdir}/config.gin",
       f"--workdir={workdir}"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
  assert from_saved.returncode == 0, from_saved.stderr[-3000:]
  again = json.loads((workdir / "eval" / "test_metrics.json").read_text())
  assert again["metrics"] == saved["metrics"] and again["checkpoint_step"] == 4


def test_best_saved_after_the_last_checkpoint_is_redone_on_resume(split, tmp_path, monkeypatch):
  values = iter([0.1, 0.2, 0.3, 0.4, 0.35, 0.32])  # steps 1-4, then 4-5 again (resumed).

  def fake_validation(*args, **kwargs):
    return {"metrics": {"overall": {"ndcg@10": {"mean": next(values)}}}, "seconds": 0.0}

  def kill_at_4(step, state):
    if step == 4:
      raise KeyboardInterrupt

  monkeypatch.setattr(trainer_lib, "run_validation", fake_validation)
  config = dataclasses.replace(CONFIG, num_steps=5, eval_every=1, checkpoint_every=3)
  with pytest.raises(KeyboardInterrupt):
    _train(split, tmp_path, config, make_recommender=lambda p: None, on_step=kill_at_4)
  assert os.listdir(tmp_path / "best") == ["4"]
  summary = _train(split, tmp_path, config, make_recommender=lambda p: None)
  assert summary["best_step"] == 4 and summary["best_value"] == 0.35
  assert os.listdir(tmp_path / "best") == ["4"]
  fp = trainer_lib.trajectory_fingerprint(config, "")
  with checkpoints.Checkpointer(str(tmp_path / "best"), fp) as best:
    assert best.read_meta()["value"] == 0.35


# ------------------------------------------------------------------ per-sequence generator


@pytest.mark.parametrize("layout", ["item_encoder", "decoder_only"])
def test_per_sequence_step_on_one_device_equals_a_4x2_mesh_step(tmp_path, layout):
  job, kw = _tiny_generator_setup(tmp_path)
  s = job.setup(**_with(kw, training_layout=layout))
  config = kw["trainer_config"]
  assert s.examples is not None and s.examples.num_targets == len(
      s.split.train_examples(config.max_history))
  host = s.batch_fn(trainer_lib.example_batch(s.examples, 8))
  if layout == "item_encoder":  # the decoder rows packed to the targets (64 rows at least).
    targets = int(np.sum(host["decoder_loss_weights"][:, 0] > 0))
    assert 8 <= targets <= 8 * config.max_history
    assert host["decoder_target_tokens"].shape == (64, 3)
    assert host["decoder_row_window"].shape == host["decoder_row_position"].shape == (64,)
  else:  # [BOS, codes...] but the last token.
    assert host["decoder_target_tokens"].shape == (8, (config.max_history + 1) * 3)
  shapes = {k: v.shape for k, v in host.items()}
  results = []
  for cfg, devices in [(dataclasses.replace(config, mesh=partitioning.MeshConfig()),
                        jax.devices()[:1]), (config, jax.devices())]:
    tr = trainer_lib.Trainer(s.model, cfg, shapes, devices)
    state, metrics = tr.step(tr.init_state(), host)
    results.append(jax.device_get((state.params, metrics["loss"])))
  assert results[0][1] > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               results[0], results[1])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["item_encoder", "decoder_only"])
def test_per_sequence_job_resumes_exactly_trains_and_evaluates(tmp_path, layout):
  from jaxrec.evaluation import EvalConfig  # pylint: disable=g-import-not-at-top
  job, kw = _tiny_generator_setup(tmp_path)
  kw["trainer_config"] = dataclasses.replace(kw["trainer_config"], num_steps=4,
                                             checkpoint_every=2, log_every=1)
  eval_config = EvalConfig(batch_size=16, num_bootstrap=10)
  whole = str(tmp_path / "whole")
  job.train_generator(whole, eval_config=eval_config, progress=False,
                      **_with(kw, training_layout=layout))

  def kill_at_3(step, state):
    if step == 3:
      raise KeyboardInterrupt("simulated kill after the step-2 checkpoint")

  run = str(tmp_path / "run")
  original = trainer_lib.train
  with pytest.raises(KeyboardInterrupt):
    trainer_lib.train = lambda *a, **k: original(*a, **{**k, "on_step": kill_at_3})
    try:
      job.train_generator(run, eval_config=eval_config, progress=False,
                          **_with(kw, training_layout=layout))
    finally:
      trainer_lib.train = original
  summary = job.train_generator(run, eval_config=eval_config, progress=False,
                                **_with(kw, training_layout=layout))
  assert summary["step"] == 4
  np.testing.assert_allclose([_losses(run)[s] for s in range(1, 5)],
                             [_losses(whole)[s] for s in range(1, 5)], rtol=1e-6)
  results = job.evaluate_generator(run, eval_config=eval_config, progress=False,
                                   **_with(kw, training_layout=layout))
  saved = json.load(open(os.path.join(run, "eval", "test_metrics.json")))
  assert saved["found_rate"] == 1.0
  assert results["valid"]["metrics"]["overall"]["ndcg@10"]["mean"] == pytest.approx(
      summary["best_value"])
  with pytest.raises(DataError, match="training_layout"):
    job.setup(**_with(kw, training_layout="decoder_only_typo"))
  if layout == "decoder_only":
    with pytest.raises(DataError, match="position_embeddings"):
      job.setup(**_with(kw, training_layout=layout, position_embeddings=True))
  else:  # MSCGRec's dual position embeddings in the item encoder.
    cfg = job.setup(**_with(kw, training_layout=layout, position_embeddings=True)).model.config
    assert cfg.item_position_embeddings == kw["trainer_config"].max_history
    assert cfg.code_position_embeddings == 3
