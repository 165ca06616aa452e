"""tfds builders for the S3-Rec sequence format: generic, Amazon Beauty/Sports and Yelp.

Files: `<Name>.txt` (`user item item ...`, no timestamps) and optional `items.tsv`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data import preprocess, readers
from jaxrec.data.builders import base
from jaxrec.data.dataset import ItemTable, SequentialDataset
from jaxrec.data.errors import DataError

# items.tsv columns that can hold each item-table field, by preference.
FIELD_COLUMNS = {"title": ("title", "name"), "categories": ("categories", "attributes"),
                 "keywords": ("keywords",), "description": ("description",)}
RAW_ID_COLUMNS = ("asin", "business_id", "raw_id")
LABELS = {"title": "Title", "name": "Name", "attributes": "Categories",
          "categories": "Categories", "keywords": "Keywords", "description": "Description"}
AUTO_TEXT_FIELDS = ("title", "name", "attributes", "categories", "keywords", "description")

S3REC_INSTRUCTIONS = """\
Put the S3-Rec files of the dataset in the manual dir: {files}.
Offline: use the jaxrec data bundle (its {folder}/ folder). Online: the sequences file
is published at https://github.com/RUCAIBox/CIKM2020-S3Rec/tree/master/data ; item
text (titles, categories) comes from the Amazon 2014 metadata
(https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html) or the Yelp Open Dataset,
written as items.tsv: tab-separated, header `item_id<TAB>column...`, one row per
S3-Rec item id 1..N in order, empty field = unknown. Without items.tsv the items
have no text.
"""


@dataclasses.dataclass(eq=False)
class S3RecConfig(tfds.core.BuilderConfig):
  """Which files of an S3-Rec style dataset to read, and how.

  Attributes:
    sequences_file: the `user_id item item ...` file in the manual dir.
    items_file: the items.tsv in the manual dir; None (or a missing file)
      gives items without text.
    text_fields: items.tsv columns composing the text, in order ("Title: X.
      Categories: Y. Keywords: Z."); empty = every known text column present.
    min_user_interactions: k-core on users (0 = off; S3-Rec files are 5-core).
    min_item_interactions: k-core on items (0 = off).
  """
  sequences_file: str = ""
  items_file: Optional[str] = "items.tsv"
  text_fields: tuple = ()
  min_user_interactions: int = 0
  min_item_interactions: int = 0


class S3RecBuilder(base.JaxrecBuilder):
  """Any dataset in the S3-Rec format (pass an `S3RecConfig`)."""

  name = "jaxrec_s3rec"
  MANUAL_DOWNLOAD_INSTRUCTIONS = S3REC_INSTRUCTIONS.format(
      files="<Name>.txt and (optionally) items.tsv", folder="<name>")
  HOMEPAGE = "https://github.com/RUCAIBox/CIKM2020-S3Rec"
  UPSTREAM = ("https://github.com/RUCAIBox/CIKM2020-S3Rec/tree/master/data (sequences) and "
              "https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html (Amazon metadata)")
  CITATION = ("Zhou et al., S3-Rec: Self-Supervised Learning for Sequential "
              "Recommendation with Mutual Information Maximization, CIKM 2020.")
  BUILDER_CONFIGS = []

  def _cfg(self) -> S3RecConfig:
    cfg = self.builder_config
    if not isinstance(cfg, S3RecConfig) or not cfg.sequences_file:
      raise DataError(
          f"{self.name} needs an S3RecConfig with sequences_file set",
          fix="pass config=S3RecConfig(name=..., sequences_file='Name.txt').")
    return cfg

  def required_files(self) -> list:
    return [self._cfg().sequences_file]

  def optional_files(self) -> list:
    return [self._cfg().items_file] if self._cfg().items_file else []

  def build(self, manual_dir: str) -> SequentialDataset:
    cfg = self._cfg()
    seq_path = os.path.join(manual_dir, cfg.sequences_file)
    items_path = os.path.join(manual_dir, cfg.items_file) if cfg.items_file else None
    items = None
    if items_path and os.path.isfile(items_path):
      items = readers.read_s3rec_items(items_path)
    seqs = readers.read_s3rec_sequences(
        seq_path, num_items=None if items is None else len(items), items_path=items_path)
    if items is not None:
      readers.check_catalog(seqs, items)
      table = item_table_from_tsv(items, cfg.text_fields)
    else:
      table = ItemTable.empty(seqs.max_item)
    users = np.repeat(np.arange(seqs.num_users, dtype=np.int64), np.diff(seqs.offsets))
    config = preprocess.PreprocessConfig(
        chronological=False, min_user_interactions=cfg.min_user_interactions,
        min_item_interactions=cfg.min_item_interactions, item_order="catalog")
    return preprocess.build_dataset(
        self._dataset_name(), users, seqs.items, table, user_ids=seqs.user_ids,
        config=config, source=os.path.abspath(seq_path), user_lines=seqs.lines)

  def _dataset_name(self) -> str:
    if type(self) is S3RecBuilder:
      return os.path.splitext(os.path.basename(self._cfg().sequences_file))[0].lower()
    return self.name.removeprefix("jaxrec_")


def item_table_from_tsv(items: readers.Table, text_fields: tuple = ()) -> ItemTable:
  """Item table (text, fields, raw ids) from an S3-Rec style items.tsv.

  Raises:
    DataError: a text field names a column the file lacks.
  """
  n = len(items)
  text_fields = tuple(text_fields) or tuple(c for c in AUTO_TEXT_FIELDS if c in items.columns)
  missing = [c for c in text_fields if c not in items.columns]
  if missing:
    raise DataError(
        f"text field(s) {', '.join(missing)} are not columns of the file "
        f"(columns: {', '.join(items.columns)})", path=items.path, line=1,
        fix="set text_fields to columns of the header.")
  cols = [items[c] for c in text_fields]
  labels = [LABELS.get(c, c.replace("_", " ").capitalize()) for c in text_fields]
  text = [""] * (n + 1)
  if cols:
    text = [""] + [base.compose_text(list(zip(labels, vals))) for vals in zip(*cols)]
  raw_col = next((c for c in RAW_ID_COLUMNS if c in items.columns), "item_id")
  fields = {}
  for field, options in FIELD_COLUMNS.items():
    col = next((c for c in options if c in items.columns), None)
    fields[field] = _with_pad(items[col] if col else np.full(n, "", dtype=object))
  return ItemTable(raw_ids=_with_pad(items[raw_col]),
                   text=np.array(text, dtype=object),
                   image_paths=np.full(n + 1, "", dtype=object), fields=fields)


def _with_pad(column: np.ndarray) -> np.ndarray:
  return np.concatenate([np.array([""], dtype=object), np.asarray(column, dtype=object)])


class BeautyBuilder(S3RecBuilder):
  """Amazon Beauty (2014), S3-Rec 5-core: 22,363 users, 12,101 items, 198,502 interactions."""

  name = "jaxrec_beauty"
  MANUAL_DOWNLOAD_INSTRUCTIONS = S3REC_INSTRUCTIONS.format(
      files="Beauty.txt and items.tsv", folder="beauty")
  CITATION = S3RecBuilder.CITATION + (
      " McAuley et al., Image-based recommendations on styles and substitutes, SIGIR 2015.")
  BUILDER_CONFIGS = [S3RecConfig(name="default", sequences_file="Beauty.txt",
                                 text_fields=("title", "attributes", "keywords"))]


class SportsBuilder(S3RecBuilder):
  """Amazon Sports and Outdoors (2014), S3-Rec 5-core: 35,598 users, 18,357 items."""

  name = "jaxrec_sports"
  MANUAL_DOWNLOAD_INSTRUCTIONS = S3REC_INSTRUCTIONS.format(
      files="Sports_and_Outdoors.txt and items.tsv", folder="sports")
  CITATION = BeautyBuilder.CITATION
  BUILDER_CONFIGS = [S3RecConfig(name="default", sequences_file="Sports_and_Outdoors.txt",
                                 text_fields=("keywords",))]


class YelpBuilder(S3RecBuilder):
  """Yelp (S3-Rec preprocessing): 30,431 users, 20,033 businesses, 316,354 visits."""

  name = "jaxrec_yelp"
  MANUAL_DOWNLOAD_INSTRUCTIONS = S3REC_INSTRUCTIONS.format(
      files="Yelp.txt and items.tsv", folder="yelp")
  HOMEPAGE = "https://www.yelp.com/dataset"
  UPSTREAM = ("https://github.com/RUCAIBox/CIKM2020-S3Rec/tree/master/data (sequences) and "
              "https://www.yelp.com/dataset (business names and categories)")
  BUILDER_CONFIGS = [S3RecConfig(name="default", sequences_file="Yelp.txt",
                                 text_fields=("name", "categories", "keywords"))]
