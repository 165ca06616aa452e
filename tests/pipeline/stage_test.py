"""The pipeline engine alone (jobs are small lambdas): what makes a stage run, skip, resume,
move aside or wait, and the one fingerprint."""

import functools
import json

import pytest

from jaxrec import fingerprints
from jaxrec.pipeline import stage as stage_lib
from jaxrec.pipeline.stage import Stage
from jaxrec.training import checkpoints


def _writer(calls, text):
  """A job that writes `text` into <folder>/out.txt and records the call."""
  def job(folder, inputs):
    calls.append((text, {n: r.digests for n, r in inputs.items()}))
    path = f"{folder}/out.txt"
    with open(path, "w") as f:
      f.write(text)
    return [path]
  return job


def _statuses(summary):
  return {name: s["status"] for name, s in summary["stages"].items()}


def test_fingerprint_is_the_hash_of_the_canonical_value():
  assert stage_lib.fingerprint({"a": 1, "b": (2, 3)}) == stage_lib.fingerprint(
      {"b": [2, 3], "a": 1})
  assert stage_lib.fingerprint({"a": 1}) != stage_lib.fingerprint({"a": 2})
  assert len(stage_lib.fingerprint(None)) == 16


def _job(workdir, steps=1):
  return workdir, steps


def test_a_job_is_identified_by_the_arguments_it_carries_not_by_gin():
  """Plain Python passes functools.partial, gin runs pass `fingerprints.Bound`: both are
  hashed by their function and arguments."""
  assert stage_lib.fingerprint(functools.partial(_job, steps=2)) != stage_lib.fingerprint(
      functools.partial(_job, steps=3))
  bound = fingerprints.Bound(_job, {"steps": 2})
  assert stage_lib.fingerprint(bound) == stage_lib.fingerprint(functools.partial(_job, steps=2))
  assert bound("w") == ("w", 1)  # called as it is (gin injects its own bindings).
  assert stage_lib.canonical(bound) == {"__fn__": f"{__name__}._job", "bindings": {"steps": 2}}
  assert stage_lib.canonical(_job)["bindings"] == {}


def test_builds_skips_resumes_and_supersedes(tmp_path, capsys):
  calls = []

  def stages(a_text="a", b_text="b", steps=3, keep_old=True):
    return [Stage("features", _writer(calls, a_text), {"text": a_text}, keep_old=False),
            Stage("model", _writer(calls, b_text), {"text": b_text}, needs=("features",),
                  resumable={"num_steps": steps}, keep_old=keep_old)]

  first = stage_lib.run_pipeline(str(tmp_path), stages())
  assert _statuses(first) == {"features": "ran", "model": "ran"}
  # The model's job saw the features' digest: its input, hashed by content.
  assert calls[1][1]["features"]["out.txt"] == stage_lib.sha256_file(tmp_path / "features"
                                                                      / "out.txt")
  assert json.loads((tmp_path / "pipeline_summary.json").read_text())["stages"]["model"][
      "artifacts"]["out.txt"] == str(tmp_path / "model" / "out.txt")
  capsys.readouterr()
  assert set(_statuses(stage_lib.run_pipeline(str(tmp_path), stages())).values()) == {
      "skipped"}
  assert capsys.readouterr().out.count("skipped: up to date") == 2 and len(calls) == 2
  # A resumable setting changed: the model runs again in the same folder (it resumes).
  summary = stage_lib.run_pipeline(str(tmp_path), stages(steps=5))
  assert _statuses(summary) == {"features": "skipped", "model": "ran"}
  assert summary["stages"]["model"]["superseded"] is None
  # An artifact changed behind the marker's back is not trusted.
  (tmp_path / "model" / "out.txt").write_text("edited")
  assert _statuses(stage_lib.run_pipeline(str(tmp_path), stages(steps=5)))["model"] == "ran"
  # Changed input: the features (cheap) are rebuilt in place, the model's old folder is kept.
  summary = stage_lib.run_pipeline(str(tmp_path), stages(a_text="a2", steps=5))
  assert _statuses(summary) == {"features": "ran", "model": "ran"}
  moved = summary["stages"]["model"]["superseded"]
  assert moved.startswith(str(tmp_path / "superseded" / "model-"))
  assert sorted(p.name.split("-")[0] for p in (tmp_path / "superseded").iterdir()) == ["model"]
  # keep_old=False deletes the old folder instead.
  summary = stage_lib.run_pipeline(str(tmp_path), stages(a_text="a2", b_text="b3", steps=5,
                                                         keep_old=False))
  assert summary["stages"]["model"]["superseded"] is None
  assert len(list((tmp_path / "superseded").iterdir())) == 1
  assert (tmp_path / "model" / "out.txt").read_text() == "b3"


