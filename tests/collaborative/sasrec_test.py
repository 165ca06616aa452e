"""SASRec: the causal mask, the CE loss by hand, BCE and CE training, the job (train ->
evaluate -> export, skipped when done), the exported table, the gin file; and (slow) a
short training beats the co-occurrence baseline on the synthetic catalog.
"""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec import configs
from jaxrec import evaluation
from jaxrec.collaborative import heuristics
from jaxrec.collaborative import sasrec
from jaxrec.jobs import sasrec_job
from jaxrec.pipeline import system as system_pipeline
from jaxrec.data import batching
from jaxrec.data.config import DatasetConfig
from jaxrec.data.splits import leave_one_out
from jaxrec.evaluation import EvalConfig
from jaxrec.training import checkpoints
from jaxrec.training import optimizers
from jaxrec.jobs import tokenizer_job
from jaxrec.training import trainer as trainer_lib

TINY = DatasetConfig(name="synthetic", options={"num_items": 60, "num_users": 80,
                                                "image_size": 16})
TINY_MODEL = sasrec.SasRecConfig(hidden=16, num_blocks=1, num_heads=2, max_len=10,
                                 dropout=0.1)
TINY_TRAINER = trainer_lib.TrainerConfig(
    num_steps=40, eval_every=0, checkpoint_every=40, log_every=5, max_history=10,
    batching=batching.BatchingConfig(batch_size=32, num_threads=0, prefetch=0),
    optimizer=optimizers.OptimizerConfig(name="adamw", schedule="constant",
                                         learning_rate=0.01))
TINY_EVAL = EvalConfig(ks=(1, 5, 10), num_bootstrap=0)


def _params(model, width=6, seed=0):
  init = jax.jit(lambda rng: nn.meta.unbox(
      model.get_initial_variables(rng, {"history": (2, width)})["params"]))
  return init(jax.random.PRNGKey(seed))


def _encode(model, params, history, length):
  """[B, W, d] outputs of every position (jitted: eager applies are slow)."""
  return np.asarray(jax.jit(lambda p, h, l: model.module.apply(
      {"params": p}, h, l, method=sasrec.SasRec.encode))(params, history, length))


@pytest.mark.parametrize("norm", sasrec.NORMS)
def test_causal_mask_later_items_do_not_change_earlier_outputs(norm):
  model = sasrec.SasRecModel(dataclasses.replace(TINY_MODEL, norm=norm, max_len=6), 9)
  params = _params(model)
  history = np.array([[3, 1, 4, 1, 5, 0]], np.int32)
  length = np.array([5], np.int32)
  encode = lambda h: _encode(model, params, h, length)
  base = encode(history)
  changed = history.copy()
  changed[0, 3] = 9  # the 4th item.
  out = encode(changed)
  np.testing.assert_allclose(out[0, :3], base[0, :3], rtol=1e-6, atol=1e-6)
  assert np.abs(out[0, 3:5] - base[0, 3:5]).max() > 1e-3  # position 3 and after see it.
  np.testing.assert_array_equal(base[0, 5], 0.0)  # padding positions are zeroed.


def test_representation_ignores_end_padding_and_width():
  model = sasrec.SasRecModel(dataclasses.replace(TINY_MODEL, max_len=8), 9)
  params = _params(model)
  fn = jax.jit(model.hidden)
  hidden = lambda h, l: np.asarray(fn(params, {"history": np.array(h, np.int32),
                                               "length": np.array(l, np.int32)}))
  a = hidden([[2, 7, 5, 0]], [3])
  b = hidden([[2, 7, 5, 9, 9, 4, 1, 3]], [3])  # junk after the end, another width.
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ce_loss_and_prediction_by_hand():
  model = sasrec.SasRecModel(dataclasses.replace(TINY_MODEL, max_len=4), 7, top_k=3)
  params = _params(model, width=4)
  batch = {"history": np.array([[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 0, 0]], np.int32),
           "length": np.array([3, 1, 2], np.int32),
           "target": np.array([4, 7, 1], np.int32),
           "weight": np.array([1.0, 0.5, 0.0], np.float32)}
  out = _encode(model, params, batch["history"], batch["length"]).astype(np.float64)
  last = out[np.arange(3), batch["length"] - 1]  # [3, d]
  table = np.asarray(params["item_embedding"], np.float64)  # shared with the output.
  logits = last @ table[1:].T  # items 1..7; the padding item takes no part.
  log_z = np.log(np.exp(logits).sum(1))
  per_row = log_z - logits[np.arange(3), batch["target"] - 1]
  expected = (per_row * batch["weight"]).sum() / batch["weight"].sum()
  loss, metrics = jax.jit(model.loss_fn)(params, batch, None)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(metrics["num_examples"]) == 1.5
  top = np.asarray(jax.jit(model.predict_batch)(params, batch))
  assert top.dtype == np.int32 and top.shape == (3, 3)
  np.testing.assert_array_equal(top, np.argsort(-logits, axis=1)[:, :3] + 1)


