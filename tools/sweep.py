"""Run a sweep of tools/run.py jobs and tabulate their metrics: `python tools/sweep.py ...`.

  python tools/sweep.py --spec=gin_configs/sweeps/baselines_smoke.txt --sweep_dir=/tmp/sweep
  python tools/sweep.py --runs='gin_configs/ablations/cemg/*.gin' \
    --gin_file=gin_configs/data/beauty.gin --seeds=0,1,2 --seed_binding=SEED --sweep_dir=/tmp/cemg
  python tools/sweep.py --spec=... --sweep_dir=... --gin.evaluation.EvalConfig.num_bootstrap=100 \
    --metrics=recall@10,ndcg@10,cold_start/recall@10 --max_parallel=2 --reference=sasrec

Every run (and seed) runs `python tools/run.py` in its own subprocess with
--workdir=<sweep_dir>/<name>[/seed_<s>] (log in log.txt there); a run that finished
before with the same command is skipped (marker sweep_done.json), a failed one is
reported and the sweep goes on. --gin_file and --gin.NAME=VALUE are appended to every
run; --seeds / --seed_binding replace the spec's. Gin files given as positional
arguments are runs like --runs. Writes <sweep_dir>/sweep_results.{md,csv,png} (with
--reference, the Markdown also compares every run with that one on the same users); exits
with status 1 when a run failed. The spec format is in jaxrec/sweep.py's docstring and
the header of gin_configs/sweeps/baselines_smoke.txt.
"""

import functools
import shlex
import sys

from absl import app
from absl import flags

from jaxrec import configs
from jaxrec import sweep
from jaxrec import sweep_spec


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  f = dict(flag_values=flag_values)
  flags.DEFINE_string("spec", None, "sweep spec file (one run per line).", **f)
  flags.DEFINE_multi_string("runs", [], "gin files or globs, each its own run named by "
                            "its stem.", **f)
  flags.DEFINE_string("sweep_dir", None, "where the run folders and reports go.",
                      required=True, **f)
  flags.DEFINE_multi_string("gin_file", [], "gin files appended to every run.", **f)
  flags.DEFINE_string("seeds", None, "e.g. 0,1,2: one run folder per seed (replaces the "
                      "spec's seeds).", **f)
  flags.DEFINE_string("seed_binding", None, "binding(s) or macro(s) that get the seed, "
                      "comma-separated (replaces the spec's).", **f)
  flags.DEFINE_list("metrics", list(sweep.DEFAULT_METRICS), "metrics to report; "
                    "'cold_start/recall@10' for a slice.", **f)
  flags.DEFINE_enum("split", "test", list(sweep.SPLITS), "split of the Markdown table and "
                    "plot (the CSV has every split).", **f)
  flags.DEFINE_string("reference", None, "RUN or RUN:MODEL: the report also compares every "
                      "run with it on the same users (paired bootstrap of the per-user "
                      "difference).", **f)
  flags.DEFINE_integer("max_parallel", 1, "runs at a time.", lower_bound=1, **f)
  flags.DEFINE_float("timeout", None, "seconds after which a run is killed (failed).", **f)
  flags.DEFINE_bool("dry_run", False, "print the commands (those a sweep would skip "
                    "commented out), run nothing.", **f)
  flags.DEFINE_bool("progress", True, "progress bar and a line per run.", **f)


def main(argv, flag_values: flags.FlagValues = flags.FLAGS, gin_bindings=()):
  try:
    return sweep_main(argv, flag_values, gin_bindings)
  except sweep_spec.SpecError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def sweep_main(argv, f: flags.FlagValues, gin_bindings=()) -> int:
  """Plans, runs and reports the sweep; returns the exit status (1 when a run failed)."""
  runs = sweep_spec.read_spec(f.spec) if f.spec else []
  runs += sweep_spec.runs_from_gin_files(list(f.runs) + list(argv[1:]))
  if not runs:
    raise sweep_spec.SpecError("no runs", fix="pass --spec=FILE and/or --runs=GLOB.")
  runs = sweep_spec.with_common(
      runs, f.gin_file, gin_bindings,
      seeds=None if f.seeds is None else sweep_spec.parse_seeds(f.seeds, "--seeds"),
      seed_bindings=(None if f.seed_binding is None
                     else sweep_spec.parse_seed_bindings(f.seed_binding, "--seed_binding")))
  planned = sweep.plan(runs, f.sweep_dir)
  if f.reference is not None:
    reference, _ = sweep.parse_reference(f.reference)
    if reference not in {run.name for run in planned}:
      raise sweep_spec.SpecError(
          f"--reference: reference run {reference!r} is not a run of this sweep",
          fix=f"name one of: {', '.join(sorted({run.name for run in planned}))}.")
  if f.dry_run:
    for run in planned:
      print(("# finished before: " if sweep.finished_before(run) else "")
            + shlex.join(run.command))
    return 0
  results = sweep.run_all(planned, f.max_parallel, f.timeout, progress=f.progress)
  paths = sweep.write_reports(f.sweep_dir, sweep.collect(results), f.metrics, f.split,
                              reference=f.reference)
  with open(paths["md"]) as md:
    print(md.read())
  counts = {s: sum(r.status == s for r in results) for s in sweep.STATUSES}
  print(f"{len(results)} runs: {counts['ran']} ran, {counts['redone']} ran again (command "
        f"changed), {counts['resumed']} resumed (an earlier attempt did not finish), "
        f"{counts['skipped']} finished before (skipped), {counts['failed']} failed. "
        f"Reports: {', '.join(paths.values())}")
  return 1 if counts["failed"] else 0


if __name__ == "__main__":
  define_flags()
  bindings, remaining = configs.split_gin_flags(sys.argv)
  app.run(functools.partial(main, gin_bindings=bindings), argv=remaining)
