"""NMI known answers (identical, independent, a hand-computed 2x2 case) and the report."""

import math

import numpy as np
import pytest

from jaxrec.quantizers import agreement

nmi = agreement.normalized_mutual_information


def test_identical_partitions_give_one_and_relabelling_does_not_matter():
  labels = np.array([0, 0, 1, 1, 2, 2, 2])
  assert nmi(labels, labels) == pytest.approx(1.0)
  relabelled = np.array([7, 7, 3, 3, 9, 9, 9])
  assert nmi(relabelled, labels) == pytest.approx(1.0)
  codes = np.array([0, 1, 1, 0, 2, 2, 0])
  assert nmi(codes, labels) == pytest.approx(nmi(codes * 5 + 11, labels[::1] + 4))
  assert nmi(codes, labels) == pytest.approx(nmi(labels, codes))


def test_independent_partitions_give_about_zero():
  rng = np.random.default_rng(0)
  codes, labels = rng.integers(0, 4, 20000), rng.integers(0, 4, 20000)
  assert nmi(codes, labels) < 0.005
  # Exactly independent: every code meets every label equally often.
  assert nmi(np.repeat([0, 1], 4), np.tile([0, 1, 2, 3], 2)) == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_two_by_two():
  codes, labels = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
  # H(codes) = ln 2; H(labels) = -(1/4 ln 1/4 + 3/4 ln 3/4); H(joint) = 1.5 ln 2.
  h_c = math.log(2)
  h_l = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
  mutual = h_c + h_l - 1.5 * math.log(2)
  assert nmi(codes, labels) == pytest.approx(mutual / ((h_c + h_l) / 2), abs=1e-12)
  assert nmi(codes, labels) == pytest.approx(0.343711, abs=1e-6)


def test_ignored_labels_and_degenerate_partitions():
  codes = np.array([0, 0, 1, 1, 5, 6])
  labels = np.array([3, 3, 4, 4, -1, -1])
  assert nmi(codes, labels) == pytest.approx(1.0)
  assert nmi(np.zeros(4), np.zeros(4)) == 1.0       # as sklearn
  assert nmi(np.zeros(4), np.array([0, 1, 0, 1])) == 0.0
  assert nmi(codes, np.full(6, -1)) == 0.0
  with pytest.raises(ValueError, match="length"):
    nmi(codes, labels[:3])


def test_report_against_shuffled_labels():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, 400)
  codes = np.stack([labels, rng.integers(0, 3, 400), rng.integers(0, 3, 400)], axis=1)
  report = agreement.nmi_report(codes, labels, seed=0, num_shuffles=5)
  assert report["nmi_first"] == pytest.approx(1.0)
  assert len(report["nmi_per_level"]) == 3
  assert report["nmi_per_level"][1] < 0.05
  assert report["shuffled_first_max"] < 0.05
  assert report["shuffled_first_mean"] <= report["shuffled_first_max"]
  assert report["first_level_used"] == 4 and report["num_labelled"] == 400
  # The prefix joins levels 0 and 1: 12 groups, each inside one label.
  joined = codes[:, 0] * 3 + codes[:, 1]
  assert report["nmi_prefix"] == pytest.approx(nmi(joined, labels))
  assert report["nmi_prefix"] < report["nmi_first"]
  assert agreement.nmi_report(codes, labels, seed=0, num_shuffles=5) == report
  single = agreement.nmi_report(codes[:, 0], labels, num_shuffles=2)
  assert single["nmi_prefix"] == single["nmi_first"]
