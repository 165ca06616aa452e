"""`load_dataset`: prepare a dataset once with tfds (array_record), then read it back.

Reading needs no TensorFlow: tfds data sources, records parsed in bulk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import decode
from tensorflow_datasets.proto import tf_example_pb2

from jaxrec.data.builders import BUILDERS, JaxrecBuilder
from jaxrec.data.builders.base import ITEM_FIELDS
from jaxrec.data.dataset import ItemTable, SequentialDataset
from jaxrec.data.errors import DataError

DATA_DIR_ENV = "JAXREC_DATA_DIR"
TFDS_DIR_ENV = "JAXREC_TFDS_DIR"
SUBDIRS = {"beauty": "beauty", "sports": "sports", "yelp": "yelp", "ml100k": "ml100k",
           "hm": "hm"}
# Shorthand options: min_interactions sets both k-core thresholds.
ALIASES = {"min_interactions": ("min_user_interactions", "min_item_interactions")}
_BASE_FIELDS = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
_SEQUENCE_KEYS = ("user_id", "line", "items", "timestamps")
_READ_CHUNK = 65536


def dataset_names() -> tuple:
  """Names `load_dataset` accepts."""
  return tuple(BUILDERS) + ("synthetic",)


def default_data_dir() -> str:
  """Where tfds writes prepared data: $JAXREC_TFDS_DIR or ~/tensorflow_datasets."""
  return os.environ.get(TFDS_DIR_ENV) or os.path.expanduser("~/tensorflow_datasets")


def default_manual_dir(name: str) -> str:
  """$JAXREC_DATA_DIR/<name>; DataError if the variable is unset."""
  root = os.environ.get(DATA_DIR_ENV)
  if name not in SUBDIRS:
    raise DataError(f"dataset {name!r} has no default manual dir",
                    fix="pass manual_dir= (the folder with the sequences and items files).")
  if not root:
    raise DataError(f"no manual dir for dataset {name!r}",
                    fix=f"pass manual_dir= or set {DATA_DIR_ENV} to the folder holding "
                        f"{', '.join(s + '/' for s in SUBDIRS.values())}.")
  return os.path.join(root, SUBDIRS[name])


def make_config(name: str, **options) -> tfds.core.BuilderConfig:
  """The builder config for `name` with `options` applied (see the *Config classes).

  Options equal to the defaults give the named default config; others give a
  config whose name encodes them, so each variant is prepared separately.
  """
  if name not in BUILDERS:
    raise DataError(f"unknown dataset {name!r}", fix=f"use one of {dataset_names()}.")
  cls = BUILDERS[name]
  if cls.BUILDER_CONFIGS:
    default = cls.BUILDER_CONFIGS[0]
  else:
    from jaxrec.data.builders import S3RecConfig  # pylint: disable=g-import-not-at-top
    default = S3RecConfig(name="custom")
  for alias, targets in ALIASES.items():
    if alias in options:
      value = options.pop(alias)
      for t in targets:
        options.setdefault(t, value)
  allowed = sorted(f.name for f in dataclasses.fields(default) if f.name not in _BASE_FIELDS)
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise DataError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}",
                    fix=f"use {', '.join(allowed + list(ALIASES))}.")
  if "text_fields" in options:
    fields = options["text_fields"]
    options["text_fields"] = tuple(fields.split(",") if isinstance(fields, str) else fields)
  changed = {k: v for k, v in options.items() if getattr(default, k) != v}
  if name == "s3rec" and not options.get("sequences_file"):
    raise DataError("dataset 's3rec' needs the option sequences_file",
                    fix="pass sequences_file='Name.txt' (and items_file, text_fields).")
  if not changed:
    return default
  return dataclasses.replace(default, name=_config_name(changed), **changed)


def _config_name(changed: dict) -> str:
  parts = []
  for k in sorted(changed):
    v = changed[k]
    v = ("-".join(map(str, v)) if isinstance(v, tuple) else
         str(int(v)) if isinstance(v, bool) else str(v))
    parts.append(f"{k}-{v}")
  text = re.sub(r"[^a-z0-9_.-]+", "", "_".join(parts).lower())
  digest = hashlib.sha1(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()
  return (text[:80] + "_" + digest[:8]) if len(text) > 80 else (text or digest[:8])


def make_builder(name: str, data_dir: Optional[str] = None, **options) -> JaxrecBuilder:
  """The tfds builder for dataset `name` with `options` (array_record files)."""
  config = make_config(name, **options)
  return BUILDERS[name](config=config, data_dir=data_dir or default_data_dir(),
                        file_format="array_record")


def prepare(name: str, manual_dir: Optional[str] = None, data_dir: Optional[str] = None,
            **options) -> JaxrecBuilder:
  """Prepares dataset `name` unless an up-to-date prepared copy exists.

  A prepared copy is rebuilt when the files it was made from changed (size,
  modification time or manual dir); it is used as is when no manual_dir was
  passed and the default one is absent. A failed preparation leaves nothing
  that would be taken for a finished dataset.

  Returns:
    The builder (its data is ready to read).

  Raises:
    DataError: missing manual dir / files, or any bad input (file and line named).
  """
  builder = make_builder(name, data_dir, **options)
  explicit = manual_dir is not None
  if not explicit:
    try:
      manual_dir = default_manual_dir(name)
    except DataError:
      if builder.is_prepared():
        return builder
      raise
  manual_dir = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.is_prepared():
    if not explicit and not os.path.isdir(manual_dir):
      return builder  # Prepared earlier; the raw files are not needed.
    stored = dict(builder.info.metadata)
    current = builder.input_fingerprint(manual_dir)
    if all(stored.get(k) == v for k, v in current.items()):
      return builder
    logging.info("Inputs of %s changed since it was prepared; preparing again.",
                 builder.info.full_name)
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
  builder.check_manual_dir(manual_dir)
  created = [d for d in (builder.data_path.parent, builder.data_path.parent.parent)
             if not d.exists()]
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, download_mode=mode))
  except Exception as e:  # pylint: disable=broad-except
    for d in created:  # tfds removed its incomplete.* dir; drop the empty parents.
      if d.is_dir() and not any(p.name != ".config" for p in d.iterdir()):
        shutil.rmtree(d, ignore_errors=True)
    error = _find_data_error(e)
    if error is not None:
      raise DataError(error.problem, path=error.path, line=error.line,
                      fix=error.fix) from None
    fresh = make_builder(name, data_dir, **options)
    if fresh.is_prepared():  # Another process finished the same preparation.
      return fresh
    raise
  return make_builder(name, data_dir, **options)


def _find_data_error(e: BaseException) -> Optional[DataError]:
  """The DataError `e` is or wraps (tfds may re-raise with a prefix)."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, DataError):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


