"""The one error type for bad input data: it names the place and the fix."""

from __future__ import annotations

from typing import Optional


class DataError(ValueError):
  """Bad input data.

  The message always says where (file and 1-based line, or the config binding)
  and what the user can do about it.
  """

  def __init__(self, problem: str, *, path: Optional[str] = None,
               line: Optional[int] = None, fix: Optional[str] = None):
    where = ""
    if path is not None:
      where = f"{path}:{line}: " if line is not None else f"{path}: "
    message = where + problem
    if fix:
      message += f" Fix: {fix}"
    super().__init__(message)
    self.path = path
    self.line = line
    self.problem = problem
    self.fix = fix
