"""LightGCN: graph, propagation, loss, negatives, training, resume, evaluation and export."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import configs, evaluation
from jaxrec.collaborative import heuristics
from jaxrec.collaborative import lightgcn
from jaxrec.jobs import lightgcn_job
from jaxrec.data.config import DatasetConfig
from jaxrec.data.splits import leave_one_out
from jaxrec.evaluation import EvalConfig
from jaxrec.training import checkpoints
from jaxrec.training import partitioning

TINY = DatasetConfig(name="synthetic", options={"num_items": 60, "num_users": 80,
                                                "image_size": 16})
FAST = dataclasses.replace(lightgcn_job.ADAM, learning_rate=1e-2)
EVAL = EvalConfig(splits=("valid", "test"), num_bootstrap=0)

# A hand-made graph: 3 users, 4 items; (0, 1) appears twice and counts once.
PAIRS = [(0, 1), (0, 2), (0, 1), (1, 2), (1, 3), (2, 4)]


def tiny_train_config(**kwargs):
  defaults = dict(num_epochs=4, batch_size=128, eval_every=2, early_stopping_patience=0,
                  checkpoint_every=2, optimizer=FAST)
  return lightgcn_job.LightGcnTrainConfig(**{**defaults, **kwargs})


def hand_graph(pad_multiple):
  users, items = np.array(PAIRS).T
  return lightgcn.BipartiteGraph.from_pairs(users, items, 3, 4, pad_multiple=pad_multiple)


def dense_reference(ego, num_layers):
  """Layer mean of (D^-1/2 A D^-1/2)^k E with A built by hand."""
  a = np.zeros((7, 7))
  for u, i in set(PAIRS):
    a[u, 3 + i - 1] = a[3 + i - 1, u] = 1.0
  deg = a.sum(1)
  inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0.0)
  norm = inv[:, None] * a * inv[None, :]
  layer, total = ego, ego.copy()
  for _ in range(num_layers):
    layer = norm @ layer
    total += layer
  return total / (num_layers + 1), norm


def test_graph_normalization_known_answer():
  g = hand_graph(pad_multiple=16)
  assert g.num_edges == 10 and len(g.src) == 16  # 5 distinct pairs, both directions, padded.
  np.testing.assert_array_equal(g.degrees, [2, 2, 1, 1, 2, 1, 1])  # users 0-2, items 1-4.
  np.testing.assert_array_equal(np.sort(g.dst), g.dst)
  np.testing.assert_array_equal(g.weight[10:], 0.0)
  norm = g.dense_normalized_adjacency()
  # user 0 (deg 2) - item 1 (deg 1): 1/sqrt(2); user 0 - item 2 (deg 2): 1/2; user 2 - item 4: 1.
  assert norm[0, 3] == pytest.approx(1 / np.sqrt(2)) and norm[3, 0] == pytest.approx(1 / np.sqrt(2))
  assert norm[0, 4] == pytest.approx(0.5) and norm[2, 6] == pytest.approx(1.0)
  assert norm[0, 5] == 0.0 and norm[0, 1] == 0.0  # no user-user or non-edge weights.
  np.testing.assert_allclose(norm, dense_reference(np.zeros((7, 1)), 0)[1], rtol=1e-6)
  np.testing.assert_array_equal(g.pair_offsets, [0, 2, 4, 5])
  np.testing.assert_array_equal(g.pair_items, [1, 2, 2, 3, 4])


@pytest.mark.parametrize("num_layers", [0, 1, 3])
def test_propagation_equals_dense_and_padding_has_no_effect(num_layers):
  ego = np.random.default_rng(0).normal(size=(7, 5))
  want, _ = dense_reference(ego, num_layers)
  for pad in (1, 16, 1024):  # 10 real edges; 0, 6 and 1014 zero-weight padding edges.
    g = hand_graph(pad)
    got = lightgcn.propagate(jnp.asarray(ego, jnp.float32), g.src, g.dst, g.weight, num_layers)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_propagation_with_edges_sharded_over_data_axis():
  devices = jax.devices()
  mesh = partitioning.make_mesh(partitioning.MeshConfig())
  g = hand_graph(pad_multiple=8 * len(devices))
  ego = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float32)
  edges = partitioning.data_sharding(mesh)
  src, dst, w = (jax.device_put(x, edges) for x in (g.src, g.dst, g.weight))
  assert len(src.sharding.device_set) == len(devices)
  got = jax.jit(lambda e, s, d, w: lightgcn.propagate(e, s, d, w, 3))(ego, src, dst, w)
  np.testing.assert_allclose(np.asarray(got), dense_reference(ego, 3)[0], rtol=1e-5, atol=1e-6)


def test_model_splits_users_and_items():
  g = hand_graph(16)
  model = lightgcn.LightGCN(num_users=3, num_items=4, embed_dim=5, num_layers=2)
  params = model.init(jax.random.PRNGKey(0), method=lightgcn.LightGCN.ego)["params"]
  assert params["user_embedding"].shape == (3, 5) and params["item_embedding"].shape == (4, 5)
  users, items = model.apply({"params": params}, g.device_arrays())
  ego = np.concatenate([params["user_embedding"], params["item_embedding"]])
  want, _ = dense_reference(ego.astype(np.float64), 2)
  np.testing.assert_allclose(np.asarray(users), want[:3], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(items), want[3:], rtol=1e-5, atol=1e-6)


def test_bpr_loss_hand_computed():
  u = np.array([[1.0, 0.0], [0.5, -1.0]])
  i = np.array([[2.0, 1.0], [0.0, 1.0]])
  j = np.array([[0.0, 3.0], [1.0, 0.0]])
  u0, i0, j0 = u * 2, i * 3, j - 1  # ego embeddings differ from the final ones.
  loss, aux = lightgcn.bpr_loss(*(jnp.asarray(x) for x in (u, i, j, u0, i0, j0)), 1e-4)
  # x_ui - x_uj: row 0: 2 - 0 = 2; row 1: -1 - 0.5 = -1.5.
  bpr = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(1.5))) / 2
  l2 = 1e-4 * 0.5 * (np.sum(u0 ** 2) + np.sum(i0 ** 2) + np.sum(j0 ** 2)) / 2
  assert float(aux["bpr"]) == pytest.approx(bpr, rel=1e-6)
  assert float(aux["l2"]) == pytest.approx(l2, rel=1e-6)
  assert float(loss) == pytest.approx(bpr + l2, rel=1e-6)
  assert float(aux["accuracy"]) == 0.5


def test_contains_sorted_and_negatives_avoid_positives_and_padding():
  g = hand_graph(16)
  arrays = {k: jnp.asarray(v) for k, v in g.device_arrays().items()}
  users = jnp.array([0, 0, 0, 1, 1, 2, 2, 2], jnp.int32)
  items = jnp.array([1, 2, 3, 2, 4, 4, 1, 3], jnp.int32)
  steps = lightgcn.search_steps(g.max_user_degree)
  got = jax.jit(lightgcn.contains_sorted, static_argnums=4)(
      arrays["pair_items"], arrays["pair_offsets"], users, items, steps)
  np.testing.assert_array_equal(got, [True, True, False, True, False, True, False, False])
  users = jnp.zeros([512], jnp.int32)  # user 0 likes items 1, 2 of 4.
  sample = jax.jit(lightgcn.sample_negatives, static_argnums=(3, 4, 5))
  neg = sample(jax.random.PRNGKey(0), users, arrays, 4, 40, steps)
  assert set(np.unique(neg)) == {3, 4}
  plain = sample(jax.random.PRNGKey(0), users, arrays, 4, 1, steps)
  assert set(np.unique(plain)) == {1, 2, 3, 4}  # uniform over 1..N, never 0.


def test_graph_uses_the_training_part_only():
  split = leave_one_out(TINY.load())
  g = lightgcn.BipartiteGraph.from_split(split)
  for user in range(0, g.num_users, 7):
    mine = g.pair_items[g.pair_offsets[user]:g.pair_offsets[user + 1]]
    np.testing.assert_array_equal(mine, np.unique(split.train_sequence(user)))
  keys = set(zip(g.pair_users.tolist(), g.pair_items.tolist()))
  held_out = [(u, int(t)) for u, t in enumerate(split.test.targets)
              if int(t) not in set(split.test.history(u).tolist())]
  assert held_out and not any(pair in keys for pair in held_out)


def test_recommender_needs_users_and_scores_by_user():
  users = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  items = jnp.array([[0.1, 0.9], [1.0, 0.0], [0.5, 0.5]])
  rec = lightgcn.LightGcnRecommender(users, items)
  assert rec.takes_users
  np.testing.assert_array_equal(rec(np.zeros((2, 8), np.int32), 2, users=np.array([0, 1])),
                                [[2, 3], [1, 3]])
  with pytest.raises(ValueError, match="users="):
    rec(np.zeros((2, 8), np.int32), 2)


def _losses(workdir):
  entries = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [e["loss"] for e in entries if "loss" in e and "event" not in e], entries


RESUME_CONFIG = tiny_train_config(num_epochs=5, eval_every=1)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
  """An uninterrupted 5-epoch run on the tiny catalog: (workdir, summary)."""
  workdir = str(tmp_path_factory.mktemp("lightgcn") / "whole")
  summary = lightgcn_job.train_lightgcn(workdir, TINY, lightgcn.LightGcnConfig(),
                                        RESUME_CONFIG, EVAL, progress=False)
  return workdir, summary


def test_loss_falls_on_synthetic_tiny(whole_run):
  workdir, summary = whole_run
  losses, entries = _losses(workdir)
  assert len(losses) == 5 and summary["epoch"] == 5 and summary["steps_per_epoch"] == 6
  assert losses[-1] < 0.8 * losses[0], losses
  assert [e["epoch"] for e in entries if e.get("event") == "eval"] == [1, 2, 3, 4, 5]
  assert summary["best_value"] > 0


def test_short_training_beats_cooccurrence(tmp_path):
  # A catalog whose users follow their attribute taste only (no item-to-item transitions):
  # collaborative signal that LightGCN should find. (On the default synthetic catalog, where
  # half the next items follow fixed successors, the sequential co-occurrence baseline wins.)
  dataset = DatasetConfig(name="synthetic", options={
      "num_items": 200, "num_users": 400, "image_size": 8, "p_transition": 0.0,
      "p_taste": 1.0})
  split = leave_one_out(dataset.load())
  cooc = evaluation.evaluate(heuristics.CoOccurrence.fit(split), split, "test", ks=(10,),
                             num_bootstrap=0, progress=False)
  config = tiny_train_config(num_epochs=30, batch_size=256, eval_every=10,
                             checkpoint_every=100)
  out = lightgcn_job.run_lightgcn(str(tmp_path), dataset, lightgcn.LightGcnConfig(), config,
                                  EVAL, export=False, progress=False)
  ours = out["eval"]["test"]["metrics"]["overall"]["recall@10"]["mean"]
  theirs = cooc["metrics"]["overall"]["recall@10"]["mean"]
  assert ours > theirs + 0.03, (ours, theirs)


def _params(workdir, config):
  s = lightgcn_job.setup(TINY, lightgcn.LightGcnConfig(), config)
  with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), s.fingerprint,
                                async_save=False) as ckpt:
    return jax.device_get(lightgcn_job.restore_params(s, workdir, "latest")[0]), ckpt.all_steps()


def test_resume_after_interruption_matches_uninterrupted(whole_run, tmp_path):
  config = RESUME_CONFIG
  whole, broken = whole_run[0], str(tmp_path / "broken")

  def crash(epoch, state):
    if epoch == 3:  # after the epoch-3 validation (and best save); last checkpoint: epoch 2.
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    lightgcn_job.train_lightgcn(broken, TINY, lightgcn.LightGcnConfig(), config, EVAL,
                                progress=False, on_epoch=crash)
  _, steps = _params(broken, config)
  assert steps == [12]  # 6 steps per epoch; the one checkpoint before the crash: epoch 2.
  with checkpoints.Checkpointer(os.path.join(broken, "checkpoints"), "",
                                async_save=False) as ckpt:
    crashed_seconds = ckpt.read_meta(12)["train_seconds"]
  resumed = []
  summary = lightgcn_job.train_lightgcn(broken, TINY, lightgcn.LightGcnConfig(), config, EVAL,
                                        progress=False, on_epoch=lambda e, s: resumed.append(e))
  assert resumed == [3, 4, 5] and summary["epoch"] == 5
  # Training time adds up over the runs: the crashed run's (to its checkpoint) + this one's.
  assert crashed_seconds > 0 and summary["run_seconds"] > 0
  assert summary["seconds"] == pytest.approx(crashed_seconds + summary["run_seconds"], rel=1e-3)
  a, _ = _params(whole, config)
  b, _ = _params(broken, config)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  losses_a, entries_a = _losses(whole)
  losses_b, entries_b = _losses(broken)
  assert losses_a == losses_b  # metrics.jsonl lost the entries after the restored epoch.
  assert ([e["epoch"] for e in entries_b if e.get("event") == "eval"] ==
          [e["epoch"] for e in entries_a if e.get("event") == "eval"])
  assert summary["best_epoch"] == json.load(open(os.path.join(whole, "train_summary.json")))[
      "best_epoch"]
  # Done: a rerun trains nothing; another configuration is refused.
  again = []
  lightgcn_job.train_lightgcn(broken, TINY, lightgcn.LightGcnConfig(), config, EVAL,
                              progress=False, on_epoch=lambda e, s: again.append(e))
  assert again == []
  with pytest.raises(checkpoints.WorkdirError, match="another run"):
    lightgcn_job.train_lightgcn(broken, TINY, lightgcn.LightGcnConfig(embed_dim=8), config,
                                EVAL, progress=False)


def test_damaged_newest_checkpoint_resumes_from_the_older_exactly(whole_run, tmp_path):
  config = RESUME_CONFIG
  broken = str(tmp_path / "broken")

  def crash(epoch, state):
    if epoch == 4:  # after the epoch-4 checkpoint (step 24); the one before: epoch 2.
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    lightgcn_job.train_lightgcn(broken, TINY, lightgcn.LightGcnConfig(), config, EVAL,
                                progress=False, on_epoch=crash)
  directory = os.path.join(broken, "checkpoints")
  assert sorted(os.listdir(directory)) == ["12", "24"]
  with open(os.path.join(directory, "24", "meta", "metadata"), "r+") as f:
    f.truncate(10)
  resumed = []
  with pytest.warns(checkpoints.CheckpointDamageWarning, match="resuming from step 12"):
    lightgcn_job.train_lightgcn(broken, TINY, lightgcn.LightGcnConfig(), config, EVAL,
                                progress=False, on_epoch=lambda e, s: resumed.append(e))
  assert resumed == [3, 4, 5] and "corrupt-24" in os.listdir(directory)
  a, _ = _params(whole_run[0], config)
  b, _ = _params(broken, config)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_gin_job_trains_evaluates_skips_resumes_and_exports(tmp_path):
  run = str(tmp_path / "run")
  workdir = os.path.join(run, "lightgcn")

  def job(epochs=2):
    configs.parse(["gin_configs/papers/lightgcn.gin", "gin_configs/data/synthetic_tiny.gin"],
                  [f"WORKDIR = {run!r}", f"NUM_EPOCHS = {epochs}", "EVAL_EVERY = 1",
                   "lightgcn.LightGcnConfig.embed_dim = 16",
                   "lightgcn_job.LightGcnTrainConfig.batch_size = 256",
                   "evaluation.EvalConfig.num_bootstrap = 10"])
    try:
      return configs.run_job(progress=False)
    finally:
      configs.clear()
  summary = job()
  assert {n: s["status"] for n, s in summary["stages"].items()} == {
      "baselines": "ran", "lightgcn": "ran", "evaluation": "ran"}
  assert json.load(open(os.path.join(workdir, "train_summary.json")))["epoch"] == 2
  assert "| lightgcn |" in open(os.path.join(run, "results.md")).read()
  assert {s["status"] for s in job()["stages"].values()} == {"skipped"}
  # More epochs: the model stage runs again in its folder (it resumes), then the evaluation.
  summary = job(epochs=3)
  assert {n: s["status"] for n, s in summary["stages"].items()} == {
      "baselines": "skipped", "lightgcn": "ran", "evaluation": "ran"}
  assert json.load(open(os.path.join(workdir, "train_summary.json")))["epoch"] == 3
  config = lightgcn.LightGcnConfig(embed_dim=16)
  train = lightgcn_job.LightGcnTrainConfig(  # lightgcn.gin's Adam lr is 5e-3.
      num_epochs=3, batch_size=256, eval_every=1,
      optimizer=dataclasses.replace(lightgcn_job.ADAM, learning_rate=5e-3))
  out = {"item_embeddings": lightgcn_job.export_item_embeddings(
      workdir, TINY, config, train, progress=False)}
  for which in ("valid", "test"):
    saved = json.load(open(os.path.join(workdir, "eval", f"{which}_metrics.json")))
    assert saved["split"] == which and saved["model"] == "lightgcn"
    assert saved["num_examples"] == 80 and "recall@10" in saved["metrics"]["overall"]
    assert saved["checkpoint"] == "best" and saved["checkpoint_step"] > 0
  path = out["item_embeddings"]
  emb = np.load(path)
  assert emb.shape == (60, 16) and emb.dtype == np.float32
  meta = json.load(open(os.path.splitext(path)[0] + ".json"))
  assert meta["num_items"] == 60 and meta["dim"] == 16 and meta["rows"] == "row r is item id r + 1"
  # Row r is item r + 1: the exported rows score users exactly like the recommender.
  s = lightgcn_job.setup(TINY, config, train)
  params, _ = lightgcn_job.restore_params(s, workdir, "best")
  users, items = lightgcn_job.final_embeddings(s, params)
  np.testing.assert_allclose(emb, np.asarray(items), rtol=1e-6)
  rec = lightgcn.LightGcnRecommender(users, items)
  top = rec(np.zeros((4, 8), np.int32), 5, users=np.arange(4))
  by_hand = np.argsort(-(np.asarray(users)[:4] @ emb.T), axis=1, kind="stable")[:, :5] + 1
  np.testing.assert_array_equal(top[:, 0], by_hand[:, 0])
  assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".item_embeddings")]
