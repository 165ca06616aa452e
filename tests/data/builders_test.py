"""tfds builders on tiny fixtures written here: exact round trips and every bad-input error."""

import importlib.util
import os
import pathlib

import numpy as np
import pytest

from jaxrec.data import loading, splits
from jaxrec.data.errors import DataError

BEAUTY_ITEMS = ("item_id\tasin\ttitle\tattributes\tkeywords\tgram_tokens\n"
                "1\tA1\tRed Lipstick\tMakeup | Lips\tred lipstick\t|\u2581red\n"
                "2\tA2\t\tSkin\tmoisturizer\t|x\n"
                "3\tA3\tBlue Shampoo.\t\t\t\n"
                "4\tA4\t\t\t\t\n")
BEAUTY_TEXT = ["", "Title: Red Lipstick. Categories: Makeup | Lips. Keywords: red lipstick.",
               "Categories: Skin. Keywords: moisturizer.", "Title: Blue Shampoo.", ""]
ML_INTER = [("10", "1", "5", "100"), ("20", "2", "3", "50"), ("10", "3", "4", "100"),
            ("10", "2", "1", "90"), ("20", "1", "2", "60"), ("20", "3", "5", "40"),
            ("30", "3", "5", "10")]
HM_ARTICLE_HEADER = ("article_id\tproduct_code\tprod_name\tproduct_type_name\tproduct_group_name\t"
                     "graphical_appearance_name\tcolour_group_name\tperceived_colour_value_name\t"
                     "perceived_colour_master_name\tdepartment_name\tindex_name\tindex_group_name\t"
                     "section_name\tgarment_group_name\tdetail_desc")


def _article(aid, colour, name="Tee"):
  return "\t".join([aid, str(int(aid[:7])), name, "T-shirt", "Garment Upper body", "Solid",
                    colour, "Dark", colour, "Jersey", "Menswear", "Menswear", "Men",
                    "Jersey Basic", "Soft tee."])


def _s3rec_dir(root, seqs="1 1 2 3\n2 2 3 4 1\n3 4 2 1\n", items=BEAUTY_ITEMS,
               name="Beauty.txt"):
  d = pathlib.Path(root)
  d.mkdir(parents=True, exist_ok=True)
  (d / name).write_text(seqs)
  if items is not None:
    (d / "items.tsv").write_text(items, encoding="utf-8")
  return str(d)


def _ml100k_dir(root, inter_header="user_id:token\titem_id:token\trating:float\ttimestamp:float"):
  d = pathlib.Path(root)
  (d / "posters").mkdir(parents=True)
  (d / "ml-100k.inter").write_text(
      inter_header + "\n" + "".join("\t".join(r) + "\n" for r in ML_INTER))
  (d / "ml-100k.item").write_text(
      "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
      "1\tToy Story\t1995\tAnimation Children's Comedy\n"
      "2\tGoldenEye\t1995\tAction Adventure Thriller\n3\tunkonwn\tunkonwn\tunknown\n"
      "4\tExtra\t1990\tDrama\n")
  (d / "items.tsv").write_text(
      "item_id\ttitle\tyear\tgenres\toverview\n"
      "1\tToy Story\t1995\tAnimation|Children's|Comedy\tToys come alive.\n"
      "2\tGoldenEye\t1995\tAction|Adventure|Thriller\t\n3\t\t\tunknown\t\n"
      "4\tExtra\t1990\tDrama\t\n")
  (d / "posters" / "1.jpg").write_bytes(b"\xff\xd8fake")
  return str(d)


def _hm_dir(root):
  d = pathlib.Path(root)
  (d / "images").mkdir(parents=True)
  rows = [("2020-01-02", "cA", "0100000001"), ("2020-01-01", "cA", "0100000002"),
          ("2020-01-02", "cB", "0200000001"), ("2020-01-02", "cA", "0200000001"),
          ("2020-01-03", "cB", "0100000002"), ("2020-01-03", "cB", "0100000002")]
  (d / "transactions.tsv").write_text(
      "t_dat\tcustomer_id\tarticle_id\tprice\tsales_channel_id\n" +
      "".join(f"{t}\t{c}\t{a}\t0.01\t1\n" for t, c, a in rows))
  (d / "articles.tsv").write_text("\n".join([
      HM_ARTICLE_HEADER, _article("0100000002", "Black"), _article("0100000003", "White"),
      _article("0300000001", "Red", "Other")]) + "\n")
  for a in ("0100000002", "0200000001"):
    (d / "images" / f"{a}.jpg").write_bytes(b"\xff\xd8fake")
  return str(d)


