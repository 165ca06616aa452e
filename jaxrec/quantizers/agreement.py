"""How well codes agree with known labels: normalised mutual information and a report
against label-shuffled baselines. Host-side NumPy.
"""

from __future__ import annotations

import numpy as np


def _entropy(counts: np.ndarray) -> float:
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def normalized_mutual_information(codes, labels, ignore_label: int = -1) -> float:
  """NMI of two partitions with arithmetic-mean normalisation (sklearn's default).

  NMI = I(codes; labels) / ((H(codes) + H(labels)) / 2), in [0, 1]; invariant to
  relabelling either side. Two single-cluster partitions give 1, as in sklearn.

  Args:
    codes: [N] int cluster ids.
    labels: [N] int labels; items whose label is `ignore_label` are left out.
    ignore_label: the label of unlabelled items.

  Returns:
    float NMI (0.0 when no item is labelled).
  """
  codes, labels = np.asarray(codes).reshape(-1), np.asarray(labels).reshape(-1)
  if codes.shape != labels.shape:
    raise ValueError(f"codes {codes.shape} and labels {labels.shape} differ in length.")
  keep = labels != ignore_label
  codes, labels = codes[keep], labels[keep]
  if len(codes) == 0:
    return 0.0
  _, c = np.unique(codes, return_inverse=True)
  _, l = np.unique(labels, return_inverse=True)
  c, l = c.reshape(-1), l.reshape(-1)
  if c.max() == 0 and l.max() == 0:
    return 1.0
  joint = np.zeros((c.max() + 1, l.max() + 1), np.float64)
  np.add.at(joint, (c, l), 1.0)
  h_codes, h_labels = _entropy(joint.sum(1)), _entropy(joint.sum(0))
  h_joint = _entropy(joint.reshape(-1))
  mutual = max(h_codes + h_labels - h_joint, 0.0)
  if mutual <= 0.0:
    return 0.0
  return float(min(mutual / ((h_codes + h_labels) / 2.0), 1.0))


def _join(codes: np.ndarray) -> np.ndarray:
  """[N, L] -> [N] one id per distinct row."""
  return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)


def nmi_report(codes, labels, *, seed: int = 0, num_shuffles: int = 10,
               ignore_label: int = -1) -> dict:
  """NMI of each level and of the 2-level prefix with labels, against shuffled labels.

  Args:
    codes: [N, L] int codes.
    labels: [N] int labels (`ignore_label` items are left out everywhere).
    seed: seed of the label shuffles.
    num_shuffles: shuffles of the labelled items' labels for the chance baseline.
    ignore_label: see `normalized_mutual_information`.

  Returns:
    JSON-ready dict: nmi_per_level [L]; nmi_first (level 0); nmi_prefix (levels 0..1
    joined; level 0 when L = 1); shuffled_first_mean / shuffled_first_max and
    shuffled_prefix_mean / shuffled_prefix_max (over the shuffles); first_level_used
    (distinct level-0 codes over all N items); num_labelled.
  """
  codes = np.asarray(codes)
  codes = codes[:, None] if codes.ndim == 1 else codes
  labels = np.asarray(labels).reshape(-1)
  if codes.shape[0] != labels.shape[0]:
    raise ValueError(f"codes have {codes.shape[0]} rows but labels {labels.shape[0]}.")
  prefix = _join(codes[:, :2])
  first = codes[:, 0]

  def nmi(c, lab):
    return normalized_mutual_information(c, lab, ignore_label)

  rng = np.random.default_rng(seed)
  labelled = np.flatnonzero(labels != ignore_label)
  shuffled_first, shuffled_prefix = [], []
  for _ in range(num_shuffles):
    shuffled = labels.copy()
    shuffled[labelled] = labels[rng.permutation(labelled)]
    shuffled_first.append(nmi(first, shuffled))
    shuffled_prefix.append(nmi(prefix, shuffled))

  def stats(values):
    return (float(np.mean(values)), float(np.max(values))) if values else (0.0, 0.0)

  first_mean, first_max = stats(shuffled_first)
  prefix_mean, prefix_max = stats(shuffled_prefix)
  return {"nmi_per_level": [nmi(codes[:, l], labels) for l in range(codes.shape[1])],
          "nmi_first": nmi(first, labels), "nmi_prefix": nmi(prefix, labels),
          "shuffled_first_mean": first_mean, "shuffled_first_max": first_max,
          "shuffled_prefix_mean": prefix_mean, "shuffled_prefix_max": prefix_max,
          "first_level_used": int(len(np.unique(first))),
          "num_labelled": int(len(labelled))}
