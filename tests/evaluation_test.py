"""The evaluation harness on a hand-made leave-one-out split."""

import json

import numpy as np
import pytest

from jaxrec import evaluation, metrics
from jaxrec.data.dataset import ItemTable, SequentialDataset
from jaxrec.data.errors import DataError
from jaxrec.data.splits import leave_one_out

NUM_ITEMS = 10
# Test targets 4, 6, 7, 10; test histories [1,2,3], [2,3,4,5], [5,6], [2,1,9].
# Training counts: item 1 -> 2, 2 -> 3, 3/4/5 -> 1, the rest 0.
SEQUENCES = [[1, 2, 3, 4], [2, 3, 4, 5, 6], [5, 6, 7], [2, 1, 9, 10]]


@pytest.fixture
def split():
  dataset = SequentialDataset.from_sequences("tiny", SEQUENCES, ItemTable.empty(NUM_ITEMS))
  return leave_one_out(dataset)


def fixed(order, calls=None):
  """A recommender that returns the same list for everyone (records its calls)."""
  order = np.asarray(order)

  def recommend(histories, k):
    if calls is not None:
      calls.append((histories.shape, k, histories.copy()))
    return np.tile(order[:k], (len(histories), 1))
  return recommend


def oracle(split, which="test"):
  """Knows each user's held-out target from the full history it is shown."""
  ex = split.eval_examples(which)
  answer = {tuple(ex.history(i)): int(ex.targets[i]) for i in range(len(ex))}

  def recommend(histories, k):
    out = []
    for row in histories:
      target = answer[tuple(int(x) for x in row if x)]
      out.append([target] + [i for i in range(1, NUM_ITEMS + 1) if i != target][:k - 1])
    return np.array(out)
  return recommend


def run(recommend, split, **kwargs):
  kwargs.setdefault("progress", False)
  kwargs.setdefault("num_bootstrap", 100)
  return evaluation.evaluate(recommend, split, **kwargs)


def test_batch_width_powers_of_two():
  assert [evaluation.batch_width(n) for n in (0, 1, 8, 9, 16, 17, 100)] == [
      8, 8, 8, 16, 16, 32, 128]
  assert evaluation.batch_width(100, max_history=50) == 50
  assert evaluation.batch_width(3, max_history=4) == 4


@pytest.mark.parametrize("which", ["valid", "test"])
def test_oracle_gets_everything_right(split, which):
  result = run(oracle(split, which), split, which=which)
  assert result["split"] == which and result["num_examples"] == 4
  for name, value in result["metrics"]["overall"].items():
    assert value["mean"] == 1.0, name
    assert value["ci_low"] == value["ci_high"] == 1.0
  np.testing.assert_array_equal(result["ranks"], 0)


def test_fixed_list_hand_computed(split):
  result = run(fixed([6, 4, 7, 1, 2, 3, 5, 8, 9, 10]), split, ks=(1, 2, 3))
  # Targets 4, 6, 7, 10 sit at ranks 1, 0, 2, absent (in user order).
  np.testing.assert_array_equal(result["ranks"], [1, 0, 2, metrics.NOT_FOUND])
  overall = result["metrics"]["overall"]
  assert overall["recall@1"]["mean"] == pytest.approx(0.25)
  assert overall["recall@2"]["mean"] == pytest.approx(0.5)
  assert overall["recall@3"]["mean"] == pytest.approx(0.75)
  assert overall["ndcg@3"]["mean"] == pytest.approx((1 / np.log2(3) + 1 + 0.5) / 4)
  assert overall["mrr@3"]["mean"] == pytest.approx((0.5 + 1 + 1 / 3) / 4)
  assert overall["mrr@1"]["n"] == 4
  assert result["ks"] == [1, 2, 3]


