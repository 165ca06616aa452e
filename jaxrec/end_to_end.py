"""The generative-retrieval pipeline (a gin job): item text -> embeddings -> semantic IDs ->
generator training -> evaluation, each stage skipped when its artifact is up to date.

Workdir layout:
  embeddings/item_embeddings.npy (+ .json)  [num_items, d] float32   encoders.item_job
  semantic_ids/semantic_ids.npy (+ stats)   [num_items, L] int32     training.tokenizer_job
  generator/  checkpoints, best/, metrics.jsonl, train_summary.json  generator_job (train)
  generator/eval/<split>_metrics.json                                generator_job (evaluate)
  results.md, pipeline_summary.json, superseded/ (stage folders of older configurations)

Each stage folder holds a `stage.json` marker: the stage's fingerprint (a hash of
its input artifact's content and of its configuration), its status ("running" /
"done"), the SHA-256 of the artifacts it vouches for and its wall time. A stage
is skipped when its marker is "done" with the current fingerprint and its
artifacts are unchanged. A folder whose marker has another fingerprint (say, after
a tokenizer binding changed) is moved to `superseded/` (semantic IDs, generator:
trained, so kept) or deleted (embeddings, evaluation: cheap to rebuild) and the
stage runs again; the stages after it follow, since their inputs changed. A folder without a marker
is handed to its job, which resumes a run of the same configuration or refuses
another one.

A stage's configuration is what the pipeline passes to its job plus what gin
binds to the job function (`configs.bound_arguments`), so arguments that are
bound in gin only (e.g. a decoding config of the evaluation) count too. The
generator's TrainerConfig fields that may change on resume (`num_steps`, ...)
are not in its fingerprint: raising NUM_STEPS resumes the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Optional, Sequence

from jaxrec import configs
from jaxrec import files
from jaxrec import pipeline as baselines_lib
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.encoders import item_job
from jaxrec.encoders import text
from jaxrec.quantizers import modalities
from jaxrec.training import checkpoints
from jaxrec.training import generator_job
from jaxrec.training import tokenizer_job
from jaxrec.training import trainer as trainer_lib

STAGES = ("embeddings", "semantic_ids", "generator", "evaluation")
MARKER = "stage.json"
# Arguments the pipeline passes that name places or verbosity, not results.
_NOT_CONFIG = frozenset({"workdir", "embeddings_path", "semantic_ids_path", "progress",
                         "operative_config", "output_path"})
# Config fields that change no result of a stage (io, logging, or resumable training).
_IO_FIELDS = {"BatchingConfig": ("num_threads", "prefetch")}
_RESUMABLE_FIELDS = {"TrainerConfig": trainer_lib.RESUMABLE_FIELDS + ("mesh",)}
_TABLE_METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


# ---------------------------------------------------------------------------- files


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _hash(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- configs


def canonical(value: Any, drop: Optional[dict] = None, depth: int = 0) -> Any:
  """A JSON-able, address-free description of a configuration value.

  Dataclasses become {"__config__": class name, field: ...} minus the fields
  `drop` lists for their class name (and io-only fields); functions and
  classes become {"__fn__": "module.qualname", "bindings": their gin bindings}.
  """
  drop = drop or {}
  if depth > 8:
    return repr(value)
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    name = type(value).__name__
    skip = set(_IO_FIELDS.get(name, ())) | set(drop.get(name, ()))
    out = {"__config__": name}
    out.update({f.name: canonical(getattr(value, f.name), drop, depth + 1)
                for f in dataclasses.fields(value) if f.name not in skip})
    return out
  if isinstance(value, dict):
    return {str(k): canonical(v, drop, depth + 1) for k, v in sorted(value.items(), key=str)}
  if isinstance(value, (list, tuple)):
    return [canonical(v, drop, depth + 1) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if hasattr(value, "item") and getattr(value, "shape", None) == ():
    return value.item()  # NumPy scalars.
  if callable(value):
    func = getattr(value, "__func__", value)
    name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
    return {"__fn__": name, "bindings": canonical(configs.bound_arguments(value), drop,
                                                  depth + 1)}
  return repr(value)


def stage_config(job: Callable, passed: dict, drop: Optional[dict] = None) -> dict:
  """What determines a job's result: gin's bindings of `job` overridden by `passed`, minus
  paths and verbosity (see `canonical`)."""
  arguments = {**configs.bound_arguments(job), **passed}
  return canonical({k: v for k, v in arguments.items() if k not in _NOT_CONFIG}, drop)


# ---------------------------------------------------------------------------- stages


@dataclasses.dataclass
class StageResult:
  """How one stage went in this run.

  Attributes:
    name: one of STAGES.
    status: "skipped" (up to date) or "ran" (built, resumed or rebuilt).
    seconds: wall time in this run.
    build_seconds: wall time of the run that built the artifact.
    fingerprint: the stage's fingerprint.
    artifacts: {name: path}.
    superseded: where an older configuration's folder was moved, if it was.
  """
  name: str
  status: str
  seconds: float
  build_seconds: float
  fingerprint: str
  artifacts: dict
  superseded: Optional[str] = None


def _supersede(workdir: str, folder: str, name: str, old_fp: str) -> str:
  """Moves a stage folder of another configuration to <workdir>/superseded/; returns where."""
  base = os.path.join(workdir, "superseded", f"{name}-{old_fp}")
  target, n = base, 1
  while os.path.exists(target):
    n += 1
    target = f"{base}-{n}"
  os.makedirs(os.path.dirname(target), exist_ok=True)
  shutil.move(folder, target)
  return target


def _artifacts_intact(folder: str, marker: dict) -> bool:
  """Whether every artifact the marker vouches for (paths relative to folder) is unchanged."""
  recorded = marker.get("artifacts_sha256") or {}
  return bool(recorded) and all(
      os.path.isfile(os.path.join(folder, p)) and sha256_file(os.path.join(folder, p)) == digest
      for p, digest in recorded.items())


def run_stage(workdir: str, name: str, folder: str, fp: str, config: Any,
              run: Callable[[], Sequence[str]], settings: Optional[dict] = None,
              keep_old: bool = True, progress: bool = True,
              index: Optional[str] = None) -> StageResult:
  """Runs one stage unless its `folder` already holds its result.

  Args:
    workdir: the pipeline workdir (for superseded/).
    name: the stage name.
    folder: the stage folder; `<folder>/stage.json` is its marker.
    fp: the stage fingerprint (input artifact + configuration).
    config: the stage configuration (recorded in the marker, for people).
    run: builds the stage; returns the artifact paths the marker vouches for.
    settings: values that may change without a rebuild but, when changed, make
      the job run again in the same folder (it resumes), e.g. the step count.
    keep_old: a folder of another configuration is moved to superseded/ (True:
      trained artifacts) or deleted (False: cheap ones, rebuilt in minutes).
    progress: print the status line.
    index: the "[k/n]" before the status line (default: the place in STAGES).

  Returns:
    The StageResult; the artifacts are the paths `run` returned (or recorded).

  Raises:
    checkpoints.WorkdirError: another process is running this stage in `workdir`.
  """
  # A second process running this stage of this workdir is refused (WorkdirError) at once.
  with checkpoints.workdir_lock(workdir, f"pipeline ({name} stage)", name=f".{name}.lock"):
    return _run_stage_locked(workdir, name, folder, fp, config, run, settings, keep_old,
                             progress, index)


def _run_stage_locked(workdir, name, folder, fp, config, run, settings, keep_old, progress,
                      index) -> StageResult:
  marker_path = os.path.join(folder, MARKER)
  marker = files.read_json(marker_path)
  if index is None:
    index = f"[{STAGES.index(name) + 1}/{len(STAGES)}]" if name in STAGES else ""
  settings = canonical(settings or {})
  if (marker and marker.get("fingerprint") == fp and marker.get("status") == "done" and
      marker.get("settings", {}) == settings and _artifacts_intact(folder, marker)):
    if progress:
      print(f"{index} {name}: skipped: up to date ({folder})", flush=True)
    paths = [os.path.join(folder, p) for p in sorted(marker["artifacts_sha256"])]
    return StageResult(name, "skipped", 0.0, marker.get("seconds", 0.0), fp,
                       {os.path.basename(p): p for p in paths})
  moved = None
  if marker and marker.get("fingerprint") != fp and os.path.isdir(folder):
    if keep_old:
      moved = _supersede(workdir, folder, name, str(marker.get("fingerprint")))
    else:
      shutil.rmtree(folder)
    if progress:
      print(f"{index} {name}: configuration or input changed; rebuilding"
            + (f" (the old folder moved to {moved})" if moved else ""), flush=True)
  elif progress:
    print(f"{index} {name}: running ...", flush=True)
  os.makedirs(folder, exist_ok=True)
  files.write_json(marker_path, {"stage": name, "fingerprint": fp, "status": "running",
                                 "settings": settings, "config": config}, sort_keys=True)
  started = time.perf_counter()
  paths = list(run())
  seconds = round(time.perf_counter() - started, 2)
  files.write_json(marker_path, {"stage": name, "fingerprint": fp, "status": "done",
                                 "settings": settings, "config": config, "seconds": seconds,
                                 "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "artifacts_sha256": {os.path.relpath(p, folder): sha256_file(p)
                                                      for p in paths}}, sort_keys=True)
  if progress:
    print(f"{index} {name}: done in {_duration(seconds)} -> {folder}", flush=True)
  return StageResult(name, "ran", seconds, seconds, fp,
                     {os.path.basename(p): p for p in paths}, moved)


def _duration(seconds: float) -> str:
  return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f} min"


# ---------------------------------------------------------------------------- the job


def run_generative(workdir: str, dataset: DatasetConfig = DatasetConfig(),
                   text_encoder: str = "minilm", encoder_model_dir: Optional[str] = None,
                   encoder_batch_size: int = 128,
                   encoder_max_length: int = text.DEFAULT_MAX_LENGTH,
                   semantic_ids_job: Callable[..., dict] = tokenizer_job.build_semantic_ids,
                   train_job: Callable[..., dict] = generator_job.train_generator,
                   eval_job: Callable[..., dict] = generator_job.evaluate_generator,
                   progress: bool = True) -> dict:
  """Item text -> embeddings -> semantic IDs -> generator -> test metrics, in `workdir`.

  Args:
    workdir: the pipeline folder (layout in the module docstring).
    dataset: the catalog; the same config is passed to every stage.
    text_encoder: "minilm" or "mpnet" (`jaxrec.encoders.text.ENCODERS`).
    encoder_model_dir: a sentence-transformers folder to load the encoder from.
    encoder_batch_size: texts per encoder forward pass.
    encoder_max_length: token limit per item text.
    semantic_ids_job: `semantic_ids_job(workdir=, embeddings_path=, progress=)`;
      gin passes the configurable `tokenizer_job.build_semantic_ids`, which adds
      its bound tokenizer configs.
    train_job: `train_job(workdir=, semantic_ids_path=, dataset=, progress=)`,
      e.g. the configurable `generator_job.train_generator` (model, trainer and
      any other arguments come from its gin bindings).
    eval_job: `eval_job(workdir=, semantic_ids_path=, dataset=, progress=)` ->
      {split: metrics}; writes `<workdir>/eval/<split>_metrics.json`.
    progress: progress bars and one status line per stage.

  Returns:
    The pipeline summary (also `<workdir>/pipeline_summary.json`): per stage its
    status, wall time, fingerprint and artifacts, plus the test metrics.

  Raises:
    DataError: bad input (no item text, wrong shapes); the jobs' WorkdirError /
      CheckpointError for a stage folder of another configuration without a marker.
  """
  started = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  stages = []

  # 1. Item text -> embeddings.
  emb_dir = os.path.join(workdir, "embeddings")
  emb_path = os.path.join(emb_dir, "item_embeddings.npy")
  emb_config = {"dataset": canonical(dataset), "encoder": text_encoder,
                "model_dir": encoder_model_dir, "max_length": encoder_max_length}
  emb_fp = item_job.fingerprint(dataset, text_encoder, encoder_max_length, encoder_model_dir)

  def encode():
    item_job.encode_items(emb_path, dataset, encoder=text_encoder, model_dir=encoder_model_dir,
                          batch_size=encoder_batch_size, max_length=encoder_max_length,
                          progress=progress)
    return [emb_path, item_job.sidecar_path(emb_path)]
  stages.append(run_stage(workdir, "embeddings", emb_dir, emb_fp, emb_config, encode,
                          keep_old=False, progress=progress))

  # 2. Embeddings -> semantic IDs.
  ids_dir = os.path.join(workdir, "semantic_ids")
  ids_path, ids_stats_path = tokenizer_job.artifact_paths(ids_dir)
  ids_config = stage_config(semantic_ids_job, {})
  ids_fp = _hash({"embeddings": sha256_file(emb_path), "config": ids_config})

  def build_ids():
    semantic_ids_job(workdir=ids_dir, embeddings_path=emb_path, progress=progress)
    return [ids_path, ids_stats_path]
  stages.append(run_stage(workdir, "semantic_ids", ids_dir, ids_fp, ids_config, build_ids,
                          progress=progress))

  # 3-4. Semantic IDs -> trained generator -> metrics.
  more, train_summary = generator_stages(workdir, dataset, ids_path, train_job, eval_job,
                                         progress)
  stages += more
  return finish(workdir, dataset, stages, train_summary, started, progress)


def finish(workdir: str, dataset: DatasetConfig, stages: Sequence[StageResult],
           train_summary: dict, started: float, progress: bool = True,
           extra: Optional[dict] = None) -> dict:
  """Writes `results.md` and `pipeline_summary.json` (plus `extra` fields); returns the summary."""
  summary = _summarize(workdir, dataset, stages, train_summary,
                       time.perf_counter() - started)
  summary.update(extra or {})
  summary["baselines"] = reference_baselines(workdir, dataset)
  curve = os.path.join(workdir, "generator", "valid_curve.png")
  if os.path.isfile(curve):
    summary["valid_curve"] = curve
  table = results_markdown(summary)
  files.write_text(os.path.join(workdir, "results.md"), table)
  files.write_json(os.path.join(workdir, "pipeline_summary.json"), summary, sort_keys=True)
  if progress:
    print(table, flush=True)
  return summary


REFERENCE_BASELINES = ("most_popular", "cooccurrence")


def reference_baselines(workdir: str, dataset: DatasetConfig) -> dict:
  """{baseline: test metrics JSON} of most-popular and co-occurrence on the same test users
  (`pipeline.evaluate_baselines` into <workdir>/baselines, cached there; seconds)."""
  results = baselines_lib.evaluate_baselines(
      os.path.join(workdir, "baselines"), dataset, baselines_lib.EvalConfig(splits=("test",)),
      baselines=REFERENCE_BASELINES, progress=False)
  return {name: {"overall": r["test"]["metrics"]["overall"]} for name, r in results.items()}


def generator_stages(workdir: str, dataset: DatasetConfig, ids_path: str,
                     train_job: Callable[..., dict], eval_job: Callable[..., dict],
                     progress: bool = True, numbering: Optional[tuple] = None) -> tuple:
  """The "generator" and "evaluation" stages over the semantic IDs at `ids_path`.

  `numbering` = (k, n) numbers them "[k/n]" and "[k+1/n]" in the status lines.

  The generator folder is `<workdir>/generator` (its eval/ inside); its fingerprint is
  the IDs' content (and the modality sidecar beside them, if any) plus the train job's
  configuration; the evaluation's adds the trained checkpoint.

  Returns:
    ([generator StageResult, evaluation StageResult], the train summary dict).
  """
  stages = []
  # Semantic IDs -> trained generator.
  gen_dir = os.path.join(workdir, "generator")
  passed = {"dataset": dataset}
  gen_config = stage_config(train_job, passed, drop=_RESUMABLE_FIELDS)
  gen_fp = _hash({"semantic_ids": sha256_file(ids_path), "config": gen_config,
                  **_modalities_hash(ids_path)})
  trainer_config = {**configs.bound_arguments(train_job), **passed}.get("trainer_config")
  resumable = {}
  if isinstance(trainer_config, trainer_lib.TrainerConfig):
    resumable = {k: getattr(trainer_config, k) for k in trainer_lib.RESUMABLE_FIELDS}
  summary_path = os.path.join(gen_dir, "train_summary.json")

  def train():
    train_job(workdir=gen_dir, semantic_ids_path=ids_path, progress=progress, **passed)
    return [summary_path]
  index = (lambda i: f"[{numbering[0] + i}/{numbering[1]}]") if numbering else (
      lambda i: None)
  stages.append(run_stage(workdir, "generator", gen_dir, gen_fp, gen_config, train,
                          settings=resumable, progress=progress, index=index(0)))

  # Trained generator -> metrics.
  eval_dir = os.path.join(gen_dir, "eval")
  train_summary = files.read_json(summary_path) or {}
  eval_config = stage_config(eval_job, passed)
  eval_fp = _hash({"generator": gen_fp, "config": eval_config,
                   "trained": {k: train_summary.get(k)
                               for k in ("step", "best_step", "best_value")}})

  def evaluate():
    results = eval_job(workdir=gen_dir, semantic_ids_path=ids_path, progress=progress, **passed)
    paths = [os.path.join(eval_dir, f"{which}_metrics.json") for which in results]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise DataError("the evaluation job did not write its metrics", path=missing[0],
                      fix="check eval_job: it must write <workdir>/eval/<split>_metrics.json.")
    return paths
  stages.append(run_stage(workdir, "evaluation", eval_dir, eval_fp, eval_config, evaluate,
                          keep_old=False, progress=progress, index=index(1)))

  return stages, train_summary


def _modalities_hash(ids_path: str) -> dict:
  """{} or {"modalities": sha} of the modality sidecar beside the IDs (old runs keep
  their fingerprints)."""
  path = modalities.sidecar_path(ids_path)
  return {"modalities": sha256_file(path)} if os.path.isfile(path) else {}


def _summarize(workdir: str, dataset: DatasetConfig, stages: Sequence[StageResult],
               train_summary: dict, seconds: float) -> dict:
  """pipeline_summary.json: stages, and per evaluated split the table's metrics."""
  metrics = {}
  suffix = "_metrics.json"
  for name, path in sorted(stages[-1].artifacts.items()):
    result = files.read_json(path) if name.endswith(suffix) else None
    if result:
      overall = (result.get("metrics") or {}).get("overall", {})
      metrics[name[:-len(suffix)]] = {
          "overall": {k: v for k, v in overall.items() if k in _TABLE_METRICS},
          **{k: result.get(k) for k in ("num_examples", "checkpoint_step", "decoding",
                                        "exclude_history", "dataset")}}
  return {
      "workdir": os.path.abspath(workdir),
      "dataset": dataset.name,
      "dataset_config": canonical(dataset),
      "seconds": round(seconds, 2),
      "stages": {s.name: dataclasses.asdict(s) for s in stages},
      "trained_steps": train_summary.get("step"),
      "metrics": metrics,
  }


