"""tools/sweep.py and jaxrec/sweep.py: spec parsing, a real two-run sweep of the baselines
job on the tiny synthetic catalog (reports, skipped on a rerun, redone when its command
changes), a failing run that is reported and does not stop the other one, and the
aggregation over seeds on hand-made metrics JSONs (known answers, no subprocess)."""

import csv
import importlib.util
import io
import json
import os
import pathlib
import re

from absl import flags
import numpy as np
import pytest

from jaxrec import evaluation
from jaxrec import files
from jaxrec import metrics
from jaxrec import sweep
from jaxrec import sweep_spec

REPO = pathlib.Path(__file__).parents[1]
BASELINES = "gin_configs/runs/baselines.gin"
# Shared by every run of the real sweeps: the tiny catalog, 10 bootstrap resamples (fast).
FAST = "--gin_file=gin_configs/data/synthetic_tiny.gin --gin.evaluation.EvalConfig.num_bootstrap=10"
T_975_1DF = 12.706204736174707  # scipy.stats.t.ppf(0.975, 1)


def _tool():
  spec = importlib.util.spec_from_file_location("sweep_tool", REPO / "tools" / "sweep.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run_tool(argv, gin_bindings=()):
  tool = _tool()
  flag_values = flags.FlagValues()  # the tool's flags, kept out of the global registry
  tool.define_flags(flag_values)
  rest = flag_values(["sweep"] + argv)
  return tool.main(rest, flag_values, gin_bindings)


def _csv_rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- spec


SPEC = r"""# A header comment that ends in a backslash \
--gin_file=data/tiny.gin --gin.evaluation.EvalConfig.num_bootstrap=10   # shared by every run

a: runs/baselines.gin   # a comment after a run
b: runs/baselines.gin --gin.DatasetConfig.name="my name # no comment"   \
   --gin.evaluation.EvalConfig.ks=(1, 10) --gin.X='it\'s' --gin_file=more.gin
c: "dir with space/x.gin" --gin.evaluation.EvalConfig.num_bootstrap=20 --seeds=0,1 \
   --seed_binding=baselines_job.evaluate_baselines.seed,SEED
"""


def test_parse_spec_comments_quotes_brackets_shared_options():
  a, b, c = sweep_spec.parse_spec(SPEC, "spec.txt")
  assert (a.name, b.name, c.name) == ("a", "b", "c")
  assert a.gin_files == ("runs/baselines.gin", "data/tiny.gin")  # shared files come after
  assert a.bindings == ("evaluation.EvalConfig.num_bootstrap=10",)
  assert a.seeds == () and a.seed_bindings == ()
  assert b.gin_files == ("runs/baselines.gin", "more.gin", "data/tiny.gin")
  assert b.bindings == ("evaluation.EvalConfig.num_bootstrap=10",
                        'DatasetConfig.name="my name # no comment"',  # a gin literal, verbatim
                        "evaluation.EvalConfig.ks=(1, 10)", r"X='it\'s'")
  assert c.gin_files == ("dir with space/x.gin", "data/tiny.gin")
  # Shared bindings first, the run's after them (later ones win).
  assert c.bindings == ("evaluation.EvalConfig.num_bootstrap=10",
                        "evaluation.EvalConfig.num_bootstrap=20")
  assert c.seeds == (0, 1) and c.seed_bindings == ("baselines_job.evaluate_baselines.seed", "SEED")


def test_plan_expands_seeds_and_appends_command_line_options(tmp_path):
  runs = sweep_spec.with_common(sweep_spec.parse_spec(SPEC), gin_files=["cli.gin"],
                                bindings=["evaluation.EvalConfig.batch_size = 8"])
  planned = sweep.plan(runs, str(tmp_path))
  assert [(p.name, p.seed) for p in planned] == [("a", None), ("b", None), ("c", 0), ("c", 1)]
  a, c1 = planned[0], planned[3]
  assert a.run_dir == str(tmp_path / "a") and c1.run_dir == str(tmp_path / "c" / "seed_1")
  assert a.args == ("--gin_file=runs/baselines.gin", "--gin_file=data/tiny.gin",
                    "--gin_file=cli.gin", "--gin.evaluation.EvalConfig.num_bootstrap=10",
                    "--gin.evaluation.EvalConfig.batch_size=8", f"--workdir={tmp_path / 'a'}")
  assert c1.args[-4:] == ("--gin.evaluation.EvalConfig.batch_size=8",
                          "--gin.baselines_job.evaluate_baselines.seed=1", "--gin.SEED=1",
                          f"--workdir={tmp_path / 'c' / 'seed_1'}")
  assert c1.command[1:] == [str(REPO / "tools" / "run.py"), *c1.args]
  # The command line's seeds replace the spec's, for every run.
  reseeded = sweep_spec.with_common(sweep_spec.parse_spec(SPEC), seeds=[7],
                                    seed_bindings=["SEED"])
  assert [(p.name, p.seed, p.args[-2]) for p in sweep.plan(reseeded, str(tmp_path))] == [
      ("a", 7, "--gin.SEED=7"), ("b", 7, "--gin.SEED=7"), ("c", 7, "--gin.SEED=7")]


@pytest.mark.parametrize("text, message", [
    ("a: x.gin\nb: y.gin\na: z.gin", "two runs are named 'a'"),
    ("# ok\na x.gin", "spec.txt:2: cannot read 'a x.gin'"),
    ("a: x.gin --gin.X", "spec.txt:1: bad binding 'X'"),
    ("a: x.gin --gin.X=(1, 2", "unclosed bracket"),
    ("a: x.gin --gin.X='ab", "unclosed quote"),
    ("a: x.gin --flag=1", "unknown option '--flag=1'"),
    ("a: x.gin --seeds=0,1", "has seeds [0, 1] but no seed binding"),
    ("a: x.gin --seeds=0,x --seed_binding=S", "bad seeds '0,x'"),
    ("a: --gin.X=1", "run 'a' has no gin file"),
    ("# nothing\n\n", "the spec names no runs"),
])
def test_spec_errors_name_the_line_and_the_fix(text, message):
  with pytest.raises(sweep_spec.SpecError, match="Fix:") as error:
    sweep_spec.parse_spec(text, "spec.txt")
  assert message in str(error.value)


def test_runs_from_gin_files(tmp_path):
  for name in ("b", "a"):
    (tmp_path / f"{name}.gin").write_text("")
  runs = sweep_spec.runs_from_gin_files([str(tmp_path / "*.gin")])
  assert [(r.name, r.gin_files) for r in runs] == [
      ("a", (str(tmp_path / "a.gin"),)), ("b", (str(tmp_path / "b.gin"),))]
  with pytest.raises(sweep_spec.SpecError, match="no gin file matches"):
    sweep_spec.runs_from_gin_files([str(tmp_path / "none_*.gin")])
  with pytest.raises(sweep_spec.SpecError, match="two runs are named 'a'"):
    sweep.plan(runs + runs[:1], str(tmp_path))


# ---------------------------------------------------------------------------- real sweeps


def test_two_run_sweep_writes_reports_and_skips_finished_runs(tmp_path, capsys):
  spec = tmp_path / "spec.txt"
  spec.write_text(f"{FAST}\nkept: {BASELINES}\n"
                  f"excluded: {BASELINES} --gin.evaluation.EvalConfig.exclude_history=True\n")
  out = tmp_path / "sweep"
  assert _run_tool([f"--spec={spec}", f"--sweep_dir={out}", "--progress=false",
                    "--max_parallel=2"]) == 0
  printed = capsys.readouterr().out
  assert "2 runs: 2 ran, 0 ran again (command changed), 0 resumed (an earlier attempt did not finish), 0 finished before" in printed
  md = (out / "sweep_results.md").read_text()
  models = ("cooccurrence", "most_popular", "random")
  for run in ("kept", "excluded"):
    marker = files.read_json(str(out / run / sweep.MARKER))
    assert marker["args"][-1] == f"--workdir={out / run}" and "tools/run.py" in marker["command"]
    assert (out / run / sweep.LOG).read_text().startswith("$ ")
    for model in models:
      assert sum(line.startswith(f"| {run} | {model} | synthetic | 1 | ")
                 for line in md.splitlines()) == 1
  rows = _csv_rows(out / "sweep_results.csv")
  test_rows = {(r["run"], r["model"]): r for r in rows if r["split"] == "test"}
  assert len(test_rows) == 6 and sum(r["split"] == "valid" for r in rows) == 6
  for (run, model), row in test_rows.items():
    m = json.loads((out / run / "baselines" / model / "test_metrics.json").read_text())[
        "metrics"]["overall"]
    for name in sweep.DEFAULT_METRICS:
      assert float(row[name]) == pytest.approx(m[name]["mean"])
      assert float(row[f"{name}_low"]) == pytest.approx(m[name]["ci_low"])
      assert float(row[f"{name}_high"]) == pytest.approx(m[name]["ci_high"])
    assert row["status"] == "ran" and row["interval"] == "bootstrap" and float(row["seconds"]) > 0
  # The binding reached its run: co-occurrence scores differ with history items excluded.
  assert (test_rows["kept", "cooccurrence"]["recall@10"]
          != test_rows["excluded", "cooccurrence"]["recall@10"])
  assert (out / "sweep_results.png").read_bytes().startswith(b"\x89PNG")
  assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary files left

  # A rerun skips both runs: no new log, the reports are rewritten from the same metrics.
  logs = {run: os.stat(out / run / sweep.LOG).st_mtime_ns for run in ("kept", "excluded")}
  assert _run_tool([f"--spec={spec}", f"--sweep_dir={out}", "--progress=false",
                    "--reference=kept:most_popular"]) == 0
  assert "2 runs: 0 ran, 0 ran again (command changed), 0 resumed (an earlier attempt did not finish), 2 finished before" in (
      capsys.readouterr().out)
  assert logs == {run: os.stat(out / run / sweep.LOG).st_mtime_ns for run in logs}
  md = (out / "sweep_results.md").read_text()
  assert "| kept | random | synthetic | 1 | " in md
  # --reference: every other (run, model) against it on the same users, from the saved ranks.
  assert "## Paired with `kept:most_popular` (same users)" in md
  assert re.search(r"\| excluded \| most_popular \| - \| \**[+-]\d\.\d{4} \(", md)
  assert re.search(r"\| kept \| cooccurrence \| - \| \**[+-]\d\.\d{4} \(", md)
  assert _run_tool([f"--spec={spec}", f"--sweep_dir={out}", "--progress=false",
                    "--reference=nope"]) == 2  # refused before any run
  assert "reference run 'nope' is not a run of this sweep" in capsys.readouterr().err
  assert {r["status"] for r in _csv_rows(out / "sweep_results.csv")} == {"skipped"}

  # A changed command is run again, and the result says what changed.
  kept = sweep_spec.with_common(sweep_spec.read_spec(str(spec))[:1],
                                bindings=["evaluation.EvalConfig.num_bootstrap=11"])
  result = sweep.run_one(sweep.plan(kept, str(out))[0])
  assert result.status == "redone"
  assert "added --gin.evaluation.EvalConfig.num_bootstrap=11" in result.note
  assert os.stat(out / "kept" / sweep.LOG).st_mtime_ns != logs["kept"]


def test_a_failed_run_is_reported_and_the_sweep_goes_on(tmp_path, capsys):
  spec = tmp_path / "spec.txt"
  spec.write_text(f"bad: {BASELINES} {FAST} --gin.baselines_job.evaluate_baselines.no_such_arg=1\n"
                  f"good: {BASELINES} {FAST} --gin.baselines_job.evaluate_baselines.baselines="
                  f"('random',)\n")
  out = tmp_path / "sweep"
  assert _run_tool([f"--spec={spec}", f"--sweep_dir={out}", "--progress=false"]) == 1
  printed = capsys.readouterr().out
  assert "[FAILED] bad: exit 1" in printed and "no_such_arg" in printed
  assert "2 runs: 1 ran, 0 ran again (command changed), 0 resumed (an earlier attempt did not finish), 0 finished before (skipped), 1 failed" in (
      printed)
  assert not (out / "bad" / sweep.MARKER).exists() and (out / "good" / sweep.MARKER).exists()
  assert "ConfigError" in (out / "bad" / sweep.LOG).read_text()
  md = (out / "sweep_results.md").read_text()
  bad_row = next(line for line in md.splitlines() if line.startswith("| bad |"))
  assert "FAILED (exit 1): jaxrec.configs.ConfigError:" in bad_row and "no_such_arg" in bad_row
  assert "## Failed runs" in md and f"log {out / 'bad' / sweep.LOG}" in md
  assert "| good | random | synthetic | 1 | " in md
  rows = {r["run"]: r for r in _csv_rows(out / "sweep_results.csv") if r["split"] != "valid"}
  assert rows["bad"]["status"] == "failed" and "no_such_arg" in rows["bad"]["error"]
  assert rows["bad"]["recall@10"] == "" and rows["good"]["status"] == "ran"


SASREC_TINY = ["--gin_file=gin_configs/papers/sasrec.gin", "--gin_file=gin_configs/data/synthetic_tiny.gin",
               "--gin.EVAL_EVERY=2", "--gin.MAX_LEN=10", "--gin.batching.BatchingConfig.batch_size=16",
               "--gin.batching.BatchingConfig.bucket_boundaries=()",
               "--gin.sasrec.SasRecConfig.hidden=16", "--gin.evaluation.EvalConfig.num_bootstrap=10"]


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
  """A run folder with a log but no marker (the sweep was killed, or the run failed) is
  run again as "resumed": its log is kept, its finished stages are skipped and its training
  continues from the last checkpoint (here: the attempt that stopped at step 4 of 8)."""
  def planned(steps):
    runs = sweep_spec.with_common(sweep_spec.parse_spec(
        "s: " + " ".join(SASREC_TINY) + f" --gin.NUM_STEPS={steps}\n"), ())
    return sweep.plan(runs, str(tmp_path))[0]
  first = sweep.run_one(planned(4))
  assert first.status == "ran", first.error
  os.remove(os.path.join(first.run.run_dir, sweep.MARKER))  # killed before it finished
  again = sweep.run_one(planned(8))
  assert again.status == "resumed" and "did not finish" in again.note, again.error
  assert "[resumed] s" in sweep.describe(again)
  log = (tmp_path / "s" / sweep.LOG).read_text()
  assert log.count("$ ") == 2 and "--- resumed " in log and "--gin.NUM_STEPS=4" in log
  events = [e for e in files.read_jsonl(str(tmp_path / "s" / "sasrec" / "metrics.jsonl"))
            if e.get("event") in ("start", "resume")]
  assert [(e["event"], e["step"]) for e in events] == [("start", 0), ("resume", 4)]
  assert files.read_json(str(tmp_path / "s" / "sasrec" / "train_summary.json"))["step"] == 8
  assert sweep.run_one(planned(8)).status == "skipped"



def test_a_reference_run_named_like_one_of_its_models_means_that_model(tmp_path):
  """--reference=sasrec for a SASRec run that also evaluates the baselines: its own model."""
  plan = sweep.plan([sweep_spec.RunSpec(n, ("x.gin",)) for n in ("sasrec", "gen")],
                    str(tmp_path))
  _evaluated(plan[0].run_dir, "sasrec", [0, 0, 5, 20])
  _evaluated(plan[0].run_dir, "most_popular", [20, 20, 20, 20])
  _evaluated(plan[1].run_dir, "generator", [0, 20, 20, 20])
  records = sweep.collect([sweep.RunResult(r, "ran", 1.0) for r in plan])
  paired = sweep.paired_with(records, "sasrec", ("recall@10",), num_resamples=50)
  assert paired[("gen", "generator")]["reference"] == "sasrec:sasrec"
  assert paired[("gen", "generator")]["recall@10"]["diff"] == pytest.approx(0.25 - 0.75)
  assert paired[("sasrec", "most_popular")]["recall@10"]["diff"] == pytest.approx(-0.75)


# ---------------------------------------------------------------------------- aggregation


def _metrics_json(path, model, recall, ndcg, split="test"):
  def value(mean):
    return {"mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05, "n": 80}
  data = {"split": split, "dataset": "toy",
          "metrics": {"overall": {"recall@10": value(recall), "ndcg@10": value(ndcg)},
                      "cold_start": {"recall@10": value(recall / 2)}}}
  if model:
    data["model"] = model
  files.write_json(str(path), data)


def test_aggregation_over_seeds_known_answers(tmp_path):
  runs = [sweep_spec.RunSpec("two", ("x.gin",), seeds=(0, 1), seed_bindings=("SEED",)),
          sweep_spec.RunSpec("one", ("x.gin",)), sweep_spec.RunSpec("broken", ("x.gin",))]
  planned = sweep.plan(runs, str(tmp_path))
  two0, two1, one, broken = planned
  _metrics_json(pathlib.Path(two0.run_dir) / "m" / "test_metrics.json", "m", 0.2, 0.1)
  _metrics_json(pathlib.Path(two1.run_dir) / "m" / "test_metrics.json", "m", 0.4, 0.3)
  one_dir = pathlib.Path(one.run_dir)
  _metrics_json(one_dir / "eval" / "test_metrics.json", None, 0.5, 0.25)  # no "model": run name
  _metrics_json(one_dir / "eval" / "valid_metrics.json", None, 0.6, 0.3, split="valid")
  _metrics_json(one_dir / "superseded" / "old" / "eval" / "test_metrics.json", "old", 0.9, 0.9)
  _metrics_json(one_dir / "seed_9" / "m" / "test_metrics.json", "m", 0.9, 0.9)  # another run's
  (one_dir / "seed_9" / sweep.LOG).write_text("")
  # Training time: a single job's train_summary.json, or a pipeline's stages but evaluation.
  files.write_json(os.path.join(two0.run_dir, "train_summary.json"), {"seconds": 60.0})
  files.write_json(os.path.join(two1.run_dir, "train_summary.json"), {"seconds": 180.0})
  files.write_json(str(one_dir / "pipeline_summary.json"), {"stages": {
      "embeddings": {"status": "skipped", "build_seconds": 30.0, "seconds": 0.0},
      "generator": {"status": "ran", "build_seconds": 270.0, "seconds": 270.0},
      "evaluation": {"status": "ran", "build_seconds": 999.0, "seconds": 999.0}}})
  results = [sweep.RunResult(two0, "ran", 2.0), sweep.RunResult(two1, "skipped", 4.0),
             sweep.RunResult(one, "ran", 1.0),
             sweep.RunResult(broken, "failed", 0.5, returncode=1, error="x\nValueError: boom")]
  records = sweep.collect(results)
  assert [(r["run"], r["model"], r["seed"], r["split"]) for r in records] == [
      ("two", "m", 0, "test"), ("two", "m", 1, "test"), ("one", "one", None, "test"),
      ("one", "one", None, "valid"), ("broken", None, None, None)]
  assert sweep.metric_value(records[0]["metrics"], "cold_start/recall@10")["mean"] == 0.1

  rows = sweep.summarize(records, ("recall@10", "ndcg@10"), "test")
  assert [(r["run"], r["model"]) for r in rows] == [("two", "m"), ("one", "one"), ("broken", None)]
  two, single, failed = rows
  # Two seeds: mean 0.3, sd 0.1414, standard error 0.1 -> 0.3 +/- t(0.975, 1 df) * 0.1.
  for name, mean in (("recall@10", 0.3), ("ndcg@10", 0.2)):
    m = two["metrics"][name]
    assert m["mean"] == pytest.approx(mean)
    assert m["low"] == pytest.approx(mean - T_975_1DF * 0.1)
    assert m["high"] == pytest.approx(mean + T_975_1DF * 0.1)
    assert m["interval"] == "t over 2 seeds"
  assert two["seeds"] == [0, 1] and two["seconds"] == 3.0 and two["status"] == "ran/skipped"
  assert (two["train_seconds"], single["train_seconds"], failed["train_seconds"]) == (
      120.0, 300.0, None)
  # One seed: the run's own bootstrap CI.
  assert single["metrics"]["recall@10"] == dict(mean=0.5, low=0.45, high=0.55,
                                                interval="bootstrap", values=[0.5])
  assert failed["status"] == "failed" and failed["metrics"]["recall@10"] is None
  # Three seeds: 0.1, 0.2, 0.3 -> 0.2 +/- t(0.975, 2 df) * 0.1 / sqrt(3).
  mean, low, high = sweep.seed_interval([0.1, 0.2, 0.3])
  assert (mean, high - mean) == pytest.approx((0.2, 4.302652729749464 * 0.1 / 3 ** 0.5))

  paths = sweep.write_reports(str(tmp_path), records, ("recall@10", "ndcg@10"), "test")
  md = open(paths["md"]).read()
  assert "| two | m | toy | 2 | 0.3000 (-0.9706-1.5706) | 0.2000 (-1.0706-1.4706) |" in md
  assert ("| one | one | toy | 1 | 0.5000 (0.4500-0.5500) | 0.2500 (0.2000-0.3000) | 1.0 | 5.0 |"
          in md)
  assert "| broken | - | - | 1 | - | - | 0.5 | - | FAILED (exit 1): ValueError: boom |" in md
  assert "## Per seed" in md
  assert ("| two | m | 1 | 0.4000 (0.3500-0.4500) | 0.3000 (0.2500-0.3500) | 4.0 | 3.0 | skipped |"
          in md)
  rows = list(csv.DictReader(io.StringIO(open(paths["csv"]).read())))
  mean_row = next(r for r in rows if r["seed"] == "mean")
  assert (mean_row["run"], mean_row["interval"]) == ("two", "t over 2 seeds")
  assert float(mean_row["recall@10_high"]) == pytest.approx(0.3 + T_975_1DF * 0.1)
  assert [r["train_seconds"] for r in rows] == ["60.0", "180.0", "120.0", "300.0", "", "300.0"]
  assert [(r["run"], r["split"], r["seed"]) for r in rows] == [
      ("two", "test", "0"), ("two", "test", "1"), ("two", "test", "mean"),
      ("one", "test", ""), ("broken", "", ""), ("one", "valid", "")]
  assert open(paths["png"], "rb").read().startswith(b"\x89PNG")
  assert "curves" not in paths  # no run trained a model with validations in its folder


def test_validation_curves_of_the_generators_vs_training_minutes(tmp_path):
  """sweep_curves.png: one line per run (and seed) whose model folder holds a metrics.jsonl
  with timed validations; a model trained elsewhere (a shared SASRec) has none here."""
  runs = [sweep_spec.RunSpec("gen", ("x.gin",), seeds=(0, 1), seed_bindings=("SEED",)),
          sweep_spec.RunSpec("sasrec", ("x.gin",))]
  gen0, gen1, sasrec = sweep.plan(runs, str(tmp_path))
  for planned, value in ((gen0, 0.1), (gen1, 0.2)):
    model = pathlib.Path(planned.run_dir) / "generator"
    _metrics_json(model / "eval" / "test_metrics.json", "generator", value, value / 2)
    with open(model / "metrics.jsonl", "w") as f:
      for step, minutes in ((50, 1.0), (100, 2.5)):
        f.write(json.dumps({"step": step, "event": "eval", "valid/recall@10": value,
                            "valid/ndcg@10": value / 2, "time": 60.0 * minutes}) + "\n")
  _metrics_json(pathlib.Path(sasrec.run_dir) / "sasrec" / "eval" / "test_metrics.json",
                "sasrec", 0.3, 0.2)
  records = sweep.collect([sweep.RunResult(r, "ran", 1.0) for r in (gen0, gen1, sasrec)])
  assert sweep.curve_runs(records) == {"gen/seed_0": os.path.join(gen0.run_dir, "generator"),
                                       "gen/seed_1": os.path.join(gen1.run_dir, "generator")}
  paths = sweep.write_reports(str(tmp_path), records, ("recall@10", "ndcg@10", "cold_start/recall@10"))
  assert paths["curves"] == str(tmp_path / sweep.CURVES)
  assert open(paths["curves"], "rb").read().startswith(b"\x89PNG")


# ---------------------------------------------------------------------------- paired


def _evaluated(run_dir, model, ranks, users=None, ranks_file=True):
  """A run folder's <model>/test_metrics.json and, beside it, test_ranks.npz."""
  ranks = np.asarray(ranks, np.int64)
  folder = pathlib.Path(run_dir) / model
  _metrics_json(folder / "test_metrics.json", model, float(np.mean(ranks < 10)), 0.0)
  if ranks_file:
    n = len(ranks)
    evaluation.save_ranks(str(folder / "test_ranks.npz"), dict(
        ranks=ranks, users=np.arange(n) if users is None else np.asarray(users),
        targets=np.arange(n) + 100, is_cold=np.zeros(n, bool)))


def test_paired_comparison_with_a_reference_run_known_answers(tmp_path):
  n, miss = 50, metrics.NOT_FOUND
  runs = [sweep_spec.RunSpec(name, ("x.gin",), seeds=(0, 1), seed_bindings=("SEED",))
          for name in ("ref", "same", "better")]
  runs += [sweep_spec.RunSpec(name, ("x.gin",)) for name in ("single", "old", "other_users")]
  plan = sweep.plan(runs, str(tmp_path))
  planned = {(p.name, p.seed): p.run_dir for p in plan}
  # The reference misses every target with seed 0 and ranks every one first with seed 1.
  _evaluated(planned["ref", 0], "m", [miss] * n)
  _evaluated(planned["ref", 1], "m", [0] * n)
  _evaluated(planned["ref", 1], "extra", [0] * n)  # a second model of the reference run
  # "same" equals the reference seed by seed: exactly 0 (paired across seeds it would be +-1).
  _evaluated(planned["same", 0], "m", [miss] * n)
  _evaluated(planned["same", 1], "m", [0] * n)
  # "better" ranks every target first: +1 with seed 0, 0 with seed 1 -> 0.5 pooled.
  _evaluated(planned["better", 0], "m", [0] * n)
  _evaluated(planned["better", 1], "m", [0] * n)
  _evaluated(planned["single", None], "m", [0] * n)  # no seed in common
  _evaluated(planned["old", None], "m", [0] * n, ranks_file=False)  # evaluated before ranks
  _evaluated(planned["other_users", None], "m", [0] * n, users=np.arange(n) + 1)
  results = [sweep.RunResult(p, "ran", 1.0) for p in plan]
  records = sweep.collect(results)
  names = ("recall@10", "ndcg@10", "cold_start/recall@10")
  paired = sweep.paired_with(records, "ref:m", names, num_resamples=200)
  assert set(paired) == {("ref", "extra"), ("same", "m"), ("better", "m"), ("single", "m"),
                         ("old", "m"), ("other_users", "m")}
  same = paired["same", "m"]
  assert same["reference"] == "ref:m" and same["seeds"] == [0, 1]
  for m in ("recall@10", "ndcg@10"):
    assert (same[m]["diff"], same[m]["ci_low"], same[m]["ci_high"]) == (0.0, 0.0, 0.0)
    assert not same[m]["excludes_zero"] and same[m]["n"] == 2 * n
    better = paired["better", "m"][m]
    assert (better["a"], better["b"], better["diff"]) == (1.0, 0.5, 0.5)
    assert 0.3 < better["ci_low"] < 0.5 < better["ci_high"] < 0.7 and better["excludes_zero"]
  assert same["cold_start/recall@10"] == {"error": "slices are not paired"}
  assert "no seed in common" in paired["single", "m"]["recall@10"]["error"]
  # The other model of the reference run: its one seed (1) paired with the reference's seed 1.
  assert paired["ref", "extra"]["seeds"] == [1] and paired["ref", "extra"]["recall@10"]["diff"] == 0

  # A one-seed reference is paired with every seed of a row.
  from_single = sweep.paired_with(records, "single", ("recall@10",), num_resamples=10)
  assert from_single["better", "m"]["seeds"] == [0, 1]
  assert from_single["same", "m"]["recall@10"]["diff"] == -0.5
  assert from_single["old", "m"]["recall@10"] == {
      "error": "no per-user ranks for this evaluation"}
  assert "rank different examples" in from_single["other_users", "m"]["recall@10"]["error"]

  paths = sweep.write_reports(str(tmp_path), records, ("recall@10", "ndcg@10"), "test",
                              reference="ref:m")
  md = open(paths["md"]).read()
  assert "## Paired with `ref:m` (same users)" in md
  assert "| same | m | 0,1 | +0.0000 (+0.0000 to +0.0000) | +0.0000 (+0.0000 to +0.0000) |" in md
  assert "| better | m | 0,1 | **+0.5000 (" in md  # bold: excludes 0
  assert "| old | m | none | - (no seed in common with the reference (seeds [0, 1])) |" in md
  md = open(sweep.write_reports(str(tmp_path), records, ("recall@10",), "test",
                                reference="single")["md"]).read()
  assert "| old | m | - | - (no per-user ranks for this evaluation) |" in md

  for reference, message in (("nope", "reference run 'nope' has no test metrics"),
                             ("ref", "evaluates several models (extra, m)"),
                             ("ref:x", "has no model 'x'"), (":m", "bad reference")):
    with pytest.raises(sweep_spec.SpecError, match="Fix:") as error:
      sweep.paired_with(records, reference)
    assert message in str(error.value)
