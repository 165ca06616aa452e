"""The deterministic synthetic multimodal catalog, the project's built-in dataset.

Items have latent attributes, a text and a small image rendered from them; users
mix attribute taste, item-to-item transitions and popularity in their sequences.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Union

import numpy as np

from jaxrec.data.dataset import ItemTable, SequentialDataset
from jaxrec.data.errors import DataError

CATEGORIES = ("kitchen", "garden", "toys", "apparel", "electronics", "beauty",
              "sports", "office")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black")
SHAPES = ("circle", "square", "triangle", "ring")
SIZES = ("small", "medium", "large")
STYLES = ("plain", "striped", "dotted", "checkered")
PRICES = ("budget", "mid-range", "premium", "luxury")
ATTRIBUTES = {"category": CATEGORIES, "color": COLORS, "shape": SHAPES,
              "size": SIZES, "style": STYLES, "price": PRICES}

_RGB = np.array([[215, 35, 35], [240, 135, 20], [235, 210, 30], [35, 160, 55],
                 [35, 80, 215], [135, 45, 185], [125, 75, 35], [25, 25, 25]], np.float32)
_BACKGROUND = np.array([[238, 228, 205], [205, 232, 205], [240, 210, 228],
                        [216, 214, 242], [198, 214, 226], [244, 222, 210],
                        [218, 236, 244], [226, 226, 226]], np.float32)
_SIZE_FRACTION = (0.2, 0.29, 0.38)  # shape radius / image size
_SAME_CATEGORY_SUCCESSOR = 0.4  # the rest of the successors are uniform over all items

_NOUNS = {
    "kitchen": (("mug", "bowl", "kettle", "jar"), ("kitchen item", "kitchen gadget", "cookware piece")),
    "garden": (("planter", "lantern", "bird feeder", "watering can"), ("garden item", "outdoor piece")),
    "toys": (("puzzle", "plush toy", "building set", "spinning top"), ("toy", "plaything", "kids' item")),
    "apparel": (("scarf", "cap", "tote bag", "sweater"), ("apparel item", "fashion piece", "accessory")),
    "electronics": (("speaker", "charger", "desk lamp", "clock"), ("gadget", "electronics item", "device")),
    "beauty": (("hand cream", "soap bar", "perfume bottle", "lotion jar"), ("beauty item", "cosmetics piece")),
    "sports": (("water bottle", "yoga mat", "frisbee", "gym bag"), ("sports item", "fitness gear piece")),
    "office": (("notebook", "desk organizer", "stapler", "pen holder"), ("office item", "stationery piece")),
}
_WORDS = {
    "shape": (("round", "circular"), ("square", "boxy"), ("triangular", "three-cornered"),
              ("ring-shaped", "hoop-shaped")),
    "size": (("small", "compact", "little"), ("medium", "mid-sized", "regular"),
             ("large", "big", "oversized")),
    "style": (("plain", "minimalist"), ("striped", "pinstriped"), ("dotted", "polka-dot"),
              ("checkered", "plaid")),
    "price": (("budget", "low-cost", "bargain"), ("mid-range", "moderate"),
              ("premium", "high-end"), ("luxury", "top-tier")),
}
_TEMPLATES = (
    "A {size} {color} {shape} {noun} in a {style} style, {price} price.",
    "This {style} {noun} is {color}, {size} and {shape}; a {price} choice.",
    "{Color} {noun} with a {shape}, {style} look. Size: {size}. Price: {price}.",
    "{Size} and {shape}, this {color} {noun} has a {style} pattern at a {price} price.",
)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Sizes and behaviour of the synthetic catalog.

  Attributes:
    num_items: number of items (ids 1..num_items).
    num_users: number of users (sequences).
    image_size: side S of the square RGB item images.
    min_length: shortest user sequence (>= 3 so leave-one-out works).
    mean_length: mean sequence length (geometric tail above min_length).
    max_length: longest user sequence.
    seed: the one seed everything is drawn from.
    p_transition: probability that the next item follows the current item's
      successor list (the collaborative signal).
    p_taste: probability that the next item is drawn from the user's attribute
      taste weighted by popularity; the rest is pure popularity.
    zipf_exponent: popularity of the item at popularity rank r is r^-exponent.
    num_transitions: successors per item in the item-to-item graph.
  """
  num_items: int = 3000
  num_users: int = 4000
  image_size: int = 32
  min_length: int = 5
  mean_length: float = 12.0
  max_length: int = 50
  seed: int = 0
  p_transition: float = 0.5
  p_taste: float = 0.35
  zipf_exponent: float = 1.0
  num_transitions: int = 5

  def __post_init__(self):
    def check(name, ok, fix):
      if not ok:
        raise DataError(f"SyntheticConfig.{name} = {getattr(self, name)!r} is invalid.",
                        fix=f"set {name} {fix}.")
    check("num_items", self.num_items >= 2, "to at least 2")
    check("num_users", self.num_users >= 1, "to at least 1")
    check("image_size", self.image_size >= 8, "to at least 8 pixels")
    check("min_length", self.min_length >= 3, "to at least 3 (train, validation, test)")
    check("max_length", self.max_length >= self.min_length, "to at least min_length")
    check("mean_length", self.min_length <= self.mean_length <= self.max_length,
          "between min_length and max_length")
    check("p_transition", 0.0 <= self.p_transition <= 1.0, "within [0, 1]")
    check("p_taste", 0.0 <= self.p_taste <= 1.0 - self.p_transition,
          "within [0, 1 - p_transition]")
    check("zipf_exponent", self.zipf_exponent >= 0.0, "to a value >= 0")
    check("num_transitions", self.num_transitions >= 1, "to at least 1")

  @classmethod
  def tiny(cls, **overrides) -> "SyntheticConfig":
    """A small catalog for tests (60 items, 80 users, 16x16 images)."""
    return cls(**{"num_items": 60, "num_users": 80, "image_size": 16, **overrides})


