"""The pipeline engine: stages, their fingerprints and markers, skipping, superseding, locks.

A `Stage` is a job that writes artifacts into a folder and returns their paths. Its
identity (the fingerprint) is one hash (`fingerprints.fingerprint`, which reads no gin) of
  - its inputs, by content: the SHA-256 of the artifacts the earlier stages it `needs`
    provide (`Stage.provides`; all by default), and
  - its configuration, by value: `canonical(config)`.
`run_pipeline(workdir, stages, cache)` runs them in order and owns everything around
the jobs (a stage that runs gets an empty folder, or its own folder to resume in; jobs never
skip themselves):
  - a stage folder holds a `stage.json` marker: fingerprint, status ("running" / "done"),
    the SHA-256 of the artifacts it vouches for, the resumable settings, wall time;
  - a stage is skipped when its marker is "done" with the current fingerprint and
    settings and its artifacts are unchanged;
  - a folder whose marker has another fingerprint is moved to `<base>/superseded/`
    (`keep_old`: trained artifacts) or deleted (cheap ones) and the stage runs again;
    the stages that need it follow, since their inputs changed;
  - a changed resumable setting (e.g. the step count) runs the job again in the same
    folder, where it resumes; a folder without a marker is handed to its job, which
    resumes a run of the same configuration or refuses another one;
  - a `shared` stage lives in the feature cache (`<cache>/<name>-<fingerprint>`) and is
    built under an OS file lock (`<folder>.lock`): a run that needs a stage another run is
    building waits for it and then reuses it; a workdir stage holds
    `<workdir>/.<name>.lock` while it runs, so a second process on the same folder is refused.
  - `pipeline_summary.json` lists every stage's status, times, fingerprint and artifacts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import filelock

from jaxrec import files
from jaxrec.fingerprints import canonical, fingerprint, sha256_file
from jaxrec.training import checkpoints

__all__ = ["MARKER", "SUMMARY", "PipelineError", "Stage", "StageResult", "canonical",
           "duration", "fingerprint", "run_pipeline", "sha256_file", "stage_fingerprint",
           "stage_lock"]
MARKER = "stage.json"
SUMMARY = "pipeline_summary.json"


class PipelineError(RuntimeError):
  """A stage list or a job's output is wrong; the message names the stage and the fix."""


