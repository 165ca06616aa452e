"""Known answers and every bad-input error of the raw-file parsers (tiny files in tmp_path)."""

import numpy as np
import pytest

from jaxrec.data import readers
from jaxrec.data.errors import DataError


def _write(tmp_path, name, text, mode="w"):
  path = tmp_path / name
  if mode == "wb":
    path.write_bytes(text)
  else:
    path.write_text(text, encoding="utf-8")
  return str(path)


def _raises(fn, *args, line=None, contains=(), **kwargs):
  with pytest.raises(DataError) as info:
    fn(*args, **kwargs)
  e = info.value
  assert e.path is not None and e.fix
  if line is not None:
    assert e.line == line, str(e)
  for text in contains:
    assert text in str(e), str(e)
  return e


def test_sequences_known_answer(tmp_path):
  path = _write(tmp_path, "Toy.txt", "1 1 2 3\r\n2 4 1\n7 2 2 5\n\n")
  seqs = readers.read_s3rec_sequences(path)
  assert list(seqs.user_ids) == ["1", "2", "7"]
  np.testing.assert_array_equal(seqs.lines, [1, 2, 3])
  np.testing.assert_array_equal(seqs.items, [1, 2, 3, 4, 1, 2, 2, 5])
  np.testing.assert_array_equal(seqs.offsets, [0, 3, 5, 8])
  assert seqs.max_item == 5 and seqs.num_users == 3


@pytest.mark.parametrize("text,line,contains", [
    ("1 1 2\n2\n", 2, ["malformed", "'2'"]),
    ("1 1 2\n\n2 3 4\n", 2, ["malformed"]),
    ("1 1 2\n2 3 x7\n", 2, ["non-integer", "'x7'"]),
    ("1 1 2.5\n", 1, ["'2.5'"]),
    ("1 1 0\n", 1, ["id 0 < 1"]),
    ("1 1 -3\n", 1, ["id -3 < 1"]),
    ("1 1 2\n1 3 4\n", 2, ["user id 1 appears again", "line 1"]),
])
def test_sequences_bad_lines(tmp_path, text, line, contains):
  path = _write(tmp_path, "Toy.txt", text)
  e = _raises(readers.read_s3rec_sequences, path, line=line, contains=contains)
  assert e.path == path


def test_sequences_unknown_item_and_missing_file(tmp_path):
  path = _write(tmp_path, "Toy.txt", "1 1 2\n2 2 9\n")
  _raises(readers.read_s3rec_sequences, path, num_items=5, items_path="items.tsv",
          line=2, contains=["unknown item id 9", "items.tsv", "5 items"])
  _raises(readers.read_s3rec_sequences, str(tmp_path / "nope.txt"),
          contains=["not found", "nope.txt"])
  _raises(readers.read_s3rec_sequences, _write(tmp_path, "empty.txt", "\n"),
          contains=["no users"])


def test_items_tsv_known_answer(tmp_path):
  path = _write(tmp_path, "items.tsv", "item_id\ttitle\tkeywords\n1\tA\tx y\n2\t\tz\n")
  table = readers.read_s3rec_items(path)
  assert table.columns == ("item_id", "title", "keywords") and len(table) == 2
  assert list(table["title"]) == ["A", ""]
  np.testing.assert_array_equal(table.lines, [2, 3])
  assert list(table.get("absent")) == ["", ""]


@pytest.mark.parametrize("text,line,contains", [
    ("id\ttitle\n1\tA\n", 1, ["missing column(s) item_id", "item_id"]),
    ("title\titem_id\nA\t1\n", 1, ["first column"]),
    ("item_id\ttitle\n1\tA\nb2\tB\n", 3, ["non-integer item_id 'b2'"]),
    ("item_id\ttitle\n1\tA\n3\tB\n", 3, ["out of order", "expected 2"]),
    ("item_id\ttitle\n1\tA\n2\tB\n2\tC\n", 4, ["duplicate item_id 2"]),
    ("item_id\ttitle\n1\tA\n2\tB\textra\n", 3, ["3 column(s)", "header has 2"]),
    ("item_id\ttitle\n1\n", 2, ["1 column(s)"]),
])
def test_items_tsv_bad(tmp_path, text, line, contains):
  path = _write(tmp_path, "items.tsv", text)
  _raises(readers.read_s3rec_items, path, line=line, contains=contains)


def test_catalog_must_match(tmp_path):
  seq_path = _write(tmp_path, "Toy.txt", "1 1 2\n2 3 1\n")
  seqs = readers.read_s3rec_sequences(seq_path)
  small = readers.read_s3rec_items(_write(tmp_path, "small.tsv", "item_id\n1\n2\n"))
  e = _raises(readers.check_catalog, seqs, small, line=2,
              contains=["unknown item id 3", "small.tsv", "Toy.txt"])
  assert e.path == seq_path
  big = readers.read_s3rec_items(_write(tmp_path, "big.tsv", "item_id\n1\n2\n3\n4\n"))
  e = _raises(readers.check_catalog, seqs, big, line=5,
              contains=["big.tsv", "Toy.txt", "same catalog", "4 items", "up to 3"])
  exact = readers.read_s3rec_items(_write(tmp_path, "ok.tsv", "item_id\n1\n2\n3\n"))
  readers.check_catalog(seqs, exact)


