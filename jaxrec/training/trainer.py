"""A generic sharded trainer for models with the t5x `BaseModel` interface
(`get_initial_variables`, `loss_fn`, `predict_batch`): resumable, validated, early-stopped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
import optax

from jaxrec import evaluation
from jaxrec import fingerprints
from jaxrec.data import batching
from jaxrec.data.splits import LeaveOneOutSplit, TrainExamples
from jaxrec.training import checkpoints
from jaxrec.training import curves
from jaxrec.training import loop
from jaxrec.training import optimizers
from jaxrec.training import partitioning
from jaxrec.training import train_state as train_state_lib
from jaxrec.training.train_state import TrainState

BatchFn = Callable[[dict], dict]  # host data batch -> host model batch.
PredictFn = Callable[[dict], np.ndarray]  # host model batch -> host predictions.
MakeRecommender = Callable[[PredictFn], evaluation.Recommender]
WorkdirError = checkpoints.WorkdirError


@dataclasses.dataclass(frozen=True)
class TrainerConfig(loop.ValidatedFitConfig, loop.FitConfig):
  """How the generator (and SASRec) is trained: the loop's fields (`loop.FitConfig`,
  `loop.ValidatedFitConfig`, defaults redefined here) and the trainer's own.

  Attributes:
    num_steps: optimizer steps in total (a resumed run continues up to it).
    eval_every: steps between validation runs (also after the last step); 0 = never.
    checkpoint_every: steps between checkpoints (also after the last step).
    keep_checkpoints: latest checkpoints kept (the best one is kept apart).
    log_every: steps between `metrics.jsonl` entries.
    early_stopping_patience: stop after this many validations without a new best
      valid_metric; 0 = never stop early.
    valid_metric: "<metric>@<k>" on the validation split that picks the best
      checkpoint (higher is better).
    valid_users: validate on a fixed random sample of this many users (0 = all):
      periodic checks of big datasets; the final evaluation uses every user.
    seed: init and dropout seed (the data order is `batching.seed`).
    max_history: history items per training example and per evaluated user.
    batching: training batches (batch_size is global, over all processes).
    mesh: the device mesh.
    optimizer: optimizer and schedule.
  """
  num_steps: int = 200_000
  eval_every: int = 10_000
  checkpoint_every: int = 5_000
  keep_checkpoints: int = 3
  log_every: int = 100
  early_stopping_patience: int = 0
  valid_metric: str = "ndcg@10"
  valid_users: int = 0
  seed: int = 0
  max_history: int = 20
  batching: batching.BatchingConfig = batching.BatchingConfig()
  mesh: partitioning.MeshConfig = partitioning.MeshConfig()
  optimizer: optimizers.OptimizerConfig = optimizers.OptimizerConfig()


def trajectory_fingerprint(config: TrainerConfig, *extra: Any) -> str:
  """Hash of what determines the training trajectory (not num_steps, logging, the mesh
  or the data-loading threads), plus `extra` (model, data, IDs)."""
  keep = {k: v for k, v in dataclasses.asdict(config).items()
          if k in ("seed", "max_history", "batching", "optimizer")}
  for io_only in ("num_threads", "prefetch"):  # data order does not depend on them.
    keep["batching"].pop(io_only)
  return fingerprints.digest([keep, *extra])


def make_train_step(model: Any, optimizer: optax.GradientTransformation) -> Callable:
  """Returns `step(state, batch, rng) -> (state, metrics)` to jit (see `jit_train_step`).

  batch: the model batch, e.g. encoder_input_tokens [B, W], decoder_target_tokens
  [B, L], decoder_loss_weights [B, L]. rng: the run's base key; the step's
  dropout key is `fold_in(rng, state.step)`, so it depends only on (seed, step).
  metrics: {"loss": scalar, **scalar metrics from model.loss_fn}.
  """
  def step(state: TrainState, batch: dict, rng: jax.Array):
    dropout_rng = jax.random.fold_in(rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
        state.params, batch, dropout_rng)
    new_state = train_state_lib.apply_gradients(state, grads, optimizer)
    scalars = {k: v for k, v in dict(metrics or {}).items() if getattr(v, "ndim", 1) == 0}
    return new_state, {**scalars, "loss": loss}
  return step


def jit_train_step(step: Callable, mesh: jax.sharding.Mesh, state_shardings: Any) -> Callable:
  """jit (= pjit) with state / data / replicated shardings, donating the state.

  The returned callable traces under the mesh and the logical-axis rules, so
  `nn.with_logical_constraint` in the model takes effect.
  """
  jitted = jax.jit(step, in_shardings=(state_shardings, partitioning.data_sharding(mesh),
                                       partitioning.replicated(mesh)),
                   out_shardings=(state_shardings, partitioning.replicated(mesh)),
                   donate_argnums=0)

  def call(state, batch, rng):
    with partitioning.rules_context(mesh):
      return jitted(state, batch, rng)
  return call


def make_predict_fn(model: Any, mesh: jax.sharding.Mesh) -> Callable:
  """Returns `predict(params, host_batch) -> np.ndarray` (every process passes the full batch).

  Rows are split over "data" when the mesh divides the batch; the answer is
  gathered to every process.
  """
  jitted = jax.jit(lambda params, batch: model.predict_batch(params, batch),
                   out_shardings=partitioning.replicated(mesh))
  data_size = mesh.shape[partitioning.DATA]

  def predict(params, host_batch):
    rows = len(next(iter(host_batch.values())))
    sharding = (partitioning.data_sharding(mesh) if rows % data_size == 0
                else partitioning.replicated(mesh))
    with partitioning.rules_context(mesh):
      out = jitted(params, partitioning.put_global(host_batch, sharding))
    return np.asarray(jax.device_get(out))
  return predict


def example_batch(examples: TrainExamples, rows: int) -> dict:
  """A full-width data batch of `rows` real examples (model init shapes, smoke checks);
  windows (`windows.TrainWindows`) add their first_target."""
  idx = np.arange(rows) % len(examples)
  batch = {"history": examples.histories[idx], "length": examples.lengths[idx],
           "target": examples.targets[idx], "user": examples.users[idx].astype(np.int32),
           "weight": np.ones([rows], np.float32)}
  first = getattr(examples, "first_targets", None)
  if first is not None:
    batch["first_target"] = first[idx]
  return batch


class Trainer:
  """Owns the mesh, the state layout and the jitted functions of one model + config.

  Args:
    model: t5x-style model: `get_initial_variables(rng, input_shapes)`,
      `loss_fn(params, batch, dropout_rng) -> (loss, metrics)`,
      `predict_batch(params, batch) -> [B, ...]`.
    config: the trainer config.
    input_shapes: {feature: shape} of one model batch (for initialization).
    devices: default all devices.
  """

  def __init__(self, model: Any, config: TrainerConfig, input_shapes: Mapping[str, tuple],
               devices: Optional[Sequence[jax.Device]] = None):
    self.model = model
    self.config = config
    self.mesh = partitioning.make_mesh(config.mesh, devices)
    data_size = self.mesh.shape[partitioning.DATA]
    if config.batching.batch_size % data_size:
      raise partitioning.MeshError(
          f"BatchingConfig.batch_size={config.batching.batch_size} is not divisible by the "
          f"mesh's data axis ({data_size}). Fix: use a multiple of {data_size}.")
    self.optimizer = optimizers.make_optimizer(config.optimizer)
    self.schedule = optimizers.make_schedule(config.optimizer)
    shapes = {k: tuple(v) for k, v in input_shapes.items()}
    self._init_fn = lambda rng: train_state_lib.create_train_state(
        model, self.optimizer, rng, shapes)
    self.rng = jax.random.PRNGKey(config.seed)
    init_rng, self._dropout_rng = jax.random.split(self.rng)
    self._init_rng = partitioning.put_global(np.asarray(init_rng),
                                             partitioning.replicated(self.mesh))
    self.step_rng = partitioning.put_global(np.asarray(self._dropout_rng),
                                            partitioning.replicated(self.mesh))
    self.abstract_state, self.state_shardings = partitioning.abstract_state(
        self._init_fn, self.mesh, self._init_rng)
    self.train_step = jit_train_step(make_train_step(model, self.optimizer), self.mesh,
                                     self.state_shardings)
    self.predict = make_predict_fn(model, self.mesh)

  def init_state(self) -> TrainState:
    state, _ = partitioning.sharded_init(self._init_fn, self.mesh, self._init_rng)
    return state

  def shard_batch(self, host_batch: dict) -> dict:
    return partitioning.shard_batch(host_batch, self.mesh)

  def step(self, state: TrainState, host_batch: dict) -> tuple:
    """One update from this process's model-batch rows: (state, metrics)."""
    return self.train_step(state, self.shard_batch(host_batch), self.step_rng)

  def recommender(self, state: TrainState, make_recommender: MakeRecommender):
    return make_recommender(lambda host_batch: self.predict(state.params, host_batch))


