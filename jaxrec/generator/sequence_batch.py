"""Host-side conversion of per-sequence window batches (`data.windows`) to the token arrays
of `ItemEncoderDecoderModel`: the encoder reads the window's items but the last, the decoder
at position t generates item t + 1 (weighted when it is one of the window's targets).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np

from jaxrec.data.errors import DataError
from jaxrec.generator.vocab import (BOS_ID, PAD_ID, TargetLayout, TokenLayout, _check_items,
                                    check_levels)


def make_sequence_token_batch(batch: Mapping[str, np.ndarray], semantic_ids: np.ndarray,
                              layout: Union[TokenLayout, TargetLayout],
                              target_levels: Optional[Sequence[int]] = None,
                              encoder_levels: Optional[Sequence[int]] = None) -> dict:
  """Window batch -> sequence token batch (NumPy).

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
  if isinstance(layout, TargetLayout):
    target_levels = layout.levels if target_levels is None else target_levels
    layout = layout.layout
  target_cols = list(check_levels(target_levels, layout.num_levels,
                                  "make_sequence_token_batch.target_levels"))
  encoder_cols = list(check_levels(encoder_levels, layout.num_levels,
                                   "make_sequence_token_batch.encoder_levels"))
  sids = layout.check_semantic_ids(semantic_ids)
  if "first_target" not in batch:
    raise DataError("the per-sequence generator needs window batches (with "
                    f"'first_target'), got fields {sorted(batch)}.",
                    fix="train on windows.split_windows(split, max_history) (the trainer does "
                        "this with training_layout='item_encoder').")
  history = np.asarray(batch["history"])
  if history.ndim != 2 or history.shape[1] < 2:
    raise DataError(f"batch['history'] must be [batch, width >= 2] windows, got shape "
                    f"{history.shape}.")
  size, width = history.shape
  _check_items(history, sids.shape[0] - 1, "history")
  length = np.asarray(batch["length"]).astype(np.int64)
  first = np.asarray(batch["first_target"]).astype(np.int64)
  weight = np.asarray(batch.get("weight", np.ones(size)), np.float32)
  inputs = history[:, :-1]
  tokens = np.where(inputs[..., None] > 0, layout.code_to_token(sids[inputs]), PAD_ID)
  tokens = tokens[..., encoder_cols].reshape(size, (width - 1) * len(encoder_cols))
  if layout.num_user_buckets:
    user = np.asarray(batch.get("user", np.full(size, -1)))
    tokens = np.concatenate([layout.user_token(user)[:, None], tokens], axis=1)
  position = np.arange(1, width)[None, :]  # the target's window position.
  is_target = (position >= first[:, None]) & (position < length[:, None])
  row_weight = np.where(is_target, weight[:, None], 0.0)  # [B, n]
  targets = layout.code_to_token(sids[history[:, 1:]])[..., target_cols]
  targets = np.where(row_weight[..., None] > 0, targets, PAD_ID).astype(np.int32)
  bos = np.full(targets.shape[:2] + (1,), BOS_ID, np.int32)
  return {"encoder_input_tokens": tokens.astype(np.int32),
          "decoder_input_tokens": np.concatenate([bos, targets[..., :-1]], axis=-1),
          "decoder_target_tokens": targets,
          "decoder_loss_weights": np.repeat(row_weight[..., None], len(target_cols),
                                            axis=-1).astype(np.float32)}