def test_exclude_history_drops_seen_items(split):
  calls = []
  order = [2, 4, 6, 7, 1, 3, 5, 8, 9, 10]
  plain = run(fixed(order), split, ks=(1,))
  assert plain["metrics"]["overall"]["recall@1"]["mean"] == 0.0
  result = run(fixed(order, calls), split, ks=(1,), exclude_history=True)
  # u0 [1,2,3] -> 4 (hit), u1 [2,3,4,5] -> 6 (hit), u2 [5,6] -> 2, u3 [2,1,9] -> 4.
  np.testing.assert_array_equal(result["ranks"], [0, 0, metrics.NOT_FOUND, metrics.NOT_FOUND])
  assert result["metrics"]["overall"]["recall@1"]["mean"] == 0.5
  assert result["exclude_history"] is True
  assert {k for _, k, _ in calls} == {1 + 8}  # k + width.


def test_exclude_history_request_capped_at_catalogue(split):
  calls = []
  result = run(fixed(np.arange(1, NUM_ITEMS + 1), calls), split, ks=(5,),
               exclude_history=True)
  assert {k for _, k, _ in calls} == {NUM_ITEMS}
  # u0 [1,2,3] -> 4,5,6,7,8: target 4 at rank 0; u2 [5,6] -> 1,2,3,4,7: 7 at 4.
  np.testing.assert_array_equal(result["ranks"][[0, 2]], [0, 4])


def test_cold_start_slice(split):
  result = run(fixed([6, 4, 7, 1, 2]), split, ks=(1,), cold_start_threshold=0)
  # Cold (0 training interactions) targets: 6, 7, 10 -> users 1, 2, 3.
  np.testing.assert_array_equal(result["is_cold"], [False, True, True, True])
  assert result["counts"] == {"overall": 4, "cold_start": 3}
  assert result["metrics"]["cold_start"]["recall@1"]["mean"] == pytest.approx(1 / 3)
  assert result["metrics"]["cold_start"]["recall@1"]["n"] == 3
  warm_only = run(fixed([6, 4, 7, 1, 2]), split, ks=(1,), cold_start_threshold=-1)
  assert warm_only["counts"]["cold_start"] == 0
  assert warm_only["metrics"]["cold_start"]["recall@1"]["mean"] is None


def test_static_shapes_and_max_history():
  sequences = [list(range(1, n + 1)) for n in (4, 5, 12, 30, 3)]
  split = leave_one_out(SequentialDataset.from_sequences("s", sequences, ItemTable.empty(40)))
  calls = []
  result = run(fixed(np.arange(1, 41), calls), split, ks=(1,), batch_size=2)
  # Test history lengths 3, 4, 11, 29, 2 -> batches {2,3}, {4,11}, {29} padded.
  assert [shape for shape, _, _ in calls] == [(2, 8), (2, 16), (2, 32)]
  assert result["batch_widths"] == [8, 16, 32]
  calls.clear()
  run(fixed(np.arange(1, 41), calls), split, ks=(1,), batch_size=8, max_history=4)
  (shape, _, histories), = calls
  assert shape == (8, 4)
  assert [list(h) for h in histories[:5]] == [
      [1, 2, 0, 0], [1, 2, 3, 0], [1, 2, 3, 4], [8, 9, 10, 11], [26, 27, 28, 29]]


@pytest.mark.parametrize("bad, message", [
    (lambda h, k: np.ones([len(h), k + 1], np.int64), r"shape \(256, 4\).*expected"),
    (lambda h, k: np.zeros([len(h), k], np.int64), r"item id 0.*1\.\.10"),
    (lambda h, k: np.full([len(h), k], 11), r"item id 11.*1\.\.10"),
    (lambda h, k: np.ones([len(h), k], np.float32), "integer item ids"),
])
def test_bad_recommender_output_raises(split, bad, message):
  with pytest.raises(ValueError, match=message):
    run(bad, split, ks=(1, 3))


def test_bad_arguments_raise(split):
  with pytest.raises(ValueError, match="positive integer"):
    run(fixed([1]), split, ks=(0, 1))
  with pytest.raises(ValueError, match="split"):
    run(fixed([1]), split, which="train")


