"""The one module that imports gin: parse gin files and flags, run entry functions, save operative configs.

Library code stays undecorated; gin files bind its frozen `*Config` dataclasses
and entry functions through `from __gin__ import dynamic_registration`.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Optional, Sequence

import gin

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
GIN_SEARCH_PATHS = (REPO_ROOT, REPO_ROOT / "gin_configs")


class ConfigError(ValueError):
  """A gin file or binding is wrong; the message names it and the fix."""


def parse(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> None:
  """Clears gin and parses the files (in order: later ones override) and bindings."""
  gin.clear_config()
  for path in GIN_SEARCH_PATHS:
    gin.add_config_file_search_path(str(path))
  for f in gin_files:
    if not _find(f):
      raise ConfigError(f"gin file {f!r} not found (searched the working directory and "
                        f"{', '.join(str(p) for p in GIN_SEARCH_PATHS)}). Fix: pass a path "
                        "like gin_configs/runs/baselines.gin.")
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings))
  except (ValueError, SyntaxError, ImportError, KeyError, NameError) as e:
    raise ConfigError(f"could not parse gin files {list(gin_files)} / bindings "
                      f"{list(bindings)}: {e}") from e


def _find(path: str) -> Optional[pathlib.Path]:
  for base in (pathlib.Path.cwd(),) + GIN_SEARCH_PATHS:
    candidate = base / path
    if candidate.is_file():
      return candidate
  return None


def run(fn: Callable, **kwargs):
  """Calls `fn` with its gin bindings (dynamic registration); REQUIRED macros are checked."""
  try:
    return gin.get_configurable(fn)(**kwargs)
  except RuntimeError as e:
    if "Required bindings" in str(e):
      raise ConfigError(f"{e}. Fix: bind it in your gin file or pass "
                        f"--gin.BINDING=value (the run gin file lists its REQUIRED macros "
                        f"at the top).") from e
    raise


def operative_config() -> str:
  return gin.operative_config_str()


def config_str() -> str:
  return gin.config_str()


def save_config(workdir: str, name: str = "config.gin", operative: bool = True) -> str:
  """Writes the operative (or full) config into workdir atomically; returns the path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(operative_config() if operative else config_str())
  os.replace(tmp, path)
  return path


def split_gin_flags(argv: Sequence[str]) -> tuple:
  """Splits t5x-style `--gin.NAME=VALUE` arguments off argv: (bindings, rest)."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      name, _, value = arg[len("--gin."):].partition("=")
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return bindings, rest


def clear() -> None:
  gin.clear_config()
