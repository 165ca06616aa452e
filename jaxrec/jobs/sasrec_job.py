"""The SASRec jobs (gin entry points): dataset -> leave-one-out split -> SASRec trained with
the shared trainer (`training.trainer.train`) -> full-ranking evaluation -> the trained
item-embedding table as an artifact for the tokenizers.

Workdir layout (`run_sasrec`):
  config.gin, metrics.jsonl, checkpoints/, best/, train_summary.json   (train_sasrec)
  eval/<split>_metrics.json                                            (evaluate_sasrec)
  item_embeddings.npy (+ item_embeddings.json)  [num_items, d] float32 (export_item_embeddings)

The recommender is the model's top-K over all items (`SasRecModel.predict_batch`); the
item table is trained on the training part of the split only (validation picks the
best checkpoint; test items are never seen).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import jax
import numpy as np

from jaxrec import files
from jaxrec import fingerprints
from jaxrec.collaborative.sasrec import SasRecConfig, SasRecError, SasRecModel
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.data.splits import LeaveOneOutSplit, leave_one_out
from jaxrec.jobs import item_job
from jaxrec.evaluation import EvalConfig, evaluate_and_save
from jaxrec.training import trainer as trainer_lib

MODEL_NAME = "sasrec"
EMBEDDINGS_NAME = "item_embeddings.npy"


def make_batch_fn() -> trainer_lib.BatchFn:
  """Host data batch (history/length/target/user/weight) -> SASRec batch (user dropped)."""
  def batch_fn(batch: dict) -> dict:
    return {"history": np.asarray(batch["history"], np.int32),
            "length": np.asarray(batch["length"], np.int32),
            "target": np.asarray(batch["target"], np.int32),
            "weight": np.asarray(batch["weight"], np.float32)}
  return batch_fn


def keep_last(histories: np.ndarray, width: int) -> np.ndarray:
  """[B, W] left-aligned 0-padded histories -> [B, min(W, width)], each row's last items."""
  histories = np.asarray(histories, np.int32)
  if histories.shape[1] <= width:
    return histories
  lengths = (histories > 0).sum(1)
  start = np.maximum(lengths - width, 0)
  idx = start[:, None] + np.arange(width)[None, :]
  valid = idx < lengths[:, None]
  taken = np.take_along_axis(histories, np.minimum(idx, histories.shape[1] - 1), axis=1)
  return np.where(valid, taken, 0).astype(np.int32)


def make_recommender_factory(max_len: int, top_k: int) -> trainer_lib.MakeRecommender:
  """`make(predict) -> recommend(histories, k)`: the model's top-k items [B, k], best first.

  Histories wider than max_len keep their last max_len items. Asking for k > top_k
  (the model's prediction width) raises DataError.
  """
  def make(predict):
    def recommend(histories: np.ndarray, k: int) -> np.ndarray:
      if k > top_k:
        raise DataError(f"the evaluation asks for {k} items per user but SASRec predicts "
                        f"top_k={top_k}.",
                        fix=f"bind sasrec_job top_k to at least {k} (exclude_history asks "
                            "for k + history width; setup adds it when EvalConfig says so).")
      h = keep_last(histories, max_len)
      batch = {"history": h, "length": (h > 0).sum(1).astype(np.int32)}
      return np.asarray(predict(batch))[:, :k].astype(np.int64)
    return recommend
  return make


@dataclasses.dataclass
class SasRecSetup:
  """Everything built from the configs before training, evaluation or export."""
  split: LeaveOneOutSplit
  model: SasRecModel
  fingerprint: str  # model / data part; trainer_lib.trajectory_fingerprint adds the trainer.
  batch_fn: Callable
  make_recommender: Callable


def prediction_width(top_k: int, eval_config: EvalConfig,
                     trainer_config: trainer_lib.TrainerConfig) -> int:
  """Items per row `predict_batch` must return for `top_k` and the evaluation's requests."""
  k = max([int(top_k), *eval_config.ks, *_valid_k(trainer_config)])
  if eval_config.exclude_history:
    k += max(eval_config.max_history or 0, trainer_config.max_history)
  return k


def _valid_k(trainer_config: trainer_lib.TrainerConfig) -> list:
  try:
    return [int(trainer_config.valid_metric.split("@")[1])]
  except (IndexError, ValueError):
    return []


def setup(dataset: DatasetConfig, trainer_config: trainer_lib.TrainerConfig,
          model_config: SasRecConfig, eval_config: EvalConfig = EvalConfig(),
          top_k: int = 20) -> SasRecSetup:
  """Loads and splits the data; builds the model, batch conversion and recommender.

  The fingerprint (which checkpoints belong to this setup) covers the dataset, the
  SasRecConfig and the catalog size; not top_k or the evaluation, which change
  prediction only.

  Raises:
    SasRecError: TrainerConfig.max_history > SasRecConfig.max_len.
  """
  if trainer_config.max_history > model_config.max_len:
    raise SasRecError(f"TrainerConfig.max_history = {trainer_config.max_history} exceeds "
                      f"SasRecConfig.max_len = {model_config.max_len} (position embeddings). "
                      f"Fix: bind them to the same value (50 by default).")
  split = leave_one_out(dataset.load())
  width = prediction_width(top_k, eval_config, trainer_config)
  model = SasRecModel(model_config, split.num_items, top_k=width)
  return SasRecSetup(split, model, model_fingerprint(dataset, model_config, split.num_items),
                     make_batch_fn(), make_recommender_factory(model_config.max_len, model.top_k))


