"""Tests for the synthetic multimodal catalog (jaxrec.data.synthetic)."""

import re

import numpy as np
import pytest
from PIL import Image

from jaxrec.data.dataset import SequentialDataset
from jaxrec.data.errors import DataError
from jaxrec.data.splits import leave_one_out
from jaxrec.data.synthetic import (ATTRIBUTES, COLORS, SyntheticConfig, generate_catalog,
                                   successor_graph, write_images)


@pytest.fixture(scope="module")
def tiny():
  return generate_catalog(SyntheticConfig.tiny())


def _assert_same(a: SequentialDataset, b: SequentialDataset):
  np.testing.assert_array_equal(a.items, b.items)
  np.testing.assert_array_equal(a.offsets, b.offsets)
  np.testing.assert_array_equal(a.timestamps, b.timestamps)
  np.testing.assert_array_equal(a.user_ids, b.user_ids)
  np.testing.assert_array_equal(a.item_table.text, b.item_table.text)
  np.testing.assert_array_equal(a.item_table.images, b.item_table.images)
  for name in ATTRIBUTES:
    np.testing.assert_array_equal(a.item_table.attributes[name], b.item_table.attributes[name])
  for name, column in a.item_table.fields.items():
    np.testing.assert_array_equal(column, b.item_table.fields[name])


def test_same_seed_is_bit_identical(tiny):
  _assert_same(tiny, generate_catalog(SyntheticConfig.tiny()))


def test_different_seed_differs(tiny):
  other = generate_catalog(SyntheticConfig.tiny(seed=1))
  assert not np.array_equal(tiny.item_table.images, other.item_table.images)
  assert list(tiny.item_table.text) != list(other.item_table.text)
  assert (len(tiny.items) != len(other.items)
          or not np.array_equal(tiny.items, other.items))


def test_shapes_dtypes_and_ranges(tiny):
  config = SyntheticConfig.tiny()
  n, s = config.num_items, config.image_size
  assert tiny.name == "synthetic"
  assert tiny.num_items == n and tiny.num_users == config.num_users
  assert tiny.items.dtype == np.int32 and tiny.offsets.dtype == np.int64
  assert tiny.items.min() >= 1 and tiny.items.max() <= n
  assert tiny.offsets[0] == 0 and tiny.offsets[-1] == len(tiny.items)
  assert np.all(np.diff(tiny.offsets) > 0)
  lengths = tiny.lengths
  assert lengths.min() >= config.min_length and lengths.max() <= config.max_length
  assert tiny.timestamps.dtype == np.float64 and tiny.timestamps.shape == tiny.items.shape
  for u in range(tiny.num_users):
    seq = tiny.sequence(u)
    assert np.all(seq[1:] != seq[:-1]), "immediate repeat"
    ts = tiny.timestamps[tiny.offsets[u]:tiny.offsets[u + 1]]
    assert np.all(np.diff(ts) > 0)
  assert tiny.user_ids[0] == "u000001"
  table = tiny.item_table
  assert table.raw_ids[0] == "" and table.raw_ids[1] == "syn-000001"
  assert table.images.shape == (n + 1, s, s, 3) and table.images.dtype == np.uint8
  assert not table.images[0].any()
  assert list(table.image_paths) == [""] * (n + 1)
  for name, values in ATTRIBUTES.items():
    column = table.attributes[name]
    assert column.dtype == np.int32 and column.shape == (n + 1,)
    assert column[0] == -1 and column[1:].min() >= 0 and column[1:].max() < len(values)
  assert table.num_with_text() == n
  assert {"title", "category"} <= set(table.fields)
  assert np.bincount(tiny.items, minlength=n + 1)[1:].min() >= 1  # every item used
  split = leave_one_out(tiny)
  assert len(split.test) == tiny.num_users


def test_default_size_is_a_few_thousand():
  config = SyntheticConfig()
  assert config.num_items >= 2000 and config.num_users >= 2000


def test_images_carry_attribute_signal():
  config = SyntheticConfig.tiny(num_items=400, num_users=10)
  table = generate_catalog(config).item_table
  x = table.images[1:].reshape(config.num_items, -1).astype(np.float64) / 255.0
  train = np.arange(config.num_items) < 300
  test = ~train
  # Color: nearest class centroid on raw pixels.
  color = table.attributes["color"][1:]
  centroids = np.stack([x[train & (color == c)].mean(0) for c in range(len(COLORS))])
  pred = np.argmin(((x[test][:, None] - centroids[None]) ** 2).sum(-1), 1)
  assert (pred == color[test]).mean() > 2.0 / len(COLORS)
  # Shape: ridge least squares on raw pixels.
  shape = table.attributes["shape"][1:]
  k = len(ATTRIBUTES["shape"])
  xb = np.concatenate([x, np.ones((len(x), 1))], 1)
  w = np.linalg.solve(xb[train].T @ xb[train] + np.eye(xb.shape[1]),
                      xb[train].T @ np.eye(k)[shape[train]])
  assert ((xb[test] @ w).argmax(1) == shape[test]).mean() > 2.0 / k


def test_text_carries_attributes(tiny):
  table = tiny.item_table
  for i in range(1, tiny.num_items + 1):
    words = set(re.findall(r"[a-z]+", table.text[i].lower()))
    color = COLORS[table.attributes["color"][i]]
    assert color in words
    assert not (words & set(COLORS)) - {color}, table.text[i]
    assert table.fields["category"][i] == ATTRIBUTES["category"][table.attributes["category"][i]]
    assert table.fields["title"][i] and table.fields["title"][i] in table.text[i]
  assert len(set(table.text[1:])) == tiny.num_items


def _successor_fraction(items, offsets, successors):
  a, b = items[:-1], items[1:]
  inside = np.ones(len(a), bool)
  inside[offsets[1:-1] - 1] = False  # pairs that cross users
  return (successors[a] == b[:, None]).any(1)[inside].mean()


def test_sequences_follow_item_transitions_beyond_content(tiny):
  config = SyntheticConfig.tiny()
  successors = successor_graph(config)
  assert successors.shape == (config.num_items + 1, config.num_transitions)
  real = _successor_fraction(tiny.items, tiny.offsets, successors)
  rng = np.random.default_rng(0)
  shuffled = np.concatenate([rng.permutation(s) for s in tiny.sequences()])
  baseline = _successor_fraction(shuffled, tiny.offsets, successors)
  assert real > 0.3
  assert real > 3 * baseline
  # Successors are not just the same category.
  category = tiny.item_table.attributes["category"]
  assert (category[successors[1:]] != category[1:, None]).mean() > 0.3


def test_write_images(tiny, tmp_path):
  out = tmp_path / "images"
  assert write_images(tiny, str(out)) == tiny.num_items
  files = sorted(out.iterdir())
  assert len(files) == tiny.num_items
  assert {f.name for f in files} == {f"{i}.png" for i in range(1, tiny.num_items + 1)}
  with Image.open(out / "7.png") as image:
    pixels = np.asarray(image.convert("RGB"))
  np.testing.assert_array_equal(pixels, tiny.item_table.images[7])
  assert write_images(tiny.item_table, str(out)) == tiny.num_items  # overwrite ok


@pytest.mark.parametrize("field, value", [
    ("num_items", 1), ("num_users", 0), ("image_size", 4), ("min_length", 2),
    ("max_length", 4), ("mean_length", 100.0), ("p_transition", 1.5),
    ("p_taste", 0.9), ("zipf_exponent", -1.0), ("num_transitions", 0)])
def test_bad_config_raises(field, value):
  with pytest.raises(DataError, match=field):
    SyntheticConfig(**{field: value})
