"""The generator job (gin entry points): dataset -> leave-one-out split -> semantic IDs ->
T5 generator trained with `trainer.train`; and the evaluation of its best/latest checkpoint.

The recommender is the trie-constrained beam search (`decoding.beam_search`): the top
`DecodingConfig.top_k` real items per user, best first.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from jaxrec import files
from jaxrec import fingerprints
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.data.splits import leave_one_out
from jaxrec.data import windows as windows_lib
from jaxrec.decoding import DecodingConfig, beam_search, build_trie, trie_stats
from jaxrec.generator import EncoderDecoderModel, T5Config, TokenLayout, make_token_batch
from jaxrec.generator.decoder_only_model import DecoderOnlyModel
from jaxrec.generator.sequence_batch import (decoder_only_columns, make_decoder_only_batch,
                                             make_sequence_token_batch, pack_target_rows)
from jaxrec.generator.sequence_model import ItemEncoderDecoderModel
from jaxrec.evaluation import EvalConfig, evaluate_and_save
from jaxrec.quantizers import modalities as modalities_lib
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


def make_batch_fn(semantic_ids: np.ndarray, layout: TokenLayout, max_history: int,
                  target_levels: Optional[Sequence[int]] = None,
                  encoder_levels: Optional[Sequence[int]] = None) -> trainer_lib.BatchFn:
  """Host data batch (history/length/target/user/weight) -> generator token batch (the
  encoder reads `encoder_levels`, the decoder generates `target_levels`; None = all)."""
  return lambda batch: make_token_batch(batch, semantic_ids, layout, max_history,
                                        target_levels, encoder_levels)


def make_sequence_batch_fn(semantic_ids: np.ndarray, layout: TokenLayout,
                           target_levels: Optional[Sequence[int]] = None,
                           encoder_levels: Optional[Sequence[int]] = None,
                           training_layout: str = "item_encoder") -> trainer_lib.BatchFn:
  """Host window batch (`windows.TrainWindows` rows) -> the per-sequence token batch of
  `training_layout` ("item_encoder", its decoder rows packed to the targets, or
  "decoder_only")."""
  convert = SEQUENCE_BATCHES[training_layout]
  if training_layout != "item_encoder":
    return lambda batch: convert(batch, semantic_ids, layout, target_levels, encoder_levels)

  def packed(batch):
    tokens = convert(batch, semantic_ids, layout, target_levels, encoder_levels)
    offset = jax.process_index() * len(tokens["encoder_input_tokens"])
    most = int(np.max(batch["most_targets"])) if "most_targets" in batch else 0
    return pack_target_rows(tokens, window_offset=offset, min_rows=most)

  return packed


# Generator training layouts: one example per prefix (TIGER as published), or one window
# per user sequence whose every item is a target (causal item encoder + code decoder).
# A decoder-only model over each window's code tokens (t5x's decoder-only model).
TRAINING_LAYOUTS = {"per_example": EncoderDecoderModel, "item_encoder": ItemEncoderDecoderModel,
                    "decoder_only": DecoderOnlyModel}
SEQUENCE_BATCHES = {"item_encoder": make_sequence_token_batch,
                    "decoder_only": make_decoder_only_batch}


def history_tokens(histories: np.ndarray, semantic_ids: np.ndarray, layout: TokenLayout,
                   max_history: int, encoder_levels: Optional[Sequence[int]] = None) -> dict:
  """Evaluation histories [B, W] (0-padded at the end, no users) -> the encoder tokens of
  `make_token_batch` (the user token, if any, is PAD)."""
  histories = np.asarray(histories, np.int32)
  batch = {"history": histories, "length": (histories > 0).sum(1).astype(np.int32),
           "user": np.full(len(histories), -1, np.int32)}
  return make_token_batch(batch, semantic_ids, layout, max_history,
                          encoder_levels=encoder_levels)


def make_beam_recommender_factory(semantic_ids: np.ndarray, layout: TokenLayout,
                                  max_history: int, top_k: int, fallback_item: int = 1,
                                  encoder_levels: Optional[Sequence[int]] = None
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
                                                max_history, encoder_levels)))
      found = items > 0
      recommend.stats["found"] += int(found.sum())
      recommend.stats["total"] += found.size
      return np.where(found, items, fallback_item)[:, :k]
    recommend.stats = {"found": 0, "total": 0}
    return recommend
  return make


def make_recommender_factory(semantic_ids: np.ndarray, layout: TokenLayout, max_history: int,
                             fallback_item: int = 1,
                             target_levels: Optional[Sequence[int]] = None,
                             encoder_levels: Optional[Sequence[int]] = None
                             ) -> trainer_lib.MakeRecommender:
  """`make(predict) -> recommend(histories, k)` from greedy codes (top-1; the model without
  a `DecodingConfig`); the codes are those of `target_levels` (None = all columns).

  The greedy prediction is one item; it fills all k slots. Repeating it scores
  exactly like "one item, then nothing" (a repeated id counts at its first
  position, metrics.rank_of_target), which `evaluation.evaluate` needs because it
  rejects id 0. So Recall@k = Recall@1 for every k.
  """
  lookup = CodeLookup(layout.target(target_levels).select(semantic_ids), fallback_item)

  def make(predict):
    def recommend(histories: np.ndarray, k: int) -> np.ndarray:
      items, exact = lookup(predict(history_tokens(histories, semantic_ids, layout,
                                                   max_history, encoder_levels)))
      recommend.stats["exact"] += int(exact.sum())
      recommend.stats["total"] += len(exact)
      return np.repeat(items[:, None], k, axis=1)
    recommend.stats = {"exact": 0, "total": 0}  # greedy outputs that name an item exactly.
    return recommend
  return make


@dataclasses.dataclass
class GeneratorSetup:
  """Everything built from the configs before training or evaluation.

  `layout` is the full vocabulary layout, `model.layout` its decoder (target) view;
  `target_levels` / `encoder_levels` are the semantic-ID columns the decoder generates
  and the encoder reads; `segments` the table's modality segments.
  """
  split: object
  semantic_ids: np.ndarray
  layout: TokenLayout
  model: EncoderDecoderModel
  fingerprint: str
  batch_fn: Callable
  make_recommender: Callable
  target_levels: Tuple[int, ...] = ()
  encoder_levels: Tuple[int, ...] = ()
  segments: Tuple[modalities_lib.Segment, ...] = ()
  examples: Optional[object] = None  # training rows (None: the per-prefix examples).


def resolve_modalities(segments: Sequence[modalities_lib.Segment],
                       target_modality: Optional[str],
                       encoder_modalities: Optional[Union[str, Sequence[str]]],
                       entry: str) -> tuple:
  """Columns of the decoder target and of the encoder input.

  Args:
    segments: the table's modality segments (`modalities.read`).
    target_modality: the generated segment's name; None = all columns.
    encoder_modalities: names of the segments the encoder reads (a single name is one
      segment); None = all. They are read in the table's column order.
    entry: the gin entry point, for error messages (e.g.
      "generator_job.train_generator").

  Returns:
    (target_levels, encoder_levels, encoder_token_modalities, encoder_names): column
    tuples, the modality index (position in encoder_names) of each encoder column, and
    the encoder segments' names in column order.

  Raises:
    DataError naming the binding: unknown, repeated or no modality names.
  """
  num_levels = segments[-1].end
  if target_modality is None:
    target = tuple(range(num_levels))
  else:
    if not isinstance(target_modality, str):
      raise DataError(f"target_modality must be a modality name or None, got "
                      f"{target_modality!r}", path=f"{entry}.target_modality",
                      fix=f"bind one of {[x.name for x in segments]}.")
    target = modalities_lib.find(segments, target_modality, f"{entry}.target_modality").levels
  if encoder_modalities is None:
    chosen = tuple(segments)
  else:
    binding = f"{entry}.encoder_modalities"
    names = ((encoder_modalities,) if isinstance(encoder_modalities, str)
             else tuple(encoder_modalities))
    if not names or len(set(names)) != len(names) or not all(
        isinstance(n, str) for n in names):
      raise DataError(f"encoder_modalities must be distinct modality names, got "
                      f"{encoder_modalities!r}", path=binding,
                      fix=f"bind a non-empty subset of {[x.name for x in segments]}, or None.")
    found = {modalities_lib.find(segments, n, binding) for n in names}
    chosen = tuple(x for x in segments if x in found)
  encoder = tuple(c for x in chosen for c in x.levels)
  token_modalities = tuple(i for i, x in enumerate(chosen) for _ in x.levels)
  return target, encoder, token_modalities, tuple(x.name for x in chosen)


ENTRY = "generator_job.GeneratorConfig"


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """What the generator is, bound once and passed to training and evaluation alike (t5x binds
  `MODEL = @models.EncoderDecoderModel()` the same way): gin_configs/models/tiger_t5.gin binds
  `GENERATOR = @generator_job.GeneratorConfig()` and gives %GENERATOR to both jobs.

  Attributes:
    model_config: `model_config(vocab_size) -> T5Config` (e.g. T5Config.tiger).
    training_layout: "per_example" (one example per prefix, TIGER's encoder-decoder)
      or "item_encoder" (per sequence: a causal item encoder over each training window
      and a code decoder at every position, every item a target in one pass) or
      "decoder_only" (per sequence: a causal decoder over the window's code tokens,
      the loss at every target item's codes); see docs/generator.md.
    decoding: the recommender's trie beam search (None: greedy top-1).
    constrained_loss: MSCGRec's constrained sequence learning (softmax over the codes
      the trie allows after the target's prefix).
    target_modality: the modality segment (`modalities.json` beside the semantic IDs)
      the decoder generates, e.g. "collab" (MSCGRec); None = all columns. The trie and
      the recommenders use its columns, which must name one item each.
    encoder_modalities: the segments each history item shows the encoder (in column
      order); None = all.
    modality_mask_rate: MSCGRec's modality masking: per training example, the
      probability that one uniformly drawn encoder modality is hidden (PAD); needs two
      or more encoder modalities (else nothing is masked). Never at evaluation.
    position_embeddings: MSCGRec's dual position embeddings in the encoder: the item's
      recency or slot (trainer_config.max_history positions) and the token's position
      inside the item (sets the `T5Config` position fields).
    num_user_buckets: hashed user tokens (TIGER 2000); 0 by default because
      `evaluation.evaluate` passes histories only (see make_recommender_factory).
  """
  model_config: Callable[..., T5Config] = T5Config.tiger
  training_layout: str = "per_example"
  decoding: Optional[DecodingConfig] = DecodingConfig()
  constrained_loss: bool = False
  target_modality: Optional[str] = None
  encoder_modalities: Optional[Sequence[str]] = None
  modality_mask_rate: float = 0.0
  position_embeddings: bool = False
  num_user_buckets: int = 0


def setup(semantic_ids_path: str, dataset: DatasetConfig, trainer_config: trainer_lib.TrainerConfig,
          generator: GeneratorConfig = GeneratorConfig(), entry: str = ENTRY) -> GeneratorSetup:
  """Loads data and IDs and builds the layout, trie, model, batch conversion and recommender.

  The fingerprint (which checkpoints belong to this setup) covers the dataset, the
  T5 config, the layout, the IDs, the constrained loss and the MSCGRec options when
  they are not the defaults (so the defaults keep older runs' fingerprints); not the
  decoding, which only changes evaluation.

  Args: as `train_generator`; entry names the gin binding in error messages.
  """
  g = generator
  _check_generator(g, entry)
  split = leave_one_out(dataset.load())
  ids = load_semantic_ids(semantic_ids_path, split.num_items)
  layout = TokenLayout.for_semantic_ids(ids, num_user_buckets=g.num_user_buckets)
  segments = modalities_lib.read(semantic_ids_path, layout.num_levels)
  target_levels, encoder_levels, token_modalities, encoder_names = resolve_modalities(
      segments, g.target_modality, g.encoder_modalities, entry)
  if g.training_layout == "decoder_only":
    # An item's block in the sequence: the generated columns first, then the others read.
    modality_of = dict(zip(encoder_levels, token_modalities))
    encoder_levels = tuple(decoder_only_columns(target_levels, encoder_levels))
    token_modalities = tuple(modality_of.get(c, len(encoder_names)) for c in encoder_levels)
  target = layout.target(target_levels, f"{entry}.target_modality")
  t5 = g.model_config(layout.vocab_size)
  if g.position_embeddings:
    t5 = dataclasses.replace(
        t5, item_position_embeddings=trainer_config.max_history,
        code_position_embeddings=len(encoder_levels), encoder_tokens_per_item=0,
        encoder_prefix_tokens=1 if g.num_user_buckets else 0)
  trie = None
  if g.decoding is not None or g.constrained_loss:
    trie = _target_trie(target.select(ids), target, g.target_modality, target_levels, entry)
  model = TRAINING_LAYOUTS[g.training_layout].from_config(
      t5, target, trie, g.constrained_loss, g.decoding, g.modality_mask_rate,
      token_modalities, decode_fn=beam_search.beam_search)
  fp = checkpoint_fingerprint(dataset, t5, layout, ids, g, target_levels, encoder_names,
                              encoder_levels)
  popular = int(np.argmax(split.train_item_counts()[1:]) + 1)
  mh = trainer_config.max_history
  if g.decoding is None:
    make = make_recommender_factory(ids, layout, mh, popular, target_levels, encoder_levels)
  else:
    make = make_beam_recommender_factory(ids, layout, mh, g.decoding.top_k, popular,
                                         encoder_levels)
  if g.training_layout == "per_example":
    batch_fn, examples = make_batch_fn(ids, layout, mh, target_levels, encoder_levels), None
  else:
    batch_fn = make_sequence_batch_fn(ids, layout, target_levels, encoder_levels,
                                      g.training_layout)
    examples = windows_lib.split_windows(split, mh)
  return GeneratorSetup(split, ids, layout, model, fp, batch_fn, make, target_levels,
                        encoder_levels, segments, examples)


def _check_generator(g: GeneratorConfig, entry: str) -> None:
  """DataError naming the binding for a bad layout, layout / option pair or mask rate."""
  if g.training_layout not in TRAINING_LAYOUTS:
    raise DataError(f"training_layout={g.training_layout!r} is not one of "
                    f"{sorted(TRAINING_LAYOUTS)}", path=f"{entry}.training_layout",
                    fix="bind 'item_encoder' or 'decoder_only' (per-sequence) or "
                        "'per_example' (TIGER's).")
  if g.training_layout == "decoder_only" and g.position_embeddings:
    raise DataError("position_embeddings (MSCGRec's dual position embeddings) apply to the "
                    "per_example and item_encoder layouts, not to training_layout="
                    "'decoder_only' (its item blocks have relative positions only)",
                    path=f"{entry}.position_embeddings",
                    fix="bind POSITION_EMBEDDINGS = False, or TRAINING_LAYOUT = "
                        "'item_encoder'.")
  rate = g.modality_mask_rate
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
    raise DataError(f"modality_mask_rate must be in [0, 1), got {rate!r}",
                    path=f"{entry}.modality_mask_rate", fix="0 disables modality masking.")


def _target_trie(target_ids: np.ndarray, target, target_modality: Optional[str],
                 target_levels: Sequence[int], entry: str):
  """The trie of the generated columns; DataError naming target_modality when a modality's
  columns do not name one item each."""
  try:
    return build_trie(target_ids, codebook_sizes=target.codebook_sizes)
  except DataError as e:
    if target_modality is None:
      raise
    raise DataError(f"the {target_modality!r} columns {list(target_levels)} do not name "
                    f"one item each ({e})", path=f"{entry}.target_modality",
                    fix="target a segment that ends in its own collision level.") from e


def checkpoint_fingerprint(dataset: DatasetConfig, t5: T5Config, layout: TokenLayout,
                           ids: np.ndarray, g: GeneratorConfig, target_levels, encoder_names,
                           encoder_levels) -> str:
  """Which checkpoints belong to a setup: the dataset, the T5 config, the layout, the IDs,
  and the GeneratorConfig options that change training when they are not the defaults (so
  the defaults keep older runs' checkpoints); not the decoding (evaluation only). Kept in
  its own description (`fingerprints.digest` of it, not `fingerprints.fingerprint` of the
  configs) so every trained checkpoint still resumes."""
  parts = [dataclasses.asdict(dataset), t5.fingerprint_dict(), str(layout),
           fingerprints.sha256_bytes(ids.tobytes())]
  if g.constrained_loss:
    parts.append("constrained_loss")
  if g.target_modality is not None:
    parts.append({"target_modality": g.target_modality, "target_levels": target_levels})
  if g.encoder_modalities is not None:
    parts.append({"encoder_modalities": encoder_names, "encoder_levels": encoder_levels})
  if g.modality_mask_rate:
    parts.append({"modality_mask_rate": float(g.modality_mask_rate)})
  if g.position_embeddings:
    parts.append("position_embeddings")
  if g.training_layout != "per_example":
    parts.append({"training_layout": g.training_layout})
  return fingerprints.digest(parts)


def train_generator(workdir: str, semantic_ids_path: str,
                    dataset: DatasetConfig = DatasetConfig(),
                    generator: GeneratorConfig = GeneratorConfig(),
                    trainer_config: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(),
                    eval_config: EvalConfig = EvalConfig(),
                    operative_config: Optional[Callable[[], str]] = None,
                    progress: bool = True) -> dict:
  """Trains the generator in `workdir` (resuming a run of the same configuration).

  Args:
    workdir: run folder (config.gin, metrics.jsonl, checkpoints/, best/,
      train_summary.json).
    semantic_ids_path: semantic_ids.npy from tools/build_semantic_ids.py.
    dataset: which dataset (split leave-one-out).
    trainer_config: steps, batching, mesh, optimizer, validation.
    generator: the model, layout, decoding, loss and modality options (GeneratorConfig).
    eval_config: cutoffs / batch size / exclude_history of the validation runs
      (bootstrap is off during training).
    operative_config: returns the operative gin config text (tools pass
      `configs.operative_config`); saved as config.gin and checked on resume.
    progress: progress bars and prints.

  Returns:
    The trainer's summary (also written to train_summary.json).
  """
  s = setup(semantic_ids_path, dataset, trainer_config, generator)
  options = dict(ks=tuple(eval_config.ks), batch_size=eval_config.batch_size,
                 exclude_history=eval_config.exclude_history,
                 cold_start_threshold=eval_config.cold_start_threshold)
  summary = trainer_lib.train(
      s.model, s.split, s.batch_fn, trainer_config, workdir, make_recommender=s.make_recommender,
      fingerprint=s.fingerprint, config_text=operative_config() if operative_config else None,
      eval_options=options, progress=progress, examples=s.examples)
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "train_summary.json"), summary)
  return summary


def evaluate_generator(workdir: str, semantic_ids_path: str,
                       dataset: DatasetConfig = DatasetConfig(),
                       generator: GeneratorConfig = GeneratorConfig(),
                       trainer_config: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(),
                       eval_config: EvalConfig = EvalConfig(), checkpoint: str = "best",
                       progress: bool = True) -> dict:
  """Restores the best (or latest) checkpoint and writes `<workdir>/eval/<split>_metrics.json`.

  Args: as `train_generator` (the same bindings), plus checkpoint: "best" (falls
    back to the latest when no validation ran) or "latest".

  Returns:
    {split: the JSON part of `evaluation.evaluate`'s result}.
  """
  s = setup(semantic_ids_path, dataset, trainer_config, generator)
  decoding, target_modality = generator.decoding, generator.target_modality
  tr = trainer_lib.Trainer(s.model, trainer_config, trainer_lib.input_shapes(
      s.split, s.batch_fn, trainer_config, s.examples))
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
      if target_modality is not None:
        fields.update(target_modality=target_modality,
                      target_levels=list(s.target_levels))
      return fields

    results[which] = evaluate_and_save(
        recommend, s.split, which, eval_config, workdir,
        max_history=eval_config.max_history or trainer_config.max_history, extra=details,
        progress=progress)
  return results