def model_fingerprint(dataset: DatasetConfig, model_config: SasRecConfig, num_items: int) -> str:
  """Hash of what the checkpoints of a setup depend on besides the trainer."""
  return fingerprints.digest([MODEL_NAME, dataclasses.asdict(dataset),
                              dataclasses.asdict(model_config), int(num_items)])


def _eval_options(eval_config: EvalConfig) -> dict:
  return dict(ks=tuple(eval_config.ks), batch_size=eval_config.batch_size,
              exclude_history=eval_config.exclude_history,
              cold_start_threshold=eval_config.cold_start_threshold)


def train_sasrec(workdir: str, dataset: DatasetConfig = DatasetConfig(),
                 model_config: SasRecConfig = SasRecConfig(),
                 trainer_config: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(),
                 eval_config: EvalConfig = EvalConfig(), top_k: int = 20,
                 operative_config: Optional[Callable[[], str]] = None,
                 progress: bool = True) -> dict:
  """Trains SASRec in `workdir` (resuming a run of the same configuration).

  Args:
    workdir: run folder (config.gin, metrics.jsonl, checkpoints/, best/,
      train_summary.json).
    dataset: which dataset (split leave-one-out).
    model_config: the SASRec hyper-parameters and loss.
    trainer_config: steps, batching, optimizer, validation / early stopping.
    eval_config: cutoffs / batch size / exclude_history of the validation runs.
    top_k: items the recommender returns (at least max(EvalConfig.ks) are).
    operative_config: returns the operative gin config (saved as config.gin,
      checked on resume).
    progress: progress bar.

  Returns:
    The trainer's summary (also written to train_summary.json).
  """
  return _train(setup(dataset, trainer_config, model_config, eval_config, top_k), workdir,
                trainer_config, eval_config, operative_config, progress)


def _train(s: SasRecSetup, workdir: str, trainer_config: trainer_lib.TrainerConfig,
           eval_config: EvalConfig, operative_config: Optional[Callable[[], str]],
           progress: bool) -> dict:
  summary = trainer_lib.train(
      s.model, s.split, s.batch_fn, trainer_config, workdir, make_recommender=s.make_recommender,
      fingerprint=s.fingerprint, config_text=operative_config() if operative_config else None,
      eval_options=_eval_options(eval_config), progress=progress)
  path = os.path.join(workdir, "train_summary.json")
  old = files.read_json(path)
  if summary.get("loss") is None and old and old.get("step") == summary["step"]:
    return old  # A finished run, resumed with nothing to do: keep the real summary.
  if jax.process_index() == 0:
    files.write_json(path, summary)
  return summary


def _restore(s: SasRecSetup, workdir: str, trainer_config: trainer_lib.TrainerConfig,
             checkpoint: str) -> tuple:
  """(trainer, state, meta, trajectory fingerprint) of the best / latest checkpoint."""
  tr = trainer_lib.Trainer(s.model, trainer_config,
                           trainer_lib.input_shapes(s.split, s.batch_fn, trainer_config))
  fp = trainer_lib.trajectory_fingerprint(trainer_config, s.fingerprint)
  state, meta = trainer_lib.restore_state(tr, workdir, fp, checkpoint)
  return tr, state, meta, fp


def evaluate_sasrec(workdir: str, dataset: DatasetConfig = DatasetConfig(),
                    model_config: SasRecConfig = SasRecConfig(),
                    trainer_config: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(),
                    eval_config: EvalConfig = EvalConfig(), top_k: int = 20,
                    checkpoint: str = "best", progress: bool = True,
                    output_dir: Optional[str] = None) -> dict:
  """Restores the best (or latest) checkpoint; writes `<workdir>/eval/<split>_metrics.json`.

  Args: as `train_sasrec` (the same bindings), plus checkpoint: "best" (falls back
    to the latest when no validation ran) or "latest"; output_dir: where the metrics
    and ranks go instead of `<workdir>/eval` (a model in the shared feature cache).

  Returns:
    {split: the JSON part of `evaluation.evaluate`'s result, with model,
    fingerprint, checkpoint_step, best_valid and eval_seconds added}.
  """
  return _evaluate(setup(dataset, trainer_config, model_config, eval_config, top_k), workdir,
                   trainer_config, eval_config, checkpoint, progress, output_dir)


