"""Full-ranking evaluation of any recommender on a leave-one-out split, and how jobs run it
(`EvalConfig`, `evaluate_and_save`).

A recommender is a callable `recommend(histories, k) -> top_items`; see `evaluate`.
One that scores by user (e.g. LightGCN) sets a truthy attribute `takes_users` and is
called as `recommend(histories, k, users=users)` with the examples' dataset user rows.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import tqdm

from jaxrec import files
from jaxrec import metrics as metrics_lib
from jaxrec.data.dataset import PAD_ITEM
from jaxrec.data.errors import DataError
from jaxrec.data.splits import EvalExamples, LeaveOneOutSplit

Recommender = Callable[[np.ndarray, int], np.ndarray]
MIN_WIDTH = 8
# Keys of the `evaluate` result that hold per-example arrays (not written to JSON).
ARRAY_KEYS = ("ranks", "users", "targets", "is_cold")


def batch_width(longest: int, max_history: Optional[int] = None) -> int:
  """Smallest power of two >= longest (at least MIN_WIDTH), capped at max_history."""
  width = MIN_WIDTH
  while width < longest:
    width *= 2
  return width if max_history is None else min(width, max_history)


def _check_output(top: np.ndarray, batch: int, k: int, width: int, num_items: int) -> np.ndarray:
  """Validates what the recommender returned for one batch."""
  top = np.asarray(top)
  if top.shape != (batch, k):
    raise ValueError(
        f"recommender returned an array of shape {top.shape} for histories of shape "
        f"({batch}, {width}) and k={k}; expected [batch, k] = ({batch}, {k}) item ids.")
  if top.size and not np.issubdtype(top.dtype, np.integer):
    raise ValueError(f"recommender returned dtype {top.dtype}; expected integer item ids "
                     f"in 1..{num_items}.")
  if top.size and (top.min() < 1 or top.max() > num_items):
    bad = top[(top < 1) | (top > num_items)]
    raise ValueError(
        f"recommender returned item id {int(bad[0])} ({bad.size} out-of-range ids in a "
        f"batch of {batch}); expected ids in 1..{num_items} (0 is padding and may not "
        f"be recommended).")
  return top.astype(np.int64)


def _drop_history(top: np.ndarray, histories: np.ndarray, keep: int,
                  num_items: int) -> np.ndarray:
  """[batch, keep] of `top` [batch, k'] without items of each row's history.

  Rows left with fewer than `keep` ids are padded with 0 (never a target).
  """
  rows = np.arange(len(top), dtype=np.int64)[:, None] * (num_items + 1)
  hist_keys = (histories.astype(np.int64) + rows)[histories != PAD_ITEM]
  drop = np.isin(top + rows, hist_keys)
  order = np.argsort(drop, axis=1, kind="stable")  # kept ids first, order preserved.
  kept = np.take_along_axis(top, order, axis=1)[:, :keep]
  gone = np.take_along_axis(drop, order, axis=1)[:, :keep]
  return np.where(gone, PAD_ITEM, kept)


def rank_examples(recommend: Recommender, examples: EvalExamples, num_items: int,
                  k: int, batch_size: int = 256, max_history: Optional[int] = None,
                  exclude_history: bool = False, pad_batches: bool = True,
                  progress: bool = True, desc: str = "evaluate") -> tuple:
  """Asks the recommender for every example's top-k and finds the target in it.

  Examples are sorted by history length and batched; each batch is padded to
  the smallest power-of-two width (>= MIN_WIDTH) covering its longest history,
  capped at max_history, so only a few static shapes reach the recommender.
  With pad_batches the last batch is filled up to batch_size by repeating its
  final row (the extra answers are dropped), so the batch size is static too.

  With exclude_history the recommender is asked for k + width ids and the items
  of the history it was shown are dropped before keeping the first k. This is
  exact: a history of `width` slots holds at most `width` distinct items, so at
  least k ids survive (fewer only when the catalogue itself is that small; the
  request is capped at num_items). Targets that repeat a history item then
  count as misses.

  A recommender with a truthy `takes_users` attribute is called as
  `recommend(histories, k, users=users)`, users [batch] int64 being the dataset
  user rows (`examples.users`) of the batch, padded like the histories (the last
  row repeated).

  Args:
    recommend: `recommend(histories: [batch, width] int32, k) -> [batch, k] int`
      (with `users=` too if it `takes_users`).
    examples: the held-out examples.
    num_items: ids 1..num_items are valid answers.
    k: list length to score (the largest cutoff).
    batch_size: examples per call.
    max_history: keep only the last max_history history items (None = all).
    exclude_history: drop history items from the recommendations (see above).
    pad_batches: pad the last batch to batch_size (see above).
    progress: show a tqdm progress bar.
    desc: progress bar label.

  Returns:
    (ranks, widths): ranks [n] int64 0-based target rank in the top-k list in
    the order of `examples` (metrics.NOT_FOUND = absent); widths, the sorted
    distinct history widths used.
  """
  k = metrics_lib.check_cutoff(k)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if max_history is not None and max_history < 1:
    raise ValueError(f"max_history must be None or >= 1, got {max_history}")
  n = len(examples)
  ranks = np.full([n], metrics_lib.NOT_FOUND, np.int64)
  lengths = examples.history_lengths
  if max_history is not None:
    lengths = np.minimum(lengths, max_history)
  order = np.argsort(lengths, kind="stable")
  keep = min(k, num_items)
  widths = set()
  takes_users = bool(getattr(recommend, "takes_users", False))
  with tqdm.tqdm(total=n, desc=desc, unit="ex", disable=not progress) as bar:
    for start in range(0, n, batch_size):
      rows = order[start:start + batch_size]
      real = len(rows)
      if pad_batches and real < batch_size:
        rows = np.concatenate([rows, np.full(batch_size - real, rows[-1])])
      width = batch_width(int(lengths[rows].max()), max_history)
      widths.add(width)
      histories = examples.padded_histories(rows, width)
      request = min(k + width, num_items) if exclude_history else keep
      if takes_users:
        answer = recommend(histories, request, users=examples.users[rows].astype(np.int64))
      else:
        answer = recommend(histories, request)
      top = _check_output(answer, len(rows), request, width, num_items)
      if exclude_history:
        top = _drop_history(top, histories, keep, num_items)
      ranks[rows[:real]] = metrics_lib.rank_of_target(top[:real],
                                                      examples.targets[rows[:real]])
      bar.update(real)
  return ranks, sorted(widths)


def _jsonable(result: dict) -> dict:
  return {key: value for key, value in result.items() if key not in ARRAY_KEYS}


def write_json(result: dict, path: str) -> None:
  """Writes the JSON part of an `evaluate` result atomically (parent folders are created)."""
  files.write_json(os.fspath(path), _jsonable(result), indent=2, default=None)


def evaluate(recommend: Recommender, split: LeaveOneOutSplit, which: str = "test",
             ks: Sequence[int] = metrics_lib.DEFAULT_KS, batch_size: int = 256,
             max_history: Optional[int] = None, exclude_history: bool = False,
             cold_start_threshold: int = 5, num_bootstrap: int = 1000, seed: int = 0,
             progress: bool = True, output_path: Optional[str] = None,
             pad_batches: bool = True, max_users: Optional[int] = None) -> dict:
  """Full ranking over all items (no negative sampling) on the valid or test part.

  Args:
    recommend: `recommend(histories, k) -> top_items`; histories: [batch, width]
      int32 item ids, oldest first, 0-padded at the end; top_items: [batch, k]
      int item ids in 1..num_items, best first. If `recommend.takes_users` is
      truthy it is called as `recommend(histories, k, users=users)`, users [batch]
      int64 the dataset user rows of the examples (see `rank_examples`).
    split: the leave-one-out split.
    which: "valid" or "test".
    ks: metric cutoffs; the recommender is asked for max(ks) items.
    batch_size: examples per recommender call.
    max_history: keep the last max_history history items (None = all).
    exclude_history: drop items of the (shown) history from the list; see
      `rank_examples`.
    cold_start_threshold: the "cold_start" slice holds examples whose target has
      at most this many training interactions.
    num_bootstrap: bootstrap resamples for the 95% intervals (0 = none).
    seed: bootstrap seed.
    progress: show a progress bar.
    output_path: if given, the JSON part of the result is written there
      atomically (parent folders are created).
    pad_batches: pad the last batch to batch_size (static shapes).
    max_users: evaluate a fixed random sample of this many examples (drawn with a
      generator seeded by 0, the same every call: periodic validation during
      training); None = all.

  Returns:
    A dict with "split", "dataset", "num_examples", "ks", "exclude_history",
    "max_history", "cold_start_threshold", "num_bootstrap", "batch_widths",
    "seconds", "counts" ({"overall", "cold_start"} example counts) and
    "metrics" ({"overall", "cold_start"} -> name -> {"mean", "ci_low",
    "ci_high", "n"}, names like "recall@10", "ndcg@10", "mrr@10"), plus the
    per-example arrays (not written to JSON), in example order: "ranks" [n]
    int64 (metrics.NOT_FOUND = not in the top max(ks)), "users" [n] int64,
    "targets" [n] int32 and "is_cold" [n] bool.
  """
  started = time.perf_counter()
  ks = sorted({metrics_lib.check_cutoff(k) for k in ks})
  if not ks:
    raise ValueError("ks must name at least one cutoff")
  examples = split.eval_examples(which)
  if max_users is not None and 0 < max_users < len(examples):
    rows = np.sort(np.random.default_rng(0).permutation(len(examples))[:max_users])
    examples = examples.subset(rows)
  ranks, widths = rank_examples(
      recommend, examples, split.num_items, max(ks), batch_size=batch_size,
      max_history=max_history, exclude_history=exclude_history,
      pad_batches=pad_batches, progress=progress, desc=f"evaluate {which}")
  is_cold = split.cold_items(cold_start_threshold)[examples.targets]
  per_example = metrics_lib.per_example_metrics(ranks, ks)
  summary = {
      "overall": metrics_lib.summarize(per_example, None, num_bootstrap, 0.95, seed),
      "cold_start": metrics_lib.summarize(per_example, is_cold, num_bootstrap, 0.95, seed),
  }
  result = {
      "split": which,
      "dataset": split.dataset.name,
      "num_examples": int(len(examples)),
      "num_items": int(split.num_items),
      "ks": ks,
      "exclude_history": bool(exclude_history),
      "max_history": max_history,
      "cold_start_threshold": int(cold_start_threshold),
      "num_bootstrap": int(num_bootstrap),
      "batch_widths": widths,
      "counts": {"overall": int(len(examples)), "cold_start": int(is_cold.sum())},
      "metrics": summary,
      "seconds": time.perf_counter() - started,
      "ranks": ranks,
      "users": examples.users,
      "targets": examples.targets,
      "is_cold": is_cold,
  }
  if output_path is not None:
    write_json(result, output_path)
  return result


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How models are evaluated (full ranking, leave-one-out).

  Attributes:
    splits: which held-out parts to evaluate ("valid", "test").
    ks: metric cutoffs.
    batch_size: users per recommender call.
    max_history: history items shown to the recommender (None = all).
    exclude_history: drop already-seen items from the ranking (off, as the
      papers report; the metrics JSON records the choice).
    cold_start_threshold: targets with at most this many training interactions
      form the cold-start slice.
    num_bootstrap: resamples for the 95% confidence intervals.
  """
  splits: Sequence[str] = ("valid", "test")
  ks: Sequence[int] = (1, 5, 10, 20)
  batch_size: int = 256
  max_history: Optional[int] = None
  exclude_history: bool = False
  cold_start_threshold: int = 5
  num_bootstrap: int = 1000


def evaluate_and_save(recommend: Recommender, split, which: str,
                      eval_config: EvalConfig, workdir: str, max_history: Optional[int],
                      extra: Union[Mapping[str, Any], Callable[[], Mapping[str, Any]]] = (),
                      progress: bool = True, output_dir: Optional[str] = None) -> dict:
  """Evaluates a trained model on one split and writes `<workdir>/eval/<split>_metrics.json`
  (or `<output_dir>/<split>_metrics.json`).

  Runs `evaluation.evaluate` with eval_config's cutoffs, batch size, exclude_history,
  cold-start threshold and bootstrap, keeps the JSON part of the result, adds
  "eval_seconds" and "users_per_second" and then the model's `extra` fields, writes
  the file on process 0 and (with progress) prints the overall recall/ndcg values.
  The per-user ranks go beside it, `<workdir>/eval/<split>_ranks.npz` (`save_ranks`),
  for paired comparisons of runs on the same users (`paired_difference`).

  Args:
    recommend: the model's recommender (see `evaluation.evaluate`).
    split: the leave-one-out split.
    which: "valid" or "test".
    eval_config: how to evaluate (its `splits` are not used here).
    workdir: the run folder.
    max_history: history items shown to the recommender (None = all); the caller
      resolves eval_config.max_history against its model's own limit.
    extra: fields added to the result (model, fingerprint, checkpoint, ...), or a
      function returning them, called after the evaluation (e.g. to read statistics
      the recommender gathered).
    progress: progress bar and the printed line.
    output_dir: where the files go (None: `<workdir>/eval`), e.g. a run's own folder
      when the model lives in the shared feature cache.

  Returns:
    The JSON part of the result with the added fields (what the file holds).
  """
  # JAX only here: the baselines job does not need it.
  import jax  # pylint: disable=g-import-not-at-top
  started = time.perf_counter()
  result = evaluate(
      recommend, split, which, ks=eval_config.ks, batch_size=eval_config.batch_size,
      max_history=max_history, exclude_history=eval_config.exclude_history,
      cold_start_threshold=eval_config.cold_start_threshold,
      num_bootstrap=eval_config.num_bootstrap, progress=progress)
  seconds = time.perf_counter() - started
  arrays = {k: result[k] for k in ARRAY_KEYS}
  result = {k: v for k, v in result.items() if k not in ARRAY_KEYS}
  result.update(eval_seconds=seconds, users_per_second=result["num_examples"] / seconds)
  result.update(extra() if callable(extra) else extra)
  if jax.process_index() == 0:
    out = output_dir or os.path.join(workdir, "eval")
    save_ranks(os.path.join(out, f"{which}_ranks.npz"), arrays)
    write_json(result, os.path.join(out, f"{which}_metrics.json"))
  if progress:
    m = result["metrics"]["overall"]
    print(f"{which}: " + ", ".join(f"{k}={m[k]['mean']:.4f}" for k in sorted(m)
                                   if k.startswith(("recall@", "ndcg@"))))
  return result


def save_ranks(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes an evaluation's per-example arrays (ranks, users, targets, is_cold) atomically."""
  files.write_atomically(path, lambda f: np.savez_compressed(
      f, **{k: np.asarray(arrays[k]) for k in ARRAY_KEYS}))


def load_ranks(path: str) -> dict:
  """The arrays of `save_ranks` (path: the .npz, or the run's `<split>_metrics.json` beside
  it). Raises DataError when the file is missing or lacks a field."""
  if path.endswith("_metrics.json"):
    path = path[:-len("_metrics.json")] + "_ranks.npz"
  if not os.path.isfile(path):
    raise DataError("no per-user ranks for this evaluation", path=path,
                    fix="re-run the evaluation (evaluate_and_save writes <split>_ranks.npz "
                        "beside <split>_metrics.json since 2026-12-07), e.g. tools/evaluate.py.")
  with np.load(path) as data:
    missing = [k for k in ARRAY_KEYS if k not in data]
    if missing:
      raise DataError(f"the ranks file lacks {missing}", path=path,
                      fix="re-run the evaluation to rewrite it.")
    return {k: data[k] for k in ARRAY_KEYS}


def paired_difference(path_a: Union[str, Sequence[str]], path_b: Union[str, Sequence[str]],
                      metric: str = "recall@10", num_resamples: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> dict:
  """`metrics.paired_difference` of saved evaluations (A - B) on the same users.

  Args:
    path_a, path_b: each run's `<split>_ranks.npz` or `<split>_metrics.json`; or equal-length
      lists of them (e.g. one per seed, paired seed by seed): the pairs' per-user values
      are pooled (user-seed pairs resampled).
    metric, num_resamples, seed, confidence: as `metrics.paired_difference`.

  Raises:
    DataError: two paired evaluations are not of the same examples (users and targets in
      the same order: the same dataset, split and evaluation sample), or lists of
      different lengths.
  """
  paths_a = [path_a] if isinstance(path_a, str) else list(path_a)
  paths_b = [path_b] if isinstance(path_b, str) else list(path_b)
  if len(paths_a) != len(paths_b) or not paths_a:
    raise DataError(f"paired evaluations need equal, non-empty lists ({len(paths_a)} vs "
                    f"{len(paths_b)} files)", fix="pair every run with one reference run.")
  ranks_a, ranks_b = [], []
  for pa, pb in zip(paths_a, paths_b):
    a, b = load_ranks(pa), load_ranks(pb)
    if not (np.array_equal(a["users"], b["users"])
            and np.array_equal(a["targets"], b["targets"])):
      raise DataError(f"the two evaluations rank different examples ({len(a['users'])} vs "
                      f"{len(b['users'])} users, or another order)", path=f"{pa} | {pb}",
                      fix="compare runs of the same dataset and split, evaluated on all users.")
    ranks_a.append(a["ranks"])
    ranks_b.append(b["ranks"])
  return metrics_lib.paired_difference(np.concatenate(ranks_a), np.concatenate(ranks_b),
                                       metric, num_resamples, confidence, seed)
