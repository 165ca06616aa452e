"""Reads LEGACY torch checkpoints (`torch.save(..., _use_new_zipfile_serialization=False)`,
the only format before torch 1.6) into numpy, without torch and without running any code.

The file is a sequence of pickles followed by raw tensor bytes:

  1. the magic number 0x1950a86a20f9469cfc6c, 2. the protocol version 1001,
  3. sys_info {protocol_version, little_endian, type_sizes},
  4. the main object (a state dict) whose tensors are
     `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls and whose
     storages are persistent ids ('storage', <torch.FloatStorage>, key, location, numel,
     view_metadata),
  5. the list of storage keys, in the order their bytes follow,
  6. per key: int64 element count (little-endian), then count * itemsize raw bytes.

A restricted unpickler resolves only the globals a state dict needs (OrderedDict, the
tensor rebuild functions, the storage types); any other global raises DataError
"refusing to unpickle <module.name>" before anything is called. Strides are honoured
(some converted checkpoints store transposed views) and bounds-checked against the
storage.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import struct
import zipfile
from typing import Any, Optional

import ml_dtypes
import numpy as np

from jaxrec.data.errors import DataError

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_FIX = ("only plain state dicts (tensors in dicts) are read; re-save the weights with "
        "torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False) "
        "or as .npz.")


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stands in for torch.FloatStorage & co. during unpickling."""
  name: str

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass(eq=False)
class _Storage:
  """A storage whose bytes follow the pickles; `data` is filled in after them."""
  key: str
  dtype: np.dtype
  numel: int
  data: Optional[np.ndarray] = None  # [numel] once read.
  root: Optional["_Storage"] = None  # For views: the storage this one slices.
  offset: int = 0  # Element offset of a view in its root.

  def array(self) -> np.ndarray:
    if self.root is not None:
      return self.root.array()[self.offset:self.offset + self.numel]
    return self.data


