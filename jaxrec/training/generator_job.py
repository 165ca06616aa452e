"""The generator job (gin entry points): dataset -> leave-one-out split -> semantic IDs ->
T5 generator trained with `trainer.train`; and the evaluation of its best/latest checkpoint.

The recommender is the trie-constrained beam search (`decoding.beam_search`): the top
`DecodingConfig.top_k` real items per user, best first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, Optional

import jax
import numpy as np

from jaxrec import files
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.data.splits import leave_one_out
from jaxrec.decoding import DecodingConfig, build_trie, trie_stats
from jaxrec.generator import EncoderDecoderModel, T5Config, TokenLayout, make_token_batch
from jaxrec.pipeline import EvalConfig, evaluate_and_save
from jaxrec.training import trainer as trainer_lib


def load_semantic_ids(path: str, num_items: int) -> np.ndarray:
  """semantic_ids.npy [num_items, L] (row r = item r + 1) -> [num_items + 1, L] int32, row 0 = 0.

  Raises:
    DataError: missing file, wrong rank or a row count other than the catalog's.
  """
  if not os.path.isfile(path):
    raise DataError("semantic IDs not found", path=path,
                    fix="run tools/build_semantic_ids.py first and bind SEMANTIC_IDS to "
                        "its <workdir>/semantic_ids.npy.")
  ids = np.load(path, allow_pickle=False)
  if ids.ndim != 2 or ids.shape[0] != num_items or not np.issubdtype(ids.dtype, np.integer):
    raise DataError(f"semantic IDs have shape {ids.shape} ({ids.dtype}) but the dataset has "
                    f"{num_items} items (expected [num_items, L] integers, row r = item r + 1)",
                    path=path, fix="build the semantic IDs from this dataset's item embeddings.")
  if ids.min() < 0:
    raise DataError("semantic IDs hold negative codes", path=path,
                    fix="rebuild them with tools/build_semantic_ids.py.")
  return np.concatenate([np.zeros((1, ids.shape[1]), ids.dtype), ids]).astype(np.int32)


class CodeLookup:
  """Generated codes [B, L] -> item ids [B]: the exact item, else the longest matching prefix.

  A code sequence that names no item (possible with unconstrained decoding, e.g. an
  unused collision code) maps to the smallest item id sharing its longest prefix;
  with no shared prefix at all, to `fallback_item`.

  Args:
    semantic_ids: [num_items + 1, L] int; row 0 is padding.
    fallback_item: the answer when not even the first code matches an item.
  """

  def __init__(self, semantic_ids: np.ndarray, fallback_item: int = 1):
    ids = np.asarray(semantic_ids)[1:]
    self.num_levels = ids.shape[1]
    self.fallback_item = int(fallback_item)
    self.prefixes = []
    for depth in range(1, self.num_levels + 1):
      table = {}
      for item, row in enumerate(ids.tolist(), start=1):
        table.setdefault(tuple(row[:depth]), item)
      self.prefixes.append(table)

  def __call__(self, codes: np.ndarray) -> tuple:
    """codes: [B, L] int -> (items [B] int64 in 1..num_items, exact [B] bool)."""
    codes = np.asarray(codes)
    items = np.full(len(codes), self.fallback_item, np.int64)
    exact = np.zeros(len(codes), bool)
    for b, row in enumerate(codes.tolist()):
      for depth in range(self.num_levels, 0, -1):
        item = self.prefixes[depth - 1].get(tuple(row[:depth]))
        if item is not None:
          items[b], exact[b] = item, depth == self.num_levels
          break
    return items, exact


def make_batch_fn(semantic_ids: np.ndarray, layout: TokenLayout,
                  max_history: int) -> trainer_lib.BatchFn:
  """Host data batch (history/length/target/user/weight) -> generator token batch."""
  return lambda batch: make_token_batch(batch, semantic_ids, layout, max_history)


def history_tokens(histories: np.ndarray, semantic_ids: np.ndarray, layout: TokenLayout,
                   max_history: int) -> dict:
  """Evaluation histories [B, W] (0-padded at the end, no users) -> the encoder tokens of
  `make_token_batch` (the user token, if any, is PAD)."""
  histories = np.asarray(histories, np.int32)
  batch = {"history": histories, "length": (histories > 0).sum(1).astype(np.int32),
           "user": np.full(len(histories), -1, np.int32)}
  return make_token_batch(batch, semantic_ids, layout, max_history)


def make_beam_recommender_factory(semantic_ids: np.ndarray, layout: TokenLayout,
                                  max_history: int, top_k: int, fallback_item: int = 1
                                  ) -> trainer_lib.MakeRecommender:
  """`make(predict) -> recommend(histories, k)` from beam-searched items [B, top_k].

  Slots the search left empty (0: fewer than top_k items reachable, only possible
  with tiny catalogs) hold `fallback_item`. Asking for k > top_k is an error (raise
  DecodingConfig.top_k). Users are not passed by `evaluation.evaluate`: with user
  buckets the user token is PAD at evaluation.
  """

  def make(predict):
    def recommend(histories: np.ndarray, k: int) -> np.ndarray:
      if k > top_k:
        raise DataError(f"the evaluation asks for {k} items per user but the beam search "
                        f"returns top_k={top_k}.",
                        fix=f"bind DecodingConfig.top_k (and beam_size) to at least {k}, or "
                            "lower the largest cutoff in EvalConfig.ks (exclude_history asks "
                            "for k + history width).")
      items = np.asarray(predict(history_tokens(histories, semantic_ids, layout,
                                                max_history)))
      found = items > 0
      recommend.stats["found"] += int(found.sum())
      recommend.stats["total"] += found.size
      return np.where(found, items, fallback_item)[:, :k]
    recommend.stats = {"found": 0, "total": 0}
    return recommend
  return make


def make_recommender_factory(semantic_ids: np.ndarray, layout: TokenLayout, max_history: int,
                             fallback_item: int = 1) -> trainer_lib.MakeRecommender:
  """`make(predict) -> recommend(histories, k)` from greedy codes (top-1; the model without
  a `DecodingConfig`).

  The greedy prediction is one item; it fills all k slots. Repeating it scores
  exactly like "one item, then nothing" (a repeated id counts at its first
  position, metrics.rank_of_target), which `evaluation.evaluate` needs because it
  rejects id 0. So Recall@k = Recall@1 for every k.
  """
  lookup = CodeLookup(semantic_ids, fallback_item)

  def make(predict):
    def recommend(histories: np.ndarray, k: int) -> np.ndarray:
      items, exact = lookup(predict(history_tokens(histories, semantic_ids, layout,
                                                   max_history)))
      recommend.stats["exact"] += int(exact.sum())
      recommend.stats["total"] += len(exact)
      return np.repeat(items[:, None], k, axis=1)
    recommend.stats = {"exact": 0, "total": 0}  # greedy outputs that name an item exactly.
    return recommend
  return make


@dataclasses.dataclass
class GeneratorSetup:
  """Everything built from the configs before training or evaluation."""
  split: object
  semantic_ids: np.ndarray
  layout: TokenLayout
  model: EncoderDecoderModel
  fingerprint: str
  batch_fn: Callable
  make_recommender: Callable


def setup(semantic_ids_path: str, dataset: DatasetConfig, trainer_config: trainer_lib.TrainerConfig,
          model_config: Callable[..., T5Config], num_user_buckets: int = 0,
          decoding: Optional[DecodingConfig] = DecodingConfig(),
          constrained_loss: bool = False) -> GeneratorSetup:
  """Loads data and IDs and builds the layout, trie, model, batch conversion and recommender.

  The fingerprint (which checkpoints belong to this setup) covers the dataset, the
  T5 config, the layout, the IDs and the constrained loss; not the decoding, which
  only changes evaluation.
  """
  split = leave_one_out(dataset.load())
  ids = load_semantic_ids(semantic_ids_path, split.num_items)
  layout = TokenLayout.for_semantic_ids(ids, num_user_buckets=num_user_buckets)
  t5 = model_config(layout.vocab_size)
  trie = build_trie(ids, codebook_sizes=layout.codebook_sizes) if (
      decoding is not None or constrained_loss) else None
  model = EncoderDecoderModel.from_config(t5, layout, trie, constrained_loss, decoding)
  parts = [dataclasses.asdict(dataset), dataclasses.asdict(t5), str(layout),
           hashlib.sha256(ids.tobytes()).hexdigest()]
  if constrained_loss:
    parts.append("constrained_loss")
  blob = json.dumps(parts, sort_keys=True, default=str)
  fp = hashlib.sha256(blob.encode()).hexdigest()[:16]
  popular = int(np.argmax(split.train_item_counts()[1:]) + 1)
  mh = trainer_config.max_history
  if decoding is None:
    make = make_recommender_factory(ids, layout, mh, fallback_item=popular)
  else:
    make = make_beam_recommender_factory(ids, layout, mh, decoding.top_k, popular)
  return GeneratorSetup(split, ids, layout, model, fp, make_batch_fn(ids, layout, mh), make)


def train_generator(workdir: str, semantic_ids_path: str,
                    dataset: DatasetConfig = DatasetConfig(),
                    trainer_config: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(),
                    model_config: Callable[..., T5Config] = T5Config.tiger,
                    eval_config: EvalConfig = EvalConfig(), num_user_buckets: int = 0,
                    operative_config: Optional[Callable[[], str]] = None,
                    progress: bool = True,
                    decoding: Optional[DecodingConfig] = DecodingConfig(),
                    constrained_loss: bool = False) -> dict:
  """Trains the generator in `workdir` (resuming a run of the same configuration).

  Args:
    workdir: run folder (config.gin, metrics.jsonl, checkpoints/, best/,
      train_summary.json).
    semantic_ids_path: semantic_ids.npy from tools/build_semantic_ids.py.
    dataset: which dataset (split leave-one-out).
    trainer_config: steps, batching, mesh, optimizer, validation.
    model_config: `model_config(vocab_size) -> T5Config` (e.g. T5Config.tiger).
    eval_config: cutoffs / batch size / exclude_history of the validation runs
      (bootstrap is off during training).
    num_user_buckets: hashed user tokens (TIGER 2000); 0 by default because
      `evaluation.evaluate` passes histories only (see make_recommender_factory).
    operative_config: returns the operative gin config text (tools pass
      `configs.operative_config`); saved as config.gin and checked on resume.
    progress: progress bars and prints.
    decoding: the validation recommender's beam search (None: greedy top-1).
    constrained_loss: MSCGRec's constrained sequence learning (softmax over the codes
      the trie allows after the target's prefix).

  Returns:
    The trainer's summary (also written to train_summary.json).
  """
  s = setup(semantic_ids_path, dataset, trainer_config, model_config, num_user_buckets,
            decoding, constrained_loss)
  options = dict(ks=tuple(eval_config.ks), batch_size=eval_config.batch_size,
                 exclude_history=eval_config.exclude_history,
                 cold_start_threshold=eval_config.cold_start_threshold)
  summary = trainer_lib.train(
      s.model, s.split, s.batch_fn, trainer_config, workdir, make_recommender=s.make_recommender,
      fingerprint=s.fingerprint, config_text=operative_config() if operative_config else None,
      eval_options=options, progress=progress)
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "train_summary.json"), summary)
  return summary


def evaluate_generator(workdir: str, semantic_ids_path: str,
                       dataset: DatasetConfig = DatasetConfig(),
                       trainer_config: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(),
                       model_config: Callable[..., T5Config] = T5Config.tiger,
                       eval_config: EvalConfig = EvalConfig(), num_user_buckets: int = 0,
                       checkpoint: str = "best", progress: bool = True,
                       decoding: Optional[DecodingConfig] = DecodingConfig(),
                       constrained_loss: bool = False) -> dict:
  """Restores the best (or latest) checkpoint and writes `<workdir>/eval/<split>_metrics.json`.

  Args: as `train_generator` (the same bindings), plus checkpoint: "best" (falls
    back to the latest when no validation ran) or "latest".

  Returns:
    {split: the JSON part of `evaluation.evaluate`'s result}.
  """
  s = setup(semantic_ids_path, dataset, trainer_config, model_config, num_user_buckets,
            decoding, constrained_loss)
  tr = trainer_lib.Trainer(s.model, trainer_config, trainer_lib.input_shapes(
      s.split, s.batch_fn, trainer_config))
  fp = trainer_lib.trajectory_fingerprint(trainer_config, s.fingerprint)
  state, meta = trainer_lib.restore_state(tr, workdir, fp, checkpoint)
  results = {}
  for which in eval_config.splits:
    recommend = tr.recommender(state, s.make_recommender)

    def details(stats=recommend.stats) -> dict:
      fields = dict(model="generator", fingerprint=fp, checkpoint_step=int(state.step),
                    checkpoint=checkpoint, best_valid=meta.get("value"))
      if decoding is None:
        fields.update(decoding="greedy top-1 (repeated over k)",
                      exact_code_match_rate=stats["exact"] / max(stats["total"], 1))
      else:
        fields.update(decoding=dict(dataclasses.asdict(decoding), method="trie beam search"),
                      found_rate=stats["found"] / max(stats["total"], 1),
                      trie=trie_stats(s.model.trie))
      return fields

    results[which] = evaluate_and_save(
        recommend, s.split, which, eval_config, workdir,
        max_history=eval_config.max_history or trainer_config.max_history, extra=details,
        progress=progress)
  return results