def load_dataset(name: str, manual_dir: Optional[str] = None,
                 data_dir: Optional[str] = None, **options) -> SequentialDataset:
  """Loads a dataset as a SequentialDataset, preparing it with tfds if needed.

  Args:
    name: one of `dataset_names()`: "beauty", "sports", "yelp", "ml100k",
      "hm", "s3rec" (generic, needs sequences_file=...) or "synthetic".
    manual_dir: the folder with the raw files; default $JAXREC_DATA_DIR/<name>.
    data_dir: where tfds keeps prepared data; default $JAXREC_TFDS_DIR or
      ~/tensorflow_datasets.
    **options: builder options (S3RecConfig, Ml100kConfig, HmConfig fields;
      `min_interactions` sets both k-core thresholds). For "synthetic", the
      fields of `SyntheticConfig`.

  Raises:
    DataError: unknown name/option, missing files, or bad input data.
  """
  if name == "synthetic":
    from jaxrec.data import synthetic  # pylint: disable=g-import-not-at-top
    allowed = [f.name for f in dataclasses.fields(synthetic.SyntheticConfig)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
      raise DataError(f"unknown option(s) {', '.join(unknown)} for dataset 'synthetic'",
                      fix=f"use {', '.join(allowed)}.")
    return synthetic.generate_catalog(synthetic.SyntheticConfig(**options))
  return read_prepared(prepare(name, manual_dir, data_dir, **options))


def _records(source) -> list:
  """Feature maps of every record of a RAW_BYTES data source, read in chunks."""
  out = []
  for lo in range(0, len(source), _READ_CHUNK):
    keys = list(range(lo, min(lo + _READ_CHUNK, len(source))))
    out.extend(tf_example_pb2.Example.FromString(r).features.feature
               for r in source.__getitems__(keys))
  return out


def _strings(records: list, key: str) -> np.ndarray:
  return np.array([r[key].bytes_list.value[0].decode("utf-8") for r in records], dtype=object)


def _ints(records: list, key: str) -> np.ndarray:
  return np.fromiter((r[key].int64_list.value[0] for r in records), np.int64, len(records))


def read_prepared(builder: JaxrecBuilder) -> SequentialDataset:
  """Reads a prepared builder's two splits into a SequentialDataset."""
  sources = builder.as_data_source(deserialize_method=decode.DeserializeMethod.RAW_BYTES)
  meta = dict(builder.info.metadata)
  seqs = _records(sources["sequences"])
  lists = [r["items"].int64_list.value for r in seqs]
  lengths = np.fromiter(map(len, lists), np.int64, len(lists))
  items = np.fromiter(itertools.chain.from_iterable(lists), np.int64, int(lengths.sum()))
  timestamps = None
  if meta.get("has_timestamps"):
    raw = b"".join(r["timestamps"].bytes_list.value[0] for r in seqs)
    timestamps = np.frombuffer(raw, dtype="<f8").astype(np.float64)
  lines = _ints(seqs, "line")
  rows = _records(sources["items"])
  if not np.array_equal(_ints(rows, "item_id"), np.arange(1, len(rows) + 1)):
    raise DataError("prepared items are not in id order 1..N",
                    path=os.fspath(builder.data_path),
                    fix="delete this folder and prepare the dataset again.")
  pad = lambda col: np.concatenate([np.array([""], dtype=object), col])
  attributes = {}
  for key, feature in builder.info.features.items():
    if key not in _SEQUENCE_KEYS and key != "item_id" and feature.np_dtype == np.int64:
      attributes[key] = np.concatenate([[-1], _ints(rows, key)]).astype(np.int32)
  table = ItemTable(
      raw_ids=pad(_strings(rows, "raw_id")), text=pad(_strings(rows, "text")),
      image_paths=pad(_strings(rows, "image_path")), attributes=attributes,
      fields={f: pad(_strings(rows, f)) for f in ITEM_FIELDS})
  return SequentialDataset(
      name=meta.get("name", builder.name.removeprefix("jaxrec_")),
      items=items.astype(np.int32),
      offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
      user_ids=_strings(seqs, "user_id"), item_table=table, timestamps=timestamps,
      source=meta.get("source", ""), user_lines=lines if lines.any() else None)
