"""Host-side conversion of per-sequence window batches (`data.windows`) to the token arrays
of the per-sequence models: `ItemEncoderDecoderModel` (the encoder reads the window's items
but the last, the decoder at position t generates item t + 1, weighted when it is one of
the window's targets) and `DecoderOnlyModel` (the window's code tokens as one sequence).

`pack_target_rows` keeps only the decoder rows that are targets (a tail window trains one
target in max_history positions; bucket padding adds more): the item encoder still runs
over whole windows, the code decoder only over the packed rows.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np

from jaxrec.data.errors import DataError
from jaxrec.generator.errors import ModelConfigError
from jaxrec.generator.vocab import (BOS_ID, PAD_ID, TargetLayout, TokenLayout, _check_items,
                                    check_levels)


def _windows(batch: Mapping[str, np.ndarray], semantic_ids: np.ndarray,
             layout: Union[TokenLayout, TargetLayout], target_levels, encoder_levels,
             entry: str) -> tuple:
  """Checked window fields: (layout, sids, history [B, W], target columns, encoder
  columns, item tokens [B, W, L] (PAD for padding items), row weights [B, W - 1] (the
  batch weight where window position t + 1 is a target, else 0))."""
  if isinstance(layout, TargetLayout):
    target_levels = layout.levels if target_levels is None else target_levels
    layout = layout.layout
  target_cols = list(check_levels(target_levels, layout.num_levels, f"{entry}.target_levels"))
  encoder_cols = list(check_levels(encoder_levels, layout.num_levels,
                                   f"{entry}.encoder_levels"))
  sids = layout.check_semantic_ids(semantic_ids)
  if "first_target" not in batch:
    raise DataError("the per-sequence generator needs window batches (with "
                    f"'first_target'), got fields {sorted(batch)}.",
                    fix="train on windows.split_windows(split, max_history) (the trainer does "
                        "this with a per-sequence training_layout).")
  history = np.asarray(batch["history"])
  if history.ndim != 2 or history.shape[1] < 2:
    raise DataError(f"batch['history'] must be [batch, width >= 2] windows, got shape "
                    f"{history.shape}.")
  size, width = history.shape
  _check_items(history, sids.shape[0] - 1, "history")
  length = np.asarray(batch["length"]).astype(np.int64)
  first = np.asarray(batch["first_target"]).astype(np.int64)
  weight = np.asarray(batch.get("weight", np.ones(size)), np.float32)
  tokens = np.where(history[..., None] > 0, layout.code_to_token(sids[history]), PAD_ID)
  position = np.arange(1, width)[None, :]  # the target's window position.
  is_target = (position >= first[:, None]) & (position < length[:, None])
  row_weight = np.where(is_target, weight[:, None], 0.0)  # [B, W - 1]
  return layout, history, target_cols, encoder_cols, tokens.astype(np.int32), row_weight


def _user_tokens(batch: Mapping[str, np.ndarray], layout: TokenLayout, size: int
                 ) -> np.ndarray:
  """[B, U] int32 user tokens (U = 0 without user buckets)."""
  if not layout.num_user_buckets:
    return np.zeros((size, 0), np.int32)
  user = np.asarray(batch.get("user", np.full(size, -1)))
  return layout.user_token(user)[:, None].astype(np.int32)


def make_sequence_token_batch(batch: Mapping[str, np.ndarray], semantic_ids: np.ndarray,
                              layout: Union[TokenLayout, TargetLayout],
                              target_levels: Optional[Sequence[int]] = None,
                              encoder_levels: Optional[Sequence[int]] = None) -> dict:
  """Window batch -> sequence token batch of `ItemEncoderDecoderModel` (NumPy).

  Args:
    batch: history [B, W] int32 (a window, oldest first, 0-padded at the end), length
      [B], first_target [B] int32 (positions first_target .. length - 1 are targets),
      optional user [B] (-1 = none), optional weight [B] float32.
    semantic_ids: [num_items + 1, L] codes; row 0 is padding.
    layout: the full layout, or a `TargetLayout` (its levels are the default targets).
    target_levels: the columns the decoder generates (None = all).
    encoder_levels: the columns of each item the encoder reads (None = all).

  Returns (n = W - 1 positions, E encoder columns, G target columns, U user tokens):
    encoder_input_tokens: [B, U + n * E] int32, items 0 .. W - 2 (as `make_token_batch`).
    decoder_input_tokens: [B, n, G] int32, BOS then item t + 1's first G - 1 tokens.
    decoder_target_tokens: [B, n, G] int32, item t + 1's tokens (0 where not a target).
    decoder_loss_weights: [B, n, G] float32, the row weight where t + 1 is a target.

  Raises:
    DataError: bad shapes, a missing first_target, item ids outside the table.
  """
  layout, history, target_cols, encoder_cols, tokens, row_weight = _windows(
      batch, semantic_ids, layout, target_levels, encoder_levels,
      "make_sequence_token_batch")
  size, width = history.shape
  inputs = tokens[:, :-1][..., encoder_cols].reshape(size, (width - 1) * len(encoder_cols))
  inputs = np.concatenate([_user_tokens(batch, layout, size), inputs], axis=1)
  targets = np.where(row_weight[..., None] > 0, tokens[:, 1:][..., target_cols], PAD_ID)
  bos = np.full(targets.shape[:2] + (1,), BOS_ID, np.int32)
  return {"encoder_input_tokens": inputs.astype(np.int32),
          "decoder_input_tokens": np.concatenate([bos, targets[..., :-1]], axis=-1),
          "decoder_target_tokens": targets.astype(np.int32),
          "decoder_loss_weights": np.repeat(row_weight[..., None], len(target_cols),
                                            axis=-1).astype(np.float32)}


# Packed decoder rows are padded up to the next of these multiples of ROW_QUANTUM, so a
# training run compiles a few shapes per window bucket (ratios 1, 1.5, 2, 3, 4, 6, ...).
ROW_QUANTUM = 64


def row_capacity(count: int, quantum: int = ROW_QUANTUM) -> int:
  """The static number of packed decoder rows that holds `count` target rows: the smallest
  of quantum * {1, 1.5, 2, 3, 4, 6, 8, ...} >= count (at most 50 % padding)."""
  power = quantum
  while True:
    for capacity in (power, power * 3 // 2):
      if capacity >= count:
        return capacity
    power *= 2


def pack_target_rows(tokens: Mapping[str, np.ndarray], window_offset: int = 0,
                     quantum: int = ROW_QUANTUM, min_rows: int = 0) -> dict:
  """Keeps only the target positions of a `make_sequence_token_batch` batch (NumPy).

  Args:
    tokens: the batch of `make_sequence_token_batch` (decoder arrays [B, n, G]).
    window_offset: added to the window indices (process p of a multi-process run holds
      global windows [p * B, (p + 1) * B); `generator_job` passes p * B).
    quantum: the row padding quantum (`row_capacity`); a multiple of the data-parallel
      mesh size keeps the rows evenly sharded.
    min_rows: pack for at least this many targets: in a multi-process run, the batch's
      `most_targets` (the largest target count of any process this step), so every
      process packs the same number of rows.

  Returns the same encoder_input_tokens [B, U + n * E] and, for
  R = row_capacity(max(targets, min_rows))
  rows (row r: window b_r, position t_r; rows after the last target are padding, weight 0):
    decoder_input_tokens, decoder_target_tokens: [R, G] int32.
    decoder_loss_weights: [R, G] float32.
    decoder_row_window: [R] int32 b_r (+ window_offset); decoder_row_position: [R] int32.
  """
  weights = np.asarray(tokens["decoder_loss_weights"])
  window, position = np.nonzero(weights[..., 0] > 0)
  if min_rows and min_rows < len(window):
    raise DataError(f"pack_target_rows: the batch has {len(window)} target rows but "
                    f"min_rows={min_rows}",
                    fix="pass the batch's most_targets (the largest count of any process).")
  capacity = row_capacity(max(len(window), min_rows), quantum)
  pad = capacity - len(window)

  def rows(name, fill):
    x = np.asarray(tokens[name])[window, position]
    return np.concatenate([x, np.full((pad,) + x.shape[1:], fill, x.dtype)])

  return {"encoder_input_tokens": tokens["encoder_input_tokens"],
          "decoder_input_tokens": rows("decoder_input_tokens", BOS_ID),
          "decoder_target_tokens": rows("decoder_target_tokens", PAD_ID),
          "decoder_loss_weights": rows("decoder_loss_weights", 0.0),
          "decoder_row_window": np.concatenate(
              [window + window_offset, np.full(pad, window_offset)]).astype(np.int32),
          "decoder_row_position": np.concatenate([position, np.zeros(pad)]).astype(np.int32)}


def decoder_only_columns(target_levels: Sequence[int], encoder_levels: Sequence[int]
                         ) -> list:
  """The columns of one item's block in a decoder-only sequence: the generated (target)
  columns first, then the other columns the history reads."""
  target = [int(c) for c in target_levels]
  return target + [int(c) for c in encoder_levels if int(c) not in target]


def make_decoder_only_batch(batch: Mapping[str, np.ndarray], semantic_ids: np.ndarray,
                            layout: Union[TokenLayout, TargetLayout],
                            target_levels: Optional[Sequence[int]] = None,
                            encoder_levels: Optional[Sequence[int]] = None) -> dict:
  """Window batch -> the token sequence of `DecoderOnlyModel` (NumPy).

  The sequence is [BOS, user token?, item_0's block, ..., item_{W-1}'s block], 0-padded
  at the end; an item's block is its `encoder_levels` columns, which must start with the
  `target_levels` (`decoder_only_columns`). The loss covers the target columns of every
  target item.

  Args: as `make_sequence_token_batch`.

  Returns (S = U + W * E tokens, E block columns, U user tokens):
    decoder_input_tokens: [B, S] int32, the sequence but its last token.
    decoder_target_tokens: [B, S] int32, the sequence shifted by one (token s + 1).
    decoder_loss_weights: [B, S] float32, the row weight at the target columns of target
      items, else 0.

  Raises:
    DataError: as `make_sequence_token_batch`.
    ModelConfigError: bad columns; encoder_levels that do not start with the target
      levels.
  """
  layout, history, target_cols, encoder_cols, tokens, row_weight = _windows(
      batch, semantic_ids, layout, target_levels, encoder_levels, "make_decoder_only_batch")
  if encoder_cols[:len(target_cols)] != target_cols:
    raise ModelConfigError(f"a decoder-only item block must start with the generated "
                           f"columns {target_cols}, got encoder_levels {encoder_cols}.",
                           fix="pass encoder_levels=decoder_only_columns(target_levels, "
                               "encoder_levels) (generator_job.setup does).")
  size, width = history.shape
  user = _user_tokens(batch, layout, size)
  blocks = tokens[..., encoder_cols].reshape(size, width * len(encoder_cols))
  sequence = np.concatenate([np.full((size, 1), BOS_ID, np.int32), user, blocks], axis=1)
  item_weight = np.concatenate([np.zeros((size, 1), np.float32), row_weight], axis=1)
  column_weight = np.zeros(len(encoder_cols), np.float32)
  column_weight[:len(target_cols)] = 1.0
  weights = (item_weight[..., None] * column_weight).reshape(size, -1)
  weights = np.concatenate([np.zeros(user.shape, np.float32), weights], axis=1)
  return {"decoder_input_tokens": sequence[:, :-1].astype(np.int32),
          "decoder_target_tokens": sequence[:, 1:].astype(np.int32),
          "decoder_loss_weights": weights.astype(np.float32)}
