"""The validation-curve plot reads the eval entries of metrics.jsonl."""

import json
import os

from jaxrec.training import curves


def test_validation_curve_points_and_png(tmp_path):
  entries = [{"step": 0, "event": "start", "time": 100.0},
             {"step": 10, "loss": 1.0, "time": 130.0},
             {"step": 10, "event": "eval", "valid/ndcg@10": 0.1, "time": 160.0},
             {"step": 20, "event": "eval", "valid/ndcg@10": 0.3, "time": 220.0}]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(e) + "\n" for e in entries))
  assert curves.eval_points(str(tmp_path / "metrics.jsonl"), "ndcg@10") == [
      (10, 1.0, 0.1), (20, 2.0, 0.3)]
  path = curves.plot_validation_curve(str(tmp_path))
  assert path == os.path.join(tmp_path, "valid_curve.png") and os.path.getsize(path) > 1000
  assert curves.plot_validation_curve(str(tmp_path / "missing")) is None