def test_padding_item_is_never_recommended():
  model = sasrec.SasRecModel(dataclasses.replace(TINY_MODEL, max_len=4), 3, top_k=3)
  params = _params(model, width=4)
  params = jax.tree.map(lambda x: x, params)
  params["item_embedding"] = params["item_embedding"].at[0].set(100.0)  # a huge pad score.
  batch = {"history": np.array([[1, 2, 0, 0]], np.int32), "length": np.array([2], np.int32)}
  top = np.asarray(jax.jit(model.predict_batch)(params, batch))
  assert sorted(top[0].tolist()) == [1, 2, 3]


def test_negatives_exclude_padding_and_target():
  targets = jnp.asarray(np.random.default_rng(0).integers(1, 6, 4000), jnp.int32)
  neg = np.asarray(sasrec.sample_negatives(jax.random.PRNGKey(0), targets, 5))
  assert neg.min() >= 1 and neg.max() <= 5 and not (neg == np.asarray(targets)).any()
  assert len(np.unique(neg)) == 5


def _train_directly(model, examples, steps, lr=0.01, batch_size=64):
  """Plain optax loop (no trainer): per-step losses."""
  params = _params(model, width=examples.histories.shape[1])
  opt = optax.adam(lr)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, batch, rng):
    (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(0)
  losses = []
  for i in range(steps):
    rows = rng.integers(0, len(examples), batch_size)
    batch = {"history": examples.histories[rows], "length": examples.lengths[rows],
             "target": examples.targets[rows], "weight": np.ones(batch_size, np.float32)}
    params, opt_state, loss = step(params, opt_state, batch, jax.random.PRNGKey(i))
    losses.append(float(loss))
  return np.array(losses)


def test_bce_variant_runs_and_its_loss_falls():
  split = leave_one_out(TINY.load())
  # No dropout here: its compilation is most of this test's time; the job test trains with it.
  model = sasrec.SasRecModel(dataclasses.replace(TINY_MODEL, loss="bce", dropout=0.0),
                             split.num_items)
  losses = _train_directly(model, split.train_examples(10), steps=40)
  assert np.isfinite(losses).all()
  assert 1.0 < losses[:2].mean() < 2.5  # 2 log 2 ~ 1.39 when all scores are 0.
  assert losses[-10:].mean() < losses[:10].mean() - 0.1, losses


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """run_sasrec on the tiny synthetic catalog: train 40 steps, evaluate, export."""
  workdir = str(tmp_path_factory.mktemp("sasrec"))
  result = sasrec_job.run_sasrec(workdir, TINY, TINY_MODEL, TINY_TRAINER, TINY_EVAL,
                                 top_k=10, progress=False)
  return workdir, result


def test_loss_falls_on_the_synthetic_catalog(tiny_run):
  workdir, result = tiny_run
  entries = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [e["loss"] for e in entries if "loss" in e and "event" not in e]
  assert len(losses) == 8
  assert losses[0] == pytest.approx(np.log(60), abs=0.4)  # uniform over 60 items at init.
  assert np.mean(losses[-2:]) < losses[0] - 0.3, losses
  assert result["train"]["step"] == 40


def test_job_writes_metrics_and_a_rerun_keeps_the_training(tiny_run):
  """A rerun trains nothing more (the finished run resumes at its last step) and evaluates
  and exports again, to the same figures (jobs never skip themselves; the pipeline's
  stage skips a finished job)."""
  workdir, result = tiny_run
  for which in ("valid", "test"):
    saved = json.load(open(os.path.join(workdir, "eval", f"{which}_metrics.json")))
    assert saved["model"] == "sasrec" and saved["checkpoint_step"] == 40
    assert 0.0 <= saved["metrics"]["overall"]["recall@10"]["mean"] <= 1.0
  before = {which: json.load(open(os.path.join(workdir, "eval", f"{which}_metrics.json")))[
      "metrics"] for which in ("valid", "test")}
  table = np.load(os.path.join(workdir, "item_embeddings.npy"))
  again = sasrec_job.run_sasrec(workdir, TINY, TINY_MODEL, TINY_TRAINER, TINY_EVAL, top_k=10,
                                progress=False)
  assert again["train"]["step"] == 40 and again["train"]["loss"] is not None  # kept.
  assert {which: again["eval"][which]["metrics"] for which in before} == before
  np.testing.assert_array_equal(np.load(os.path.join(workdir, "item_embeddings.npy")), table)


def test_export_writes_the_trained_table(tiny_run, tmp_path):
  workdir, result = tiny_run
  path = result["embeddings"]
  emb = np.load(path)
  s = sasrec_job.setup(TINY, TINY_TRAINER, TINY_MODEL)
  assert emb.dtype == np.float32 and emb.shape == (s.split.num_items, TINY_MODEL.hidden)
  _, state, _, _ = sasrec_job._restore(s, workdir, TINY_TRAINER, "best")
  table = np.asarray(state.params["item_embedding"])
  np.testing.assert_array_equal(emb, table[1:])  # row r = item r + 1 (padding row dropped).
  meta = json.load(open(os.path.splitext(path)[0] + ".json"))
  assert meta["num_items"] == s.split.num_items and meta["dim"] == TINY_MODEL.hidden
  assert meta["rows"] == "row r is item id r + 1" and meta["checkpoint_step"] == 40
  # The tokenizers read it (and check it against the sidecar's num_items).
  assert tokenizer_job.load_embeddings(path).shape == emb.shape
  # Another output path works; nothing else is left beside it.
  other = str(tmp_path / "out" / "sasrec.npy")
  sasrec_job.export_item_embeddings(workdir, TINY, TINY_MODEL, TINY_TRAINER, other,
                                    progress=False)
  assert sorted(os.listdir(tmp_path / "out")) == ["sasrec.json", "sasrec.npy"]
  np.testing.assert_array_equal(np.load(other), emb)


def test_export_refuses_loudly(tiny_run, tmp_path):
  workdir, _ = tiny_run
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
    sasrec_job.export_item_embeddings(str(tmp_path / "empty"), TINY, TINY_MODEL, TINY_TRAINER,
                                      str(tmp_path / "e.npy"), progress=False)
  other_model = dataclasses.replace(TINY_MODEL, hidden=8)  # not what was trained there.
  with pytest.raises(checkpoints.CheckpointError, match="fingerprint"):
    sasrec_job.export_item_embeddings(workdir, TINY, other_model, TINY_TRAINER,
                                      str(tmp_path / "e.npy"), progress=False)
  assert not os.path.exists(tmp_path / "e.npy")


def test_config_errors_are_named():
  with pytest.raises(sasrec.SasRecError, match="loss"):
    sasrec.SasRecConfig(loss="bpr")
  with pytest.raises(sasrec.SasRecError, match="max_history"):
    sasrec_job.setup(TINY, dataclasses.replace(TINY_TRAINER, max_history=11), TINY_MODEL)
  make = sasrec_job.make_recommender_factory(max_len=10, top_k=5)
  with pytest.raises(Exception, match="top_k=5"):
    make(lambda batch: None)(np.ones((2, 3), np.int32), 6)


def test_keep_last_cuts_wide_histories():
  h = np.array([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]], np.int32)
  np.testing.assert_array_equal(sasrec_job.keep_last(h, 3), [[3, 4, 5], [6, 7, 0]])