def _seqs(ds):
  return [ds.sequence(u).tolist() for u in range(ds.num_users)]


def _not_prepared(tfds_dir, name="beauty", **options):
  builder = loading.make_builder(name, str(tfds_dir), **options)
  assert not builder.is_prepared()
  assert not builder.data_path.exists()


def test_beauty_round_trip(tmp_path):
  manual = _s3rec_dir(tmp_path / "beauty")
  ds = loading.load_dataset("beauty", manual_dir=manual, data_dir=str(tmp_path / "tfds"))
  assert ds.name == "beauty" and ds.num_items == 4
  assert _seqs(ds) == [[1, 2, 3], [2, 3, 4, 1], [4, 2, 1]]
  assert list(ds.user_ids) == ["1", "2", "3"]
  np.testing.assert_array_equal(ds.user_lines, [1, 2, 3])
  assert ds.source == os.path.join(manual, "Beauty.txt") and ds.timestamps is None
  assert list(ds.item_table.text) == BEAUTY_TEXT
  assert list(ds.item_table.raw_ids) == ["", "A1", "A2", "A3", "A4"]
  assert list(ds.item_table.fields["categories"]) == ["", "Makeup | Lips", "Skin", "", ""]
  assert not any("\u2581" in t or "A1" in t for t in ds.item_table.text)
  assert ds.where(2) == f"user '3' ({ds.source}:3)"


def test_generic_s3rec_and_k_core(tmp_path):
  manual = _s3rec_dir(tmp_path / "toy", name="Toy.txt")
  ds = loading.load_dataset("s3rec", manual_dir=manual, data_dir=str(tmp_path / "tfds"),
                            sequences_file="Toy.txt", text_fields="keywords,title")
  assert ds.name == "toy"
  assert ds.item_table.text[1] == "Keywords: red lipstick. Title: Red Lipstick."
  # Items 3 and 4 have 2 rows each -> dropped; every user keeps 2 items.
  ds = loading.load_dataset("s3rec", manual_dir=manual, data_dir=str(tmp_path / "tfds"),
                            sequences_file="Toy.txt", min_item_interactions=3,
                            min_user_interactions=2)
  assert _seqs(ds) == [[1, 2], [2, 1], [2, 1]]
  assert list(ds.item_table.raw_ids) == ["", "A1", "A2"]
  no_items = _s3rec_dir(tmp_path / "plain", items=None, name="Toy.txt")
  ds = loading.load_dataset("s3rec", manual_dir=no_items, data_dir=str(tmp_path / "tfds"),
                            sequences_file="Toy.txt")
  assert ds.num_items == 4 and ds.item_table.num_with_text() == 0


def test_ml100k_round_trip(tmp_path):
  manual = _ml100k_dir(tmp_path / "ml100k")
  tfds_dir = str(tmp_path / "tfds")
  ds = loading.load_dataset("ml100k", manual_dir=manual, data_dir=tfds_dir, min_interactions=2)
  # User 30 (one rating) is dropped; ties (user 10, t=100) keep file order.
  assert list(ds.user_ids) == ["10", "20"]
  assert list(ds.item_table.raw_ids) == ["", "2", "1", "3"]
  assert _seqs(ds) == [[1, 2, 3], [3, 1, 2]]
  np.testing.assert_array_equal(ds.timestamps, [90, 100, 100, 40, 50, 60])
  assert list(ds.item_table.text) == [
      "", "GoldenEye (1995). Genres: Action, Adventure, Thriller.",
      "Toy Story (1995). Genres: Animation, Children's, Comedy. Plot: Toys come alive.",
      "Genres: unknown."]
  assert list(ds.item_table.image_paths) == [
      "", "", os.path.join(manual, "posters", "1.jpg"), ""]
  np.testing.assert_array_equal(ds.item_table.attributes["genre"], [-1, 1, 3, 0])
  np.testing.assert_array_equal(ds.item_table.attributes["year"], [-1, 1995, 1995, -1])
  assert ds.user_lines is None and ds.source.endswith("ml-100k.inter")
  # The bulk record reader agrees with tfds's own decoding.
  builder = loading.make_builder("ml100k", tfds_dir, min_interactions=2)
  source = builder.as_data_source()
  first = source["sequences"][1]
  assert first["user_id"] == b"20" and first["items"].tolist() == [3, 1, 2]
  np.testing.assert_array_equal(first["timestamps"], [40.0, 50.0, 60.0])
  item = source["items"][1]
  assert item["text"].decode() == ds.item_table.text[2] and item["genre"] == 3


