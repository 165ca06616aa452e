"""Semantic IDs from codes: collision handling (TIGER extra level, LETTER Sinkhorn,
nearest unused code) and collision / codebook statistics. Host-side NumPy, deterministic.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.special import logsumexp

from jaxrec.data.errors import DataError

STRATEGIES = ("extra_level", "sinkhorn", "nearest_unused")


def assemble(codes, strategy: str = "extra_level", *, last_residuals=None, last_codebook=None,
             max_rounds: int = 20, sinkhorn_epsilon: float = 0.003,
             sinkhorn_iters: int = 50) -> np.ndarray:
  """Turns codes into IDs that are unique per item.

  Args:
    codes: [n, L] int codes of the n items.
    strategy: "extra_level" (TIGER: always append a level numbering the items that share
      a code tuple 0, 1, 2, ... in item order; its size is the largest collision group),
      "sinkhorn" (LETTER: re-assign the last level of colliding items by a balanced
      Sinkhorn assignment, see `_sinkhorn_round`), or "nearest_unused" (each colliding item
      after the first of its group moves to its nearest last-level code whose full ID is
      unused). The last two append an extra level only if collisions remain.
    last_residuals: [n, d] inputs of the last level (needed by "sinkhorn"/"nearest_unused").
    last_codebook: [K, d] the last level's codebook (same).
    max_rounds: Sinkhorn rounds before falling back to an extra level.
    sinkhorn_epsilon: entropic regularization on distances scaled to [-1, 1] (LETTER: 0.003).
    sinkhorn_iters: Sinkhorn-Knopp iterations per round (LETTER: 50).

  Returns:
    ids: [n, L'] int32 with L' = L or L + 1, unique rows.

  Raises:
    DataError: bad shapes, negative codes, NaN/Inf residuals, unknown strategy.
  """
  codes = _check_codes(codes)
  if strategy not in STRATEGIES:
    raise DataError(f"unknown collision strategy {strategy!r}.", path="strategy",
                    fix=f"use one of {', '.join(STRATEGIES)}.")
  if strategy == "extra_level":
    return append_extra_level(codes)
  residuals, codebook = _check_last_level(codes, last_residuals, last_codebook, strategy)
  if strategy == "sinkhorn":
    ids = codes.copy()
    for round_index in range(max_rounds):
      if not _sinkhorn_round(ids, residuals, codebook, keep_first=round_index > 0,
                             epsilon=sinkhorn_epsilon, iters=sinkhorn_iters):
        break
  else:
    ids = _nearest_unused(codes, residuals, codebook)
  return append_extra_level(ids) if _group_sizes(ids)[1].max() > 1 else ids


def append_extra_level(codes: np.ndarray) -> np.ndarray:
  """[n, L] -> [n, L + 1]: the new column numbers items with equal rows 0, 1, ... in order."""
  inverse, _ = _group_sizes(codes)
  order = np.argsort(inverse, kind="stable")
  sorted_groups = inverse[order]
  starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
  rank_sorted = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
  rank = np.empty_like(rank_sorted)
  rank[order] = rank_sorted
  return np.concatenate([codes, rank[:, None]], axis=1).astype(np.int32)


def collision_stats(ids, codebook_size: Optional[int] = None) -> dict:
  """Collision and per-level codebook statistics of [n, L] IDs (JSON-ready).

  Returns:
    num_items, num_distinct_ids, collision_rate (fraction of items sharing their full ID
    with another item), largest_collision_group (1 = no collision), and levels: a list
    with, per column, used_codes, entropy_bits, perplexity (2**entropy_bits) and, given
    codebook_size, used_fraction.
  """
  ids = _check_codes(ids)
  inverse, sizes = _group_sizes(ids)
  levels = []
  for column in ids.T:
    counts = np.bincount(column)
    p = counts[counts > 0] / len(column)
    entropy = float(-(p * np.log2(p)).sum())
    level = {"used_codes": int((counts > 0).sum()), "entropy_bits": entropy,
             "perplexity": float(2.0 ** entropy)}
    if codebook_size is not None:
      level["used_fraction"] = level["used_codes"] / codebook_size
    levels.append(level)
  return {"num_items": int(len(ids)), "num_distinct_ids": int(len(sizes)),
          "collision_rate": float((sizes[inverse] > 1).mean()),
          "largest_collision_group": int(sizes.max()), "levels": levels}


# ---------------------------------------------------------------- strategies

def _sinkhorn_round(ids, residuals, codebook, *, keep_first, epsilon, iters) -> bool:
  """One LETTER round, in place on ids' last column; False when nothing collides.

  Per prefix (the first L - 1 codes) that has collisions: the colliding items are
  re-assigned jointly by a balanced Sinkhorn plan over the codes that no non-colliding
  item of that prefix holds (our addition: LETTER re-assigns against all K codes), with
  distances scaled to [-1, 1] as in LETTER, rounded by argmax. From the second round on,
  the first item of each remaining group keeps its code (our addition), so every round
  settles at least one item per group and identical residuals still make progress.
  """
  inverse, sizes = _group_sizes(ids)
  colliding = sizes[inverse] > 1
  if not colliding.any():
    return False
  if keep_first:
    first = np.zeros(len(ids), bool)
    first[np.unique(inverse, return_index=True)[1]] = True
    colliding &= ~first
  prefix_inverse = _group_sizes(ids[:, :-1])[0] if ids.shape[1] > 1 else np.zeros(len(ids), int)
  for prefix in np.unique(prefix_inverse[colliding]):
    members = np.flatnonzero(prefix_inverse == prefix)
    movers = members[colliding[members]]
    taken = np.zeros(len(codebook), bool)
    taken[ids[members[~colliding[members]], -1]] = True
    free = np.flatnonzero(~taken)
    if len(free) == 0:
      continue
    cost = _scaled(_sq_dist(residuals[movers], codebook[free]))
    plan = sinkhorn(cost, epsilon, iters)
    ids[movers, -1] = free[np.argmax(plan, axis=1)]
  return True


def sinkhorn(cost: np.ndarray, epsilon: float, iters: int) -> np.ndarray:
  """Entropic OT plan [m, A] with uniform marginals (rows 1/m, columns 1/A), log domain."""
  log_kernel = -cost / epsilon
  m, a = cost.shape
  u, v = np.zeros(m), np.zeros(a)
  for _ in range(iters):
    u = -np.log(m) - logsumexp(log_kernel + v[None, :], axis=1)
    v = -np.log(a) - logsumexp(log_kernel + u[:, None], axis=0)
  return np.exp(log_kernel + u[:, None] + v[None, :])


def _nearest_unused(codes, residuals, codebook) -> np.ndarray:
  """Moves each duplicate (after the first, in item order) to its nearest free code."""
  ids = codes.copy()
  used = {tuple(row) for row in ids.tolist()}
  seen = set()
  for item, row in enumerate(ids.tolist()):
    key = tuple(row)
    if key not in seen:
      seen.add(key)
      continue
    order = np.argsort(_sq_dist(residuals[item:item + 1], codebook)[0], kind="stable")
    for code in order.tolist():
      candidate = key[:-1] + (code,)
      if candidate not in used:
        used.add(candidate)
        seen.add(candidate)
        ids[item, -1] = code
        break
  return ids


# ---------------------------------------------------------------- helpers

def _group_sizes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Inverse [n] into the distinct rows (sorted) and the size [u] of each group."""
  _, inverse, sizes = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
  return inverse.reshape(-1), sizes


def _sq_dist(x: np.ndarray, codebook: np.ndarray) -> np.ndarray:
  return ((x[:, None, :].astype(np.float64) - codebook[None].astype(np.float64)) ** 2).sum(-1)


def _scaled(d: np.ndarray) -> np.ndarray:
  """LETTER's `center_distance_for_constraint`: distances mapped to about [-1, 1]."""
  middle = (d.max() + d.min()) / 2
  return (d - middle) / (d.max() - middle + 1e-5)


def _check_codes(codes) -> np.ndarray:
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
    raise DataError(f"codes must be a non-empty [num_items, num_levels] array, got shape "
                    f"{codes.shape}.", path="codes", fix="pass one row of codes per item.")
  if not np.issubdtype(codes.dtype, np.integer):
    raise DataError(f"codes must be integers, got dtype {codes.dtype}.", path="codes",
                    fix="pass the int32 codes returned by the tokenizer.")
  if codes.min() < 0:
    raise DataError("codes must be non-negative.", path="codes",
                    fix="pass the codes returned by the tokenizer.")
  return codes.astype(np.int64)


def _check_last_level(codes, residuals, codebook, strategy):
  if residuals is None or codebook is None:
    raise DataError(f"strategy {strategy!r} needs last_residuals [n, d] and last_codebook "
                    "[K, d].", path="strategy",
                    fix="pass the tokenizer's last-level residuals and codebook, or use "
                    "strategy='extra_level'.")
  residuals, codebook = np.asarray(residuals, np.float64), np.asarray(codebook, np.float64)
  if residuals.ndim != 2 or residuals.shape[0] != len(codes):
    raise DataError(f"last_residuals must be [{len(codes)}, d], got {residuals.shape}.",
                    path="last_residuals", fix="pass one residual row per item.")
  if codebook.ndim != 2 or codebook.shape[1] != residuals.shape[1]:
    raise DataError(f"last_codebook must be [K, {residuals.shape[1]}], got {codebook.shape}.",
                    path="last_codebook", fix="pass the last level's codebook.")
  if codes[:, -1].max() >= len(codebook):
    raise DataError(f"last-level codes reach {codes[:, -1].max()} but last_codebook has "
                    f"{len(codebook)} codes.", path="last_codebook",
                    fix="pass the codebook that produced the codes.")
  if not (np.isfinite(residuals).all() and np.isfinite(codebook).all()):
    raise DataError("last_residuals or last_codebook contain NaN or Inf.",
                    path="last_residuals", fix="check the tokenizer's training run.")
  return residuals, codebook