def results_markdown(summary: dict, which: str = "test") -> str:
  """`<workdir>/results.md`: the split's R@5/N@5/R@10/N@10 with 95% CIs and stage times."""
  lines = [f"# {summary.get('system') or 'Generative retrieval pipeline'}: "
           f"{summary['dataset']}", ""]
  if summary.get("modalities"):
    absent = summary.get("absent_modalities") or {}
    lines += [f"Modalities: {', '.join(summary['modalities'])}" + "".join(
        f"; {name} absent ({why})" for name, why in sorted(absent.items())) + ".", ""]
  m = summary["metrics"].get(which)
  if m:
    lines += [f"{which} split, full ranking, {m.get('num_examples')} users, checkpoint step "
              f"{m.get('checkpoint_step')}, decoding: {_decoding(m.get('decoding'))}; mean "
              "(95% bootstrap CI)", "",
              "| model | " + " | ".join(_TABLE_METRICS) + " |",
              "|---" * (len(_TABLE_METRICS) + 1) + "|",
              "| generator | " + " | ".join(_cell(m["overall"].get(k)) for k in _TABLE_METRICS)
              + " |"]
    for name, b in sorted((summary.get("baselines") or {}).items()):
      lines.append(f"| {name} | " + " | ".join(_cell(b["overall"].get(k))
                                               for k in _TABLE_METRICS) + " |")
    lines.append("")
    if summary.get("valid_curve"):
      lines += [f"Validation curve: {summary['valid_curve']}", ""]
  else:
    lines += [f"(no {which} metrics: add {which!r} to EvalConfig.splits)", ""]
  lines += ["| stage | this run | wall time (this run) | wall time (when built) |",
            "|---|---|---|---|"]
  for s in summary["stages"].values():
    lines.append(f"| {s['name']} | {s['status']} | {_duration(s['seconds'])} | "
                 f"{_duration(s['build_seconds'])} |")
  lines += ["", f"Total this run: {_duration(summary['seconds'])}. Artifacts: "
            f"{summary['workdir']} (pipeline_summary.json lists them)."]
  return "\n".join(lines) + "\n"


def _decoding(value: Any) -> str:
  """The metrics JSON's "decoding" entry (a string or a dict with "method") in a few words."""
  if isinstance(value, dict):
    rest = ", ".join(f"{k} {v}" for k, v in sorted(value.items()) if k != "method")
    return f"{value.get('method', 'decoding')} ({rest})" if rest else str(value.get("method"))
  return str(value)


def _cell(s: Optional[dict]) -> str:
  if not s:
    return "-"
  return f"{s['mean']:.4f} ({s['ci_low']:.4f}-{s['ci_high']:.4f})"
