"""Token layout of the generator vocabulary (specials, per-level code blocks, hashed user
buckets, reserved tokens) and the host-side conversion of training batches to tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from jaxrec.data.errors import DataError
from jaxrec.generator.errors import ModelConfigError

PAD_ID = 0
BOS_ID = 1
_HASH_MULTIPLIER = np.uint32(2654435761)  # Knuth's multiplicative hash constant


class _CodeBlocks:
  """Token ranges and code <-> token maps over `num_levels`, `codebook_sizes`,
  `level_offsets` and `vocab_size` (shared by `TokenLayout` and `TargetLayout`)."""

  def level_token_range(self, level: int) -> Tuple[int, int]:
    """(start, end): the tokens of `level` are start <= token < end."""
    if not 0 <= level < self.num_levels:
      raise ModelConfigError(f"level {level} is outside [0, {self.num_levels}).")
    start = int(self.level_offsets[level])
    return start, start + self.codebook_sizes[level]

  def level_mask(self) -> np.ndarray:
    """[num_levels, vocab_size] bool: mask[l, t] iff token t is a level-l code."""
    mask = np.zeros((self.num_levels, self.vocab_size), bool)
    for level in range(self.num_levels):
      start, end = self.level_token_range(level)
      mask[level, start:end] = True
    return mask

  def code_to_token(self, codes):
    """codes: [..., num_levels] int -> tokens [..., num_levels] (NumPy or jax arrays)."""
    return codes + self.level_offsets.astype(getattr(codes, "dtype", np.int32))

  def token_to_code(self, tokens):
    """tokens: [..., num_levels] int -> codes [..., num_levels] (inverse of code_to_token)."""
    return tokens - self.level_offsets.astype(getattr(tokens, "dtype", np.int32))

  def check_semantic_ids(self, semantic_ids) -> np.ndarray:
    """Validates semantic_ids [num_items + 1, num_levels] against the layout; returns int32."""
    ids = np.asarray(semantic_ids)
    if ids.ndim != 2 or ids.shape[1] != self.num_levels or ids.shape[0] < 1:
      raise DataError(f"semantic_ids must be [num_items + 1, {self.num_levels}], got shape "
                      f"{ids.shape}.", fix="pass the table whose row 0 is padding and whose "
                      f"width matches {type(self).__name__}.num_levels.")
    sizes = np.asarray(self.codebook_sizes)
    bad = (ids < 0) | (ids >= sizes)
    if bad.any():
      row, level = map(int, np.argwhere(bad)[0])
      raise DataError(f"semantic_ids[{row}, {level}] = {ids[row, level]} is outside "
                      f"[0, {sizes[level]}) for level {level}.",
                      fix="build the TokenLayout from the same semantic IDs "
                          "(TokenLayout.for_semantic_ids).")
    return ids.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TokenLayout(_CodeBlocks):
  """Where each kind of token lives in the vocabulary.

  Layout: [0, num_special) specials (0 = PAD, 1 = BOS/EOS), then one block of
  `codebook_sizes[l]` tokens per code level l, then `num_user_buckets` user tokens, then
  `num_reserved` tokens (room for modality markers and the like).

  Attributes:
    num_levels: L, codes per item (including a collision level if any).
    codebook_sizes: tokens per level, one per level (an int means the same for all),
      e.g. (256, 256, 256, K4) where K4 is the largest collision group.
    num_user_buckets: hashed user tokens (TIGER: 2,000); 0 drops the user token.
    num_special: special tokens at the start (>= 2: PAD and BOS).
    num_reserved: extra tokens at the end.
  """
  num_levels: int
  codebook_sizes: Union[int, Sequence[int]] = 256
  num_user_buckets: int = 2000
  num_special: int = 2
  num_reserved: int = 0

  def __post_init__(self):
    if isinstance(self.num_levels, bool) or not isinstance(self.num_levels, int) or (
        self.num_levels < 1):
      raise ModelConfigError(f"TokenLayout.num_levels must be a positive integer, got "
                             f"{self.num_levels!r}.", fix="set it to the semantic-ID length.")
    sizes = self.codebook_sizes
    sizes = (sizes,) * self.num_levels if isinstance(sizes, (int, np.integer)) else sizes
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != self.num_levels or min(sizes) < 1:
      raise ModelConfigError(f"TokenLayout.codebook_sizes must hold {self.num_levels} "
                             f"positive sizes (one per level), got {sizes}.",
                             fix="give one size per level, e.g. (256, 256, 256, 8).")
    object.__setattr__(self, "codebook_sizes", sizes)
    if self.num_special < 2:
      raise ModelConfigError(f"TokenLayout.num_special must be >= 2 (PAD and BOS), got "
                             f"{self.num_special}.", fix="use the default 2.")
    for name in ("num_user_buckets", "num_reserved"):
      if getattr(self, name) < 0:
        raise ModelConfigError(f"TokenLayout.{name} must be >= 0, got "
                               f"{getattr(self, name)}.", fix="use 0 to disable.")

  @classmethod
  def for_semantic_ids(cls, semantic_ids, **kwargs) -> "TokenLayout":
    """A layout whose level sizes are 1 + the largest code of each level of `semantic_ids`."""
    ids = np.asarray(semantic_ids)
    if ids.ndim != 2 or ids.shape[0] < 1:
      raise DataError(f"semantic_ids must be [num_items + 1, L], got shape {ids.shape}.",
                      fix="pass the semantic-ID table (row 0 = padding).")
    return cls(num_levels=ids.shape[1], codebook_sizes=tuple(int(m) + 1 for m in ids.max(0)),
               **kwargs)

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def level_offsets(self) -> np.ndarray:
    """[num_levels] int32: the token of code 0 at each level."""
    return (self.num_special + np.concatenate([[0], np.cumsum(self.codebook_sizes)[:-1]])
            ).astype(np.int32)

  @property
  def user_offset(self) -> int:
    return self.num_special + sum(self.codebook_sizes)

  @property
  def reserved_offset(self) -> int:
    return self.user_offset + self.num_user_buckets

  @property
  def vocab_size(self) -> int:
    return self.reserved_offset + self.num_reserved

  @property
  def tokens_per_item(self) -> int:
    return self.num_levels

  def target(self, levels: Optional[Sequence[int]] = None,
             binding: str = "TokenLayout.target.levels") -> "TargetLayout":
    """The decoder's view of this layout over the columns `levels` (None = all).

    E.g. MSCGRec generates only the collaborative segment's columns; the encoder still
    reads the other columns' tokens from the same vocabulary.
    """
    return TargetLayout(self, check_levels(levels, self.num_levels, binding))

  def user_token(self, user_ids) -> np.ndarray:
    """user_ids: [...] int dataset rows -> [...] int32 user tokens (negative rows -> PAD).

    A fixed multiplicative hash (Knuth, mod 2^32, then an xor-shift) modulo
    `num_user_buckets`: deterministic across runs and machines.
    """
    if self.num_user_buckets == 0:
      raise ModelConfigError("TokenLayout.num_user_buckets is 0: there are no user tokens.")
    users = np.asarray(user_ids).astype(np.int64)
    flat = users.reshape(-1)
    h = np.multiply(flat.astype(np.uint32), _HASH_MULTIPLIER)  # wraps mod 2^32
    h = h ^ (h >> np.uint32(16))
    tokens = (self.user_offset + (h % np.uint32(self.num_user_buckets)).astype(np.int64))
    return np.where(flat >= 0, tokens, PAD_ID).astype(np.int32).reshape(users.shape)


def check_levels(levels: Optional[Sequence[int]], num_levels: int, binding: str
                 ) -> Tuple[int, ...]:
  """None -> all columns (0..num_levels-1); else distinct column indices, in the given order.

  Raises:
    ModelConfigError naming `binding`: empty, repeated or out-of-range columns.
  """
  if levels is None:
    return tuple(range(num_levels))
  try:
    cols = tuple(int(c) for c in levels)
    ok = all(not isinstance(c, bool) and int(c) == c for c in levels)
  except (TypeError, ValueError):
    cols, ok = (), False
  if not ok or not cols or len(set(cols)) != len(cols) or min(cols) < 0 or (
      max(cols) >= num_levels):
    raise ModelConfigError(f"{binding} = {levels!r} must be distinct column indices in "
                           f"[0, {num_levels}) of the semantic-ID table.",
                           fix="pass e.g. modalities.find(segments, name, ...).levels, or "
                               "None for all columns.")
  return cols


@dataclasses.dataclass(frozen=True)
class TargetLayout(_CodeBlocks):
  """The decoder's view of a `TokenLayout`: target level i is column `levels[i]`.

  It exposes what the model, beam search and tries use (`num_levels`, `codebook_sizes`,
  `level_offsets`, `level_token_range`, `level_mask`, `code_to_token`, `token_to_code`,
  `check_semantic_ids`, all over the target columns) while the vocabulary (`vocab_size`,
  `bos_id`, `pad_id`, user tokens) stays the full layout's. Over all columns it behaves
  exactly like the `TokenLayout` itself.

  Attributes:
    layout: the full `TokenLayout`.
    levels: the target columns, e.g. (8, 9, 10, 11) for a collaborative segment.
  """
  layout: TokenLayout
  levels: Tuple[int, ...]

  def __post_init__(self):
    object.__setattr__(self, "levels", check_levels(self.levels, self.layout.num_levels,
                                                    "TargetLayout.levels"))

  @property
  def num_levels(self) -> int:
    """Decoder tokens per item (the number of target columns)."""
    return len(self.levels)

  @property
  def codebook_sizes(self) -> Tuple[int, ...]:
    return tuple(self.layout.codebook_sizes[c] for c in self.levels)

  @property
  def level_offsets(self) -> np.ndarray:
    """[num_levels] int32: the token of code 0 at each target level."""
    return self.layout.level_offsets[list(self.levels)]

  @property
  def is_all_levels(self) -> bool:
    return self.levels == tuple(range(self.layout.num_levels))

  # The vocabulary is the full layout's.
  vocab_size = property(lambda self: self.layout.vocab_size)
  bos_id = property(lambda self: self.layout.bos_id)
  pad_id = property(lambda self: self.layout.pad_id)
  num_special = property(lambda self: self.layout.num_special)
  num_user_buckets = property(lambda self: self.layout.num_user_buckets)
  user_offset = property(lambda self: self.layout.user_offset)
  reserved_offset = property(lambda self: self.layout.reserved_offset)

  def user_token(self, user_ids) -> np.ndarray:
    """As `TokenLayout.user_token`."""
    return self.layout.user_token(user_ids)

  def select(self, semantic_ids) -> np.ndarray:
    """semantic_ids: [num_items + 1, layout.num_levels] -> [num_items + 1, num_levels]
    int32, the target columns (validated against the full layout)."""
    return self.layout.check_semantic_ids(semantic_ids)[:, list(self.levels)]


def make_token_batch(batch: Mapping[str, np.ndarray], semantic_ids: np.ndarray,
                     layout: Union[TokenLayout, TargetLayout], max_history: int = 20,
                     target_levels: Optional[Sequence[int]] = None,
                     encoder_levels: Optional[Sequence[int]] = None) -> dict:
  """Turns an item batch into t5x-style token arrays (host side, NumPy).

  The encoder sees the user token (if the layout has user buckets), then the codes of
  the encoder columns E of the last min(W, max_history) history items, oldest first,
  0-padded at the end. The width depends only on W, so bucketed batches give a few
  static shapes. The decoder generates the target columns (G of them) of the target.

  Args:
    batch: history [B, W] int32 (oldest first, 0-padded at the end), length [B] int32,
      optional user [B] int32 (dataset row, -1 for padding rows), optional target [B]
      int32 and weight [B] float32 (see `jaxrec.data.batching`).
    semantic_ids: [num_items + 1, L] int codes; row 0 is padding.
    layout: the full token layout (L = layout.num_levels), or a `TargetLayout` (its
      full layout, and its levels as the default `target_levels`).
    max_history: most recent items kept.
    target_levels: the columns the decoder generates, in order (None = all L).
    encoder_levels: the columns of each history item the encoder sees, in order
      (None = all L).

  Returns:
    encoder_input_tokens: [B, U + min(W, max_history) * E] int32 (U = 1 with user
    tokens). With a target: decoder_input_tokens [B, G] int32 (BOS then the target's
    first G-1 code tokens), decoder_target_tokens [B, G] int32, decoder_loss_weights
    [B, G] float32 (the batch weight, default 1, broadcast over the G tokens).

  Raises:
    DataError: bad shapes, lengths or item ids outside the semantic-ID table.
    ModelConfigError: bad columns (`check_levels`).
  """
  if isinstance(layout, TargetLayout):
    target_levels = layout.levels if target_levels is None else target_levels
    layout = layout.layout
  target_cols = list(check_levels(target_levels, layout.num_levels,
                                  "make_token_batch.target_levels"))
  encoder_cols = list(check_levels(encoder_levels, layout.num_levels,
                                   "make_token_batch.encoder_levels"))
  sids = layout.check_semantic_ids(semantic_ids)
  num_items = sids.shape[0] - 1
  if max_history < 1:
    raise DataError(f"max_history must be >= 1, got {max_history}.")
  history = np.asarray(batch["history"])
  if history.ndim != 2:
    raise DataError(f"batch['history'] must be [batch, width], got shape {history.shape}.")
  size, width = history.shape
  length = np.asarray(batch["length"]).astype(np.int64)
  if length.shape != (size,) or (length < 0).any() or (length > width).any():
    raise DataError(f"batch['length'] must be [{size}] values in [0, {width}], got "
                    f"{length.tolist() if length.size < 20 else length.shape}.")
  _check_items(history, num_items, "history")
  keep = min(width, max_history)
  start = np.maximum(length - keep, 0)
  cols = start[:, None] + np.arange(keep)[None, :]
  valid = np.arange(keep)[None, :] < np.minimum(length, keep)[:, None]
  items = np.where(valid, np.take_along_axis(history, np.minimum(cols, width - 1), 1), 0)
  tokens = np.where(items[..., None] > 0, layout.code_to_token(sids[items]), PAD_ID)
  tokens = tokens[..., encoder_cols].reshape(size, keep * len(encoder_cols))
  if layout.num_user_buckets:
    user = np.asarray(batch.get("user", np.full(size, -1)))
    tokens = np.concatenate([layout.user_token(user)[:, None], tokens], axis=1)
  out = {"encoder_input_tokens": tokens.astype(np.int32)}
  if "target" in batch:
    target = np.asarray(batch["target"])
    _check_items(target, num_items, "target")
    targets = layout.code_to_token(sids[target])[:, target_cols].astype(np.int32)
    weight = np.asarray(batch.get("weight", np.ones(size)), np.float32)
    out["decoder_input_tokens"] = np.concatenate(
        [np.full((size, 1), BOS_ID, np.int32), targets[:, :-1]], axis=1)
    out["decoder_target_tokens"] = targets
    out["decoder_loss_weights"] = np.repeat(weight[:, None], len(target_cols), axis=1)
  return out


def _check_items(items: np.ndarray, num_items: int, field: str):
  bad = (items < 0) | (items > num_items)
  if bad.any():
    value = items[bad][0]
    raise DataError(f"batch['{field}'] holds item id {value}, outside [0, {num_items}] of "
                    f"the semantic-ID table.",
                    fix="use the semantic IDs built for this dataset's item numbering.")
