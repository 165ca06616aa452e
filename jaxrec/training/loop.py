"""The one training loop: a step function over a batch source, with actions after each step.

Every trained model of the package runs it: the generator and SASRec (`trainer.train`),
LightGCN (`jobs/lightgcn_job.train_lightgcn`) and the tokenizer fits (RQ-VAE, DINO-RQ,
the fused RQ-VAE, `quantizers/training.fit_steps`). What differs between them is given:

  step_fn(state, batch) -> (state, metrics)   one update (jitted by the caller)
  batches(step) -> batch                       the batch of 0-based step `step`; a
                                               resumable source is a function of the step
                                               (or an iterator positioned by its restored
                                               state, called in order)
  actions                                      after every step, in order: `Validate`
                                               (best checkpoint, early stopping),
                                               `Checkpoint`, `Hook`

The loop owns the step counter, the progress bar and the log entries (every `log_every`
steps and at the end: the window's metrics (mean, or the last step's), the rate, the
window's seconds without the actions' time, `extras(step)`). `RunFolder` is the workdir side
that the checkpointed runs share: the workdir check, the one-process lock, config.gin, the
latest and best checkpointers, the restored best record and the training time so far.

This module sits in the bottom layer (docs/architecture.md): it imports only `files`,
`checkpoints` and libraries, so the quantizers below `training.trainer` use it too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import tqdm

from jaxrec import files
from jaxrec.training import checkpoints

StepFn = Callable[[Any, Any], tuple]  # (state, batch) -> (state, metrics)
Batches = Callable[[int], Any]  # 0-based step -> batch


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """The base of every step-based train config (TrainerConfig, TokenizerTrainConfig,
  DinoRqTrainConfig): the fields the loop reads.

  Attributes:
    num_steps: optimizer steps in total (a resumed run continues up to it).
    seed: the run's seed (what it seeds: see the subclass).
    log_every: steps between log entries (and progress-bar updates).
  """
  num_steps: int = 1000
  seed: int = 0
  log_every: int = 100


@dataclasses.dataclass(frozen=True)
class ValidatedFitConfig:
  """The fields of a validated, checkpointed run (TrainerConfig in steps,
  LightGcnTrainConfig in epochs): what `Validate` and `Checkpoint` read.

  Attributes:
    eval_every: steps (epochs) between validations (also after the last); 0 = at the end.
    checkpoint_every: steps (epochs) between checkpoints (also after the last).
    keep_checkpoints: latest checkpoints kept (the best one is kept apart).
    early_stopping_patience: stop after this many validations without a new best
      valid_metric; 0 = never stop early.
    valid_metric: "<metric>@<k>" on the validation split that picks the best checkpoint
      (higher is better).
  """
  eval_every: int = 0
  checkpoint_every: int = 1
  keep_checkpoints: int = 2
  early_stopping_patience: int = 0
  valid_metric: str = "ndcg@10"


@dataclasses.dataclass
class LoopInfo:
  """What the actions see after a step (and may change: `stop`).

  Attributes:
    step: steps done.
    last: this is the run's last step (num_steps reached).
    metrics: the step's metrics (device values).
    stop: set by an action to end the run after this step (early stopping).
    entry: the log entry written after this step, or None.
  """
  step: int
  last: bool
  metrics: Any
  stop: bool = False
  entry: Optional[dict] = None


@dataclasses.dataclass
class LoopResult:
  """What `run_loop` returns: the final state, steps done, every log entry of this call."""
  state: Any
  step: int
  history: list
  stopped_early: bool


class MetricsLog:
  """metrics.jsonl (process 0 writes); on resume, entries after the restored step are dropped."""

  def __init__(self, path: str, resume_step: int):
    self.path = path
    self.enabled = jax.process_index() == 0
    if self.enabled and os.path.isfile(path):
      kept = [e for e in files.read_jsonl(path) if e.get("step", 0) <= resume_step]
      files.write_text(path, "".join(json.dumps(e) + "\n" for e in kept))

  def write(self, entry: dict) -> None:
    """Appends `entry` with "time" (Unix seconds: curves against wall-clock minutes)."""
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps({**entry, "time": round(time.time(), 3)}) + "\n")


def _due(every: int, info: LoopInfo) -> bool:
  return info.last or info.stop or bool(every and info.step % every == 0)


def best_record(meta: dict, patience: int = 0) -> dict:
  """The validation record a checkpoint's meta carries (empty for a fresh run).

  A run that stopped early stays stopped (its loop runs no step) unless `patience`, the
  run's current early-stopping patience (a field that may change on resume), no longer
  stops it: raised past its validations without a new best, or 0 (never stop early).
  """
  since = meta.get("evals_since_best", 0)
  stopped = bool(meta.get("stopped_early", False)) and bool(patience) and since >= patience
  return {"best_step": meta.get("best_step"), "best_value": meta.get("best_value"),
          "evals_since_best": since, "stopped_early": stopped}


def metric_k(metric: str, binding: str) -> int:
  """The k of a "<metric>@<k>" validation metric; a clear error naming the binding."""
  try:
    return int(metric.split("@")[1])
  except (IndexError, ValueError):
    raise ValueError(f"{binding}={metric!r} is not '<metric>@<k>'. "
                     f"Fix: use e.g. 'ndcg@10'.") from None


class Validate:
  """Validates every `every` steps and after the last; keeps the best; stops early.

  Args:
    every: steps between validations (0: only after the last step).
    evaluate: state -> the `evaluation.evaluate` result of the validation split.
    metric: "<metric>@<k>" (higher is better), a key of result["metrics"]["overall"].
    patience: stop after this many validations without a new best (0: never).
    best: the record (`best_record`), updated in place (checkpoint metas carry it).
    save_best: (step, state, value) -> None, saves the new best.
    log: where eval / early_stop entries go (or None).
    extras: step -> fields added to those entries (e.g. the epoch).
  """

  def __init__(self, every: int, evaluate: Callable, metric: str, patience: int, best: dict,
               save_best: Callable, log: Optional[MetricsLog] = None,
               extras: Callable[[int], dict] = lambda step: {}):
    self.every, self.evaluate, self.metric, self.patience = every, evaluate, metric, patience
    self.best, self.save_best, self.log, self.extras = best, save_best, log, extras
    self.last_value = None

  def __call__(self, state, info: LoopInfo) -> None:
    if not (info.last or (self.every and info.step % self.every == 0)):
      return
    result = self.evaluate(state)
    overall = result["metrics"]["overall"]
    if self.metric not in overall:
      raise ValueError(f"valid_metric={self.metric!r} is not among the evaluated metrics "
                       f"{sorted(overall)}. Fix: use e.g. 'ndcg@10' or 'recall@10'.")
    value = self.last_value = float(overall[self.metric]["mean"])
    step, extras = info.step, self.extras(info.step)
    if self.log is not None:
      self.log.write({"step": step, **extras, "event": "eval", "split": "valid",
                      "seconds": result["seconds"],
                      **{f"valid/{k}": v["mean"] for k, v in overall.items()}})
    best = self.best
    if best["best_value"] is None or value > best["best_value"]:
      best.update(best_step=step, best_value=value, evals_since_best=0)
      self.save_best(step, state, value)
      return
    best["evals_since_best"] += 1
    if self.patience and best["evals_since_best"] >= self.patience:
      best["stopped_early"] = info.stop = True
      if self.log is not None:
        self.log.write({"step": step, **extras, "event": "early_stop", **best})


class Checkpoint:
  """Saves the state every `every` steps, after the last one and when stopping.

  Args:
    checkpointer: a `checkpoints.Checkpointer`.
    every: steps between saves; 0 = save after every step and let the checkpointer's
      save_interval_steps decide (the tokenizer fits).
    meta: step -> the JSON meta saved beside the state (data position, best record, time).
  """

  def __init__(self, checkpointer, every: int, meta: Callable[[int], dict] = lambda step: {}):
    self.checkpointer, self.every, self.meta = checkpointer, every, meta

  def __call__(self, state, info: LoopInfo) -> None:
    if self.every == 0:
      self.checkpointer.save(info.step, state, self.meta(info.step),
                             force=info.last or info.stop)
    elif _due(self.every, info):
      self.checkpointer.save(info.step, state, self.meta(info.step), force=True)


class Hook:
  """Calls `fn(step, state, metrics)` after every step (tests, custom hooks)."""

  def __init__(self, fn: Callable):
    self.fn = fn

  def __call__(self, state, info: LoopInfo) -> None:
    self.fn(info.step, state, info.metrics)


def _reduce(values: list, how: str) -> dict:
  if how == "last":
    return {k: np.asarray(v).tolist() for k, v in values[-1].items()}
  return {k: np.mean([np.asarray(v[k]) for v in values], axis=0).tolist() for k in values[0]}


def run_loop(state, step_fn: StepFn, batches: Batches, *, start: int, num_steps: int,
             log_every: int, actions: Sequence[Callable] = (), log: Optional[MetricsLog] = None,
             reduce: str = "mean", rate: Optional[tuple] = None,
             extras: Callable[[int], dict] = lambda step: {},
             postfix: Callable[[dict], dict] = lambda e: {"loss": f"{e['loss']:.4f}"},
             progress: bool = True, desc: str = "train") -> LoopResult:
  """Steps [start, num_steps) of `step_fn` over `batches`, with `actions` after each.

  Step s (0-based) runs `step_fn(state, batches(s))`; metrics stay on device and are
  fetched every `log_every` steps (steps run asynchronously in between).

  Args:
    state: the state after `start` steps (restored or initial).
    step_fn, batches: see the module docstring.
    start: steps already done.
    num_steps: the run's total; the last step is the one that reaches it.
    log_every: steps between log entries (and at the end).
    actions: called as action(state, LoopInfo) after every step, in order.
    log: where the entries go (None: only into the returned history).
    reduce: "mean" over the window's steps or the "last" step's metrics.
    rate: (name, items per step): adds name = items / s of the window (actions' time
      not counted).
    extras: step -> fields added to every entry (e.g. epoch, learning rate).
    postfix: entry -> the progress bar's postfix.
    progress: show a tqdm bar (process 0).
    desc: the bar's label.

  Returns:
    LoopResult (stopped_early: an action set `stop`).
  """
  history, pending, step, stop = [], [], start, False
  window_start, action_seconds = time.perf_counter(), 0.0
  bar = tqdm.tqdm(total=num_steps, initial=start, unit="step", desc=desc,
                  disable=not progress or jax.process_index() != 0)
  try:
    while step < num_steps and not stop:
      state, metrics = step_fn(state, batches(step))
      step += 1
      pending.append(metrics)
      info = LoopInfo(step=step, last=step == num_steps, metrics=metrics)
      if step % max(log_every, 1) == 0 or info.last:
        values = jax.device_get(pending)
        seconds = max(time.perf_counter() - window_start - action_seconds, 1e-9)
        entry = {"step": step, **extras(step), **_reduce(values, reduce)}
        if rate is not None:
          entry[rate[0]] = len(values) * rate[1] / seconds
        entry["seconds"] = seconds
        history.append(entry)
        if log is not None:
          log.write(entry)
        info.entry = entry
        bar.set_postfix(**postfix(entry))
        pending, window_start, action_seconds = [], time.perf_counter(), 0.0
      bar.update(1)
      t0 = time.perf_counter()
      for action in actions:
        action(state, info)
      action_seconds += time.perf_counter() - t0
      stop = info.stop
  finally:
    bar.close()
  return LoopResult(state=state, step=step, history=history, stopped_early=stop)


class RunFolder:
  """The workdir of a checkpointed run: check, lock, config.gin, checkpointers, resume.

  Use as a context manager: entering checks the workdir (another run's config.gin,
  checkpoints or metrics.jsonl -> checkpoints.WorkdirError, before anything is written),
  takes the one-process lock, writes config.gin, opens `checkpoints/` (latest) and
  `best/`; leaving closes them (waiting for async saves) and releases the lock.

  Args:
    workdir: the run folder.
    fingerprint: the run's trajectory fingerprint (checked against every checkpoint).
    config_text: the operative gin config (None: not written nor compared).
    keep_checkpoints: latest checkpoints kept.
    what: how the lock's refusal names the run.
    changeable_lines, changeable_names: config.gin lines that may differ on resume.
  """

  def __init__(self, workdir: str, fingerprint: str, config_text: Optional[str],
               keep_checkpoints: int, what: str, changeable_lines: str = "",
               changeable_names: str = ""):
    self.workdir, self.fingerprint, self.config_text = workdir, fingerprint, config_text
    self.keep, self.what = keep_checkpoints, what
    self.changeable_lines, self.changeable_names = changeable_lines, changeable_names
    self.started = time.perf_counter()
    self.earlier_seconds = 0.0
    self.log: Optional[MetricsLog] = None

  def check(self) -> None:
    """Raises checkpoints.WorkdirError if the workdir holds another run (writes nothing)."""
    check_run(self.workdir, self.fingerprint, self.config_text, self.changeable_lines,
              self.changeable_names)

  def __enter__(self) -> "RunFolder":
    self.check()
    self._lock = checkpoints.workdir_lock(self.workdir, self.what)
    self._lock.__enter__()
    try:
      if self.config_text is not None and jax.process_index() == 0:
        files.write_text(os.path.join(self.workdir, "config.gin"), self.config_text)
      self.latest = checkpoints.Checkpointer(os.path.join(self.workdir, "checkpoints"),
                                             self.fingerprint, max_to_keep=self.keep)
      self.best = checkpoints.Checkpointer(os.path.join(self.workdir, "best"), self.fingerprint,
                                           max_to_keep=1, async_save=False)
    except BaseException:
      self._lock.__exit__(None, None, None)
      raise
    return self

  def __exit__(self, *exc) -> None:
    try:
      self.latest.close()
      self.best.close()
    finally:
      self._lock.__exit__(*exc)

  def resume(self, init: Callable[[], Any], abstract: Callable[[], Any]) -> tuple:
    """(state, meta): the newest readable checkpoint restored into `abstract()`, or
    (`init()`, {}). Drops a best saved after the restored step (a killed run) and the
    metrics.jsonl entries after it; opens `self.log`."""
    if self.latest.latest_step() is not None:
      state, meta = self.latest.restore(abstract())
    else:
      state, meta = init(), {}
    step = int(state.step)
    self.earlier_seconds = float(meta.get("train_seconds", 0.0))
    self.best.delete_after(step)
    self.log = MetricsLog(os.path.join(self.workdir, "metrics.jsonl"), step)
    return state, meta

  def seconds(self) -> float:
    """Training time over every run of this workdir (earlier runs' from the checkpoint)."""
    return self.earlier_seconds + time.perf_counter() - self.started

  def run_seconds(self) -> float:
    return time.perf_counter() - self.started


def check_run(workdir: str, fingerprint: str, config_text: Optional[str] = None,
              changeable_lines: str = "", changeable_names: str = "") -> None:
  """Raises checkpoints.WorkdirError if `workdir` holds another run: its config.gin differs
  (other than in `changeable_lines`), or its checkpoints / best / metrics.jsonl carry
  another fingerprint. Reads only."""
  checkpoints.check_run_dir(workdir, fingerprint, config_text, subdirs=("checkpoints", "best"),
                            changeable_lines=changeable_lines,
                            changeable_names=changeable_names)
  for entry in files.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    if entry.get("fingerprint", fingerprint) != fingerprint:
      raise checkpoints.WorkdirError(
          f"{workdir}/metrics.jsonl was written by another run (fingerprint "
          f"{entry['fingerprint']!r}, this run {fingerprint!r}). Fix: use a new --workdir.")