def test_gin_file_selects_the_job():
  try:
    configs.parse(["gin_configs/papers/sasrec.gin", "gin_configs/data/synthetic_tiny.gin"],
                  ["WORKDIR = '/tmp/w'"])
    job = configs.selected_job()
    assert "run_system" in getattr(job, "__name__", repr(job))
    system = configs.bound_arguments(system_pipeline.run_system)
    assert system["modalities"] == () and system["model_stage"] == "sasrec"
    bound = configs.bound_arguments(sasrec_job.train_sasrec)
    assert bound == {k: v for k, v in configs.bound_arguments(sasrec_job.evaluate_sasrec).items()
                     if k != "checkpoint"}
    bound["dataset"] = system["dataset"]
    # The paper's sparse-data dropout (0.5); the rest are SasRecConfig's defaults.
    assert bound["model_config"] == sasrec.SasRecConfig(dropout=0.5)
    assert bound["trainer_config"].max_history == bound["model_config"].max_len == 50
    assert bound["trainer_config"].optimizer.learning_rate == 1e-3
    assert bound["dataset"].options["num_items"] == 60
  finally:
    configs.clear()


@pytest.mark.slow
def test_short_training_beats_cooccurrence(tmp_path):
  """~35-45 s on 2 CPU cores: 600 steps of 128 (~9 epochs) on 200 items / 1000 users."""
  data = DatasetConfig(name="synthetic", options={"num_items": 200, "num_users": 1000})
  split = leave_one_out(data.load())
  model = sasrec.SasRecConfig(hidden=32, max_len=20, dropout=0.1)
  train = trainer_lib.TrainerConfig(
      num_steps=600, eval_every=0, checkpoint_every=600, log_every=100, max_history=20,
      batching=batching.BatchingConfig(batch_size=128, num_threads=0, prefetch=0),
      optimizer=optimizers.OptimizerConfig(name="adamw", schedule="constant",
                                           learning_rate=0.005))
  eval_config = EvalConfig(ks=(10,), num_bootstrap=0)
  sasrec_job.train_sasrec(str(tmp_path), data, model, train, eval_config, progress=False)
  ours = sasrec_job.evaluate_sasrec(str(tmp_path), data, model, train, eval_config,
                                    progress=False)
  cooc = heuristics.CoOccurrence.fit(split)
  for which in ("valid", "test"):
    base = evaluation.evaluate(cooc, split, which, ks=(10,), num_bootstrap=0, progress=False)
    for metric in ("recall@10", "ndcg@10"):
      got = ours[which]["metrics"]["overall"][metric]["mean"]
      ref = base["metrics"]["overall"][metric]["mean"]
      assert got > ref, (which, metric, got, ref)