def test_json_written_atomically(split, tmp_path):
  path = tmp_path / "runs" / "eval" / "result.json"
  result = run(fixed([6, 4, 7, 1, 2]), split, ks=(1, 5), output_path=str(path))
  assert path.exists() and not (tmp_path / "runs" / "eval" / "result.json.tmp").exists()
  saved = json.loads(path.read_text())
  assert "ranks" not in saved and "users" not in saved
  assert saved["metrics"] == result["metrics"]
  assert saved["counts"]["overall"] == 4 and saved["split"] == "test"
  assert saved["exclude_history"] is False and saved["seconds"] >= 0


class _ByUser:
  """Scores by user: the held-out target of each user row first (records its calls)."""

  def __init__(self, targets, takes_users=True):
    self.targets = np.asarray(targets)
    self.takes_users = takes_users
    self.calls = []

  def __call__(self, histories, k, users=None):
    self.calls.append((histories.copy(), users))
    if users is None:
      return np.tile(np.arange(1, k + 1), (len(histories), 1))
    out = [[t] + [i for i in range(1, NUM_ITEMS + 1) if i != t][:k - 1]
           for t in self.targets[users]]
    return np.array(out)


@pytest.mark.parametrize("which", ["valid", "test"])
def test_takes_users_gets_user_rows(split, which):
  ex = split.eval_examples(which)
  rec = _ByUser(ex.targets)
  result = run(rec, split, which=which, batch_size=3)
  np.testing.assert_array_equal(result["ranks"], 0)  # Every user's target found first.
  # Batches of 3 sorted by history length; the last batch (1 real row) padded by repetition.
  (h1, u1), (h2, u2) = rec.calls
  assert u1.dtype == np.int64 and u1.shape == (3,) and u2.shape == (3,)
  assert u2[1] == u2[2] == u2[0]
  users = np.concatenate([u1, u2[:1]])
  assert sorted(users) == [0, 1, 2, 3]
  for hist, user_rows in ((h1, u1), (h2, u2)):  # users line up with their histories.
    for row, user in zip(hist, user_rows):
      np.testing.assert_array_equal(row[row > 0], ex.history(int(user)))


def test_falsy_takes_users_keeps_histories_only_call(split):
  rec = _ByUser(split.test.targets, takes_users=False)
  run(rec, split, ks=(2,))
  assert all(users is None for _, users in rec.calls)


def test_saved_ranks_give_the_paired_difference_of_two_runs(split, tmp_path):
  """evaluate_and_save writes <split>_ranks.npz beside the metrics; two runs on the same
  users compare per user (oracle vs a fixed list: ranks 0 vs [1, 0, 2, absent])."""
  config = evaluation.EvalConfig(ks=(1, 3), num_bootstrap=50)
  for name, rec in (("oracle", oracle(split)), ("fixed", fixed([6, 4, 7, 1, 2, 3, 5, 8, 9, 10]))):
    evaluation.evaluate_and_save(rec, split, "test", config, str(tmp_path / name), None,
                                 progress=False)
  saved = evaluation.load_ranks(str(tmp_path / "fixed" / "eval" / "test_metrics.json"))
  np.testing.assert_array_equal(saved["ranks"], [1, 0, 2, metrics.NOT_FOUND])
  assert "ranks" not in json.load(open(tmp_path / "fixed" / "eval" / "test_metrics.json"))
  out = evaluation.paired_difference(str(tmp_path / "oracle" / "eval" / "test_ranks.npz"),
                                     str(tmp_path / "fixed" / "eval" / "test_metrics.json"),
                                     "recall@1", num_resamples=100)
  assert (out["a"], out["b"], out["diff"], out["n"]) == (1.0, 0.25, 0.75, 4)
  # Another split ranks other examples: refused, not compared.
  evaluation.evaluate_and_save(oracle(split, "valid"), split, "valid", config,
                               str(tmp_path / "oracle"), None, progress=False)
  with pytest.raises(DataError, match="different examples"):
    evaluation.paired_difference(str(tmp_path / "oracle" / "eval" / "valid_ranks.npz"),
                                 str(tmp_path / "fixed" / "eval" / "test_ranks.npz"))
  with pytest.raises(DataError, match="no per-user ranks"):
    evaluation.load_ranks(str(tmp_path / "nothing_metrics.json"))