def test_hm_round_trip(tmp_path):
  manual = _hm_dir(tmp_path / "hm")
  tfds_dir = str(tmp_path / "tfds")
  ds = loading.load_dataset("hm", manual_dir=manual, data_dir=tfds_dir, min_interactions=0)
  assert list(ds.user_ids) == ["cA", "cB"]
  assert list(ds.item_table.raw_ids) == ["", "100000", "200000"]
  assert _seqs(ds) == [[1, 1, 2], [2, 1, 1]]
  day = 86400.0
  np.testing.assert_array_equal(ds.timestamps / day - 18262, [0, 1, 1, 1, 2, 2])
  assert list(ds.item_table.text) == ["", (
      "Title: Tee. Type: T-shirt. Colour: Black, White. Pattern: Solid. Section: Men. "
      "Description: Soft tee."), ""]
  images = os.path.join(manual, "images")
  assert list(ds.item_table.image_paths) == [
      "", os.path.join(images, "0100000002.jpg"), os.path.join(images, "0200000001.jpg")]
  ds = loading.load_dataset("hm", manual_dir=manual, data_dir=tfds_dir, min_interactions=0,
                            dedup=True)
  assert _seqs(ds) == [[1, 2], [2, 1]]
  ds = loading.load_dataset("hm", manual_dir=manual, data_dir=tfds_dir, min_interactions=0,
                            item_level="article")
  assert list(ds.item_table.raw_ids) == ["", "0100000002", "0100000001", "0200000001"]
  assert _seqs(ds) == [[1, 2, 3], [3, 1, 1]]
  assert ds.item_table.text[1].startswith("Title: Tee. Type: T-shirt. Colour: Black. ")
  assert ds.item_table.image_paths[2] == ""
  with pytest.raises(DataError, match="no interactions are left"):
    loading.load_dataset("hm", manual_dir=manual, data_dir=tfds_dir)  # 5-core: empty.
  _not_prepared(tfds_dir, "hm")


@pytest.mark.parametrize("seqs,items,line,contains", [
    ("1 1 2 3\n2\n", BEAUTY_ITEMS, 2, ["malformed"]),
    ("1 1 2 3\n2 1 two\n", BEAUTY_ITEMS, 2, ["non-integer id 'two'"]),
    ("1 1 2 3 4\n2 1 5\n", BEAUTY_ITEMS, 2, ["unknown item id 5", "items.tsv"]),
    ("1 1 2\n2 2 3\n", BEAUTY_ITEMS, 5, ["4 items", "up to 3", "same catalog"]),
    ("1 1 2\n", "id\ttitle\n1\tA\n2\tB\n", 1, ["missing column(s) item_id"]),
])
def test_bad_s3rec_files(tmp_path, seqs, items, line, contains):
  manual = _s3rec_dir(tmp_path / "beauty", seqs=seqs, items=items)
  tfds_dir = tmp_path / "tfds"
  with pytest.raises(DataError) as info:
    loading.load_dataset("beauty", manual_dir=manual, data_dir=str(tfds_dir))
  assert info.value.line == line and info.value.fix
  for text in contains:
    assert text in str(info.value)
  assert not str(info.value).startswith("Failed")  # not wrapped by tfds
  _not_prepared(tfds_dir)
  # Fixing the files makes the next call prepare from scratch.
  _s3rec_dir(manual)
  assert loading.load_dataset("beauty", manual_dir=manual,
                              data_dir=str(tfds_dir)).num_interactions == 10


def test_bad_ml100k_files(tmp_path):
  manual = _ml100k_dir(tmp_path / "ml", inter_header="user_id:token\titem_id:token\trating:float")
  with pytest.raises(DataError, match="missing column.s. timestamp") as info:
    loading.load_dataset("ml100k", manual_dir=manual, data_dir=str(tmp_path / "tfds"))
  assert info.value.line == 1 and info.value.path.endswith("ml-100k.inter")
  manual = _ml100k_dir(tmp_path / "ml2")
  with open(os.path.join(manual, "ml-100k.inter"), "a") as f:
    f.write("10\t99\t5\t7\n")
  with pytest.raises(DataError, match="unknown item id '99'") as info:
    loading.load_dataset("ml100k", manual_dir=manual, data_dir=str(tmp_path / "tfds"))
  assert info.value.line == 9
  os.remove(os.path.join(manual, "ml-100k.inter"))
  with open(os.path.join(manual, "items.tsv"), "a") as f:
    f.write("5\tMore\t1991\tDrama\t\n")
  with pytest.raises(DataError, match="ml-100k.inter"):
    loading.load_dataset("ml100k", manual_dir=manual, data_dir=str(tmp_path / "tfds"))
  _ml100k_dir(tmp_path / "ml3")
  manual = str(tmp_path / "ml3")
  with open(os.path.join(manual, "items.tsv"), "a") as f:
    f.write("5\tMore\t1991\tDrama\t\n")
  with pytest.raises(DataError, match="same catalog"):
    loading.load_dataset("ml100k", manual_dir=manual, data_dir=str(tmp_path / "tfds"))