def _evaluate(s: SasRecSetup, workdir: str, trainer_config: trainer_lib.TrainerConfig,
              eval_config: EvalConfig, checkpoint: str, progress: bool,
              output_dir: Optional[str] = None) -> dict:
  model_config = s.model.config
  tr, state, meta, fp = _restore(s, workdir, trainer_config, checkpoint)
  extra = dict(model=MODEL_NAME, model_config=dataclasses.asdict(model_config), fingerprint=fp,
               checkpoint_step=int(state.step), checkpoint=checkpoint,
               best_valid=meta.get("value"))
  max_history = eval_config.max_history or trainer_config.max_history
  return {which: evaluate_and_save(tr.recommender(state, s.make_recommender), s.split, which,
                                   eval_config, workdir, max_history, extra, progress,
                                   output_dir)
          for which in eval_config.splits}


def export_item_embeddings(workdir: str, dataset: DatasetConfig = DatasetConfig(),
                           model_config: SasRecConfig = SasRecConfig(),
                           trainer_config: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(),
                           output_path: Optional[str] = None, checkpoint: str = "best",
                           progress: bool = True) -> str:
  """Writes the trained item table `[num_items, hidden]` float32 (row r = item id r + 1).

  The padding row is dropped. Written atomically (temporary name, then rename) with
  a JSON sidecar `<stem>.json` (the format of tools/encode_items.py: num_items,
  dim, rows, fingerprint, plus the checkpoint it comes from); the old sidecar is
  removed first, so a sidecar always describes the .npy beside it.

  Args: as `evaluate_sasrec`, plus output_path: default `<workdir>/item_embeddings.npy`.

  Returns:
    output_path.

  Raises:
    checkpoints.CheckpointError: nothing trained in workdir for this configuration.
    DataError: the table is not [num_items + 1, hidden] or holds NaN/Inf.
  """
  return _export(setup(dataset, trainer_config, model_config), workdir, dataset,
                 trainer_config, output_path, checkpoint, progress)


def _export(s: SasRecSetup, workdir: str, dataset: DatasetConfig,
            trainer_config: trainer_lib.TrainerConfig, output_path: Optional[str],
            checkpoint: str, progress: bool) -> str:
  model_config = s.model.config
  output_path = output_path or os.path.join(workdir, EMBEDDINGS_NAME)
  _, state, meta, fp = _restore(s, workdir, trainer_config, checkpoint)
  table = np.asarray(jax.device_get(state.params["item_embedding"]), np.float32)
  n = s.split.num_items
  if table.shape != (n + 1, model_config.hidden):
    raise DataError(f"the checkpoint's item table has shape {table.shape}; expected "
                    f"[num_items + 1, hidden] = [{n + 1}, {model_config.hidden}]",
                    path=workdir, fix="export with the dataset and SasRecConfig the run "
                                      "was trained with.")
  embeddings = table[1:]
  bad = np.flatnonzero(~np.isfinite(embeddings).all(1))
  if len(bad):
    raise DataError(f"{len(bad)} item embeddings hold NaN/Inf (first: item {bad[0] + 1})",
                    path=workdir, fix="the training diverged: lower the learning rate and "
                                      "retrain in a new workdir.")
  meta_out = {
      "source": "sasrec", "trained_on": "the training part of the leave-one-out split "
                                        "(validation chose the checkpoint; test unseen)",
      "dim": int(model_config.hidden), "num_items": int(n), "rows": "row r is item id r + 1",
      "dataset": dataset.name, "dataset_config": dataclasses.asdict(dataset),
      "model_config": dataclasses.asdict(model_config), "workdir": os.path.abspath(workdir),
      "checkpoint": checkpoint, "checkpoint_step": int(state.step),
      "training_fingerprint": fp, "best_valid": meta.get("value"),
      "normalized": False,
  }
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    sidecar = item_job.sidecar_path(output_path)
    if os.path.exists(sidecar):
      os.remove(sidecar)
    files.save_npy(output_path, embeddings)
    files.write_json(sidecar, meta_out, indent=2)
  if progress:
    print(f"SASRec item embeddings [{n}, {model_config.hidden}] (step {int(state.step)}) -> "
          f"{output_path}")
  return output_path


def run_sasrec(workdir: str, dataset: DatasetConfig = DatasetConfig(),
               model_config: SasRecConfig = SasRecConfig(),
               trainer_config: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(),
               eval_config: EvalConfig = EvalConfig(), top_k: int = 20,
               operative_config: Optional[Callable[[], str]] = None,
               progress: bool = True, export: bool = True) -> dict:
  """Train (resumes; a finished run returns at once), evaluate the best checkpoint, export.

  It always evaluates and exports (jobs never skip themselves: the pipeline's
  "collaborative" / "sasrec" stage skips the job when its folder holds the result).

  Returns:
    {"train": summary, "eval": {split: metrics JSON}, "embeddings": path or None}.
  """
  s = setup(dataset, trainer_config, model_config, eval_config, top_k)
  summary = _train(s, workdir, trainer_config, eval_config, operative_config, progress)
  results = _evaluate(s, workdir, trainer_config, eval_config, "best", progress)
  path = None
  if export:
    path = _export(s, workdir, dataset, trainer_config, None, "best", progress)
  return {"train": summary, "eval": results, "embeddings": path}

