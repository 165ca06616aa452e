"""tools/benchmark_decode.py: its main path with --tiny end to end, and the host-trie
(prefix_allowed_tokens_fn) beam search agreeing with jaxrec's jitted constrained search."""

import importlib.util
import json
import pathlib

from absl import flags
import numpy as np

from jaxrec.decoding import build_trie, make_beam_search
from jaxrec.generator import EncoderDecoderModel, T5Config, TokenLayout
from jaxrec.generator.vocab import make_token_batch

REPO = pathlib.Path(__file__).parents[1]


def _tool():
  spec = importlib.util.spec_from_file_location("benchmark_decode_tool",
                                                REPO / "tools" / "benchmark_decode.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_tiny_main(tmp_path, capsys, monkeypatch):
  tool = _tool()
  flag_values = flags.FlagValues()  # the tool's flags, kept out of the global registry
  tool.define_flags(flag_values)
  out = tmp_path / "decode.json"
  monkeypatch.delenv("JAXREC_DATA_DIR", raising=False)
  flag_values(["benchmark_decode", "--tiny", "--batch_size=8", "--beam_size=4", "--top_k=2",
               "--num_batches=2", "--host_batches=1", "--rounds=1", f"--output={out}"])
  tool.main([], flag_values)
  printed = capsys.readouterr().out
  result = json.loads(out.read_text())
  assert not (tmp_path / "decode.json.tmp").exists()
  for name in ("constrained", "unconstrained", "host_trie"):
    assert result[name]["users_per_s"] > 0 and result[name]["seconds_per_batch"] > 0
  assert result["setting"]["semantic_ids"].startswith("generated")
  assert result["setting"]["histories"].startswith("random")
  assert result["setting"]["model"] == "T5Config.tiny"
  assert result["checks"]["constrained_only_real_items"]
  assert result["checks"]["agreement_with_host_trie"]["same_item_same_rank"] >= 0.98
  assert result["checks"]["users_compared"] == 8
  assert result["beauty_test_seconds"] > 0
  assert "| jaxrec, trie on device (constrained) |" in printed
  assert "masking share" in printed


def test_host_trie_search_agrees_with_the_jitted_constrained_search():
  tool = _tool()
  ids = tool.generate_semantic_ids(120, codebook_size=6, seed=3)
  assert len(np.unique(ids[1:], axis=0)) == 120  # the collision level makes rows unique
  layout = TokenLayout.for_semantic_ids(ids, num_user_buckets=0)
  trie = build_trie(ids, codebook_sizes=layout.codebook_sizes)
  model = EncoderDecoderModel.from_config(T5Config.tiny(layout.vocab_size), layout)
  params = tool.init_params(model, seed=1)
  histories, lengths = tool.random_histories(6, 120, seed=2)
  assert (lengths >= 4).all() and (lengths <= 20).all()
  tokens = make_token_batch({"history": histories, "length": lengths}, ids, layout)[
      "encoder_input_tokens"]
  host_trie = tool.HostTrie(ids, layout)
  # The dict trie allows exactly the trie's codes after every prefix.
  bos = layout.bos_id
  first = host_trie.prefix_allowed_tokens_fn(0, np.array([bos]))
  assert first == sorted(set((layout.level_offsets[0] + ids[1:, 0]).tolist()))
  assert host_trie.prefix_allowed_tokens_fn(0, np.array([bos, 0])) == []
  assert host_trie.item(layout.code_to_token(ids[7])) == 7
  expected = make_beam_search(model, 10, 10)(params, tokens, trie)
  got = tool.host_trie_beam_search(model, params, tokens, host_trie, 10, 10)
  np.testing.assert_array_equal(got.items, np.asarray(expected.items))
  np.testing.assert_array_equal(got.codes, np.asarray(expected.codes))
  np.testing.assert_allclose(got.scores, np.asarray(expected.scores), rtol=1e-5, atol=1e-5)
  tool.check_real_items(got, ids)
  agree = tool.agreement(expected, got)
  assert agree["same_item_same_rank"] == 1.0 and agree["same_item_set"] == 1.0


def test_prefix_mask_is_huggingfaces():
  tool = _tool()
  allowed = {(1,): [2, 3], (1, 2): [4], (1, 3): []}
  fn = lambda batch_id, ids: allowed.get(tuple(ids.tolist()), [])  # noqa: E731
  mask = tool.prefix_mask(np.array([[1, 2], [1, 3], [1, 2], [1, 9]]), 2, 6, fn)
  assert mask.shape == (4, 6) and mask.dtype == np.float32
  assert np.isfinite(mask).tolist() == [[False] * 4 + [True, False], [False] * 6,
                                        [False] * 4 + [True, False], [False] * 6]
  assert (mask[np.isfinite(mask)] == 0).all()
