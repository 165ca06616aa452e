"""LightGCN jobs (gin entry points): train with early stopping, evaluate, export item embeddings.

Workdir layout:
  metrics.jsonl                 one JSON per epoch (loss, bpr, l2, accuracy, seconds) and per
                                validation ("valid/<metric>"), plus start/resume/end events
  checkpoints/<step>            latest train states (params + Adam state) with the epoch in meta
  best/<step>                   params with the best validation metric
  train_summary.json            what `train_lightgcn` returned
  eval/<split>_metrics.json     `evaluate_lightgcn` (the JSON shape of `evaluation.evaluate`)
  item_embeddings.npy (+ .json) `export_item_embeddings`: [num_items, d] float32, row r = item r + 1

Training runs whole epochs: an epoch is ceil(P / batch_size) steps over a permutation of
the P distinct (user, item) training pairs drawn from (seed, epoch), the last batch
wrapping around to its start; the negatives come from `fold_in(key(seed), step)` on
device. So the trajectory depends on (seed, epoch) only, and a killed run that is
started again resumes at its last saved epoch and continues exactly as an
uninterrupted run would. `num_epochs`, `eval_every`, `early_stopping_patience`,
`checkpoint_every`, `keep_checkpoints` and the mesh may change on resume.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Callable, Optional

import jax
import numpy as np

from jaxrec import evaluation
from jaxrec import files
from jaxrec import fingerprints
from jaxrec.collaborative import lightgcn
from jaxrec.data.config import DatasetConfig
from jaxrec.data.splits import leave_one_out
from jaxrec.jobs import item_job
from jaxrec.evaluation import EvalConfig, evaluate_and_save
from jaxrec.training import checkpoints
from jaxrec.training import loop
from jaxrec.training import optimizers
from jaxrec.training import partitioning
from jaxrec.training import train_state as train_state_lib

MODEL_NAME = "lightgcn"
ADAM = optimizers.OptimizerConfig(name="adamw", schedule="constant", learning_rate=1e-3,
                                  warmup_steps=0, weight_decay=0.0)  # = Adam (the paper).


@dataclasses.dataclass(frozen=True)
class LightGcnTrainConfig(loop.ValidatedFitConfig):
  """How LightGCN is trained (`loop.ValidatedFitConfig`'s fields, counted in epochs).

  Attributes:
    num_epochs: epochs in total (a resumed run continues up to it).
    batch_size: (user, positive) pairs per step (a multiple of the mesh's data size).
    eval_every: epochs between validations (also after the last epoch); 0 = only at the end.
    early_stopping_patience: stop after this many validations without a new best
      valid_metric; 0 = never stop early.
    valid_metric: "<metric>@<k>" on the validation split (higher is better).
    checkpoint_every: epochs between checkpoints (also at the end and when stopping).
    keep_checkpoints: latest checkpoints kept (the best one is kept apart).
    seed: init, batch order and negatives.
    optimizer: Adam, lr 1e-3 (as the paper) by default.
    mesh: the device mesh; the edge arrays and the batch are split over "data".
  """
  num_epochs: int = 1000
  batch_size: int = 2048
  eval_every: int = 5
  early_stopping_patience: int = 10
  valid_metric: str = "ndcg@10"
  checkpoint_every: int = 1
  keep_checkpoints: int = 2
  seed: int = 0
  optimizer: optimizers.OptimizerConfig = ADAM
  mesh: partitioning.MeshConfig = partitioning.MeshConfig()

  def __post_init__(self):
    if self.num_epochs < 0 or self.batch_size < 1 or self.eval_every < 0:
      raise ValueError(f"LightGcnTrainConfig needs num_epochs >= 0, batch_size >= 1 and "
                       f"eval_every >= 0; got {self}.")
    if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
      raise ValueError(f"LightGcnTrainConfig needs checkpoint_every >= 1 and "
                       f"keep_checkpoints >= 1; got {self}.")


# LightGcnTrainConfig fields (and the mesh) a resumed run may change.
RESUMABLE_FIELDS = ("num_epochs", "eval_every", "early_stopping_patience", "checkpoint_every",
                    "keep_checkpoints")
_RESUMABLE = r"(LightGcnTrainConfig\.(%s)|MeshConfig\.\w+)\s*=" % "|".join(RESUMABLE_FIELDS)
_RESUMABLE_NAMES = f"LightGcnTrainConfig.{{{','.join(RESUMABLE_FIELDS)}}} and MeshConfig"


# ---------------------------------------------------------------------------- setup


@dataclasses.dataclass
class LightGcnSetup:
  """Everything built from the configs before training, evaluation or export."""
  split: object
  graph: lightgcn.BipartiteGraph
  model: lightgcn.LightGCN
  config: lightgcn.LightGcnConfig
  train_config: LightGcnTrainConfig
  mesh: jax.sharding.Mesh
  fingerprint: str

  @property
  def steps_per_epoch(self) -> int:
    return max(1, math.ceil(self.graph.num_pairs / self.train_config.batch_size))

  @functools.cached_property
  def final_fn(self) -> Callable:
    """Jitted `(params, graph) -> (users [U, d], items [N, d])` (compiled once per setup)."""
    rep = partitioning.replicated(self.mesh)
    return jax.jit(lambda p, g: self.model.apply({"params": p}, g),
                   in_shardings=(rep, _graph_shardings(self)), out_shardings=(rep, rep))


def fingerprint(dataset: DatasetConfig, config: lightgcn.LightGcnConfig,
                train_config: LightGcnTrainConfig) -> str:
  """Hash of what determines the trajectory (not the resumable fields or the mesh)."""
  train = {k: v for k, v in dataclasses.asdict(train_config).items()
           if k in ("batch_size", "seed", "optimizer", "valid_metric")}
  return fingerprints.digest([MODEL_NAME, dataclasses.asdict(dataset),
                              dataclasses.asdict(config), train])


def setup(dataset: DatasetConfig, config: lightgcn.LightGcnConfig,
          train_config: LightGcnTrainConfig, devices=None) -> LightGcnSetup:
  """Loads and splits the data, builds the training graph, the model and the mesh."""
  split = leave_one_out(dataset.load())
  mesh = partitioning.make_mesh(train_config.mesh, devices)
  data_size = mesh.shape[partitioning.DATA]
  if train_config.batch_size % data_size:
    raise partitioning.MeshError(
        f"LightGcnTrainConfig.batch_size={train_config.batch_size} is not divisible by the "
        f"mesh's data axis ({data_size}). Fix: use a multiple of {data_size}.")
  multiple = math.lcm(config.edge_pad_multiple, data_size)
  graph = lightgcn.BipartiteGraph.from_split(split, pad_multiple=multiple)
  model = lightgcn.LightGCN.from_config(config, graph.num_users, graph.num_items)
  return LightGcnSetup(split, graph, model, config, train_config, mesh,
                       fingerprint(dataset, config, train_config))


def _graph_on_mesh(s: LightGcnSetup) -> dict:
  """The graph's device arrays: edges split over "data", the positives' CSR replicated."""
  edges = partitioning.data_sharding(s.mesh)
  rep = partitioning.replicated(s.mesh)
  arrays = s.graph.device_arrays()
  return {k: partitioning.put_global(v, edges if k in ("src", "dst", "weight") else rep)
          for k, v in arrays.items()}


def _graph_shardings(s: LightGcnSetup) -> dict:
  edges = partitioning.data_sharding(s.mesh)
  rep = partitioning.replicated(s.mesh)
  return {k: edges if k in ("src", "dst", "weight") else rep for k in s.graph.device_arrays()}


def _init_state(s: LightGcnSetup, optimizer) -> train_state_lib.TrainState:
  rep = partitioning.replicated(s.mesh)

  def init(rng):
    params = s.model.init(rng, method=lightgcn.LightGCN.ego)["params"]
    return train_state_lib.TrainState(step=jax.numpy.zeros([], jax.numpy.int32), params=params,
                                      opt_state=optimizer.init(params))

  rng = jax.random.fold_in(jax.random.PRNGKey(s.train_config.seed), 0)
  return jax.jit(init, out_shardings=rep)(rng)


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def make_train_step(s: LightGcnSetup, optimizer) -> Callable:
  """Jitted `step(state, graph, users [B], pos [B], rng) -> (state, metrics)`.

  The negatives are drawn from `fold_in(rng, state.step)`; the state is donated.
  """
  cfg = s.config
  num_items = s.graph.num_items
  steps = lightgcn.search_steps(s.graph.max_user_degree)

  def step(state, graph, users, pos, rng):
    neg = lightgcn.sample_negatives(jax.random.fold_in(rng, state.step), users, graph,
                                    num_items, cfg.negative_tries, steps)
    loss = lambda p: lightgcn.loss_fn(s.model, p, graph, users, pos, neg,  # noqa: E731
                                      cfg.l2_weight)
    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    state = train_state_lib.apply_gradients(state, grads, optimizer)
    return state, {"loss": value, **aux}

  rep, data = partitioning.replicated(s.mesh), partitioning.data_sharding(s.mesh)
  jitted = jax.jit(step, in_shardings=(rep, _graph_shardings(s), data, data, rep),
                   out_shardings=(rep, rep), donate_argnums=0)

  def call(state, graph, users, pos, rng):
    with jax.set_mesh(s.mesh):
      return jitted(state, graph, partitioning.put_global(users, data),
                    partitioning.put_global(pos, data), rng)
  return call


def final_embeddings(s: LightGcnSetup, params: dict, graph: Optional[dict] = None) -> tuple:
  """(users [U, d], items [N, d]) final (layer-mean) embeddings as device arrays."""
  graph = _graph_on_mesh(s) if graph is None else graph
  with jax.set_mesh(s.mesh):
    return s.final_fn(params, graph)


def epoch_order(num_pairs: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """[steps * batch_size] pair indices of one epoch: a permutation, wrapped to full batches."""
  steps = max(1, math.ceil(num_pairs / batch_size))
  perm = np.random.default_rng([seed, epoch]).permutation(num_pairs)
  return perm[np.arange(steps * batch_size) % num_pairs]


# ---------------------------------------------------------------------------- workdir


def check_workdir(workdir: str, fp: str, config_text: Optional[str] = None) -> None:
  """Raises checkpoints.WorkdirError if `workdir` holds another run (writes nothing)."""
  loop.check_run(workdir, fp, config_text, _RESUMABLE, _RESUMABLE_NAMES)


def _eval_options(eval_config: EvalConfig, valid_metric: str) -> dict:
  k = loop.metric_k(valid_metric, "LightGcnTrainConfig.valid_metric")
  return dict(ks=sorted(set(eval_config.ks) | {k}), batch_size=eval_config.batch_size,
              max_history=eval_config.max_history, exclude_history=eval_config.exclude_history,
              cold_start_threshold=eval_config.cold_start_threshold)


def validate(s: LightGcnSetup, params: dict, graph: dict, options: dict,
             which: str = "valid") -> dict:
  """`evaluation.evaluate` of the model at `params` (no bootstrap, no progress bar)."""
  users, items = final_embeddings(s, params, graph)
  recommend = lightgcn.LightGcnRecommender(users, items)
  return evaluation.evaluate(recommend, s.split, which, num_bootstrap=0, progress=False,
                             **options)


# ---------------------------------------------------------------------------- jobs


def train_lightgcn(workdir: str, dataset: DatasetConfig = DatasetConfig(),
                   config: lightgcn.LightGcnConfig = lightgcn.LightGcnConfig(),
                   train_config: LightGcnTrainConfig = LightGcnTrainConfig(),
                   eval_config: EvalConfig = EvalConfig(), progress: bool = True,
                   config_text: Optional[str] = None, devices=None,
                   on_epoch: Optional[Callable[[int, object], None]] = None) -> dict:
  """Trains LightGCN in `workdir` (resuming a run of the same configuration).

  Validation (`evaluation.evaluate` on the valid split with eval_config's ks,
  batch size and exclude_history) runs every `eval_every` epochs and after the last;
  the best params by `valid_metric` go to `<workdir>/best`; training stops after
  `early_stopping_patience` validations without a new best.

  Args:
    workdir: run folder (see the module docstring).
    dataset: which dataset (split leave-one-out; the graph is its training part).
    config: the model and loss.
    train_config: epochs, batch, optimizer, validation, mesh.
    eval_config: how validation evaluates.
    progress: a tqdm bar and prints.
    config_text: an operative gin config to save as config.gin and check on resume.
    devices: the mesh's devices (default all).
    on_epoch: called after every epoch (after validation and checkpointing) with
      (epochs done, state): tests, custom hooks.

  Returns:
    {"epoch", "step", "steps_per_epoch", "best_epoch", "best_step", "best_value",
    "valid_metric", "stopped_early", "loss", "epoch_seconds", "seconds", "run_seconds",
    "fingerprint"}; also written to `<workdir>/train_summary.json`. "seconds" is the
    training time over every run of this workdir (checkpoints store the total so far),
    "run_seconds" this call's.

  Raises:
    checkpoints.WorkdirError: the workdir holds another run.
  """
  s = setup(dataset, config, train_config, devices)
  tc, fp, spe = train_config, s.fingerprint, s.steps_per_epoch
  run = loop.RunFolder(workdir, fp, config_text, tc.keep_checkpoints, "LightGCN training run",
                       _RESUMABLE, _RESUMABLE_NAMES)
  run.check()
  options = _eval_options(eval_config, tc.valid_metric)
  with run:  # one process per workdir (a second is refused with WorkdirError)
    optimizer = optimizers.make_optimizer(tc.optimizer)
    graph = _graph_on_mesh(s)
    step_fn = make_train_step(s, optimizer)
    rng = partitioning.put_global(np.asarray(jax.random.PRNGKey(tc.seed)),
                                  partitioning.replicated(s.mesh))
    state, meta = run.resume(
        lambda: _init_state(s, optimizer),
        lambda: _abstract(jax.eval_shape(lambda: _init_state(s, optimizer)),
                          partitioning.replicated(s.mesh)))
    step = int(state.step)
    epoch = int(meta.get("epoch", 0))
    if step != epoch * spe:
      raise checkpoints.CheckpointError(
          f"{workdir}/checkpoints step {step} is not epoch {epoch} x {spe} steps per epoch. "
          "Fix: use a new --workdir.")
    best = loop.best_record(meta, tc.early_stopping_patience)
    run.log.write({"step": step, "epoch": epoch, "event": "start" if step == 0 else "resume",
                   "fingerprint": fp, "devices": jax.device_count(), "mesh": dict(s.mesh.shape),
                   "users": s.graph.num_users, "items": s.graph.num_items,
                   "train_pairs": s.graph.num_pairs, "padded_edges": len(s.graph.src),
                   "steps_per_epoch": spe})
    if progress and jax.process_index() == 0:
      print(f"LightGCN: {s.graph.num_users:,} users, {s.graph.num_items:,} items, "
            f"{s.graph.num_pairs:,} training pairs, {spe} steps/epoch; epoch {epoch} of "
            f"{tc.num_epochs}")
    batches = EpochBatches(s.graph.pair_users, s.graph.pair_items, tc.batch_size, tc.seed, spe)
    epoch_of = lambda step: {"epoch": step // spe}  # noqa: E731
    last = {"loss": meta.get("loss")}

    def keep_loss(state, info):
      if info.entry is not None:
        last["loss"] = info.entry["loss"]

    validate_action = loop.Validate(
        tc.eval_every * spe, lambda st: validate(s, st.params, graph, options),
        tc.valid_metric, tc.early_stopping_patience, best,
        lambda step, st, value: run.best.save(
            step, {"params": st.params},
            {"epoch": step // spe, "valid_metric": tc.valid_metric, "value": value},
            force=True),
        run.log, epoch_of)
    actions = [keep_loss, validate_action, loop.Checkpoint(
        run.latest, tc.checkpoint_every * spe, lambda step: {
            "epoch": step // spe, "loss": last["loss"], **best,
            "best_epoch": None if best["best_step"] is None else best["best_step"] // spe,
            "train_seconds": run.seconds()})]
    if on_epoch is not None:
      actions.append(lambda st, info: on_epoch(info.step // spe, st) if (
          info.step % spe == 0) else None)
    # A run that stopped early is finished: the loop runs no step.
    result = loop.run_loop(
        state, lambda st, batch: step_fn(st, graph, *batch, rng), batches, start=step,
        num_steps=step if best["stopped_early"] else tc.num_epochs * spe, log_every=spe,
        actions=actions, log=run.log, rate=("pairs_per_s", tc.batch_size), extras=epoch_of,
        postfix=lambda e: {"epoch": e["epoch"], "loss": f"{e['loss']:.4f}",
                           **({tc.valid_metric: f"{validate_action.last_value:.4f}"}
                              if validate_action.last_value is not None else {})},
        progress=progress, desc="lightgcn")
  epoch_seconds = [e["seconds"] for e in result.history]
  step = result.step
  summary = {"epoch": step // spe, "step": step, "steps_per_epoch": spe,
             "valid_metric": tc.valid_metric, "loss": last["loss"],
             "epoch_seconds": float(np.mean(epoch_seconds)) if epoch_seconds else None,
             "seconds": run.seconds(), "run_seconds": run.run_seconds(), "fingerprint": fp,
             "best_epoch": None if best["best_step"] is None else best["best_step"] // spe,
             **best}
  run.log.write({"step": step, "epoch": step // spe, "event": "end",
                 **{k: v for k, v in summary.items() if k not in ("step", "epoch")}})
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "train_summary.json"), summary)
  return summary


class EpochBatches:
  """The (users [B], items [B]) pairs of a 0-based step: step s is batch s % spe of epoch
  s // spe's permutation (`epoch_order`), so a batch depends on (seed, step) only."""

  def __init__(self, pair_users: np.ndarray, pair_items: np.ndarray, batch_size: int,
               seed: int, steps_per_epoch: int):
    self.users, self.items = pair_users, pair_items
    self.batch_size, self.seed, self.spe = batch_size, seed, steps_per_epoch
    self._epoch, self._order = None, None

  def __call__(self, step: int) -> tuple:
    epoch, b = divmod(step, self.spe)
    if epoch != self._epoch:
      self._epoch = epoch
      self._order = epoch_order(len(self.users), self.batch_size, self.seed, epoch)
    idx = self._order[b * self.batch_size:(b + 1) * self.batch_size]
    return self.users[idx], self.items[idx]


def restore_params(s: LightGcnSetup, workdir: str, which: str = "best") -> tuple:
  """(params, meta) from `<workdir>/best` (falls back to the latest, also when every best
  checkpoint is damaged) or `<workdir>/checkpoints`.

  Raises:
    checkpoints.CheckpointError: nothing to restore, or a checkpoint of another config.
  """
  if which not in ("best", "latest"):
    raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}")
  rep = partitioning.replicated(s.mesh)
  optimizer = optimizers.make_optimizer(s.train_config.optimizer)
  abstract_state = _abstract(jax.eval_shape(lambda: _init_state(s, optimizer)), rep)
  order = ("best", "checkpoints") if which == "best" else ("checkpoints",)
  tree, meta, sub = checkpoints.restore_first(
      workdir, s.fingerprint, order,
      lambda sub: {"params": abstract_state.params} if sub == "best" else abstract_state)
  if sub == "best":
    return tree["params"], dict(meta, checkpoint="best")
  return tree.params, dict(meta, checkpoint="latest")


def evaluate_lightgcn(workdir: str, dataset: DatasetConfig = DatasetConfig(),
                      config: lightgcn.LightGcnConfig = lightgcn.LightGcnConfig(),
                      train_config: LightGcnTrainConfig = LightGcnTrainConfig(),
                      eval_config: EvalConfig = EvalConfig(), checkpoint: str = "best",
                      progress: bool = True, devices=None,
                      output_dir: Optional[str] = None) -> dict:
  """Restores the best (or latest) params and writes `<workdir>/eval/<split>_metrics.json`.

  Args: as `train_lightgcn` (the same bindings), plus checkpoint: "best" (falls
    back to the latest when no validation ran) or "latest"; output_dir: where the
    metrics and ranks go instead of `<workdir>/eval` (a model in the shared feature cache).

  Returns:
    {split: the JSON part of `evaluation.evaluate`'s result, plus model, fingerprint,
    checkpoint, checkpoint_step, checkpoint_epoch, best_valid, eval_seconds,
    users_per_second}.
  """
  s = setup(dataset, config, train_config, devices)
  params, meta = restore_params(s, workdir, checkpoint)
  users, items = final_embeddings(s, params)
  recommend = lightgcn.LightGcnRecommender(users, items)
  extra = dict(model=MODEL_NAME, fingerprint=s.fingerprint, checkpoint=meta["checkpoint"],
               checkpoint_step=int(meta["step"]), checkpoint_epoch=meta.get("epoch"),
               best_valid=meta.get("value"), model_config=dataclasses.asdict(config))
  return {which: evaluate_and_save(recommend, s.split, which, eval_config, workdir,
                                   eval_config.max_history, extra, progress, output_dir)
          for which in eval_config.splits}


def default_embeddings_path(workdir: str) -> str:
  return os.path.join(workdir, "item_embeddings.npy")


def export_item_embeddings(workdir: str, dataset: DatasetConfig = DatasetConfig(),
                           config: lightgcn.LightGcnConfig = lightgcn.LightGcnConfig(),
                           train_config: LightGcnTrainConfig = LightGcnTrainConfig(),
                           output_path: Optional[str] = None, checkpoint: str = "best",
                           progress: bool = True, devices=None) -> str:
  """Writes the final item embeddings [num_items, d] float32 (row r = item id r + 1).

  They come from the graph of the training part only (no validation or test
  interaction), at the best (or latest) checkpoint. Written atomically, the JSON
  sidecar (`<stem>.json`: fingerprint, dims, checkpoint, cold items) last, so a
  sidecar always describes the .npy beside it (the `encoders.item_job` convention).

  Args: as `evaluate_lightgcn`, plus output_path (default `<workdir>/item_embeddings.npy`).

  Returns:
    The .npy path.
  """
  s = setup(dataset, config, train_config, devices)
  params, meta = restore_params(s, workdir, checkpoint)
  _, items = final_embeddings(s, params)
  items = np.asarray(jax.device_get(items), np.float32)
  assert items.shape == (s.graph.num_items, config.embed_dim), items.shape
  path = output_path or default_embeddings_path(workdir)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  sidecar = item_job.sidecar_path(path)
  if os.path.exists(sidecar):  # a crash below must not leave an old sidecar vouching for new rows.
    os.remove(sidecar)
  files.save_npy(path, items)
  untrained = int((s.graph.degrees[s.graph.num_users:] == 0).sum())
  info = {
      "fingerprint": s.fingerprint, "model": MODEL_NAME, "encoder": MODEL_NAME,
      "dim": int(config.embed_dim), "num_items": int(s.graph.num_items),
      "rows": "row r is item id r + 1",
      "embedding": f"final LightGCN item embeddings (mean of layers 0..{config.num_layers})",
      "graph": "training part of the leave-one-out split only (no validation/test items)",
      "dataset": dataset.name, "dataset_config": dataclasses.asdict(dataset),
      "model_config": dataclasses.asdict(config), "checkpoint": meta["checkpoint"],
      "checkpoint_step": int(meta["step"]), "checkpoint_epoch": meta.get("epoch"),
      "best_valid": meta.get("value"), "train_pairs": s.graph.num_pairs,
      "items_without_training_interactions": untrained, "normalized": False,
  }
  files.write_json(sidecar, info, indent=2)
  if progress:
    print(f"LightGCN item embeddings [{items.shape[0]}, {items.shape[1]}] -> {path} "
          f"({untrained} items without training interactions)")
  return path


def run_lightgcn(workdir: str, dataset: DatasetConfig = DatasetConfig(),
                 config: lightgcn.LightGcnConfig = lightgcn.LightGcnConfig(),
                 train_config: LightGcnTrainConfig = LightGcnTrainConfig(),
                 eval_config: EvalConfig = EvalConfig(), export: bool = True,
                 progress: bool = True) -> dict:
  """The tools/run.py job: train (or resume), evaluate the best checkpoint, export item
  embeddings.

  Returns:
    {"train": train summary, "eval": {split: metrics}, "item_embeddings": path or None}.
  """
  summary = train_lightgcn(workdir, dataset, config, train_config, eval_config,
                           progress=progress)
  results = evaluate_lightgcn(workdir, dataset, config, train_config, eval_config,
                              progress=progress)
  path = export_item_embeddings(workdir, dataset, config, train_config,
                                progress=progress) if export else None
  return {"train": summary, "eval": results, "item_embeddings": path}
