"""Trie-constrained beam search throughput: on-device trie vs a host-side Python trie.

Times, in one run on the same batches (Beauty-size trie, TIGER-size T5 with random
weights: decoding cost does not depend on them, beam 20, top 10, batch 256 users with
Beauty-shaped histories of <= 20 items):

  1. jaxrec's constrained beam search (`make_beam_search`, jitted, the trie on the
     device: per level a gather of each beam's allowed codes and a top-k over
     beams x candidates);
  2. the same search unconstrained (trie=None), to get the masking share of decoding,
     (t_constrained - t_unconstrained) / t_constrained; as a breakdown, the encoder
     (+ cross-attention keys/values) alone and the trie lookups alone (the level-l
     `Trie.candidates` gathers on [batch, beam] states, jitted) are timed too;
  3. the peers' way (HuggingFace `prefix_allowed_tokens_fn`): the same beam search
     driven level by level from the host, a Python dict trie asked for every one of
     the batch x beam rows, the [rows, vocab] -inf/0 mask built in NumPy, sent to the
     device and added before a jitted top-k (the model parts, encoder and cached
     decode step, are jitted; only the constraint is on the host).

Compilation is excluded from the throughputs (every program is compiled and run once
before timing) and reported separately. The on-device variants are timed batch by
batch, interleaved (constrained, unconstrained, encoder alone on each batch; --rounds
passes), so a drifting background load hits them alike; each host-trie batch is
followed by the constrained search of the same batch. The tool checks that the constrained search
only returns real items and that it agrees with the host-trie search (the same
search: the same top-10 up to float ties), and prints a Markdown table.

  JAXREC_DATA_DIR=/path/to/data python tools/benchmark_decode.py \
      --semantic_ids=/path/to/semantic_ids.npy
  python tools/benchmark_decode.py --tiny          # seconds: tiny model, small trie

Without --semantic_ids a Beauty-shaped table is generated (12,101 items, 3 skewed
levels of 256 codes + a collision level); without Beauty under --data_dir /
$JAXREC_DATA_DIR, histories are drawn at random with Beauty's test length distribution.
Either is said in the output ("semantic_ids", "histories").
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.decoding.beam_search import BeamSearchOutput, make_beam_search
from jaxrec import files
from jaxrec.decoding.trie import Trie, build_trie, trie_stats
from jaxrec.generator import config as t5_config
from jaxrec.generator import model as model_lib
from jaxrec.generator import vocab

# tools/host_trie.py, the host-side baseline, sits beside this file (tools/ is not a package,
# and tests load this file by path). prefix_mask: re-exported for tests.
_TOOLS = os.path.dirname(os.path.abspath(__file__))
if _TOOLS not in sys.path:
  sys.path.insert(0, _TOOLS)
from host_trie import (  # noqa: E402,F401  pylint: disable=g-import-not-at-top
    HostTrie, host_trie_beam_search, make_host_pieces, prefix_mask)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command-line flags (defined only when run as a script, so that importing this
  module, e.g. from a test, adds no flags that could clash with other tools')."""
  f = dict(flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 256, "users per batch.", **f)
  flags.DEFINE_integer("beam_size", 20, "beams per user.", **f)
  flags.DEFINE_integer("top_k", 10, "items returned per user.", **f)
  flags.DEFINE_integer("num_batches", 4, "timed batches (on-device searches).", **f)
  flags.DEFINE_integer("host_batches", 1, "timed batches of the host-trie search.", **f)
  flags.DEFINE_integer("rounds", 2, "interleaved timing passes over the --num_batches "
                       "batches (constrained, unconstrained, encoder alone per batch).", **f)
  flags.DEFINE_string("semantic_ids", None, "semantic_ids.npy [num_items, L] (row r = item "
                      "r + 1); default: a generated Beauty-shaped table.", **f)
  flags.DEFINE_string("data_dir", None, "folder holding beauty/ (default $JAXREC_DATA_DIR): "
                      "real Beauty test histories if present.", **f)
  flags.DEFINE_string("output", "/tmp/benchmark_decode.json", "JSON written here "
                      "(atomically); empty: none.", **f)
  flags.DEFINE_boolean("tiny", False, "T5Config.tiny and a small generated trie (random "
                       "histories): a smoke run in seconds.", **f)
  flags.DEFINE_integer("seed", 0, "seed of the generated IDs, histories and params.", **f)


