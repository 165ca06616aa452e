"""Known-answer tests for leave-one-out splits and training prefixes."""

import numpy as np
import pytest

from jaxrec.data.dataset import ItemTable, SequentialDataset
from jaxrec.data.errors import DataError
from jaxrec.data import splits


def _dataset(seqs, num_items=6, **kw):
  return SequentialDataset.from_sequences("hand", seqs, ItemTable.empty(num_items), **kw)


def test_leave_one_out_hand_made():
  ds = _dataset([[1, 2, 3, 4], [3, 1, 2], [5, 4, 3, 2, 1, 6]])
  s = splits.leave_one_out(ds)
  assert [list(s.train_sequence(u)) for u in range(3)] == [[1, 2], [3], [5, 4, 3, 2]]
  np.testing.assert_array_equal(s.valid.targets, [3, 1, 1])
  np.testing.assert_array_equal(s.test.targets, [4, 2, 6])
  assert [list(s.valid.history(i)) for i in range(3)] == [[1, 2], [3], [5, 4, 3, 2]]
  assert [list(s.test.history(i)) for i in range(3)] == [[1, 2, 3], [3, 1], [5, 4, 3, 2, 1]]
  np.testing.assert_array_equal(s.test.users, [0, 1, 2])
  # Training counts: item 3 appears twice, item 6 never in training.
  counts = s.train_item_counts()
  assert counts[3] == 2 and counts[6] == 0 and counts[0] == 0
  cold = s.cold_items(1)
  assert cold[1] and cold[6] and not cold[3] and not cold[0]


def test_training_prefixes_every_position_truncated():
  ds = _dataset([[1, 2, 3, 4, 5, 6, 1], [3, 1, 2]])
  s = splits.leave_one_out(ds)
  ex = s.train_examples(max_history=3)
  # User 0 trains on [1,2,3,4,5]: targets 2..5; user 1 trains on [3]: none.
  np.testing.assert_array_equal(ex.targets, [2, 3, 4, 5])
  np.testing.assert_array_equal(ex.lengths, [1, 2, 3, 3])
  np.testing.assert_array_equal(ex.histories, [[1, 0, 0], [1, 2, 0], [1, 2, 3], [2, 3, 4]])
  np.testing.assert_array_equal(ex.users, [0, 0, 0, 0])


def test_padded_histories_keep_last():
  ds = _dataset([[1, 2, 3, 4, 5], [3, 1, 2]])
  test = splits.leave_one_out(ds).test
  np.testing.assert_array_equal(test.padded_histories(np.array([0, 1]), 3),
                                [[2, 3, 4], [3, 1, 0]])
  np.testing.assert_array_equal(test.padded_histories(np.array([1]), 3, keep_last=False),
                                [[3, 1, 0]])


def test_too_short_sequence_names_file_line_and_fix():
  ds = _dataset([[1, 2, 3], [4, 5]], source="data/seq.txt", user_lines=[1, 2],
                user_ids=["a", "b"])
  with pytest.raises(DataError, match=r"user 'b' \(data/seq.txt:2\) has 2 item.*Fix: enable k-core"):
    splits.leave_one_out(ds)


def test_bad_max_history():
  s = splits.leave_one_out(_dataset([[1, 2, 3, 4]]))
  with pytest.raises(DataError, match="max_history"):
    s.train_examples(max_history=0)