# ---------------------------------------------------------------------------- workdir


# TrainerConfig fields a resumed run may change (with the mesh): not part of the trajectory.
RESUMABLE_FIELDS = ("num_steps", "eval_every", "checkpoint_every", "keep_checkpoints",
                    "log_every", "early_stopping_patience", "valid_users")
_RESUMABLE = r"(TrainerConfig\.(%s)|MeshConfig\.\w+)\s*=" % "|".join(RESUMABLE_FIELDS)
_RESUMABLE_NAMES = f"TrainerConfig.{{{','.join(RESUMABLE_FIELDS)}}} and MeshConfig"


def check_workdir(workdir: str, fingerprint: str, config_text: Optional[str] = None) -> None:
  """Raises WorkdirError if `workdir` holds another run (before anything is written).

  Another run: a `config.gin` that differs from `config_text` (other than in
  RESUMABLE_FIELDS and the mesh), checkpoints or `metrics.jsonl` entries with
  another fingerprint (`trajectory_fingerprint`).
  """
  loop.check_run(workdir, fingerprint, config_text, _RESUMABLE, _RESUMABLE_NAMES)


# ---------------------------------------------------------------------------- train


def run_validation(trainer: Trainer, state: TrainState, split: LeaveOneOutSplit,
                   make_recommender: MakeRecommender, which: str = "valid",
                   **options) -> dict:
  """`evaluation.evaluate` of the model's recommender at `state`.

  Histories are cut to config.max_history; no bootstrap and no progress bar
  unless `options` (evaluate's keyword arguments) say otherwise.
  """
  options = {"max_history": trainer.config.max_history, "num_bootstrap": 0,
             "progress": False, "max_users": trainer.config.valid_users or None, **options}
  return evaluation.evaluate(trainer.recommender(state, make_recommender), split, which,
                             **options)