@dataclasses.dataclass(eq=False)
class _TensorRef:
  """A tensor to materialize once its storage is read: rebuild_tensor_v2's arguments."""
  storage: _Storage
  offset: int
  size: tuple
  stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  if not isinstance(storage, _Storage):
    raise DataError("a tensor refers to something that is not a storage", fix=_FIX)
  return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                    tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  del requires_grad, backward_hooks
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED` globals; storages come back as `_Storage` placeholders."""

  def __init__(self, file, path: str, storages: dict, allow_globals: bool = True):
    super().__init__(file)
    self._path = path
    self._storages = storages
    self._allow_globals = allow_globals

  def find_class(self, module: str, name: str) -> Any:
    if self._allow_globals and (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise DataError(f"refusing to unpickle {module}.{name}", path=self._path, fix=_FIX)

  def persistent_load(self, pid: Any) -> Any:
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise DataError(f"unsupported persistent id {str(pid)[:80]}", path=self._path, fix=_FIX)
    _, storage_type, key, _, numel, view = pid
    key = str(key)
    if key not in self._storages:
      self._storages[key] = _Storage(key, storage_type.dtype, int(numel))
    root = self._storages[key]
    if view is None:
      return root
    view_key, offset, view_numel = view
    view_key = str(view_key)
    if view_key not in self._storages:
      self._storages[view_key] = _Storage(view_key, root.dtype, int(view_numel), root=root,
                                          offset=int(offset))
    return self._storages[view_key]


def _materialize(obj: Any, path: str, little_endian: bool) -> Any:
  """Replaces every _TensorRef inside dicts/lists/tuples by a numpy array (a copy)."""
  if isinstance(obj, _TensorRef):
    flat = obj.storage.array()
    if not little_endian:
      flat = flat.byteswap()
    if any(s < 0 for s in obj.size) or any(s < 0 for s in obj.stride):
      raise DataError("a tensor has a negative size or stride", path=path, fix=_FIX)
    if 0 in obj.size:
      return np.zeros(obj.size, flat.dtype)
    last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride))
    if obj.offset < 0 or last >= len(flat):
      raise DataError(f"a tensor of size {obj.size} reads past its storage "
                      f"({len(flat)} elements)", path=path, fix="the file is corrupt.")
    base = flat[obj.offset:]
    view = np.lib.stride_tricks.as_strided(
        base, obj.size, [s * flat.dtype.itemsize for s in obj.stride], writeable=False)
    return np.array(view, order="C")
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v, path, little_endian)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v, path, little_endian) for v in obj)
  return obj


def _state_dict(obj: Any, path: str) -> dict:
  """The {name: array} mapping in `obj` (itself, or its 'state_dict' / 'model' entry)."""
  for key in ("state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict) or not all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
    raise DataError("the checkpoint is not a state dict of tensors", path=path, fix=_FIX)
  return obj


def load_legacy_torch(path: str) -> "collections.OrderedDict[str, np.ndarray]":
  """Reads a legacy-format torch state dict without torch.

  Args:
    path: a `.pth` / `.pt` file written by torch < 1.6 (or with
      `_use_new_zipfile_serialization=False`).

  Returns:
    The state dict, name -> numpy array (a copy, C-contiguous, the storage's dtype:
    float32 for FloatStorage, int64 for e.g. BatchNorm's num_batches_tracked).

  Raises:
    DataError: missing file, the zip format, a global outside the allow-list, a bad
      magic number, truncated or inconsistent storage data.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError("torch checkpoint not found", path=path,
                    fix="check the path or reinstall the package that ships it.")
  if zipfile.is_zipfile(path):
    raise DataError("this is a zip-format torch checkpoint (torch >= 1.6); only the legacy "
                    "format is read", path=path,
                    fix="re-save it with torch.save(sd, path, "
                        "_use_new_zipfile_serialization=False).")
  with open(path, "rb") as f:
    try:
      header = [_Unpickler(f, path, {}, allow_globals=False).load() for _ in range(3)]
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
      if isinstance(e, DataError):
        raise
      raise DataError(f"not a torch checkpoint ({e})", path=path, fix=_FIX) from None
    magic, protocol, sys_info = header
    if magic != MAGIC_NUMBER or protocol != PROTOCOL_VERSION or not isinstance(sys_info, dict):
      raise DataError("not a legacy torch checkpoint (bad magic number or protocol)",
                      path=path, fix=_FIX)
    little_endian = bool(sys_info.get("little_endian", True))
    storages: dict = {}
    try:
      main = _Unpickler(f, path, storages).load()
      keys = _Unpickler(f, path, {}, allow_globals=False).load()
    except (pickle.UnpicklingError, EOFError) as e:
      raise DataError(f"truncated or corrupt pickle ({e})", path=path, fix=_FIX) from None
    if not isinstance(keys, list):
      raise DataError("the storage key list is missing", path=path, fix=_FIX)
    for key in keys:
      storage = storages.get(str(key))
      if storage is None or storage.root is not None:
        raise DataError(f"storage {key!r} is listed but never used", path=path, fix=_FIX)
      raw = f.read(8)
      if len(raw) < 8:
        raise DataError(f"file ends before storage {key!r}", path=path,
                        fix="the file is truncated; reinstall or re-download it.")
      count = struct.unpack("<q" if little_endian else ">q", raw)[0]
      if count != storage.numel:
        raise DataError(f"storage {key!r} holds {count} elements, the pickle says "
                        f"{storage.numel}", path=path, fix="the file is corrupt.")
      nbytes = count * storage.dtype.itemsize
      data = f.read(nbytes)
      if len(data) < nbytes:
        raise DataError(f"file ends inside storage {key!r}", path=path,
                        fix="the file is truncated; reinstall or re-download it.")
      storage.data = np.frombuffer(data, storage.dtype)
    missing = [k for k, s in storages.items() if s.root is None and s.data is None]
    if missing:
      raise DataError(f"{len(missing)} storages have no data (e.g. {missing[0]!r})",
                      path=path, fix="the file is corrupt.")
  return _state_dict(_materialize(main, path, little_endian), path)