@dataclasses.dataclass(frozen=True)
class _Latent:
  """attributes: name -> [N + 1] int32; popularity: [N + 1] float64 (row 0 = 0);
  successors: [N + 1, T] int32 (row 0 = 0)."""
  attributes: dict
  popularity: np.ndarray
  successors: np.ndarray


def _rngs(config: SyntheticConfig):
  """Independent generators for items, text, images and users (same seed)."""
  return [np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(4)]


def _latent_items(config: SyntheticConfig, rng: np.random.Generator) -> _Latent:
  """Attributes, Zipf popularity and the successor graph of every item."""
  n = config.num_items
  attributes = {}
  for name, values in ATTRIBUTES.items():
    attributes[name] = np.concatenate([[-1], rng.integers(0, len(values), n)]).astype(np.int32)
  rank = np.empty(n, np.int64)
  rank[rng.permutation(n)] = np.arange(n)
  popularity = np.concatenate([[0.0], (rank + 1.0) ** -config.zipf_exponent])
  popularity /= popularity.sum()
  # Successors: partly within the item's category, partly anywhere (so the
  # transitions are not just content similarity); never the item itself.
  cat = attributes["category"][1:]
  by_cat = np.argsort(cat, kind="stable") + 1
  counts = np.bincount(cat, minlength=len(CATEGORIES))
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  shape = (n, config.num_transitions)
  same = by_cat[starts[cat][:, None] + (rng.random(shape) * counts[cat][:, None]).astype(np.int64)]
  anywhere = rng.integers(1, n + 1, shape)
  succ = np.where(rng.random(shape) < _SAME_CATEGORY_SUCCESSOR, same, anywhere)
  own = np.arange(1, n + 1)[:, None]
  succ = np.where(succ == own, own % n + 1, succ)
  successors = np.concatenate([np.zeros((1, shape[1]), np.int64), succ]).astype(np.int32)
  return _Latent(attributes, popularity, successors)


