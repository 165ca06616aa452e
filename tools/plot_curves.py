"""Several runs' validation curves (metric vs training minutes) in one PNG.

  python tools/plot_curves.py --run="item encoder=/tmp/a/generator" \
    --run="decoder-only=/tmp/b/generator" --metric=recall@10 --output=docs/curves.png

Each --run is LABEL=WORKDIR, a folder holding the trainer's metrics.jsonl. Training minutes
leave out the downtime before each resume (`jaxrec.training.curves.training_minutes`).
"""

from absl import app
from absl import flags

from jaxrec.training import curves

_RUNS = flags.DEFINE_multi_string("run", [], "LABEL=WORKDIR (repeat).")
_METRIC = flags.DEFINE_string("metric", "recall@10", "the valid/<metric> to plot.")
_OUTPUT = flags.DEFINE_string("output", None, "the PNG to write.", required=True)


def parse_runs(specs) -> dict:
  """{label: workdir} from LABEL=WORKDIR strings; a ValueError names a malformed one."""
  runs = {}
  for spec in specs:
    label, sep, workdir = spec.partition("=")
    if not sep or not label or not workdir:
      raise ValueError(f"--run={spec!r}: expected LABEL=WORKDIR.")
    runs[label] = workdir
  if not runs:
    raise ValueError("no --run given: pass --run=LABEL=WORKDIR at least once.")
  return runs


def main(argv):
  del argv
  print(curves.plot_runs(parse_runs(_RUNS.value), _METRIC.value, _OUTPUT.value))


if __name__ == "__main__":
  app.run(main)
