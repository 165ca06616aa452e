"""The in-memory form of a sequential-recommendation dataset (users' item sequences + item side)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from jaxrec.data.errors import DataError

PAD_ITEM = 0  # item id 0 is padding everywhere; real items are 1..num_items.


@dataclasses.dataclass(frozen=True)
class ItemTable:
  """Item-side features, indexed by item id (row 0 is the padding item).

  Attributes:
    raw_ids: [num_items + 1] str, the upstream id of each item ("" for row 0).
    text: [num_items + 1] str, the text a text encoder embeds ("" = none).
    image_paths: [num_items + 1] str, absolute path of the item image ("" = none).
    images: optional [num_items + 1, height, width, 3] uint8 rendered images
      (synthetic catalog only; row 0 is black).
    attributes: name -> [num_items + 1] int32 categorical attributes (e.g. the
      synthetic latent attributes, MovieLens first genre); -1 = unknown.
    fields: name -> [num_items + 1] str, the separate text columns the `text`
      was composed from (title, categories, keywords, ...).
  """
  raw_ids: np.ndarray
  text: np.ndarray
  image_paths: np.ndarray
  images: Optional[np.ndarray] = None
  attributes: dict = dataclasses.field(default_factory=dict)
  fields: dict = dataclasses.field(default_factory=dict)

  @property
  def num_items(self) -> int:
    return len(self.raw_ids) - 1

  def num_with_text(self) -> int:
    return int(sum(1 for t in self.text[1:] if t))

  def num_with_image(self) -> int:
    if self.images is not None:
      return self.num_items
    return int(sum(1 for p in self.image_paths[1:] if p))

  @classmethod
  def empty(cls, num_items: int) -> "ItemTable":
    """A table with only ids 1..num_items and no text or images."""
    raw = np.array([""] + [str(i) for i in range(1, num_items + 1)], dtype=object)
    blank = np.array([""] * (num_items + 1), dtype=object)
    return cls(raw_ids=raw, text=blank.copy(), image_paths=blank.copy())

  def subset(self, keep: np.ndarray) -> "ItemTable":
    """Rows `keep` ([n] int, old ids >= 1), renumbered 1..n in that order."""
    rows = np.concatenate([[0], np.asarray(keep, np.int64)])
    return ItemTable(
        raw_ids=self.raw_ids[rows], text=self.text[rows],
        image_paths=self.image_paths[rows],
        images=None if self.images is None else self.images[rows],
        attributes={k: v[rows] for k, v in self.attributes.items()},
        fields={k: v[rows] for k, v in self.fields.items()})


@dataclasses.dataclass(frozen=True)
class SequentialDataset:
  """Users' chronological item sequences in CSR form, plus the item table.

  Attributes:
    name: dataset name (e.g. "beauty").
    items: [num_interactions] int32, every user's items concatenated, each
      user's items in chronological order; ids in 1..num_items.
    offsets: [num_users + 1] int64, user u owns items[offsets[u]:offsets[u+1]].
    user_ids: [num_users] str, the upstream user id of each row.
    item_table: the item side (its num_items defines the id range).
    timestamps: optional [num_interactions] float64, aligned with `items`.
    source: the file the sequences were read from ("" if generated); named in
      error messages.
    user_lines: optional [num_users] int64, the 1-based line of `source` each
      user came from (0 = not from a line-per-user file).
  """
  name: str
  items: np.ndarray
  offsets: np.ndarray
  user_ids: np.ndarray
  item_table: ItemTable
  timestamps: Optional[np.ndarray] = None
  source: str = ""
  user_lines: Optional[np.ndarray] = None

  def __post_init__(self):
    if self.offsets.ndim != 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.items):
      raise DataError(f"dataset {self.name!r}: offsets must run from 0 to len(items)")
    if len(self.user_ids) != len(self.offsets) - 1:
      raise DataError(f"dataset {self.name!r}: {len(self.user_ids)} user ids for "
                      f"{len(self.offsets) - 1} sequences")
    if len(self.items) and (self.items.min() < 1 or self.items.max() > self.num_items):
      raise DataError(f"dataset {self.name!r}: item ids must lie in 1..{self.num_items}")

  @property
  def num_users(self) -> int:
    return len(self.offsets) - 1

  @property
  def num_items(self) -> int:
    return self.item_table.num_items

  @property
  def num_interactions(self) -> int:
    return len(self.items)

  @property
  def lengths(self) -> np.ndarray:
    """[num_users] int64 sequence lengths."""
    return np.diff(self.offsets)

  def sequence(self, user: int) -> np.ndarray:
    """[length] int32 items of row `user` (0-based row, not the upstream id)."""
    return self.items[self.offsets[user]:self.offsets[user + 1]]

  def where(self, user: int) -> str:
    """Human-readable location of row `user` for error messages."""
    place = f"user {self.user_ids[user]!r}"
    if self.source:
      line = int(self.user_lines[user]) if self.user_lines is not None else 0
      place += f" ({self.source}" + (f":{line})" if line else ")")
    return place

  def sequences(self) -> list:
    return [self.sequence(u) for u in range(self.num_users)]

  def stats(self) -> dict:
    """Counts for printing: users, items, interactions, length summary."""
    lengths = self.lengths
    return {
        "name": self.name,
        "users": self.num_users,
        "items": self.num_items,
        "interactions": self.num_interactions,
        "avg_length": float(lengths.mean()) if len(lengths) else 0.0,
        "min_length": int(lengths.min()) if len(lengths) else 0,
        "max_length": int(lengths.max()) if len(lengths) else 0,
        "items_with_text": self.item_table.num_with_text(),
        "items_with_image": self.item_table.num_with_image(),
    }

  @classmethod
  def from_sequences(cls, name: str, sequences: Sequence[Sequence[int]],
                     item_table: ItemTable, user_ids=None,
                     timestamps: Optional[Sequence[Sequence[float]]] = None,
                     source: str = "", user_lines=None) -> "SequentialDataset":
    """Builds the CSR form from a list of per-user item id lists."""
    lengths = np.array([len(s) for s in sequences], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = (np.concatenate([np.asarray(s, np.int32) for s in sequences])
             if len(sequences) else np.zeros([0], np.int32)).astype(np.int32)
    ts = None
    if timestamps is not None:
      ts = (np.concatenate([np.asarray(t, np.float64) for t in timestamps])
            if len(timestamps) else np.zeros([0], np.float64))
    if user_ids is None:
      user_ids = [str(u + 1) for u in range(len(sequences))]
    return cls(name=name, items=items, offsets=offsets,
               user_ids=np.asarray(list(user_ids), dtype=object),
               item_table=item_table, timestamps=ts, source=source,
               user_lines=None if user_lines is None else np.asarray(user_lines, np.int64))