def _eval_options(metric: str, options: Optional[Mapping]) -> dict:
  options = dict(options or {})
  k = loop.metric_k(metric, "TrainerConfig.valid_metric")
  options["ks"] = sorted(set(options.get("ks", (1, 5, 10, 20))) | {k})
  return options


def input_shapes(split: LeaveOneOutSplit, batch_fn: BatchFn, config: TrainerConfig,
                 examples: Optional[TrainExamples] = None) -> dict:
  """{feature: shape} of this process's model batch at full history width (`examples`:
  the training rows, default the split's per-prefix examples)."""
  if examples is None:
    examples = split.train_examples(config.max_history)
  rows = config.batching.batch_size // jax.process_count()
  return {k: np.shape(v) for k, v in batch_fn(example_batch(examples, rows)).items()}


def train(model: Any, split: LeaveOneOutSplit, batch_fn: BatchFn, config: TrainerConfig,
          workdir: str, make_recommender: Optional[MakeRecommender] = None,
          fingerprint: str = "", config_text: Optional[str] = None,
          eval_options: Optional[Mapping] = None, progress: bool = True,
          devices: Optional[Sequence[jax.Device]] = None,
          on_step: Optional[Callable[[int, TrainState], None]] = None,
          examples: Optional[TrainExamples] = None) -> dict:
  """Trains (or resumes) in `workdir`; validates, keeps the best checkpoint, stops early.

  Workdir: `config.gin` (config_text), `metrics.jsonl` (one JSON per log step:
  step, loss, examples_per_s, lr; eval entries with "valid/<metric>"),
  `checkpoints/<step>` (state + meta with the data-iterator state) and
  `best/<step>` (the best state by config.valid_metric).

  Args:
    model: see `Trainer`.
    split: leave-one-out split; training examples come from its train part.
    batch_fn: host data batch (history [B, W], length, target, user, weight)
      -> host model batch (same B).
    config: the trainer config.
    workdir: output folder; a previous run of the same fingerprint resumes.
    make_recommender: `make_recommender(predict) -> recommend(histories, k)`
      where predict(model_batch) -> model.predict_batch output as NumPy; None
      disables validation.
    fingerprint: identifies model / data / IDs; combined with the trajectory
      fields of config.
    config_text: the operative gin config (written as config.gin, checked on resume).
    eval_options: keyword arguments of `evaluation.evaluate` for validation
      (ks, batch_size, exclude_history, ...); the valid_metric's k is added.
    progress: tqdm bar (process 0).
    devices: default all devices.
    on_step: called at the end of every step (after logging, validation and
      checkpointing) with (step, state): tests, custom hooks.
    examples: the training rows batched for `batch_fn`: default the split's per-prefix
      examples; `windows.split_windows(split, max_history)` for per-sequence models.

  Returns:
    {"step", "best_step", "best_value", "valid_metric", "stopped_early", "loss", "seconds",
    "run_seconds"}: "seconds" is the training time over every run of this workdir (each
    checkpoint stores the total so far; time after the last checkpoint of a killed run is
    lost), "run_seconds" this call's.

  Raises:
    WorkdirError / checkpoints.CheckpointError: the workdir holds another run, or
      another process is training in it.
    checkpoints.UnreadableCheckpointError: no checkpoint of the workdir reads (a damaged
      newest one is moved aside and the run resumes from an older one instead).
  """
  fp = trajectory_fingerprint(config, fingerprint)
  run = loop.RunFolder(workdir, fp, config_text, config.keep_checkpoints, "training run",
                       _RESUMABLE, _RESUMABLE_NAMES)
  run.check()
  options = _eval_options(config.valid_metric, eval_options)
  if examples is None:
    examples = split.train_examples(config.max_history)
  trainer = Trainer(model, config, input_shapes(split, batch_fn, config, examples), devices)
  with run:  # one process per workdir (a second is refused with WorkdirError)
    state, meta = run.resume(trainer.init_state, lambda: trainer.abstract_state)
    step = int(state.step)
    best = loop.best_record(meta, config.early_stopping_patience)
    run.log.write({"step": step, "event": "start" if step == 0 else "resume",
                   "fingerprint": fp, "devices": jax.device_count(),
                   "processes": jax.process_count(), "mesh": dict(trainer.mesh.shape)})
    # The host conversion runs in the iterator's prefetch threads (overlapping the step).
    it = batching.train_iterator(examples, config.batching, state=meta.get("data_state"),
                                 transform=batch_fn)
    actions = []
    if make_recommender is not None:
      actions.append(loop.Validate(
          config.eval_every,
          lambda s: run_validation(trainer, s, split, make_recommender, **options),
          config.valid_metric, config.early_stopping_patience, best,
          lambda step, s, value: run.best.save(
              step, s, {"valid_metric": config.valid_metric, "value": value}, force=True),
          run.log))
    actions.append(loop.Checkpoint(run.latest, config.checkpoint_every, lambda step: {
        "data_state": it.get_state(), **best, "train_seconds": run.seconds()}))
    if on_step is not None:
      actions.append(loop.Hook(lambda step, s, metrics: on_step(step, s)))
    # A run that stopped early (at its current patience, `loop.best_record`) is finished.
    result = loop.run_loop(
        state, trainer.step, lambda _: next(it), start=step,
        num_steps=step if best["stopped_early"] else config.num_steps,
        log_every=config.log_every, actions=actions, log=run.log,
        rate=("examples_per_s", config.batching.batch_size),
        extras=lambda s: {"lr": float(trainer.schedule(s - 1))},
        postfix=lambda e: {"loss": f"{e['loss']:.4f}", "ex_s": f"{e['examples_per_s']:.0f}"},
        progress=progress)
  last_loss = result.history[-1]["loss"] if result.history else meta.get("loss")
  summary = {"step": result.step, "valid_metric": config.valid_metric, "loss": last_loss,
             "seconds": run.seconds(), "run_seconds": run.run_seconds(), **best}
  run.log.write({"step": result.step, "event": "end",
                 **{k: v for k, v in summary.items() if k != "step"}})
  if jax.process_index() == 0:
    curves.plot_validation_curve(workdir, config.valid_metric)  # valid_curve.png
  return summary


def restore_state(trainer: Trainer, workdir: str, fingerprint: str,
                  which: str = "best") -> tuple:
  """(state, meta) from `<workdir>/best` (falls back to the latest, also when every best
  checkpoint is damaged) or `<workdir>/checkpoints`: `checkpoints.restore_first`."""
  order = ("best", "checkpoints") if which == "best" else ("checkpoints",)
  state, meta, _ = checkpoints.restore_first(workdir, fingerprint, order,
                                             lambda sub: trainer.abstract_state)
  return state, meta
