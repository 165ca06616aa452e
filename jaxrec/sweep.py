"""Sweeps: many `tools/run.py` jobs, each in its own subprocess, and one table of their metrics.

A sweep is a list of runs (a name, gin files, gin bindings, optionally seeds). Every
run (and seed) executes `python tools/run.py --gin_file=... --gin.NAME=VALUE ...
--workdir=<sweep_dir>/<name>[/seed_<s>]` in a subprocess, so gin state and crashes
stay in it; its output goes to `<run dir>/log.txt`. After a success the run writes
`<run dir>/sweep_done.json` (atomically; it holds the command), and a later sweep
skips a run whose marker holds the same command; a changed command is run again
(and said so). The jobs themselves skip what is already up to date in their
workdir. A failed run is reported (exit code, last log lines), not fatal.

Then every `{valid,test}_metrics.json` under each run folder (`superseded/` stage
folders excluded) becomes one record per (run, model, seed, split), and the
records of one (run, model) are aggregated over seeds: the mean of the per-seed
means with a t-interval over seeds, or, with one seed, the run's bootstrap CI.
`write_reports` writes `sweep_results.{md,csv,png}` atomically; given a reference run
(`RUN` or `RUN:MODEL`) the Markdown also gets a table of paired comparisons with it
(`paired_with`: the paired bootstrap of the per-user difference on the same users,
seed by seed, from the `<split>_ranks.npz` beside each metrics file). In code:

  runs = sweep_spec.with_common(sweep_spec.read_spec(path), gin_files, bindings)
  # (or sweep_spec.runs_from_gin_files(globs))
  results = run_all(plan(runs, sweep_dir), max_parallel=2)
  write_reports(sweep_dir, collect(results), metrics=("recall@10", "ndcg@10"),
                reference="sasrec")

The spec format and its parser (`read_spec`, `with_common`, `runs_from_gin_files`,
`RunSpec`, `SpecError`): `jaxrec.sweep_spec`. The rendering of the reports (Markdown, CSV,
bar chart): `jaxrec.sweep_reports`, which imports nothing from this module.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import math
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tqdm

from jaxrec import evaluation
from jaxrec import files
from jaxrec import sweep_reports
from jaxrec.data.errors import DataError
from jaxrec.training import curves
from jaxrec.sweep_reports import REPORT_NAMES, error_line  # noqa: F401  (also sweep.REPORT_NAMES)
from jaxrec.sweep_spec import RunSpec, SpecError, check_runs

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN_TOOL = REPO_ROOT / "tools" / "run.py"
MARKER = "sweep_done.json"
LOG = "log.txt"
DEFAULT_METRICS = ("recall@10", "ndcg@10")
SPLITS = ("test", "valid")
STATUSES = ("failed", "redone", "resumed", "ran", "skipped")  # Worst first.
CURVES = "sweep_curves.png"  # The generators' validation curves vs training minutes.
@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """One subprocess: `python tools/run.py *args` with args ending in --workdir=run_dir."""
  name: str
  seed: Optional[int]
  run_dir: str
  args: Tuple[str, ...]

  @property
  def command(self) -> List[str]:
    return [sys.executable, str(RUN_TOOL), *self.args]

  @property
  def label(self) -> str:
    return self.name if self.seed is None else f"{self.name}/seed_{self.seed}"


@dataclasses.dataclass(frozen=True)
class RunResult:
  """How a planned run went.

  status: "ran", "redone" (ran again: its command changed since it finished; the
  note says how), "resumed" (an earlier attempt was interrupted or failed: its folder
  holds a log but no marker; the jobs skip its finished stages and resume its training
  from the last checkpoint), "skipped" (finished before with the same command) or "failed"
  (returncode None: timed out; error: the log's last lines).
  """
  run: PlannedRun
  status: str
  seconds: Optional[float] = None
  returncode: Optional[int] = None
  error: str = ""
  note: str = ""




def plan(runs: Sequence[RunSpec], sweep_dir: str) -> List[PlannedRun]:
  """The subprocesses of a sweep: one per run and seed, in order."""
  check_runs(runs)
  sweep_dir = os.path.abspath(sweep_dir)
  out = []
  for r in runs:
    for seed in r.seeds or (None,):
      run_dir = os.path.join(sweep_dir, r.name, *([] if seed is None else [f"seed_{seed}"]))
      bindings = list(r.bindings) + [f"{b}={seed}" for b in r.seed_bindings if seed is not None]
      args = ([f"--gin_file={f}" for f in r.gin_files] + [f"--gin.{b}" for b in bindings]
              + [f"--workdir={run_dir}"])
      out.append(PlannedRun(r.name, seed, run_dir, tuple(args)))
  return out


# ---------------------------------------------------------------------------- running


def finished_before(run: PlannedRun) -> bool:
  """Whether the run's marker holds its command (`run_one` skips it)."""
  marker = files.read_json(os.path.join(run.run_dir, MARKER))
  return bool(marker) and marker.get("args") == list(run.args)


def run_one(run: PlannedRun, timeout: Optional[float] = None) -> RunResult:
  """Runs one planned run unless its marker holds the same command; never raises for the job."""
  marker_path = os.path.join(run.run_dir, MARKER)
  marker = files.read_json(marker_path)
  if finished_before(run):
    return RunResult(run, "skipped", seconds=marker.get("seconds"), returncode=0,
                     note="finished before")
  note = ""
  if marker:
    old, new = marker.get("args") or [], list(run.args)
    added, dropped = [a for a in new if a not in old], [a for a in old if a not in new]
    changes = "; ".join([f"added {' '.join(added)}"] * bool(added)
                        + [f"dropped {' '.join(dropped)}"] * bool(dropped)) or "reordered"
    note = f"ran again: the command changed since it finished ({changes})"
    os.remove(marker_path)
  log_path = os.path.join(run.run_dir, LOG)
  resumed = not marker and os.path.isfile(log_path)
  if resumed:
    note = "resumed: an earlier attempt did not finish (its log is kept above this one's)"
  os.makedirs(run.run_dir, exist_ok=True)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  started = time.perf_counter()
  with open(log_path, "a" if resumed else "w") as log:
    if resumed:
      log.write(f"\n--- resumed {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n")
    log.write(f"$ {shlex.join(run.command)}\n")
    log.flush()
    try:
      returncode = subprocess.run(run.command, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, timeout=timeout,
                                  check=False).returncode
    except subprocess.TimeoutExpired:
      returncode = None
  seconds = time.perf_counter() - started
  if returncode == 0:
    files.write_json(marker_path, {
        "command": shlex.join(run.command), "args": list(run.args), "cwd": os.getcwd(),
        "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    status = "resumed" if resumed else "redone" if note else "ran"
    return RunResult(run, status, seconds=seconds, returncode=0, note=note)
  error = (f"timed out after {timeout:g} s" if returncode is None
           else log_tail(os.path.join(run.run_dir, LOG)))
  return RunResult(run, "failed", seconds=seconds, returncode=returncode, error=error, note=note)


def log_tail(path: str, lines: int = 8) -> str:
  """The last non-empty lines of a log (progress-bar redraws split at carriage returns)."""
  try:
    with open(path, errors="replace") as f:
      text = f.read()
  except OSError:
    return ""
  kept = [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]
  return "\n".join(kept[-lines:])


def run_all(runs: Sequence[PlannedRun], max_parallel: int = 1, timeout: Optional[float] = None,
            progress: bool = True, verbose: bool = True) -> List[RunResult]:
  """Runs the planned runs, `max_parallel` at a time; results in plan order.

  Args:
    runs: from `plan`.
    max_parallel: subprocesses at a time.
    timeout: seconds after which a run is killed and failed (None: no limit).
    progress: a tqdm bar over the runs.
    verbose: a line per finished run (`describe`: skipped, redone and why, failed and why).
  """
  results: Dict[int, RunResult] = {}
  with tqdm.tqdm(total=len(runs), desc="sweep", unit="run", disable=not progress) as bar:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, max_parallel))
    try:
      futures = {pool.submit(run_one, r, timeout): i for i, r in enumerate(runs)}
      for future in concurrent.futures.as_completed(futures):
        result = results[futures[future]] = future.result()
        bar.update(1)
        if verbose:
          tqdm.tqdm.write(describe(result))
    finally:
      pool.shutdown(wait=True, cancel_futures=True)
  return [results[i] for i in range(len(runs))]


def describe(result: RunResult) -> str:
  """One line about a finished run."""
  seconds = "" if result.seconds is None else f" {result.seconds:.1f}s"
  if result.status == "failed":
    return (f"[FAILED] {result.run.label}: {_exit(result)}{seconds}: {error_line(result.error)} "
            f"(log: {os.path.join(result.run.run_dir, LOG)})")
  note = f" ({result.note})" if result.note else ""
  return f"[{result.status}] {result.run.label}{seconds}{note}"


def _exit(result: RunResult) -> str:
  return "timed out" if result.returncode is None else f"exit {result.returncode}"


# ---------------------------------------------------------------------------- collecting


def collect(results: Sequence[RunResult]) -> List[dict]:
  """The metrics JSONs under each run folder: one record per (run, model, seed, split).

  A record: run, seed, model, split, dataset, path, metrics (the JSON's "metrics":
  {slice: {name: {mean, ci_low, ci_high, n}}}), status, seconds, train_seconds (see
  `training_seconds`), returncode, error, run_dir. A run without metrics files gives
  one record with model/split None.
  `superseded/` folders (older stage configurations) and the folders of other runs
  below a run's (a folder with a log.txt or sweep_done.json) are skipped.
  """
  records = []
  for result in results:
    run = result.run
    base = dict(run=run.name, seed=run.seed, status=result.status, seconds=result.seconds,
                train_seconds=training_seconds(run.run_dir), returncode=result.returncode,
                error=result.error, run_dir=run.run_dir)
    found = []
    for split in SPLITS:
      for path in sorted(glob.glob(os.path.join(run.run_dir, "**", f"{split}_metrics.json"),
                                   recursive=True)):
        rel = pathlib.Path(os.path.relpath(path, run.run_dir))
        if "superseded" in rel.parts or _in_other_run(run.run_dir, rel):
          continue
        data = files.read_json(path)
        if not isinstance(data, dict):
          continue
        folder = rel.parent.parts[:-1] if rel.parent.name == "eval" else rel.parent.parts
        found.append(dict(base, model=data.get("model") or "/".join(folder) or run.name,
                          folder="/".join(rel.parent.parts), split=data.get("split", split),
                          dataset=data.get("dataset"), path=path,
                          metrics=data.get("metrics") or {}))
    labels = [(r["model"], r["split"]) for r in found]
    for r in found:  # Two files of one run with the same model name: tell them apart.
      if labels.count((r["model"], r["split"])) > 1:
        r["model"] = f"{r['model']} ({r['folder']})"
    records += found or [dict(base, model=None, split=None, dataset=None, path=None,
                              metrics={})]
  return records


def training_seconds(run_dir: str) -> Optional[float]:
  """Seconds to train what a run evaluates, cached stages included; None if it says nothing.

  A pipeline run (`pipeline_summary.json`): the sum of its stages' `build_seconds` but the
  evaluation's, so a stage reused from a feature cache counts with the time it took to build
  (the run's own wall time, `seconds`, leaves it out). A single training job
  (`train_summary.json`, e.g. SASRec or LightGCN): its `seconds`.
  """
  summary = files.read_json(os.path.join(run_dir, "pipeline_summary.json"))
  if isinstance(summary, dict) and isinstance(summary.get("stages"), dict):
    times = [s.get("build_seconds") for name, s in summary["stages"].items()
             if name != "evaluation" and isinstance(s, dict)]
    if times and all(isinstance(t, (int, float)) for t in times):
      return float(sum(times))
  summary = files.read_json(os.path.join(run_dir, "train_summary.json"))
  if isinstance(summary, dict) and isinstance(summary.get("seconds"), (int, float)):
    return float(summary["seconds"])
  return None


def _in_other_run(run_dir: str, rel: pathlib.Path) -> bool:
  """Whether a folder between run_dir and the file is another run's (NAME/seed_0 below NAME)."""
  parts = rel.parent.parts
  return any(os.path.exists(os.path.join(run_dir, *parts[:k], name))
             for k in range(1, len(parts) + 1) for name in (MARKER, LOG))


def metric_value(metrics: dict, name: str) -> Optional[dict]:
  """{mean, ci_low, ci_high, n} of "recall@10" (overall) or "cold_start/recall@10", or None."""
  slice_name, _, metric = name.rpartition("/")
  value = (metrics.get(slice_name or "overall") or {}).get(metric)
  return value if isinstance(value, dict) and value.get("mean") is not None else None


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float, float]:
  """(mean, low, high): the t-interval of the mean over >= 2 values."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  x = np.asarray(values, np.float64)
  mean = float(x.mean())
  half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
  return mean, mean - half, mean + half


def summarize(records: Sequence[dict], metrics: Sequence[str] = DEFAULT_METRICS,
              split: str = "test", confidence: float = 0.95) -> List[dict]:
  """One row per (run, model) of a split, aggregated over seeds, in record order.

  Returns:
    Rows: run, model, dataset, seeds, status, seconds (mean run time per seed),
    train_seconds (mean `training_seconds` per seed, None if no seed has it),
    error, and metrics {name: {mean, low, high, interval, values}}: with one seed
    the run's bootstrap CI ("bootstrap"), with more the t-interval of the mean over
    seeds ("t over N seeds"); per_seed: the records' rows (metrics with their CIs).
    Runs without metrics (failed) are rows with model None.
  """
  groups = by_run_and_model(r for r in records if r["split"] in (split, None))
  rows = []
  for (run, model), group in groups.items():
    per_seed = [dict(seed=r["seed"], status=r["status"], seconds=r["seconds"],
                     train_seconds=r.get("train_seconds"), error=r["error"],
                     returncode=r["returncode"], run_dir=r["run_dir"],
                     metrics={m: _single(metric_value(r["metrics"], m)) for m in metrics})
                for r in group]
    aggregated = {}
    for m in metrics:
      values = [s["metrics"][m] for s in per_seed if s["metrics"][m] is not None]
      if not values:
        aggregated[m] = None
      elif len(values) == 1:
        aggregated[m] = dict(values[0], interval="bootstrap", values=[values[0]["mean"]])
      else:
        mean, low, high = seed_interval([v["mean"] for v in values], confidence)
        aggregated[m] = dict(mean=mean, low=low, high=high,
                             interval=f"t over {len(values)} seeds",
                             values=[v["mean"] for v in values])
    seconds = [s["seconds"] for s in per_seed if s["seconds"] is not None]
    train = [s["train_seconds"] for s in per_seed if s["train_seconds"] is not None]
    statuses = sorted({s["status"] for s in per_seed}, key=STATUSES.index)
    rows.append(dict(
        run=run, model=model, split=split, dataset=next((r["dataset"] for r in group
                                                         if r["dataset"]), None),
        seeds=[s["seed"] for s in per_seed if s["seed"] is not None],
        status="/".join(statuses), seconds=float(np.mean(seconds)) if seconds else None,
        train_seconds=float(np.mean(train)) if train else None,
        error="\n".join(s["error"] for s in per_seed if s["error"]),
        metrics=aggregated, per_seed=per_seed))
  return rows


def by_run_and_model(records) -> Dict[tuple, List[dict]]:
  """{(run, model): its records (one per seed)}, in first-seen order."""
  groups: Dict[tuple, List[dict]] = {}
  for r in records:
    groups.setdefault((r["run"], r["model"]), []).append(r)
  return groups


def _single(value: Optional[dict]) -> Optional[dict]:
  if value is None:
    return None
  return dict(mean=value["mean"], low=value.get("ci_low"), high=value.get("ci_high"))


# ---------------------------------------------------------------------------- paired


def parse_reference(reference: str) -> Tuple[str, Optional[str]]:
  """"RUN" or "RUN:MODEL" -> (run, model or None); run names cannot hold ':'."""
  run, _, model = reference.partition(":")
  if not run:
    raise SpecError(f"bad reference {reference!r}",
                    fix="pass --reference=RUN or --reference=RUN:MODEL (a run of the sweep).")
  return run, model or None


def paired_with(records: Sequence[dict], reference: str, metrics: Sequence[str] = DEFAULT_METRICS,
                split: str = "test", confidence: float = 0.95, num_resamples: int = 1000,
                seed: int = 0) -> Dict[tuple, dict]:
  """Every (run, model) of a split against the reference run, on the same users.

  The reference's records are paired with each row's seed by seed (a reference with one
  seed, or none, is paired with every seed of the row); each pair's per-user values are
  pooled and resampled together (`evaluation.paired_difference`), so the interval is of
  the difference A - reference on the same users. Slice metrics ("cold_start/...") are
  not paired.

  Args:
    records: `collect`'s records.
    reference: "RUN", or "RUN:MODEL" when the run evaluates several models and none is
      named RUN (a SASRec run "sasrec" also evaluates the baselines: "sasrec" is its model).
    metrics, split, confidence: as `summarize`.
    num_resamples, seed: the bootstrap's.

  Returns:
    {(run, model): {"reference": "RUN:MODEL", "seeds": [paired seeds], metric: the
    `metrics.paired_difference` dict, or {"error": why not (no per-user ranks, other
    users, no common seed)}}} for every row but the reference.

  Raises:
    SpecError: the reference names no run or model of the split, or a run with several
      models without saying which.
  """
  ref_run, ref_model = parse_reference(reference)
  in_split = [r for r in records if r["split"] == split and r["model"] is not None]
  ref_models = sorted({r["model"] for r in in_split if r["run"] == ref_run})
  if not ref_models:
    runs = ", ".join(sorted({r["run"] for r in in_split})) or "none"
    raise SpecError(f"reference run {ref_run!r} has no {split} metrics",
                    fix=f"name a run of this sweep that has them ({runs}).")
  if ref_model is None and ref_run in ref_models:  # "sasrec": its model, not the baselines
    ref_model = ref_run
  if ref_model is None and len(ref_models) > 1:
    raise SpecError(f"reference run {ref_run!r} evaluates several models "
                    f"({', '.join(ref_models)})", fix=f"say which: --reference={ref_run}:"
                    f"{ref_models[0]}")
  ref_model = ref_model or ref_models[0]
  if ref_model not in ref_models:
    raise SpecError(f"reference run {ref_run!r} has no model {ref_model!r}",
                    fix=f"one of: {', '.join(ref_models)}.")
  refs = {r["seed"]: r for r in in_split if (r["run"], r["model"]) == (ref_run, ref_model)}
  groups = by_run_and_model(r for r in in_split if (r["run"], r["model"]) != (ref_run, ref_model))
  out = {}
  for key, group in groups.items():
    if len(refs) == 1:
      pairs = [(r, next(iter(refs.values()))) for r in group]
    else:
      pairs = [(r, refs[r["seed"]]) for r in group if r["seed"] in refs]
    entry = {"reference": f"{ref_run}:{ref_model}", "seeds": [a["seed"] for a, _ in pairs]}
    for m in metrics:
      if "/" in m:
        entry[m] = {"error": "slices are not paired"}
      elif not pairs:
        entry[m] = {"error": f"no seed in common with the reference (seeds "
                             f"{sorted(refs, key=str)})"}
      else:
        try:
          entry[m] = evaluation.paired_difference(
              [a["path"] for a, _ in pairs], [b["path"] for _, b in pairs], m,
              num_resamples, seed, confidence)
        except DataError as e:
          entry[m] = {"error": e.problem}
    out[key] = entry
  return out


# ---------------------------------------------------------------------------- reports


def write_reports(sweep_dir: str, records: Sequence[dict],
                  metrics: Sequence[str] = DEFAULT_METRICS, split: str = "test",
                  confidence: float = 0.95, reference: Optional[str] = None) -> Dict[str, str]:
  """Writes sweep_results.md and .png (the split's rows) and .csv (every split), atomically
  (`jaxrec.sweep_reports` renders the `summarize` rows); with a reference run the Markdown
  gets the `paired_with` table too (each row's "paired"); `sweep_curves.png`: the validation
  curves (the overall `metrics`, one panel each, vs training minutes) of every model trained
  in a run folder (`curve_runs`), when there is one.

  Returns:
    {"md", "csv", "png"[, "curves"]} -> path.
  """
  rows = summarize(records, metrics, split, confidence)
  if reference:
    paired = paired_with(records, reference, metrics, split, confidence)
    for row in rows:
      row["paired"] = paired.get((row["run"], row["model"]))
  splits = [split] + [s for s in SPLITS if s != split and any(r["split"] == s for r in records)]
  all_rows = rows + [r for s in splits[1:] for r in summarize(records, metrics, s, confidence)
                     if r["model"] is not None]
  paths = sweep_reports.write_reports(sweep_dir, rows, all_rows, metrics, split, LOG)
  overall = [m for m in metrics if "/" not in m] or ["ndcg@10"]
  runs = curve_runs(records, overall[0])
  if runs:
    datasets = sorted({str(r["dataset"]) for r in records if r.get("dataset")})
    paths["curves"] = curves.plot_runs(
        runs, overall, os.path.join(sweep_dir, CURVES),
        title=f"validation curves ({', '.join(datasets) or 'sweep'})")
  return paths


def curve_runs(records: Sequence[dict], metric: str = "ndcg@10") -> Dict[str, str]:
  """{label ("run" or "run/seed_<s>"): model folder} of every evaluated model trained in
  its run folder whose metrics.jsonl has timed validations of `metric` (the generators;
  a shared SASRec / LightGCN lives in the feature cache and has none here)."""
  out = {}
  for r in records:
    if not r.get("path") or r.get("split") != "test":
      continue
    folder = os.path.dirname(os.path.dirname(r["path"]))  # <model>/eval/test_metrics.json
    if curves.timed_points(folder, metric):
      label = r["run"] if r["seed"] is None else f"{r['run']}/seed_{r['seed']}"
      out[label if label not in out else f"{label} ({r['model']})"] = folder
  return out
