"""tfds builder for the H&M Personalized Fashion Recommendations sample (text + photos).

Default: purchases by date (ties keep file order), product_code items, iterated 5-core.
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

TRANSACTIONS, ARTICLES, IMAGES = "transactions.tsv", "articles.tsv", "images"
ITEM_LEVELS = ("product_code", "article")


@dataclasses.dataclass(eq=False)
class HmConfig(tfds.core.BuilderConfig):
  """H&M preprocessing options.

  Attributes:
    item_level: "product_code" (colour variants of a product are one item) or
      "article" (very sparse: its 5-core is empty after dedup).
    dedup: keep only the first purchase of each (customer, item) pair.
    min_user_interactions: k-core on customers (0 = off).
    min_item_interactions: k-core on items (0 = off).
    chronological: order each customer's rows by t_dat (stable).
  """
  item_level: str = "product_code"
  dedup: bool = False
  min_user_interactions: int = 5
  min_item_interactions: int = 5
  chronological: bool = True


class HmBuilder(base.JaxrecBuilder):
  """H&M fashion purchases as sequences, with article text and product photos."""

  name = "jaxrec_hm"
  ATTRIBUTES = ("product_group", "colour_group")
  HOMEPAGE = "https://www.kaggle.com/competitions/h-and-m-personalized-fashion-recommendations"
  UPSTREAM = HOMEPAGE
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put {TRANSACTIONS} in the manual dir, optionally with {ARTICLES} and {IMAGES}/<article_id>.jpg.
Offline: use the jaxrec data bundle's hm/ folder. Online: download the competition data
from https://www.kaggle.com/competitions/h-and-m-personalized-fashion-recommendations
and convert transactions_train.csv / articles.csv to tab-separated files with the
same columns (article_id kept as a 10-digit string); images/<3 digits>/<id>.jpg go
flat into {IMAGES}/.
"""
  BUILDER_CONFIGS = [HmConfig(name="default")]

  def required_files(self) -> list:
    return [TRANSACTIONS]

  def optional_files(self) -> list:
    return [ARTICLES, IMAGES]

  def build(self, manual_dir: str) -> SequentialDataset:
    cfg = self.builder_config
    if cfg.item_level not in ITEM_LEVELS:
      raise DataError(f"unknown item_level {cfg.item_level!r}",
                      fix=f"use one of {ITEM_LEVELS}.")
    tx_path = os.path.join(manual_dir, TRANSACTIONS)
    tx = readers.read_hm_transactions(tx_path)
    art_path = os.path.join(manual_dir, ARTICLES)
    articles = readers.read_hm_articles(art_path) if os.path.isfile(art_path) else None
    article_ids = tx["article_id"]
    keys = article_ids if cfg.item_level == "article" else np.array(
        [product_code(a) for a in article_ids], dtype=object)
    items, item_keys = preprocess.first_appearance_codes(keys)
    table = hm_item_table(item_keys, keys, article_ids, articles,
                          os.path.join(manual_dir, IMAGES), cfg.item_level)
    users, user_ids = preprocess.first_appearance_codes(tx["customer_id"])
    config = preprocess.PreprocessConfig(
        chronological=cfg.chronological, dedup=cfg.dedup,
        min_user_interactions=cfg.min_user_interactions,
        min_item_interactions=cfg.min_item_interactions)
    return preprocess.build_dataset(
        "hm", users, items + 1, table, user_ids=user_ids, config=config,
        timestamps=readers.hm_timestamps(tx), source=os.path.abspath(tx_path))


def product_code(article_id: str) -> str:
  """The product of an article: int of its first 7 digits, as in articles.tsv."""
  return str(int(article_id[:7]))


def article_text(row: dict, colours: Optional[str] = None) -> str:
  """'Title: X. Type: Y. Colour: Z. Pattern: P. Section: S. Description: D.'"""
  return base.compose_text([
      ("Title", row["prod_name"]), ("Type", row["product_type_name"]),
      ("Colour", row["colour_group_name"] if colours is None else colours),
      ("Pattern", row["graphical_appearance_name"]),
      ("Section", row.get("section_name") or row.get("department_name", "")),
      ("Description", row["detail_desc"])])


def hm_item_table(item_keys: np.ndarray, keys: np.ndarray, article_ids: np.ndarray,
                  articles: Optional[readers.Table], images_dir: str,
                  item_level: str) -> ItemTable:
  """Item table for the distinct `item_keys` (article ids or product codes).

  Args:
    item_keys: [num_items] distinct item keys, in item order.
    keys: [n] item key of every transaction row.
    article_ids: [n] article of every transaction row.
    articles: the articles.tsv table, or None (no text).
    images_dir: folder of <article_id>.jpg photos.
    item_level: "article" or "product_code".

  A product takes its text from its first article (transaction articles in
  order of appearance, then its other articles.tsv rows) that has a row in
  articles.tsv, listing the colours of all its rows; its image is the photo
  of its first transaction article that has one.
  """
  images = base.list_images(images_dir)
  images_abs = os.path.abspath(images_dir)
  rows = {}
  groups, colours = {}, {}
  vocab = {"product_group": {}, "colour_group": {}}
  if articles is not None:
    cols = articles.columns
    for values in zip(*(articles[c] for c in cols)):
      row = dict(zip(cols, values))
      rows[row["article_id"]] = row
      art = row["article_id"]
      prod = product_code(art) if item_level == "product_code" else art
      groups.setdefault(prod, []).append(art)
      if row["colour_group_name"]:
        colours.setdefault(prod, [])
        if row["colour_group_name"] not in colours[prod]:
          colours[prod].append(row["colour_group_name"])
    for name, col in (("product_group", "product_group_name"),
                      ("colour_group", "colour_group_name")):
      values = sorted({v for v in articles.get(col) if v})
      vocab[name] = {v: k for k, v in enumerate(values)}
  # Transaction articles of each item, in order of first appearance.
  members = {}
  for key, art in zip(keys, article_ids):
    members.setdefault(key, {})[art] = None
  text, image = [""], [""]
  attrs = {name: [-1] for name in vocab}
  fields = {f: [""] for f in base.ITEM_FIELDS}
  for key in item_keys:
    candidates = list(members[key]) + [a for a in groups.get(key, []) if a not in members[key]]
    art = next((a for a in candidates if a in rows), None)
    photo = next((a for a in members[key] if a in images), None)
    image.append(os.path.join(images_abs, f"{photo}.jpg") if photo else "")
    if art is None:
      text.append("")
      for f in fields:
        fields[f].append("")
      for name in attrs:
        attrs[name].append(-1)
      continue
    row = rows[art]
    merged = ", ".join(colours.get(key, [])) if item_level == "product_code" else None
    text.append(article_text(row, merged))
    fields["title"].append(row["prod_name"])
    fields["categories"].append(", ".join(
        v for v in (row.get("product_group_name", ""), row["product_type_name"],
                    row.get("section_name", "")) if v))
    fields["keywords"].append("")
    fields["description"].append(row["detail_desc"])
    attrs["product_group"].append(vocab["product_group"].get(row.get("product_group_name"), -1))
    attrs["colour_group"].append(vocab["colour_group"].get(row["colour_group_name"], -1))
  obj = lambda v: np.array(v, dtype=object)
  return ItemTable(
      raw_ids=obj([""] + [str(k) for k in item_keys]), text=obj(text),
      image_paths=obj(image), attributes={k: np.array(v, np.int32) for k, v in attrs.items()},
      fields={k: obj(v) for k, v in fields.items()})