def test_a_killed_stage_runs_again_and_a_second_process_is_refused(tmp_path):
  def killed(folder, inputs):
    raise RuntimeError("killed")
  with pytest.raises(RuntimeError):
    stage_lib.run_pipeline(str(tmp_path), [Stage("model", killed, {"x": 1})])
  assert json.loads((tmp_path / "model" / "stage.json").read_text())["status"] == "running"
  calls = []
  assert _statuses(stage_lib.run_pipeline(str(tmp_path), [
      Stage("model", _writer(calls, "b"), {"x": 1})]))["model"] == "ran"
  with checkpoints.workdir_lock(str(tmp_path), name=".model.lock"):
    with pytest.raises(checkpoints.WorkdirError, match=r"is in use: .*model stage"):
      stage_lib.run_pipeline(str(tmp_path), [Stage("model", _writer(calls, "c"), {"x": 2})])
  assert [c[0] for c in calls] == ["b"]


def test_shared_stages_live_in_the_cache_and_are_reused(tmp_path):
  calls = []
  cache = tmp_path / "cache"

  def stages(run_name):
    return [Stage("features", _writer(calls, "f"), {"v": 1}, shared=True),
            Stage("model", _writer(calls, run_name), {"v": run_name}, needs=("features",))]
  a = stage_lib.run_pipeline(str(tmp_path / "a"), stages("a"), cache=str(cache))
  b = stage_lib.run_pipeline(str(tmp_path / "b"), stages("b"), cache=str(cache))
  assert _statuses(a)["features"] == "ran" and _statuses(b)["features"] == "skipped"
  folder = a["stages"]["features"]["folder"]
  assert folder == str(cache / f"features-{a['stages']['features']['fingerprint']}")
  assert not (tmp_path / "a" / "features").exists()
  assert [c[0] for c in calls] == ["f", "a", "b"]


def test_bad_stage_lists_and_bad_jobs_are_named(tmp_path):
  noop = lambda folder, inputs: []  # noqa: E731
  with pytest.raises(stage_lib.PipelineError, match="needs \\['later'\\]"):
    stage_lib.run_pipeline(str(tmp_path), [Stage("a", noop, needs=("later",)),
                                           Stage("later", noop)])
  with pytest.raises(stage_lib.PipelineError, match="two stages are named 'a'"):
    stage_lib.run_pipeline(str(tmp_path), [Stage("a", noop), Stage("a", noop)])
  outside = tmp_path / "elsewhere.txt"
  outside.write_text("x")
  with pytest.raises(stage_lib.PipelineError, match="not a file in its folder"):
    stage_lib.run_pipeline(str(tmp_path), [Stage("a", lambda folder, inputs: [str(outside)])])
  result = stage_lib.StageResult("a", "ran", 0., 0., "fp", {"x.npy": "/p/x.npy"})
  with pytest.raises(stage_lib.PipelineError, match="has no artifact 'y.npy'"):
    result.path("y.npy")


def test_later_stages_hash_only_what_a_stage_provides(tmp_path):
  """Rebuilt IDs equal to the old ones (new statistics) leave the generator up to date."""
  calls = []

  def ids_job(stats):
    def job(folder, inputs):
      with open(f"{folder}/ids.txt", "w") as f:
        f.write("1 2 3")
      with open(f"{folder}/stats.json", "w") as f:
        f.write(stats)
      return [f"{folder}/ids.txt", f"{folder}/stats.json"]
    return job

  def stages(config, stats, provides=("ids.txt",)):
    return [Stage("ids", ids_job(stats), config, keep_old=False, provides=provides),
            Stage("model", _writer(calls, "m"), {}, needs=("ids",))]
  stage_lib.run_pipeline(str(tmp_path), stages({"v": 1}, "1.2 s"))
  summary = stage_lib.run_pipeline(str(tmp_path), stages({"v": 2}, "1.7 s"))
  assert _statuses(summary) == {"ids": "ran", "model": "skipped"} and len(calls) == 1
  # Without `provides`, every artifact counts: new statistics rerun the model.
  summary = stage_lib.run_pipeline(str(tmp_path), stages({"v": 3}, "1.9 s", provides=()))
  assert _statuses(summary) == {"ids": "ran", "model": "ran"}
  with pytest.raises(stage_lib.PipelineError, match="none of which its job returned"):
    stage_lib.run_pipeline(str(tmp_path), stages({"v": 4}, "2 s", provides=("typo.npy",)))


def test_the_report_gets_the_run_wall_time(tmp_path):
  """results.md's total is the run's wall time (the stages' sum leaves out the engine's own
  work between them)."""
  calls = []
  summary = stage_lib.run_pipeline(
      str(tmp_path), [Stage("a", _writer(calls, "a"), {"x": 1})], progress=False,
      report=lambda results, seconds: {"reported": seconds, "names": [r.name for r in results]})
  assert summary["reported"] == summary["seconds"] >= summary["stages"]["a"]["seconds"]
  assert summary["names"] == ["a"]
