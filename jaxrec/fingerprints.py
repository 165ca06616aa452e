"""The one fingerprint: what identifies a stage's inputs and configuration, by value.

`canonical(value)` is a JSON-able, address-free description of a configuration value;
`fingerprint(value)` hashes it. Neither reads gin: a job is described by the arguments it
receives, which come with it as a `Bound` (what `configs.bound` makes of a gin-configured
function at the gin boundary) or a `functools.partial` (plain Python). `sha256_file`
hashes artifacts by content.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any, Callable, Mapping, Optional, Sequence

# Config fields that change no result (io and logging).
IO_FIELDS = {"BatchingConfig": ("num_threads", "prefetch")}


@dataclasses.dataclass(frozen=True)
class Bound:
  """A function and the keyword arguments it receives from elsewhere (gin's bindings).

  Calling it calls `func` as given (gin then injects and logs its own bindings);
  `arguments` are those bindings, read once, so a stage's identity hashes the values the
  job receives. Plain Python uses `functools.partial` for the same purpose.
  """
  func: Callable
  arguments: Mapping[str, Any]

  def __call__(self, *args, **kwargs):
    return self.func(*args, **kwargs)


def arguments(fn: Any) -> dict:
  """The keyword arguments a `Bound` or `functools.partial` carries ({} otherwise)."""
  if isinstance(fn, Bound):
    return dict(fn.arguments)
  if isinstance(fn, functools.partial):
    return {**arguments(fn.func), **fn.keywords}
  return {}


def function_name(fn: Any) -> str:
  """module.qualname of a function, a `Bound`'s or a partial's function."""
  while isinstance(fn, (Bound, functools.partial)):
    fn = fn.func
  func = getattr(fn, "__wrapped__", None) or getattr(fn, "__func__", fn)
  return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def sha256_file(path: str) -> str:
  """The full SHA-256 hex digest of a file's content."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def canonical(value: Any, drop: Optional[Mapping[str, Sequence[str]]] = None,
              depth: int = 0) -> Any:
  """A JSON-able, address-free description of a configuration value.

  Dataclasses become {"__config__": class name, field: ...} minus the fields
  `drop` lists for their class name (and IO_FIELDS); functions become
  {"__fn__": "module.qualname", "bindings": the arguments they carry (`arguments`)}.
  """
  drop = drop or {}
  if depth > 8:
    return repr(value)
  if dataclasses.is_dataclass(value) and not isinstance(value, (type, Bound)):
    name = type(value).__name__
    skip = set(IO_FIELDS.get(name, ())) | set(drop.get(name, ()))
    out = {"__config__": name}
    out.update({f.name: canonical(getattr(value, f.name), drop, depth + 1)
                for f in dataclasses.fields(value) if f.name not in skip})
    return out
  if isinstance(value, Mapping):
    return {str(k): canonical(v, drop, depth + 1) for k, v in sorted(value.items(), key=str)}
  if isinstance(value, (list, tuple)):
    return [canonical(v, drop, depth + 1) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if hasattr(value, "item") and getattr(value, "shape", None) == ():
    return value.item()  # NumPy scalars.
  if callable(value):
    return {"__fn__": function_name(value),
            "bindings": canonical(arguments(value), drop, depth + 1)}
  return repr(value)


def fingerprint(value: Any) -> str:
  """The one fingerprint: a 16-hex-digit SHA-256 of `canonical(value)` (`digest`)."""
  return digest(canonical(value))


def digest(value: Any) -> str:
  """The hash under every fingerprint: 16 hex digits of the SHA-256 of value's key-sorted
  JSON (non-JSON leaves as str). Checkpoint identities (trainer trajectory, generator,
  SASRec, LightGCN, checkpoint metadata) hash their own JSON descriptions with it, which are
  the ones their checkpoints were written with, so trained checkpoints still resume."""
  blob = json.dumps(value, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sha256_bytes(data: bytes) -> str:
  """The full SHA-256 hex digest of raw bytes (e.g. an ID table's)."""
  return hashlib.sha256(data).hexdigest()
