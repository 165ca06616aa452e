"""tfds builder for MovieLens-100k (RecBole atomic files) with TMDB overviews and posters.

Default: every rating counts, timestamp order (ties keep file order), iterated 5-core.
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

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")
UNKNOWN_TITLE = "unkonwn"  # sic: RecBole's placeholder for ml-100k's unknown movie.
INTER_FILE, ITEM_FILE, ITEMS_TSV, POSTERS = "ml-100k.inter", "ml-100k.item", "items.tsv", "posters"


@dataclasses.dataclass(eq=False)
class Ml100kConfig(tfds.core.BuilderConfig):
  """MovieLens-100k preprocessing options.

  Attributes:
    chronological: sort each user's ratings by timestamp (stable).
    min_user_interactions: k-core on users (0 = off).
    min_item_interactions: k-core on items (0 = off).
    min_rating: keep only ratings >= this; None keeps all (implicit feedback).
  """
  chronological: bool = True
  min_user_interactions: int = 5
  min_item_interactions: int = 5
  min_rating: Optional[float] = None


class Ml100kBuilder(base.JaxrecBuilder):
  """MovieLens-100k ratings as sequences, with TMDB plot overviews and posters."""

  name = "jaxrec_ml100k"
  ATTRIBUTES = ("genre", "year")
  HOMEPAGE = "https://grouplens.org/datasets/movielens/100k/"
  CITATION = ("F. M. Harper and J. A. Konstan, The MovieLens Datasets: History and "
              "Context, ACM TiiS 5(4), 2015.")
  UPSTREAM = ("https://grouplens.org/datasets/movielens/100k/ and "
              "https://github.com/RUCAIBox/RecSysDatasets")
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put {INTER_FILE} and {ITEM_FILE} (RecBole atomic files) in the manual dir, optionally
with {ITEMS_TSV} (item_id, title, year, genres, overview) and {POSTERS}/<item_id>.jpg.
Offline: use the jaxrec data bundle's ml100k/ folder. Online: the ratings are at
https://grouplens.org/datasets/movielens/100k/ and the atomic files at
https://github.com/RUCAIBox/RecSysDatasets (also inside the recbole wheel,
recbole/dataset_example/ml-100k/). Overviews and posters come from TMDB.
"""
  BUILDER_CONFIGS = [Ml100kConfig(name="default")]

  def required_files(self) -> list:
    return [INTER_FILE, ITEM_FILE]

  def optional_files(self) -> list:
    return [ITEMS_TSV, POSTERS]

  def build(self, manual_dir: str) -> SequentialDataset:
    cfg = self.builder_config
    inter_path = os.path.join(manual_dir, INTER_FILE)
    inter = readers.read_ml100k_inter(inter_path)
    catalog = readers.read_ml100k_item(os.path.join(manual_dir, ITEM_FILE))
    tsv_path = os.path.join(manual_dir, ITEMS_TSV)
    tsv = readers.read_ml100k_items_tsv(tsv_path) if os.path.isfile(tsv_path) else None
    table = ml100k_item_table(catalog, tsv, os.path.join(manual_dir, POSTERS))
    row_of = {raw: k for k, raw in enumerate(catalog["item_id"], start=1)}
    items = np.fromiter((row_of.get(i, 0) for i in inter["item_id"]), np.int64, len(inter))
    if len(items) and items.min() == 0:
      bad = int(np.argmin(items))
      raise DataError(
          f"unknown item id {inter['item_id'][bad]!r}: not in {catalog.path}",
          path=inter_path, line=int(inter.lines[bad]),
          fix=f"use the {ITEM_FILE} of the same release, or drop the rating.")
    keep = np.ones(len(inter), bool)
    if cfg.min_rating is not None:
      keep = readers.parse_floats(inter, "rating") >= cfg.min_rating
    users, user_ids = preprocess.first_appearance_codes(inter["user_id"][keep])
    config = preprocess.PreprocessConfig(
        chronological=cfg.chronological, min_user_interactions=cfg.min_user_interactions,
        min_item_interactions=cfg.min_item_interactions)
    return preprocess.build_dataset(
        "ml100k", users, items[keep], table, user_ids=user_ids, config=config,
        timestamps=readers.parse_floats(inter, "timestamp")[keep],
        source=os.path.abspath(inter_path))


def ml100k_item_table(catalog: readers.Table, tsv: Optional[readers.Table],
                      posters_dir: str) -> ItemTable:
  """Rows in `ml-100k.item` order; text "Title (year). Genres: a, b. Plot: ...".

  Raises:
    DataError: items.tsv does not list the same item ids as ml-100k.item.
  """
  ids = list(catalog["item_id"])
  if tsv is not None:
    if sorted(tsv["item_id"], key=_id_key) != sorted(ids, key=_id_key):
      raise DataError(
          f"{tsv.path} lists {len(tsv)} items (ids 1..{len(tsv)}) but {catalog.path} "
          f"lists {len(catalog)}: the two files do not describe the same catalog",
          path=tsv.path, fix=f"use the {ITEMS_TSV} built for this {ITEM_FILE}.")
    row = {raw: k for k, raw in enumerate(tsv["item_id"])}
    take = np.array([row[i] for i in ids], np.int64)
    titles, years = tsv["title"][take], tsv["year"][take]
    genres = [g.split("|") if g else [] for g in tsv["genres"][take]]
    overviews = tsv["overview"][take]
  else:
    titles = np.array([("" if t == UNKNOWN_TITLE else t) for t in catalog["movie_title"]],
                      dtype=object)
    years = np.array([("" if y == UNKNOWN_TITLE else y) for y in catalog["release_year"]],
                     dtype=object)
    genres = [c.split() for c in catalog["class"]]
    overviews = np.full(len(ids), "", dtype=object)
  posters = base.list_images(posters_dir)
  posters_abs = os.path.abspath(posters_dir)
  text, genre_idx, year_val, image = [""], [-1], [-1], [""]
  for title, year, gs, overview, raw in zip(titles, years, genres, overviews, ids):
    head = f"{title} ({year})" if title and year else title
    text.append(base.compose_text([("", head), ("Genres", ", ".join(gs)),
                                   ("Plot", overview)]))
    genre_idx.append(GENRES.index(gs[0]) if gs and gs[0] in GENRES else -1)
    year_val.append(int(year) if year.isdigit() else -1)
    image.append(os.path.join(posters_abs, f"{raw}.jpg") if raw in posters else "")
  pad = lambda col: np.concatenate([np.array([""], dtype=object), np.asarray(col, dtype=object)])
  return ItemTable(
      raw_ids=pad(ids), text=np.array(text, dtype=object),
      image_paths=np.array(image, dtype=object),
      attributes={"genre": np.array(genre_idx, np.int32), "year": np.array(year_val, np.int32)},
      fields={"title": pad(titles), "categories": pad([", ".join(g) for g in genres]),
              "keywords": pad([""] * len(ids)), "description": pad(overviews)})


def _id_key(raw: str):
  return (0, int(raw), "") if raw.isdigit() else (1, 0, raw)