# ---------------------------------------------------------------------------- stages


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of a pipeline.

  Attributes:
    name: unique in the pipeline; the folder name by default.
    job: `job(folder, inputs) -> artifact paths` builds the stage into `folder`;
      `inputs` maps each needed stage's name to its StageResult.
    config: what determines the result besides the inputs, hashed by value
      (`canonical`; recorded in the marker for people).
    needs: names of earlier stages whose artifacts are this stage's inputs
      (hashed by content).
    resumable: settings that may change without a new identity (e.g. the step
      count); a change runs the job again in the same folder, which resumes.
    keep_old: a folder of another fingerprint is moved to superseded/ (True:
      trained artifacts) or deleted (False: cheap ones).
    shared: lives in the pipeline's feature cache as `<cache>/<name>-<fingerprint>`,
      built under a lock, reused by every run with the same inputs and config (in
      the workdir when the pipeline has no cache).
    folder: the folder relative to the workdir (default: `name`), e.g.
      "generator/eval"; not used for a shared stage in a cache.
    provides: the artifact file names that stand for this stage's result in the
      fingerprints of the stages that need it (default: all; those the job returns,
      at least one of them); e.g. the semantic IDs (and their optional sidecar) but
      not their statistics (timings), so equal IDs rebuilt leave the generator up to date.
  """
  name: str
  job: Callable[[str, Mapping[str, "StageResult"]], Sequence[str]]
  config: Any = None
  needs: Sequence[str] = ()
  resumable: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  keep_old: bool = True
  shared: bool = False
  folder: Optional[str] = None
  provides: Sequence[str] = ()


@dataclasses.dataclass
class StageResult:
  """How one stage went in this run.

  Attributes:
    name: the stage name.
    status: "skipped" (up to date) or "ran" (built, resumed or rebuilt).
    seconds: wall time in this run.
    build_seconds: wall time of the run that built the artifacts.
    fingerprint: the stage's fingerprint.
    artifacts: {file name relative to the folder: path}.
    folder: the stage folder.
    digests: {file name relative to the folder: SHA-256} of the artifacts.
    provided: the digests of the artifacts the stage `provides` (what later stages hash).
    superseded: where an older configuration's folder was moved, if it was.
  """
  name: str
  status: str
  seconds: float
  build_seconds: float
  fingerprint: str
  artifacts: dict
  folder: str = ""
  digests: dict = dataclasses.field(default_factory=dict)
  superseded: Optional[str] = None
  provided: dict = dataclasses.field(default_factory=dict)

  def path(self, artifact: str) -> str:
    """The path of one artifact by file name (PipelineError names the ones there are)."""
    if artifact not in self.artifacts:
      raise PipelineError(f"stage {self.name!r} has no artifact {artifact!r} (it has "
                          f"{sorted(self.artifacts)}); fix the stage that reads it.")
    return self.artifacts[artifact]


def run_pipeline(workdir: str, stages: Sequence[Stage], cache: Optional[str] = None,
                 progress: bool = True,
                 report: Optional[Callable[[Sequence[StageResult], float], Mapping]] = None
                 ) -> dict:
  """Runs `stages` in order in `workdir`, each unless its folder holds its result.

  Args:
    workdir: the pipeline folder (stage folders, superseded/, pipeline_summary.json).
    stages: the stages; a stage may need only earlier ones.
    cache: the feature cache folder for `shared` stages (None: they live in workdir).
    progress: one "[k/n] name: ..." status line per stage.
    report: `report(results, seconds) -> extra summary fields`, called after the last
      stage with the run's wall time so far (e.g. to write results.md).

  Returns:
    The summary (also `<workdir>/pipeline_summary.json`): "stages" {name: StageResult
    fields}, "seconds", and the report's fields.

  Raises:
    PipelineError: duplicate names, a stage that needs a later or unknown one, a job
      that returns a path outside its folder or a missing file.
    checkpoints.WorkdirError: another process is running a stage in this workdir.
  """
  names = [s.name for s in stages]
  for i, s in enumerate(stages):
    if names.count(s.name) > 1:
      raise PipelineError(f"two stages are named {s.name!r}; stage names must be unique.")
    missing = [n for n in s.needs if n not in names[:i]]
    if missing:
      raise PipelineError(f"stage {s.name!r} needs {missing}, which are not earlier stages "
                          f"(stages in order: {names}).")
  started = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  results: dict = {}
  for i, s in enumerate(stages):
    results[s.name] = _run(workdir, s, results, cache, progress, f"[{i + 1}/{len(stages)}]")
  done = list(results.values())
  summary = {"workdir": os.path.abspath(workdir),
             "seconds": round(time.perf_counter() - started, 2),
             "stages": {r.name: dataclasses.asdict(r) for r in done}}
  if report is not None:
    summary.update(report(done, summary["seconds"]))
  files.write_json(os.path.join(workdir, SUMMARY), summary, sort_keys=True)
  return summary


def stage_fingerprint(stage: Stage, inputs: Mapping[str, StageResult]) -> str:
  """`fingerprint` of the needed stages' provided artifact digests and the stage's config."""
  return fingerprint({"inputs": {n: inputs[n].provided for n in stage.needs},
                      "config": stage.config})


def _run(workdir: str, stage: Stage, results: Mapping[str, StageResult], cache: Optional[str],
         progress: bool, index: str) -> StageResult:
  inputs = {n: results[n] for n in stage.needs}
  fp = stage_fingerprint(stage, inputs)
  if stage.shared and cache:
    base, folder = cache, os.path.join(cache, f"{stage.name}-{fp}")
  else:
    base, folder = workdir, os.path.join(workdir, stage.folder or stage.name)
  os.makedirs(base, exist_ok=True)
  # A cached folder is built by whichever run comes first while the others wait; a
  # workdir's stage is refused at once to a second process (WorkdirError).
  lock = (stage_lock(folder, f"{index} {stage.name}: ", progress) if stage.shared and cache
          else checkpoints.workdir_lock(base, f"pipeline ({stage.name} stage)",
                                        name=f".{stage.name}.lock"))
  with lock:
    result = _run_locked(base, stage, folder, fp, inputs, progress, index)
  if stage.provides and not set(stage.provides) & set(result.digests):
    raise PipelineError(f"stage {stage.name!r} provides {list(stage.provides)}, none of which "
                        f"its job returned (it returned {sorted(result.digests)}).")
  result.provided = {a: d for a, d in result.digests.items()
                     if not stage.provides or a in stage.provides}
  return result


def _run_locked(base: str, stage: Stage, folder: str, fp: str, inputs, progress: bool,
                index: str) -> StageResult:
  name = stage.name
  marker_path = os.path.join(folder, MARKER)
  marker = files.read_json(marker_path)
  settings = canonical(dict(stage.resumable))
  config = canonical(stage.config)
  if (marker and marker.get("fingerprint") == fp and marker.get("status") == "done" and
      marker.get("settings", {}) == settings and _artifacts_intact(folder, marker)):
    if progress:
      print(f"{index} {name}: skipped: up to date ({folder})", flush=True)
    digests = dict(marker["artifacts_sha256"])
    return StageResult(name, "skipped", 0.0, marker.get("seconds", 0.0), fp,
                       {p: os.path.join(folder, p) for p in sorted(digests)}, folder, digests)
  moved = None
  if marker and marker.get("fingerprint") != fp and os.path.isdir(folder):
    if stage.keep_old:
      moved = _supersede(base, folder, name, str(marker.get("fingerprint")))
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
  paths = list(stage.job(folder, inputs))
  seconds = round(time.perf_counter() - started, 2)
  relative = {}
  for p in paths:
    rel = os.path.relpath(p, folder)
    if rel.startswith(os.pardir) or not os.path.isfile(p):
      raise PipelineError(f"stage {name!r} returned {p}, which is not a file in its folder "
                          f"{folder}; its job must write its artifacts there.")
    relative[rel] = sha256_file(p)
  files.write_json(marker_path, {"stage": name, "fingerprint": fp, "status": "done",
                                 "settings": settings, "config": config, "seconds": seconds,
                                 "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "artifacts_sha256": relative}, sort_keys=True)
  if progress:
    print(f"{index} {name}: done in {duration(seconds)} -> {folder}", flush=True)
  return StageResult(name, "ran", seconds, seconds, fp,
                     {os.path.relpath(p, folder): p for p in paths}, folder, relative, moved)


def duration(seconds: float) -> str:
  return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _supersede(base: str, folder: str, name: str, old_fp: str) -> str:
  """Moves a stage folder of another configuration to <base>/superseded/; returns where."""
  target = os.path.join(base, "superseded", f"{name}-{old_fp}")
  n = 1
  while os.path.exists(target):
    n += 1
    target = os.path.join(base, "superseded", f"{name}-{old_fp}-{n}")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  shutil.move(folder, target)
  return target


def _artifacts_intact(folder: str, marker: dict) -> bool:
  """Whether every artifact the marker vouches for (paths relative to folder) is unchanged."""
  recorded = marker.get("artifacts_sha256") or {}
  return bool(recorded) and all(
      os.path.isfile(os.path.join(folder, p)) and sha256_file(os.path.join(folder, p)) == digest
      for p, digest in recorded.items())


@contextlib.contextmanager
def stage_lock(folder: str, label: str = "", progress: bool = True,
               poll_seconds: float = 5.0) -> Iterator[None]:
  """Holds `<folder>.lock` (an OS file lock) while a shared stage folder is checked and built.

  Another process (or thread) holding it makes this wait, saying so once; the OS
  releases the lock when its holder exits, so a crashed run never blocks the next.
  """
  lock = filelock.FileLock(folder + ".lock", thread_local=False)
  try:
    lock.acquire(timeout=0)
  except filelock.Timeout:
    if progress:
      print(f"{label}waiting for another run building {folder} ...", flush=True)
    lock.acquire(poll_interval=poll_seconds)
  try:
    yield
  finally:
    lock.release()
