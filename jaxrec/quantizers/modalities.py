"""Which columns of a semantic-ID table belong to which modality (the `modalities.json`
sidecar beside `semantic_ids.npy`).

MSCGRec's items are the concatenation of one code sequence per modality, e.g. text codes
in columns [0, 4), image codes in [4, 8), collaborative codes in [8, 12). The generator
reads this sidecar to know which columns a history item feeds to the encoder and which
columns the decoder generates. A table without the sidecar is one segment, "item".
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence, Tuple

from jaxrec import files
from jaxrec.data.errors import DataError

SIDECAR = "modalities.json"
DEFAULT_NAME = "item"


@dataclasses.dataclass(frozen=True)
class Segment:
  """Columns [start, end) of the semantic-ID table hold modality `name`'s codes."""
  name: str
  start: int
  end: int

  @property
  def levels(self) -> Tuple[int, ...]:
    return tuple(range(self.start, self.end))


def sidecar_path(semantic_ids_path: str) -> str:
  return os.path.join(os.path.dirname(os.path.abspath(semantic_ids_path)), SIDECAR)


def check(segments: Sequence[Segment], num_levels: int, source: str = SIDECAR
          ) -> Tuple[Segment, ...]:
  """Segments must tile [0, num_levels) in order with distinct, non-empty names."""
  segments = tuple(segments)
  names = [s.name for s in segments]
  position = 0
  for s in segments:
    if not s.name or s.start != position or s.end <= s.start:
      raise DataError(f"modality segments {[(s.name, s.start, s.end) for s in segments]} do "
                      f"not tile the {num_levels} semantic-ID columns in order", path=source,
                      fix="rebuild the semantic IDs; each modality needs >= 1 column.")
    position = s.end
  if position != num_levels or len(set(names)) != len(names):
    raise DataError(f"modality segments {names} cover {position} of {num_levels} columns or "
                    "repeat a name", path=source, fix="rebuild the semantic IDs.")
  return segments


def write(semantic_ids_path: str, segments: Sequence[Segment], num_levels: int) -> str:
  """Writes the sidecar (atomically) beside `semantic_ids_path`; returns its path."""
  segments = check(segments, num_levels)
  path = sidecar_path(semantic_ids_path)
  files.write_json(path, {"num_levels": int(num_levels), "modalities": [
      dataclasses.asdict(s) for s in segments]}, indent=2)
  return path


def read(semantic_ids_path: str, num_levels: int) -> Tuple[Segment, ...]:
  """The segments of the table at `semantic_ids_path` (one "item" segment without a sidecar).

  Raises:
    DataError: a sidecar that does not describe a table of `num_levels` columns.
  """
  path = sidecar_path(semantic_ids_path)
  raw = files.read_json(path)
  if raw is None:
    return (Segment(DEFAULT_NAME, 0, int(num_levels)),)
  try:
    segments = [Segment(str(m["name"]), int(m["start"]), int(m["end"]))
                for m in raw["modalities"]]
  except (KeyError, TypeError, ValueError) as e:
    raise DataError(f"cannot read the modality segments ({e!r})", path=path,
                    fix='expected {"modalities": [{"name": ..., "start": ..., "end": ...}]}; '
                        "rebuild the semantic IDs.") from e
  return check(segments, num_levels, path)


def find(segments: Sequence[Segment], name: Optional[str], binding: str) -> Segment:
  """The segment called `name`; None means the only segment (or the last if several).

  Raises:
    DataError naming `binding` when there is no such modality.
  """
  if name is None:
    return segments[-1]
  for s in segments:
    if s.name == name:
      return s
  raise DataError(f"the semantic IDs have no modality {name!r} (they have "
                  f"{[s.name for s in segments]})", path=binding,
                  fix="bind one of those names, or None for the default.")
