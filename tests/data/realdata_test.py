"""The real datasets load with the published statistics (needs --data_dir / $JAXREC_DATA_DIR)."""

import pytest

from jaxrec.data import loading, splits

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

# name, options, users, items, interactions, items with text, items with image.
EXPECTED = [
    ("beauty", {}, 22_363, 12_101, 198_502, 12_101, 0),
    ("sports", {}, 35_598, 18_357, 296_337, 18_357, 0),
    ("yelp", {}, 30_431, 20_033, 316_354, 20_033, 0),
    ("ml100k", {}, 943, 1_349, 99_287, 1_349, 1_321),
    ("hm", {}, 713, 1_471, 15_846, 812, 1_471),
    ("hm", {"item_level": "article"}, 342, 610, 4_463, 316, 610),
    ("hm", {"item_level": "article", "dedup": True, "min_interactions": 3},
     713, 1_994, 8_381, 819, 1_994),
    ("hm", {"dedup": True}, 564, 942, 8_616, 569, 942),
]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("name,options,users,items,interactions,text,images", EXPECTED)
def test_statistics(shared_data_dir, tfds_dir, name, options, users, items, interactions,
                    text, images):
  ds = loading.load_dataset(name, manual_dir=str(shared_data_dir / name), data_dir=tfds_dir,
                            **options)
  stats = ds.stats()
  assert (stats["users"], stats["items"], stats["interactions"]) == (
      users, items, interactions)
  assert (stats["items_with_text"], stats["items_with_image"]) == (text, images)
  assert stats["min_length"] >= 3
  split = splits.leave_one_out(ds)
  assert len(split.test) == users


def test_s3rec_files_round_trip_exactly(shared_data_dir, tfds_dir):
  ds = loading.load_dataset("beauty", manual_dir=str(shared_data_dir / "beauty"),
                            data_dir=tfds_dir)
  with open(shared_data_dir / "beauty" / "Beauty.txt") as f:
    lines = [l.split() for l in f if l.strip()]
  assert len(lines) == ds.num_users
  for u, tokens in enumerate(lines):
    assert ds.user_ids[u] == tokens[0]
    assert ds.sequence(u).tolist() == [int(t) for t in tokens[1:]]
  assert ds.item_table.raw_ids[1] == "B004756YJA"
  assert ds.item_table.text[1].startswith("Title: OPI Nail Lacquer")
  assert not any("\u2581" in t for t in ds.item_table.text)  # no GRAM tokens


def test_ml100k_posters_and_ties(shared_data_dir, tfds_dir):
  ds = loading.load_dataset("ml100k", manual_dir=str(shared_data_dir / "ml100k"),
                            data_dir=tfds_dir)
  paths = [p for p in ds.item_table.image_paths if p]
  assert len(paths) == 1_321 and all(p.endswith(".jpg") for p in paths)
  ts = ds.timestamps
  for u in range(ds.num_users):
    seg = ts[ds.offsets[u]:ds.offsets[u + 1]]
    assert (seg[1:] >= seg[:-1]).all()
