"""Validating parsers for the raw dataset files (S3-Rec, RecBole atomic, H&M TSV).

Every bad input raises `DataError` naming the file, the 1-based line and the fix.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from jaxrec.data.errors import DataError

ML100K_INTER_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
ML100K_ITEM_COLUMNS = ("item_id", "movie_title", "release_year", "class")
ML100K_ITEMS_TSV_COLUMNS = ("item_id", "title", "year", "genres", "overview")
HM_TRANSACTION_COLUMNS = ("t_dat", "customer_id", "article_id")
HM_ARTICLE_COLUMNS = ("article_id", "product_code", "prod_name", "product_type_name",
                      "graphical_appearance_name", "colour_group_name", "detail_desc")


@dataclasses.dataclass(frozen=True)
class Sequences:
  """An S3-Rec sequences file (one user per line) in CSR form.

  Attributes:
    path: the file read.
    user_ids: [num_users] str upstream user ids, in line order.
    lines: [num_users] int64 1-based line of each user.
    items: [num_interactions] int64 item ids (1-based), users concatenated.
    offsets: [num_users + 1] int64, user u owns items[offsets[u]:offsets[u+1]].
  """
  path: str
  user_ids: np.ndarray
  lines: np.ndarray
  items: np.ndarray
  offsets: np.ndarray

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def max_item(self) -> int:
    return int(self.items.max()) if len(self.items) else 0


@dataclasses.dataclass(frozen=True)
class Table:
  """A text table with a header line (TSV or RecBole atomic file).

  Attributes:
    path: the file read.
    columns: column names in file order (RecBole `:type` suffixes removed).
    data: column name -> [num_rows] object array of str.
    lines: [num_rows] int64 1-based line of each row.
  """
  path: str
  columns: tuple
  data: dict
  lines: np.ndarray

  def __len__(self) -> int:
    return len(self.lines)

  def __getitem__(self, column: str) -> np.ndarray:
    return self.data[column]

  def get(self, column: str, default: str = "") -> np.ndarray:
    """The column, or [num_rows] copies of `default` if the file lacks it."""
    if column in self.data:
      return self.data[column]
    return np.full(len(self), default, dtype=object)


def _read_lines(path: str, what: str) -> list:
  """Lines without their end-of-line characters; trailing blank lines dropped."""
  if not os.path.isfile(path):
    raise DataError(f"{what} not found", path=path,
                    fix=f"place the {what} at this path (see the dataset's "
                        "MANUAL_DOWNLOAD_INSTRUCTIONS) or pass the right manual_dir.")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"not valid UTF-8 ({e.reason})", path=path,
                    line=raw[:e.start].count(b"\n") + 1,
                    fix="re-save the file as UTF-8.") from None
  lines = text.split("\n")
  while lines and not lines[-1].strip():
    lines.pop()
  return [l[:-1] if l.endswith("\r") else l for l in lines]


def _is_id(token: str) -> bool:
  return token.isascii() and token.isdigit()


def read_s3rec_sequences(path: str, num_items: Optional[int] = None,
                         items_path: Optional[str] = None) -> Sequences:
  """Reads `user_id item item ...` lines (S3-Rec `<Name>.txt`).

  Args:
    path: the sequences file.
    num_items: if known (rows of items.tsv), ids above it are an error.
    items_path: the file `num_items` came from (named in that error).

  Raises:
    DataError: a line with no items, a non-integer token, an id < 1, an item id
      above num_items or a repeated user id (file and line named).
  """
  lines = _read_lines(path, "sequences file")
  user_ids, line_nos, seqs = [], [], []
  seen = {}
  for i, line in enumerate(lines, start=1):
    tokens = line.split()
    if len(tokens) < 2:
      raise DataError(
          f"malformed line {line[:60]!r}: expected 'user_id item_id item_id ...' "
          "with at least one item", path=path, line=i,
          fix="remove the line or give the user at least one item.")
    if not all(map(_is_id, tokens)):
      bad = next(t for t in tokens if not _is_id(t))
      try:
        value = int(bad)
      except ValueError:
        raise DataError(f"non-integer id {bad!r}", path=path, line=i,
                        fix="ids must be positive integers separated by spaces.") from None
      raise DataError(f"id {value} < 1", path=path, line=i,
                      fix="ids are 1-based positive integers (0 is padding).")
    ids = [int(t) for t in tokens]
    if min(ids) < 1:
      raise DataError(f"id {min(ids)} < 1", path=path, line=i,
                      fix="ids are 1-based positive integers (0 is padding).")
    if num_items is not None and max(ids[1:]) > num_items:
      source = f" ({items_path})" if items_path else ""
      raise DataError(
          f"unknown item id {max(ids[1:])}: the item catalog{source} has "
          f"{num_items} items", path=path, line=i,
          fix="use the items file that belongs to this sequences file, or fix the id.")
    user = tokens[0]
    if user in seen:
      raise DataError(f"user id {user} appears again (first on line {seen[user]})",
                      path=path, line=i,
                      fix="merge the user's lines into one line per user.")
    seen[user] = i
    user_ids.append(user)
    line_nos.append(i)
    seqs.append(ids[1:])
  if not seqs:
    raise DataError("no users in the sequences file", path=path,
                    fix="the file needs one 'user_id item_id ...' line per user.")
  lengths = np.array([len(s) for s in seqs], np.int64)
  items = np.fromiter((x for s in seqs for x in s), np.int64, count=int(lengths.sum()))
  return Sequences(path=path, user_ids=np.array(user_ids, dtype=object),
                   lines=np.array(line_nos, np.int64), items=items,
                   offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def read_table(path: str, required: Sequence[str], *, what: str = "table",
               typed_header: bool = False, numeric: Sequence[str] = (),
               integer: Sequence[str] = (), unique: Sequence[str] = ()) -> Table:
  """Reads a tab-separated file with a header line.

  Args:
    path: the file.
    required: columns that must be present (any order; others are kept).
    what: how the file is called in messages.
    typed_header: RecBole atomic header (`name:type`); the types are dropped.
    numeric: columns whose values must parse as finite floats.
    integer: columns whose values must be non-negative integers.
    unique: columns whose values must not repeat.

  Raises:
    DataError: missing column (line 1), a row with the wrong number of columns,
      a non-numeric / non-integer value, or a repeated unique value.
  """
  lines = _read_lines(path, what)
  expected = ", ".join(f"{c}:<type>" if typed_header else c for c in required)
  if not lines:
    raise DataError(f"{what} is empty", path=path, line=1,
                    fix=f"the first line must be a header naming the tab-separated "
                        f"columns {expected}.")
  columns = tuple(c.split(":")[0].strip() if typed_header else c.strip()
                  for c in lines[0].split("\t"))
  missing = [c for c in required if c not in columns]
  if missing:
    raise DataError(
        f"missing column(s) {', '.join(missing)} in the header {lines[0][:200]!r}",
        path=path, line=1,
        fix=f"the header must name the tab-separated columns {expected} "
            "(other columns may follow).")
  if len(set(columns)) != len(columns):
    dup = next(c for c in columns if columns.count(c) > 1)
    raise DataError(f"column {dup!r} appears twice in the header", path=path, line=1,
                    fix="give every column a distinct name.")
  rows = [l.split("\t") for l in lines[1:]]
  ncol = len(columns)
  for i, row in enumerate(rows, start=2):
    if len(row) != ncol:
      raise DataError(f"row has {len(row)} column(s), the header has {ncol}",
                      path=path, line=i,
                      fix="use exactly one tab between fields and no tabs inside a field.")
  data = {}
  for j, name in enumerate(columns):
    data[name] = np.array([r[j] for r in rows], dtype=object) if rows else np.zeros(
        [0], dtype=object)
  table = Table(path=path, columns=columns, data=data,
                lines=np.arange(2, len(rows) + 2, dtype=np.int64))
  for name in numeric:
    parse_floats(table, name)
  for name in integer:
    values = data[name]
    for i, v in enumerate(values):
      if not _is_id(v):
        raise DataError(f"{name} {v!r} is not a non-negative integer", path=path,
                        line=int(table.lines[i]), fix=f"write {name} as a plain integer.")
  for name in unique:
    _check_unique(table, name)
  return table


def parse_floats(table: Table, column: str) -> np.ndarray:
  """[num_rows] float64 values of a column; DataError on a bad value."""
  values = table[column]
  try:
    out = np.asarray(values, dtype=np.float64) if len(values) else np.zeros([0])
    bad = np.flatnonzero(~np.isfinite(out))
  except ValueError:
    bad = None
  if bad is None or len(bad):
    for i, v in enumerate(values):
      try:
        ok = np.isfinite(float(v))
      except ValueError:
        ok = False
      if not ok:
        raise DataError(f"{column} {v!r} is not a number", path=table.path,
                        line=int(table.lines[i]),
                        fix=f"write {column} as a finite decimal number.")
  return out


def _check_unique(table: Table, column: str) -> None:
  values = table[column]
  _, first, counts = np.unique(values.astype(str), return_index=True, return_counts=True)
  if (counts > 1).any():
    seen = {}
    for i, v in enumerate(values):
      if v in seen:
        raise DataError(f"{column} {v!r} appears again (first on line {seen[v]})",
                        path=table.path, line=int(table.lines[i]),
                        fix=f"keep one row per {column}.")
      seen[v] = int(table.lines[i])


def check_item_ids(table: Table) -> None:
  """The `item_id` column must be exactly 1..N in file order."""
  ids = table["item_id"]
  if list(ids) == [str(k) for k in range(1, len(ids) + 1)]:
    return
  for k, v in enumerate(ids, start=1):
    line = int(table.lines[k - 1])
    if v == str(k):
      continue
    if not _is_id(v):
      raise DataError(f"non-integer item_id {v!r}", path=table.path, line=line,
                      fix="item_id must be the integers 1..N, one row per item in order.")
    if int(v) < k:
      raise DataError(f"duplicate item_id {v} (expected {k})", path=table.path, line=line,
                      fix="keep exactly one row per item, ids 1..N in order.")
    raise DataError(f"item_id {v} out of order (expected {k})", path=table.path, line=line,
                    fix="sort the rows by item_id; ids must be exactly 1..N.")


def read_s3rec_items(path: str) -> Table:
  """Reads an S3-Rec style `items.tsv` (header with `item_id` first; ids 1..N).

  Raises:
    DataError: missing/misplaced item_id column, a bad id, a wrong row width.
  """
  table = read_table(path, ["item_id"], what="items file")
  if table.columns[0] != "item_id":
    raise DataError(f"the first column is {table.columns[0]!r}, not 'item_id'",
                    path=path, line=1, fix="make item_id the first column of the header.")
  check_item_ids(table)
  return table


def check_catalog(sequences: Sequences, items: Table) -> None:
  """The items file must describe exactly the items the sequences use.

  Raises:
    DataError: the sequences use an id above the catalog size, or the catalog
      has items beyond the largest id used (the files do not belong together).
  """
  n = len(items)
  used = sequences.max_item
  fix = (f"use the {os.path.basename(items.path)} that belongs to "
         f"{os.path.basename(sequences.path)} (both from the same dataset release).")
  if used > n:
    u = int(np.searchsorted(sequences.offsets, int(np.argmax(sequences.items)), "right")) - 1
    raise DataError(
        f"unknown item id {used}: {items.path} lists only {n} items", path=sequences.path,
        line=int(sequences.lines[u]), fix=fix)
  if n > used:
    raise DataError(
        f"{items.path} lists {n} items but {sequences.path} uses ids only up to "
        f"{used}: the two files do not describe the same catalog",
        path=items.path, line=used + 2, fix=fix)


def read_ml100k_inter(path: str) -> Table:
  """RecBole `ml-100k.inter`: user_id, item_id, rating, timestamp (numeric)."""
  return read_table(path, ML100K_INTER_COLUMNS, what="interaction file",
                    typed_header=True, numeric=("rating", "timestamp"))


def read_ml100k_item(path: str) -> Table:
  """RecBole `ml-100k.item`: item_id (unique), movie_title, release_year, class."""
  return read_table(path, ML100K_ITEM_COLUMNS, what="item file", typed_header=True,
                    unique=("item_id",))


def read_ml100k_items_tsv(path: str) -> Table:
  """ml100k `items.tsv`: item_id (1..N in order), title, year, genres, overview."""
  table = read_table(path, ML100K_ITEMS_TSV_COLUMNS, what="items file")
  check_item_ids(table)
  return table


def read_hm_transactions(path: str) -> Table:
  """H&M `transactions.tsv`; article_id stays a string (leading zero kept).

  The dates are checked and converted by `hm_timestamps`.
  """
  table = read_table(path, HM_TRANSACTION_COLUMNS, what="transactions file")
  for i, a in enumerate(table["article_id"]):
    if not _is_id(a):
      raise DataError(f"article_id {a!r} is not a digit string", path=path,
                      line=int(table.lines[i]),
                      fix="article_id is the 10-digit H&M article number, e.g. 0108775015.")
  hm_timestamps(table)
  return table


def hm_timestamps(table: Table) -> np.ndarray:
  """[num_rows] float64 Unix seconds of the `t_dat` dates (YYYY-MM-DD)."""
  dates = table["t_dat"]
  try:
    days = np.asarray(dates.astype(str), dtype="datetime64[D]")
  except ValueError:
    days = None
  if days is None or np.isnat(days).any() or any(len(d) != 10 for d in dates):
    for i, d in enumerate(dates):
      try:
        ok = len(d) == 10 and not np.isnat(np.datetime64(d, "D"))
      except ValueError:
        ok = False
      if not ok:
        raise DataError(f"t_dat {d!r} is not a date", path=table.path,
                        line=int(table.lines[i]), fix="write t_dat as YYYY-MM-DD.")
  return days.astype(np.int64).astype(np.float64) * 86400.0


def read_hm_articles(path: str) -> Table:
  """H&M `articles.tsv`: one row per article (unique article_id)."""
  return read_table(path, HM_ARTICLE_COLUMNS, what="articles file",
                    unique=("article_id",))