MAX_HISTORY = 20
BEAUTY_NUM_ITEMS = 12101
BEAUTY_TEST_USERS = 22363
# Beauty (5-core, leave-one-out) test history lengths, capped at 20: count of users with
# length 4, 5, ..., 20 (no user has fewer than 4 items of history).
BEAUTY_TEST_LENGTHS = (7162, 4221, 2680, 1811, 1366, 881, 695, 558, 439, 361, 262, 207, 213,
                       141, 118, 112, 1136)
MIN_AGREEMENT = 0.98


# ------------------------------------------------------------------ inputs
def generate_semantic_ids(num_items: int = BEAUTY_NUM_ITEMS, codebook_size: int = 256,
                          levels: int = 3, seed: int = 0) -> np.ndarray:
  """A Beauty-shaped [num_items + 1, levels + 1] table (row 0 = padding).

  Level l's code is drawn from a skewed (Zipf-like) distribution over the codebook,
  permuted by the item's prefix (RQ-VAE codes depend on the earlier ones); level 0 uses
  2/3 of its codebook. The defaults give a trie close to the RQ-VAE IDs of Beauty
  (171 / ~7.6k / ~11.7k nodes, max branching 171 / ~147 / ~20 vs 171 / 7,832 / 11,595
  and 171 / 142 / 17). The last column numbers the items sharing the first `levels`
  codes (0, 1, ...), so every row is unique, as TIGER's collision level.
  """
  rng = np.random.default_rng(seed)
  ranks = np.arange(1, codebook_size + 1, dtype=np.float64)
  shifts, exponents = (10.0, 5.0, 1.0), (1.0, 1.1, 1.2)
  mult = next(m for m in (167, 163, 157) if np.gcd(m, codebook_size) == 1)
  parent = np.zeros(num_items, np.int64)
  cols = []
  for level in range(levels):
    p = 1.0 / (ranks + shifts[min(level, 2)]) ** exponents[min(level, 2)]
    if level == 0:
      p[max(1, (2 * codebook_size) // 3):] = 0.0
    rank = rng.choice(codebook_size, size=num_items, p=p / p.sum())
    _, node = np.unique(parent, return_inverse=True)
    offset = rng.integers(0, codebook_size, node.max() + 1)[node]
    code = (rank * mult + offset) % codebook_size  # a per-prefix permutation of the ranks
    cols.append(code)
    parent = parent * codebook_size + code
  codes = np.stack(cols, axis=1)
  order = np.lexsort(codes.T[::-1])
  sorted_codes = codes[order]
  new = np.ones(num_items, bool)
  new[1:] = np.any(sorted_codes[1:] != sorted_codes[:-1], axis=1)
  group_start = np.maximum.accumulate(np.where(new, np.arange(num_items), 0))
  collision = np.empty(num_items, np.int64)
  collision[order] = np.arange(num_items) - group_start
  ids = np.concatenate([codes, collision[:, None]], axis=1)
  return np.concatenate([np.zeros((1, levels + 1), np.int64), ids]).astype(np.int32)


def random_histories(num_users: int, num_items: int, seed: int = 0
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """[num_users, 20] histories (0-padded) with Beauty's test length distribution."""
  rng = np.random.default_rng(seed + 1)
  p = np.asarray(BEAUTY_TEST_LENGTHS, np.float64)
  lengths = 4 + rng.choice(len(p), size=num_users, p=p / p.sum())
  items = rng.integers(1, num_items + 1, size=(num_users, MAX_HISTORY))
  items = np.where(np.arange(MAX_HISTORY)[None, :] < lengths[:, None], items, 0)
  return items.astype(np.int32), lengths.astype(np.int32)


def _beauty_split(data_dir: Optional[str]):
  """Beauty's leave-one-out split if its files are under data_dir / $JAXREC_DATA_DIR."""
  from jaxrec.data import loading  # pylint: disable=g-import-not-at-top
  from jaxrec.data.splits import leave_one_out  # pylint: disable=g-import-not-at-top
  root = data_dir or os.environ.get(loading.DATA_DIR_ENV)
  manual = os.path.join(root, loading.SUBDIRS["beauty"]) if root else None
  if not manual or not os.path.isdir(manual):
    return None
  return leave_one_out(loading.load_dataset("beauty", manual_dir=manual))


def init_params(model: model_lib.EncoderDecoderModel, seed: int = 0):
  """Random-init "params" (plain arrays; jitted: one compile instead of op by op)."""
  variables = jax.jit(model.get_initial_variables)(jax.random.PRNGKey(seed))
  return nn.meta.unbox(variables["params"])


# ------------------------------------------------------------------ checks
def check_real_items(out: BeamSearchOutput, semantic_ids: np.ndarray) -> None:
  """Every returned (finite-score) result is a real item whose IDs are the codes."""
  items, scores, codes = (np.asarray(x) for x in out)
  found = np.isfinite(scores)
  assert found.all(), f"{int((~found).sum())} empty results (catalog smaller than top_k?)"
  num_items = semantic_ids.shape[0] - 1
  assert ((items >= 1) & (items <= num_items)).all(), "a result is not an item id"
  assert (semantic_ids[items] == codes).all(), "a result's codes are not its item's IDs"
  for row in items:
    assert len(set(row.tolist())) == len(row), "an item is returned twice for one user"


def agreement(a: BeamSearchOutput, b: BeamSearchOutput) -> dict:
  """How often two searches return the same item at the same rank, and the same set."""
  ia, ib = np.asarray(a.items), np.asarray(b.items)
  same_sets = np.mean([set(x) == set(y) for x, y in zip(ia.tolist(), ib.tolist())])
  score_gap = float(np.max(np.abs(np.asarray(a.scores) - np.asarray(b.scores))))
  return {"same_item_same_rank": float(np.mean(ia == ib)),
          "same_top1": float(np.mean(ia[:, 0] == ib[:, 0])),
          "same_item_set": float(same_sets), "max_score_gap": score_gap}


# ------------------------------------------------------------------ timing
def _block(tree):
  return jax.block_until_ready(tree)


def _time_call(fn: Callable, batch: Any) -> Tuple[float, Any]:
  """(seconds, result) of `fn(batch)`, waiting for the device."""
  start = time.perf_counter()
  out = _block(fn(batch))
  return time.perf_counter() - start, out


def _compile(jitted, *args) -> Tuple[Any, float]:
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def make_trie_lookups(trie: Trie, size: int, width: int, seed: int = 0):
  """A jitted function doing the search's trie work alone: per level, `candidates` on
  [size, width] node states (random valid nodes of the level; [size] at the root)."""
  rng = np.random.default_rng(seed)
  states = [jnp.zeros((size,), jnp.int32)]
  for level in trie.levels[1:]:
    states.append(jnp.asarray(rng.integers(0, level.num_nodes, (size, width)), jnp.int32))

  @jax.jit
  def lookups(trie, states):
    total = jnp.zeros((), jnp.int32)
    for level, nodes in enumerate(states):
      codes, children, valid = trie.candidates(level, nodes)
      total += jnp.sum(codes) + jnp.sum(children) + jnp.sum(valid)
    return total

  return lookups, states


# ------------------------------------------------------------------ run
def run(batch_size: int = 256, beam_size: int = 20, top_k: int = 10, num_batches: int = 4,
        host_batches: int = 1, rounds: int = 2, semantic_ids_path: Optional[str] = None,
        data_dir: Optional[str] = None, tiny: bool = False, seed: int = 0,
        log: Callable[[str], None] = print) -> dict:
  """Runs the benchmark; returns the results dict (see the module docstring)."""
  for name, value in (("batch_size", batch_size), ("num_batches", num_batches),
                      ("host_batches", host_batches), ("rounds", rounds)):
    if value < 1:
      raise ValueError(f"--{name} must be >= 1, got {value}.")
  if not 1 <= top_k <= beam_size:
    raise ValueError(f"--top_k must be in [1, --beam_size={beam_size}], got {top_k}.")
  t0 = time.perf_counter()
  split = None if tiny else _beauty_split(data_dir)
  num_items = split.num_items if split is not None else None
  if semantic_ids_path:
    if num_items is None:
      num_items = int(np.load(semantic_ids_path, mmap_mode="r").shape[0])
    from jaxrec.jobs import generator_job  # pylint: disable=g-import-not-at-top
    sids = generator_job.load_semantic_ids(semantic_ids_path, num_items)
    sids_source = semantic_ids_path
  else:
    if tiny:
      num_items = num_items or 300
      sids = generate_semantic_ids(num_items, codebook_size=8, seed=seed)
    else:
      num_items = num_items or BEAUTY_NUM_ITEMS
      sids = generate_semantic_ids(num_items, seed=seed)
    sids_source = (f"generated: {num_items} items, 3 skewed levels of "
                   f"{8 if tiny else 256} codes + a collision level")
  layout = vocab.TokenLayout.for_semantic_ids(sids, num_user_buckets=0)
  trie = build_trie(sids, codebook_sizes=layout.codebook_sizes)
  make_config = t5_config.T5Config.tiny if tiny else t5_config.T5Config.tiger
  config = make_config(layout.vocab_size)
  model = model_lib.EncoderDecoderModel.from_config(config, layout)
  params = init_params(model, seed)

  total = batch_size * max(num_batches, host_batches)
  if split is not None:
    test = split.test
    rows = np.random.default_rng(seed).permutation(len(test))
    rows = np.resize(rows, total)
    histories = test.padded_histories(rows, MAX_HISTORY)
    lengths = np.minimum(test.history_lengths[rows], MAX_HISTORY).astype(np.int32)
    history_source = f"Beauty test histories ({len(test)} users; {total} drawn)"
    test_users = len(test)
  else:
    histories, lengths = random_histories(total, num_items, seed)
    history_source = "random, Beauty's test length distribution"
    test_users = BEAUTY_TEST_USERS
  batches = []
  for i in range(max(num_batches, host_batches)):
    part = slice(i * batch_size, (i + 1) * batch_size)
    batch = vocab.make_token_batch({"history": histories[part], "length": lengths[part]},
                                   sids, layout, max_history=MAX_HISTORY)
    batches.append(jax.device_put(batch["encoder_input_tokens"]))
  setup_s = time.perf_counter() - t0
  log(f"setup {setup_s:.1f}s: {num_items} items, trie {trie_stats(trie)['levels']}, "
      f"vocab {layout.vocab_size}, encoder width {batches[0].shape[1]}")

  # 1 + 2: the on-device searches (compiled ahead, warmed up, then timed).
  search = make_beam_search(model, beam_size, top_k)
  constrained, compile_c = _compile(search, params, batches[0], trie)
  unconstrained, compile_u = _compile(search, params, batches[0], None)
  encode = jax.jit(lambda p, t: model.cross_attention_kv(p, model.encode(p, t)))
  encode_c, _ = _compile(encode, params, batches[0])
  lookups, states = make_trie_lookups(trie, batch_size, beam_size, seed)
  lookups_c, _ = _compile(lookups, trie, states)
  timed = batches[:num_batches]
  for fn, args in ((constrained, (params, timed[0], trie)),
                   (unconstrained, (params, timed[0], None)), (encode_c, (params, timed[0])),
                   (lookups_c, (trie, states))):
    _block(fn(*args))  # warm-up: the first run of each executable
  log(f"compiled: constrained {compile_c:.1f}s, unconstrained {compile_u:.1f}s")
  # Interleaved, batch by batch, so that a drifting background load hits every variant
  # alike; `rounds` passes over the batches.
  times: Dict[str, List[float]] = {"constrained": [], "unconstrained": [], "encoder": []}
  outs_c = []
  for r in range(rounds):
    for b in timed:
      for name, fn in (("constrained", lambda b: constrained(params, b, trie)),
                       ("unconstrained", lambda b: unconstrained(params, b, None)),
                       ("encoder", lambda b: encode_c(params, b))):
        seconds, out = _time_call(fn, b)
        times[name].append(seconds)
        if name == "constrained" and r == 0:
          outs_c.append(out)
  lookup_times = [_time_call(lambda _: lookups_c(trie, states), None)[0] for _ in range(20)]
  t_lookup = float(np.median(lookup_times))

  # 3: the host-trie search (model parts jitted; the warm-up call compiles them), each
  # batch followed by the constrained search on the same batch.
  host_trie = HostTrie(sids, layout)
  pieces = make_host_pieces(model, beam_size)
  start = time.perf_counter()
  host_trie_beam_search(model, params, batches[0], host_trie, beam_size, top_k, pieces)
  host_first_s = time.perf_counter() - start
  for key in ("host_trie", "host_constraint", "constrained_after_host"):
    times[key] = []
  outs_h = []
  for i, b in enumerate(batches[:host_batches]):
    stats = {}
    seconds, out = _time_call(
        lambda b: host_trie_beam_search(model, params, b, host_trie, beam_size, top_k,
                                        pieces, stats), b)
    times["host_trie"].append(seconds)
    times["host_constraint"].append(stats["host_constraint_seconds"])
    outs_h.append(out)
    seconds, out = _time_call(lambda b: constrained(params, b, trie), b)
    times["constrained_after_host"].append(seconds)
    if i >= len(outs_c):
      outs_c.append(out)
  median = lambda k: float(np.median(times[k]))  # noqa: E731
  t_c, t_u, t_enc, t_h, t_host = (median(k) for k in (
      "constrained", "unconstrained", "encoder", "host_trie", "host_constraint"))
  masking = float(np.median(np.subtract(times["constrained"], times["unconstrained"])))
  log(f"constrained {t_c:.3f}s/batch, unconstrained {t_u:.3f}s/batch, encoder "
      f"{t_enc:.3f}s/batch, trie lookups {t_lookup * 1e3:.2f}ms/batch, host trie "
      f"{t_h:.3f}s/batch, of which {t_host:.3f}s in the Python trie + masks (first call, "
      f"compiling, {host_first_s:.1f}s)")

  # Checks: real items only; the host-trie search returns the same items.
  outs_c_np = [BeamSearchOutput(*(np.asarray(x) for x in o)) for o in outs_c]
  for out in outs_c_np + outs_h:
    check_real_items(out, sids)
  cat = lambda outs, k: np.concatenate([getattr(o, k) for o in outs])  # noqa: E731
  both = [BeamSearchOutput(*(cat(outs[:host_batches], k) for k in BeamSearchOutput._fields))
          for outs in (outs_c_np, outs_h)]
  agree = agreement(both[0], both[1])
  assert agree["same_item_same_rank"] >= MIN_AGREEMENT, (
      f"constrained and host-trie searches disagree: {agree}")

  users_c, users_u, users_h = (batch_size / t for t in (t_c, t_u, t_h))
  results = {
      "setting": {
          "batch_size": batch_size, "beam_size": beam_size, "top_k": top_k,
          "num_batches": num_batches, "host_batches": host_batches, "rounds": rounds,
          "model": "T5Config.tiny" if tiny else "T5Config.tiger",
          "params": int(sum(x.size for x in jax.tree.leaves(params))),
          "vocab_size": layout.vocab_size, "encoder_width": int(batches[0].shape[1]),
          "semantic_ids": sids_source, "histories": history_source,
          "mean_history_length": float(np.mean(lengths[:batch_size * num_batches])),
          "trie": trie_stats(trie), "backend": jax.default_backend(),
          "devices": jax.device_count(), "cpu_count": os.cpu_count(),
          "random_init_params": True},
      "constrained": {"seconds_per_batch": t_c, "users_per_s": users_c,
                      "compile_seconds": compile_c},
      "unconstrained": {"seconds_per_batch": t_u, "users_per_s": users_u,
                        "compile_seconds": compile_u},
      "host_trie": {"seconds_per_batch": t_h, "users_per_s": users_h,
                    "host_constraint_seconds_per_batch": t_host,
                    "first_call_seconds_incl_compile": host_first_s},
      # the median over batches of t_constrained - t_unconstrained, / t_constrained.
      "masking_share": masking / t_c,
      "breakdown": {"encoder_seconds_per_batch": t_enc,
                    "encoder_share": t_enc / t_c,
                    "masking_share_of_decoder": masking / max(t_c - t_enc, 1e-12),
                    "trie_lookup_seconds_per_batch": t_lookup,
                    "trie_lookup_share": t_lookup / t_c},
      "speedup_vs_host_trie": t_h / t_c,
      "speedup_vs_host_trie_same_batches": float(np.median(
          np.divide(times["host_trie"], times["constrained_after_host"]))),
      "constrained_vs_unconstrained_time": t_c / t_u,
      "beauty_test_users": test_users,
      "beauty_test_seconds": test_users / users_c,
      "checks": {"constrained_only_real_items": True,
                 "agreement_with_host_trie": agree,
                 "users_compared": int(both[0].items.shape[0])},
      "setup_seconds": setup_s,
      "per_batch_seconds": times,
  }
  return results


def markdown_table(r: dict) -> str:
  s = r["setting"]
  head = (f"Beam search, batch {s['batch_size']} users, beam {s['beam_size']}, top "
          f"{s['top_k']}, {s['model']} ({s['params']:,} params, random init), "
          f"trie of {s['trie']['num_items']:,} items x {len(s['trie']['levels'])} levels, "
          f"{s['backend']} ({s['cpu_count']} cores); semantic IDs: {s['semantic_ids']}; "
          f"histories: {s['histories']}.")
  rows = [
      ("jaxrec, trie on device (constrained)", r["constrained"]),
      ("jaxrec, unconstrained (no trie)", r["unconstrained"]),
      ("host Python trie per beam (prefix_allowed_tokens_fn)", r["host_trie"]),
  ]
  lines = [head, "", "| search | users/s | s/batch | vs host trie |", "|---|---:|---:|---:|"]
  for name, v in rows:
    lines.append(f"| {name} | {v['users_per_s']:,.0f} | {v['seconds_per_batch']:.3f} | "
                 f"{r['host_trie']['seconds_per_batch'] / v['seconds_per_batch']:.1f}x |")
  b = r["breakdown"]
  agree = r["checks"]["agreement_with_host_trie"]
  share = r["masking_share"]
  lines += [
      "",
      f"- constrained vs host trie: {r['speedup_vs_host_trie']:.2f}x faster "
      f"({r['speedup_vs_host_trie_same_batches']:.2f}x on the same batches, timed back to "
      f"back); constrained / unconstrained time: "
      f"{r['constrained_vs_unconstrained_time']:.2f}. The host-trie search spends "
      f"{r['host_trie']['host_constraint_seconds_per_batch']:.3f} s/batch in the Python "
      f"trie and the NumPy masks (host work that a faster device does not shorten).",
      f"- masking share of decoding, (t_constrained - t_unconstrained) / t_constrained: "
      f"{100 * share:.1f} %"
      + (" (negative: the constrained search was the faster; its top-k runs over beams x "
         "allowed codes, fewer than beams x codebook)" if share < 0 else "")
      + f"; of the decoder part alone (encoder excluded) "
      f"{100 * b['masking_share_of_decoder']:.1f} %. The trie lookups alone "
      f"(`Trie.candidates` on [batch, beam] states, all levels) take "
      f"{1e3 * b['trie_lookup_seconds_per_batch']:.2f} ms/batch "
      f"({100 * b['trie_lookup_share']:.2f} % of the constrained search); encoder + "
      f"cross-attention K/V {100 * b['encoder_share']:.0f} %.",
      f"- Beauty test set ({r['beauty_test_users']:,} users) at the constrained rate: "
      f"{r['beauty_test_seconds']:.0f} s.",
      f"- compile: constrained {r['constrained']['compile_seconds']:.1f} s, unconstrained "
      f"{r['unconstrained']['compile_seconds']:.1f} s (excluded above); times are medians "
      f"over {s['num_batches']} batches x {s['rounds']} interleaved rounds (host trie: "
      f"{s['host_batches']} batch(es)).",
      f"- checks: every constrained result is a real item; same item at the same rank as "
      f"the host-trie search for {100 * agree['same_item_same_rank']:.2f} % of "
      f"{r['checks']['users_compared']} users x top {s['top_k']} "
      f"(largest score gap {agree['max_score_gap']:.1e}).",
  ]
  return "\n".join(lines)


def write_json(results: dict, path: str) -> None:
  """Writes `results` atomically (tmp + os.replace)."""
  files.write_json(path, results)


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
  del argv
  f = flag_values
  results = run(batch_size=f.batch_size, beam_size=f.beam_size, top_k=f.top_k,
                num_batches=f.num_batches, host_batches=f.host_batches, rounds=f.rounds,
                semantic_ids_path=f.semantic_ids, data_dir=f.data_dir, tiny=f.tiny,
                seed=f.seed)
  print(json.dumps(results, indent=1))
  print()
  print(markdown_table(results))
  if f.output:
    write_json(results, f.output)
    print(f"\nwrote {f.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