def test_not_utf8(tmp_path):
  path = _write(tmp_path, "items.tsv", b"item_id\ttitle\n1\tok\n2\t\xff\n", mode="wb")
  _raises(readers.read_s3rec_items, path, line=3, contains=["UTF-8"])


ML_INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
            "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")


def test_ml100k_files(tmp_path):
  inter = readers.read_ml100k_inter(_write(tmp_path, "ml-100k.inter", ML_INTER))
  assert inter.columns == ("user_id", "item_id", "rating", "timestamp")
  assert list(inter["item_id"]) == ["242", "302"]
  np.testing.assert_array_equal(readers.parse_floats(inter, "timestamp"),
                                [881250949.0, 891717742.0])
  item = readers.read_ml100k_item(_write(
      tmp_path, "ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token"
      "\tclass:token_seq\n1\tToy Story\t1995\tAnimation Children's Comedy\n"))
  assert list(item["class"]) == ["Animation Children's Comedy"]
  tsv = readers.read_ml100k_items_tsv(_write(
      tmp_path, "items.tsv", "item_id\ttitle\tyear\tgenres\toverview\n1\tToy Story\t1995"
      "\tAnimation|Comedy\tToys.\n"))
  assert list(tsv["genres"]) == ["Animation|Comedy"]


def test_ml100k_bad(tmp_path):
  _raises(readers.read_ml100k_inter,
          _write(tmp_path, "a.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t3\n"),
          line=1, contains=["missing column(s) timestamp", "timestamp:<type>"])
  _raises(readers.read_ml100k_inter,
          _write(tmp_path, "b.inter", ML_INTER + "1\t2\t4\tsoon\n"),
          line=4, contains=["timestamp 'soon' is not a number"])
  _raises(readers.read_ml100k_inter,
          _write(tmp_path, "c.inter", ML_INTER + "1\t2\t4\tnan\n"), line=4)
  _raises(readers.read_ml100k_inter,
          _write(tmp_path, "d.inter", ML_INTER + "1\t2\t4\n"), line=4,
          contains=["3 column(s)"])
  _raises(readers.read_ml100k_item, _write(
      tmp_path, "e.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\t"
      "class:token_seq\n1\tA\t1995\tDrama\n1\tB\t1996\tDrama\n"), line=3,
      contains=["item_id '1' appears again", "line 2"])
  _raises(readers.read_table, _write(tmp_path, "empty.tsv", ""), ["a"], line=1,
          contains=["empty"])


HM_TX = ("t_dat\tcustomer_id\tarticle_id\tprice\tsales_channel_id\n"
         "2018-09-20\tc1\t0108775015\t0.02\t2\n2018-09-21\tc2\t0110065001\t0.03\t1\n")


def test_hm_files(tmp_path):
  tx = readers.read_hm_transactions(_write(tmp_path, "transactions.tsv", HM_TX))
  assert list(tx["article_id"]) == ["0108775015", "0110065001"]
  np.testing.assert_array_equal(readers.hm_timestamps(tx),
                                [1537401600.0, 1537401600.0 + 86400])
  cols = readers.HM_ARTICLE_COLUMNS
  art = _write(tmp_path, "articles.tsv", "\t".join(cols) + "\n" +
               "\t".join(["0108775015", "108775"] + ["x"] * (len(cols) - 2)) + "\n" +
               "\t".join(["0108775015", "108775"] + ["y"] * (len(cols) - 2)) + "\n")
  _raises(readers.read_hm_articles, art, line=3, contains=["appears again"])


@pytest.mark.parametrize("row,contains", [
    ("2018-13-40\tc3\t0108775015\t0.1\t1", ["t_dat '2018-13-40' is not a date"]),
    ("2018\tc3\t0108775015\t0.1\t1", ["t_dat '2018'"]),
    ("2018-09-22\tc3\t10877501x\t0.1\t1", ["article_id '10877501x'"]),
])
def test_hm_bad_rows(tmp_path, row, contains):
  path = _write(tmp_path, "transactions.tsv", HM_TX + row + "\n")
  _raises(readers.read_hm_transactions, path, line=4, contains=contains)


def test_hm_missing_column(tmp_path):
  path = _write(tmp_path, "transactions.tsv", "t_dat\tcustomer\tarticle_id\n")
  e = _raises(readers.read_hm_transactions, path, line=1,
              contains=["missing column(s) customer_id"])
  assert "t_dat, customer_id, article_id" in e.fix
