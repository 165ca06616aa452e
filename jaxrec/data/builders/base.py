"""Shared tfds machinery: the two splits' features, example generation, input fingerprints.

All parsing happens in `_split_generators`: a bad file raises before any record is written.
"""

from __future__ import annotations

import abc
import inspect
import os
from typing import Optional, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data.dataset import SequentialDataset
from jaxrec.data.errors import DataError

VERSION = "1.0.0"
ITEM_FIELDS = ("title", "categories", "keywords", "description")
SENTENCE_ENDS = (".", "!", "?")


def features(attributes: Sequence[str] = ()) -> tfds.features.FeaturesDict:
  """The features of both splits (tfds has one schema per dataset).

  `sequences` examples (one per user) fill user_id, line, items, timestamps;
  `items` examples (one per item, in id order) fill item_id, raw_id, text,
  image_path, the text fields and the int `attributes`. Each split leaves the
  other's keys at their defaults ("" / 0 / empty). Timestamps are stored as
  raw float64 bytes: tf.Example's float_list would round them to float32.
  """
  spec = {
      "user_id": tfds.features.Text(),
      "line": np.int64,
      "items": tfds.features.Tensor(shape=(None,), dtype=np.int64),
      "timestamps": tfds.features.Tensor(shape=(None,), dtype=np.float64,
                                         encoding=tfds.features.Encoding.BYTES),
      "item_id": np.int64,
      "raw_id": tfds.features.Text(),
      "text": tfds.features.Text(),
      "image_path": tfds.features.Text(),
  }
  spec.update({f: tfds.features.Text() for f in ITEM_FIELDS})
  spec.update({a: np.int64 for a in attributes})
  return tfds.features.FeaturesDict(spec)


def sentence(label: str, value: str) -> str:
  """'Label: value.' (no second period when value already ends a sentence)."""
  value = value.strip()
  if not value:
    return ""
  end = "" if value.endswith(SENTENCE_ENDS) else "."
  return f"{label}: {value}{end}" if label else f"{value}{end}"


def compose_text(parts: Sequence[tuple]) -> str:
  """Joins (label, value) pairs as 'Label: value.' sentences, skipping empty values."""
  return " ".join(s for s in (sentence(l, v) for l, v in parts) if s)


def fingerprint(manual_dir: str, names: Sequence[str]) -> dict:
  """Sizes and modification times of the inputs (directories: entry count)."""
  out = {}
  for name in names:
    path = os.path.join(manual_dir, name)
    if os.path.isdir(path):
      out[name] = [len(os.listdir(path)), os.stat(path).st_mtime_ns]
    elif os.path.isfile(path):
      st = os.stat(path)
      out[name] = [st.st_size, st.st_mtime_ns]
  return out


def list_images(directory: str, suffix: str = ".jpg") -> set:
  """Names (without suffix) of the image files in `directory` (empty if absent)."""
  if not os.path.isdir(directory):
    return set()
  return {f[:-len(suffix)] for f in os.listdir(directory) if f.endswith(suffix)}


class JaxrecBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the jaxrec builders: splits `sequences` and `items`.

  Subclasses implement `required_files`, `optional_files` and `build` (parse
  the manual dir into a SequentialDataset).
  """

  VERSION = tfds.core.Version(VERSION)
  disable_shuffling = True  # file order is meaningful (chronology, ids).
  ATTRIBUTES: tuple = ()
  HOMEPAGE = ""
  UPSTREAM = ""  # Where the raw files are published (named in error messages).
  CITATION = ""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds's own lookup needs `importlib_resources` for editable installs.
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=(type(self).__doc__ or "").strip(),
        features=features(self.ATTRIBUTES), homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None, metadata=tfds.core.MetadataDict(),
        disable_shuffling=True)

  @abc.abstractmethod
  def required_files(self) -> list:
    """Names (relative to the manual dir) that must exist."""

  def optional_files(self) -> list:
    """Names (relative to the manual dir) read when present."""
    return []

  @abc.abstractmethod
  def build(self, manual_dir: str) -> SequentialDataset:
    """Parses and preprocesses the manual dir (raises DataError on bad input)."""

  def check_manual_dir(self, manual_dir: Optional[str]) -> None:
    """DataError naming the path and the expected files if anything is missing."""
    required = self.required_files()
    optional = self.optional_files()
    expected = ", ".join(required) + (
        f" (optional: {', '.join(optional)})" if optional else "")
    name = self.name.removeprefix("jaxrec_")
    hint = (f"put {expected} in that folder (offline: the jaxrec data bundle's {name}/ "
            f"folder; online: {self.UPSTREAM}), then pass it as manual_dir or set "
            "JAXREC_DATA_DIR to its parent.")
    if not manual_dir or not os.path.isdir(manual_dir):
      raise DataError(f"manual dir for {name} does not exist; expected the "
                      f"files {expected}", path=str(manual_dir), fix=hint)
    missing = [f for f in required if not os.path.exists(os.path.join(manual_dir, f))]
    if missing:
      raise DataError(f"missing {', '.join(missing)} for {name}; expected the "
                      f"files {expected}", path=str(manual_dir), fix=hint)

  def input_fingerprint(self, manual_dir: str) -> dict:
    """What the prepared data was built from (compared before reusing it)."""
    return {"manual_dir": os.path.abspath(manual_dir),
            "inputs": fingerprint(manual_dir, self.required_files() + self.optional_files())}

  def _split_generators(self, dl_manager):
    manual_dir = getattr(dl_manager, "_manual_dir", None)
    self.check_manual_dir(None if manual_dir is None else os.fspath(manual_dir))
    manual_dir = os.fspath(dl_manager.manual_dir)
    dataset = self.build(manual_dir)
    self.info.metadata.update(self.input_fingerprint(manual_dir))
    self.info.metadata["name"] = dataset.name
    self.info.metadata["source"] = dataset.source
    self.info.metadata["has_timestamps"] = dataset.timestamps is not None
    return {"sequences": self._generate_examples(dataset, "sequences"),
            "items": self._generate_examples(dataset, "items")}

  def _blank(self) -> dict:
    blank = {"user_id": "", "line": 0, "items": np.zeros([0], np.int64),
             "timestamps": np.zeros([0], np.float64), "item_id": 0, "raw_id": "",
             "text": "", "image_path": ""}
    blank.update({f: "" for f in ITEM_FIELDS})
    blank.update({a: -1 for a in self.ATTRIBUTES})
    return blank

  def _generate_examples(self, dataset: SequentialDataset, split: str):
    blank = self._blank()
    if split == "sequences":
      ts = dataset.timestamps
      lines = dataset.user_lines
      empty = np.zeros([0], np.float64)
      for u in range(dataset.num_users):
        lo, hi = int(dataset.offsets[u]), int(dataset.offsets[u + 1])
        yield u, {**blank, "user_id": str(dataset.user_ids[u]),
                  "line": int(lines[u]) if lines is not None else 0,
                  "items": dataset.items[lo:hi].astype(np.int64),
                  "timestamps": empty if ts is None else ts[lo:hi]}
    else:
      table = dataset.item_table
      for i in range(1, table.num_items + 1):
        example = {**blank, "item_id": i, "raw_id": str(table.raw_ids[i]),
                   "text": str(table.text[i]), "image_path": str(table.image_paths[i])}
        for f in ITEM_FIELDS:
          example[f] = str(table.fields[f][i]) if f in table.fields else ""
        for a in self.ATTRIBUTES:
          example[a] = int(table.attributes[a][i]) if a in table.attributes else -1
        yield i - 1, example
