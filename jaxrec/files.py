"""Small file helpers shared by the jobs: atomic writes of text, JSON and .npy, and reads.

Every write goes to a temporary file in the destination's folder (created if
missing) that is then renamed over the destination (`os.replace`), so a reader
never sees a half-written file; the temporary file is removed when the write fails.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Any, Callable, Optional

import numpy as np


def write_atomically(path: str, write: Callable[[Any], None], binary: bool = True) -> None:
  """Calls write(file) on a temp file in path's folder, then renames it to path.

  Args:
    path: the destination; its folder is created if missing.
    write: writes the content to the open file it is given.
    binary: open the temp file in binary ("wb") or text ("w") mode.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
  try:
    with os.fdopen(fd, "wb" if binary else "w") as f:
      write(f)
    os.chmod(tmp, 0o644)  # mkstemp makes it private.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str, text: str, if_changed: bool = False) -> None:
  """Writes `text` to `path` atomically (with `if_changed`, only when the file differs, so
  an up-to-date artifact keeps its modification time)."""
  if if_changed and os.path.isfile(path):
    with open(path) as f:
      if f.read() == text:
        return
  write_atomically(path, lambda f: f.write(text), binary=False)


def write_json(path: str, obj: Any, indent: int = 1, sort_keys: bool = False,
               default: Optional[Callable[[Any], Any]] = str) -> None:
  """Writes `obj` as JSON (`json.dumps(obj, indent, sort_keys, default)`) plus a newline, atomically.

  `default` converts values JSON cannot hold (str by default; None raises TypeError
  for them). The text is built before anything is written.
  """
  write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n")


def read_json(path: str) -> Optional[Any]:
  """The JSON content of `path`, or None when it is missing or unreadable."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


class DamagedFileWarning(UserWarning):
  """Part of a file was damaged (e.g. a line cut by a crash) and was left out."""


def read_jsonl(path: str) -> list:
  """The entries of a JSON-lines file (blank lines skipped); [] when it is missing.

  A line that is not JSON (the last one cut short by a crash or a full disk, or an edited
  one) is dropped with a `DamagedFileWarning` naming the file and line.
  """
  if not os.path.isfile(path):
    return []
  entries = []
  with open(path, errors="replace") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        entries.append(json.loads(line))
      except ValueError as e:
        warnings.warn(f"{path} line {number} is not JSON ({e}: {line.strip()[:80]!r}); "
                      f"dropped it.", DamagedFileWarning, stacklevel=2)
  return entries


def save_npy(path: str, array: np.ndarray) -> None:
  """Writes `array` in .npy format (`np.save`) to `path` atomically."""
  write_atomically(path, lambda f: np.save(f, array))