def successor_graph(config: SyntheticConfig = SyntheticConfig()) -> np.ndarray:
  """The ground-truth item-to-item graph: [num_items + 1, num_transitions] int32.

  Row i lists the successors of item i, most likely first (row 0 is padding).
  """
  return _latent_items(config, _rngs(config)[0]).successors


def _texts(attributes: dict, rng: np.random.Generator):
  """Title, description and full text per item (lists of N + 1 str, "" at 0)."""
  n = len(attributes["category"]) - 1
  picks = rng.integers(0, 1 << 30, (n, 8))
  titles, descriptions, texts = [""], [""], [""]
  for i in range(1, n + 1):
    p = picks[i - 1]
    category = CATEGORIES[attributes["category"][i]]
    color = COLORS[attributes["color"][i]]
    products, nouns = _NOUNS[category]
    words = {k: v[attributes[k][i]][p[j] % len(v[attributes[k][i]])]
             for j, (k, v) in enumerate(_WORDS.items())}
    title = f"{color} {words['shape']} {products[p[4] % len(products)]}".title()
    description = _TEMPLATES[p[5] % len(_TEMPLATES)].format(
        color=color, Color=color.capitalize(), noun=nouns[p[6] % len(nouns)],
        Size=words["size"].capitalize(), **words)
    description = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", description)
    titles.append(title)
    descriptions.append(description)
    texts.append(f"{title}. {description}")
  return titles, descriptions, texts