def test_missing_manual_dir_and_files(tmp_path, monkeypatch):
  tfds_dir = str(tmp_path / "tfds")
  missing = str(tmp_path / "nowhere")
  with pytest.raises(DataError, match="does not exist.*Beauty.txt") as info:
    loading.load_dataset("beauty", manual_dir=missing, data_dir=tfds_dir)
  assert info.value.path == missing and "items.tsv" in str(info.value)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DataError, match="missing transactions.tsv") as info:
    loading.load_dataset("hm", manual_dir=str(empty), data_dir=tfds_dir)
  assert "articles.tsv" in str(info.value)
  monkeypatch.delenv(loading.DATA_DIR_ENV, raising=False)
  with pytest.raises(DataError, match="JAXREC_DATA_DIR"):
    loading.load_dataset("beauty", data_dir=tfds_dir)
  root = tmp_path / "bundle"
  _s3rec_dir(root / "beauty")
  monkeypatch.setenv(loading.DATA_DIR_ENV, str(root))
  assert loading.load_dataset("beauty", data_dir=tfds_dir).num_users == 3
  monkeypatch.delenv(loading.DATA_DIR_ENV)
  assert loading.load_dataset("beauty", data_dir=tfds_dir).num_users == 3  # prepared
  with pytest.raises(DataError, match="does not exist"):  # an explicit dir must exist
    loading.load_dataset("beauty", manual_dir=missing, data_dir=tfds_dir)


def test_options_and_names(tmp_path):
  with pytest.raises(DataError, match="unknown option.*dedup"):
    loading.make_config("beauty", dedup=True)
  with pytest.raises(DataError, match="sequences_file"):
    loading.make_config("s3rec")
  with pytest.raises(DataError, match="unknown dataset"):
    loading.make_config("movielens")
  assert loading.make_config("ml100k").name == "default"
  assert loading.make_config("ml100k", min_interactions=5).name == "default"
  assert loading.make_config("hm", dedup=True).name == "dedup-1"
  assert set(loading.dataset_names()) >= {"beauty", "sports", "yelp", "ml100k", "hm",
                                          "s3rec", "synthetic"}


def test_inputs_changed_prepares_again(tmp_path):
  manual = _s3rec_dir(tmp_path / "beauty")
  tfds_dir = str(tmp_path / "tfds")
  assert loading.load_dataset("beauty", manual_dir=manual, data_dir=tfds_dir).num_users == 3
  _s3rec_dir(manual, seqs="1 1 2 3\n2 2 3 4 1\n3 4 2 1\n4 3 4\n")
  ds = loading.load_dataset("beauty", manual_dir=manual, data_dir=tfds_dir)
  assert ds.num_users == 4 and _seqs(ds)[-1] == [3, 4]


def test_too_short_users_are_caught_by_splits(tmp_path):
  manual = _s3rec_dir(tmp_path / "beauty", seqs="1 1 2 3\n2 2 3 4 1\n3 4 2\n")
  ds = loading.load_dataset("beauty", manual_dir=manual, data_dir=str(tmp_path / "tfds"))
  with pytest.raises(DataError, match="Beauty.txt:3.*2 item"):
    splits.leave_one_out(ds)


def test_synthetic_dispatch():
  ds = loading.load_dataset("synthetic", num_items=60, num_users=80, image_size=16)
  assert ds.num_items == 60 and ds.num_users == 80
  with pytest.raises(DataError, match="unknown option.*colour"):
    loading.load_dataset("synthetic", colour=3)


def test_prepare_data_tool_formats_stats():
  path = pathlib.Path(__file__).parents[2] / "tools" / "prepare_data.py"
  spec = importlib.util.spec_from_file_location("prepare_data_tool", path)
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  text = tool.format_stats({"users": 22363, "items": 12101, "interactions": 198502,
                            "avg_length": 8.876, "min_length": 5, "max_length": 204,
                            "items_with_text": 12101, "items_with_image": 0})
  assert "22,363" in text and "12,101" in text and "198,502" in text and "8.88" in text
