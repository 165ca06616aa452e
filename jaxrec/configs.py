"""The one module that imports gin: parse gin files and flags, run entry functions, save operative configs.

Library code stays undecorated; gin files bind its frozen `*Config` dataclasses
and entry functions through `from __gin__ import dynamic_registration`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pathlib
from typing import Any, Callable, Optional, Sequence

import gin

from jaxrec import fingerprints

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
  return _call(gin.get_configurable(fn), kwargs)


def _call(configurable: Callable, kwargs: dict):
  try:
    return configurable(**kwargs)
  except RuntimeError as e:
    if "Required bindings" in str(e):
      raise ConfigError(f"{e}. Fix: bind it in your gin file or pass "
                        f"--gin.BINDING=value (the run gin file lists its REQUIRED macros "
                        f"at the top).") from e
    raise


# The macro a run gin file selects its job with (`JOB = @baselines_job.evaluate_baselines`).
JOB_MACRO = "JOB"
_JOB_FIX = (f"Fix: add e.g. `{JOB_MACRO} = @baselines_job.evaluate_baselines` or "
            f"`{JOB_MACRO} = @system_pipeline.run_system` to the run gin file (with its "
            "`from jaxrec import ...` line), or pass a run gin file that selects one: "
            "--gin_file=gin_configs/runs/baselines.gin or gin_configs/papers/tiger.gin.")


def selected_job() -> Callable:
  """The job the parsed gin files select with `JOB = @module.function` (no parentheses).

  Returns:
    The gin-configurable function: calling it applies its bindings.

  Raises:
    ConfigError: no JOB macro, or one that is not an unevaluated function reference.
  """
  try:
    value = gin.query_parameter("%" + JOB_MACRO)
  except ValueError:
    raise ConfigError(f"the gin files select no job (macro {JOB_MACRO} is not bound). "
                      f"{_JOB_FIX}") from None
  if not isinstance(value, gin.config.ConfigurableReference) or value.evaluate:
    raise ConfigError(f"{JOB_MACRO} = {value!r} is not a job: bind it to a function "
                      f"reference without parentheses. {_JOB_FIX}")
  return copy.deepcopy(value)  # An unevaluated reference: the configurable function itself.


def run_job(**kwargs):
  """Calls the selected job (`selected_job`) with its gin bindings and `kwargs`."""
  return _call(selected_job(), kwargs)


def bound_arguments(fn: Callable) -> dict:
  """The keyword arguments gin passes to `fn`, references and macros evaluated.

  Evaluated references (`@Config()`) become their values (e.g. a config
  dataclass with its own bindings applied); unevaluated ones (`@fn`) become the
  configurable function, whose bindings this function returns in turn. Arguments
  gin does not bind are absent. Returns {} for a function gin does not know.
  """
  try:
    return dict(gin.get_bindings(fn))
  except (ValueError, TypeError):  # Not in the gin registry (e.g. plain Python).
    return {}


def bound(fn: Any) -> Any:
  """`fn` with the arguments gin binds to it, as a `fingerprints.Bound` (their functions
  bound in turn), so the pipeline hashes the values a job receives without reading gin;
  anything gin does not configure is returned as it is.

  Calling the result calls `fn` itself, so gin still injects (and logs as operative)
  the same bindings.
  """
  if isinstance(fn, fingerprints.Bound) or not callable(fn) or isinstance(fn, type):
    return fn
  arguments = bound_arguments(fn)
  if not arguments:
    return fn
  return fingerprints.Bound(fn, {k: _bound_values(v) for k, v in arguments.items()})


def _bound_values(value: Any, depth: int = 0) -> Any:
  """`value` with every gin-configured function inside it (config fields, lists, dicts)
  replaced by `bound(function)`; other values as they are."""
  if depth > 8:
    return value
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    changed = {f.name: _bound_values(getattr(value, f.name), depth + 1)
               for f in dataclasses.fields(value) if f.init}
    changed = {k: v for k, v in changed.items() if v is not getattr(value, k)}
    return dataclasses.replace(value, **changed) if changed else value
  if isinstance(value, dict):
    return {k: _bound_values(v, depth + 1) for k, v in value.items()}
  if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
    return type(value)(_bound_values(v, depth + 1) for v in value)
  if callable(value) and not isinstance(value, type):
    return bound(value)
  return value


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