def _render(attributes: dict, size: int, rng: np.random.Generator) -> np.ndarray:
  """Images [N + 1, S, S, 3] uint8 drawn from the attributes (row 0 black)."""
  n = len(attributes["category"]) - 1
  a = {k: v[1:] for k, v in attributes.items()}
  s = float(size)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  center = s / 2 + rng.uniform(-0.1, 0.1, (n, 2)).astype(np.float32) * s
  radius = (np.asarray(_SIZE_FRACTION, np.float32)[a["size"]] * s *
            rng.uniform(0.92, 1.08, n).astype(np.float32))[:, None, None]
  dy = yy[None] - center[:, 0, None, None]
  dx = xx[None] - center[:, 1, None, None]
  dist = np.sqrt(dx * dx + dy * dy)
  shp = a["shape"][:, None, None]
  inside = np.where(shp == 0, dist <= radius, False)
  inside |= (shp == 1) & (np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * radius)
  inside |= ((shp == 2) & (dy >= -radius) & (dy <= 0.8 * radius)
             & (np.abs(dx) <= (dy + radius) / 1.8))
  inside |= (shp == 3) & (dist <= radius) & (dist >= 0.55 * radius)
  # Style as a texture over the shape, with a random phase per item: a
  # [styles, phases, S, S] lookup table.
  period = max(2, round(size / 8))
  phases = np.arange(2 * period, dtype=np.float32)[:, None, None]
  px, py = xx[None] + phases, yy[None] + phases
  dot = 2 * period
  table = np.stack([
      np.zeros(px.shape, bool),
      ((px + py) // period) % 2 == 0,
      ((px % dot) - period) ** 2 + ((py % dot) - period) ** 2 <= (0.6 * period) ** 2,
      ((px // period) + (py // period)) % 2 == 0])
  texture = table[a["style"], rng.integers(0, 2 * period, n)]
  fill = _RGB[a["color"]]
  dark = fill.mean(-1, keepdims=True) < 110
  second = np.where(dark, fill * 0.45 + 140.0, fill * 0.55)
  palette = np.rint(np.stack([_BACKGROUND[a["category"]], fill, second], 1))  # [N, 3, 3]
  which = inside.astype(np.int32) * (1 + texture)  # 0 background, 1 fill, 2 texture
  image = palette.astype(np.int16).reshape(-1, 3)[np.arange(n)[:, None, None] * 3 + which]
  image += rng.integers(-8, 9, image.shape, dtype=np.int16)
  image = np.clip(image, 0, 255).astype(np.uint8)
  return np.concatenate([np.zeros((1, size, size, 3), np.uint8), image])


def _sequences(config: SyntheticConfig, latent: _Latent, rng: np.random.Generator):
  """[U, max_length] int64 items (0 past each length), lengths [U], modes."""
  n, u = config.num_items, config.num_users
  pop = latent.popularity[1:]
  pop_cum = np.cumsum(pop)
  pop_cum /= pop_cum[-1]
  # Taste: sparse Dirichlet over categories and colors; sample a (category,
  # color) group with prob taste * group popularity, then an item of the group
  # by popularity (exactly taste(item) * popularity(item)).
  nc, nk = len(CATEGORIES), len(COLORS)
  taste_cat = 0.95 * rng.dirichlet(np.full(nc, 0.3), u) + 0.05 / nc
  taste_col = 0.95 * rng.dirichlet(np.full(nk, 0.3), u) + 0.05 / nk
  group = latent.attributes["category"][1:] * nk + latent.attributes["color"][1:]
  order = np.argsort(group, kind="stable")
  ends = np.cumsum(np.bincount(group, minlength=nc * nk))
  starts = ends - np.bincount(group, minlength=nc * nk)
  within = np.concatenate([[0.0], np.cumsum(pop[order])])
  group_pop = within[ends] - within[starts]
  group_w = (taste_cat[:, :, None] * taste_col[:, None, :]).reshape(u, -1) * group_pop
  group_cum = np.cumsum(group_w, 1)
  g_of = group[order]
  keys = g_of + (within[1:] - within[starts][g_of]) / group_pop[g_of]
  nonempty = np.flatnonzero(ends > starts)
  keys[ends[nonempty] - 1] = nonempty + 1.0  # exact group ends

  def by_taste(users):
    r = rng.random(len(users))[:, None] * group_cum[users, -1:]
    g = np.argmax(group_cum[users] > r, axis=1)
    idx = np.searchsorted(keys, g + rng.random(len(users)), side="right")
    return order[np.minimum(idx, n - 1)] + 1

  def by_popularity(k):
    return np.minimum(np.searchsorted(pop_cum, rng.random(k), side="right"), n - 1) + 1

  extra = rng.geometric(1.0 / (config.mean_length - config.min_length + 1), u) - 1
  lengths = np.minimum(config.min_length + extra, config.max_length)
  steps = int(lengths.max())
  seqs = np.zeros((u, steps), np.int64)
  modes = np.zeros((u, steps), np.int8)  # 0 start, 1 transition, 2 taste, 3 popularity
  all_users = np.arange(u)
  seqs[:, 0] = by_taste(all_users)
  skew = 0.5 ** np.arange(config.num_transitions)
  skew_cum = np.cumsum(skew / skew.sum())
  for t in range(1, steps):
    users = all_users[lengths > t]
    cur = seqs[users, t - 1]
    draw = rng.random(len(users))
    mode = np.where(draw < config.p_transition, 1,
                    np.where(draw < config.p_transition + config.p_taste, 2, 3))
    k = np.minimum(np.searchsorted(skew_cum, rng.random(len(users)), side="right"),
                   config.num_transitions - 1)
    nxt = latent.successors[cur, k].astype(np.int64)
    taste = mode == 2
    nxt[taste] = by_taste(users[taste])
    nxt[mode == 3] = by_popularity(int((mode == 3).sum()))
    for _ in range(3):  # no immediate repeats: redraw by popularity, then shift.
      again = nxt == cur
      if not again.any():
        break
      nxt[again] = by_popularity(int(again.sum()))
      mode[again] = 3
    nxt = np.where(nxt == cur, cur % n + 1, nxt)
    seqs[users, t] = nxt
    modes[users, t] = mode
  return seqs, lengths, modes


def _cover_missing(seqs, lengths, modes, num_items, rng):
  """Puts never-drawn items at popularity-drawn positions (in place)."""
  steps = seqs.shape[1]
  valid = np.arange(steps)[None, :] < lengths[:, None]
  counts = np.bincount(seqs[valid], minlength=num_items + 1)
  missing = np.flatnonzero(counts[1:] == 0) + 1
  if not len(missing):
    return
  nxt_mode = np.concatenate([modes[:, 1:], np.zeros((len(seqs), 1), np.int8)], 1)
  nxt_valid = np.concatenate([valid[:, 1:], np.zeros((len(seqs), 1), bool)], 1)
  ok = valid & (modes == 3) & ~(nxt_valid & (nxt_mode == 1))
  cand = np.flatnonzero(ok.ravel())
  cand = cand[rng.permutation(len(cand))]
  item = seqs.ravel()[cand]
  # Keep at least one occurrence of every replaced item.
  by_item = np.argsort(item, kind="stable")
  first = np.searchsorted(item[by_item], item[by_item], side="left")
  rank = np.empty(len(cand), np.int64)
  rank[by_item] = np.arange(len(cand)) - first
  cand = cand[rank < counts[item] - 1][:len(missing)]
  seqs.ravel()[cand] = missing[:len(cand)]


def generate_catalog(config: SyntheticConfig = SyntheticConfig()) -> SequentialDataset:
  """Generates the synthetic multimodal dataset (bit-identical per seed).

  Returns:
    A SequentialDataset named "synthetic" whose item table has raw_ids
    "syn-000001"..., text, fields {"title", "category", "description"},
    attributes {category, color, shape, size, style, price} ([N + 1] int32,
    -1 at row 0), images [N + 1, S, S, 3] uint8 and image_paths all "";
    user_ids "u000001"...; increasing float64 timestamps per user.
  """
  item_rng, text_rng, image_rng, user_rng = _rngs(config)
  n = config.num_items
  latent = _latent_items(config, item_rng)
  titles, descriptions, texts = _texts(latent.attributes, text_rng)
  table = ItemTable(
      raw_ids=np.array([""] + [f"syn-{i:06d}" for i in range(1, n + 1)], dtype=object),
      text=np.array(texts, dtype=object),
      image_paths=np.array([""] * (n + 1), dtype=object),
      images=_render(latent.attributes, config.image_size, image_rng),
      attributes=dict(latent.attributes),
      fields={"title": np.array(titles, dtype=object),
              "category": np.array([""] + [CATEGORIES[c] for c in latent.attributes["category"][1:]],
                                   dtype=object),
              "description": np.array(descriptions, dtype=object)})
  seqs, lengths, modes = _sequences(config, latent, user_rng)
  _cover_missing(seqs, lengths, modes, n, user_rng)
  valid = np.arange(seqs.shape[1])[None, :] < lengths[:, None]
  gaps = user_rng.exponential(86400.0, seqs.shape) + 1.0
  times = 1.6e9 + user_rng.uniform(0, 3e7, (len(seqs), 1)) + np.cumsum(gaps, 1)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  return SequentialDataset(
      name="synthetic", items=seqs[valid].astype(np.int32), offsets=offsets,
      user_ids=np.array([f"u{i:06d}" for i in range(1, config.num_users + 1)], dtype=object),
      item_table=table, timestamps=times[valid].astype(np.float64))


def write_images(table_or_dataset: Union[ItemTable, SequentialDataset], directory: str) -> int:
  """Writes every item image as `<directory>/<item_id>.png` (atomically).

  Args:
    table_or_dataset: an ItemTable with `images`, or a dataset holding one.
    directory: the output folder (created if missing).

  Returns:
    The number of files written (num_items).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  table = getattr(table_or_dataset, "item_table", table_or_dataset)
  if table.images is None:
    raise DataError("the item table has no in-memory images to write.",
                    fix="pass a synthetic catalog from generate_catalog().")
  os.makedirs(directory, exist_ok=True)
  for item in range(1, table.num_items + 1):
    path = os.path.join(directory, f"{item}.png")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
      Image.fromarray(table.images[item]).save(tmp, format="PNG")
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  return table.num_items
