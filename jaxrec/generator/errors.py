"""The generator's error type: a model, token-layout or T5Config setting that cannot work."""

from __future__ import annotations

from typing import Optional


class ModelConfigError(ValueError):
  """A bad generator configuration: a `T5Config` or `TokenLayout` field, a column
  binding, or model arguments that do not fit together.

  The message names the field or binding, then what to change ("<problem> Fix: <fix>",
  the form of `DataError`). Bad input data (semantic-ID tables, batches) raises
  `jaxrec.data.errors.DataError`.
  """

  def __init__(self, problem: str, *, fix: Optional[str] = None):
    super().__init__(f"{problem} Fix: {fix}" if fix else problem)
    self.problem = problem
    self.fix = fix
