"""Training throughput of the TIGER-size T5 on Beauty-shaped batches (batch 256, history <= 20).

Times jaxrec's jitted train step (Adafactor, rsqrt schedule) on real Beauty
training batches, unbucketed (every batch padded to 20 history items), bucketed
(padded to 5 / 10 / 20 items) and finely bucketed (2 / 3 / 4 / 6 / 8 / 12 / 16 / 20
items), reports XLA's FLOPs per example and the
achieved GFLOP/s, and, given --torch_python (an interpreter with torch and
transformers), times the same-size HuggingFace T5 (T5 1.1, gated-GELU) train
step on the same shapes in the same run, as the PyTorch reference.

  python tools/benchmark_train.py --dataset=beauty --torch_python=/path/to/venv/bin/python

With --layouts it instead compares the generator's training layouts in TARGETS trained per
second (target exposures/s) and XLA FLOPs per target, same model size (TIGER's T5), same
optimizer (AdamW) and the same run: per-example (batch 256 prefixes, buckets 5/10/20) and
per-sequence item encoder (batch 128 windows, buckets 6/11/21):

  python tools/benchmark_train.py --dataset=beauty --layouts --steps=20
"""

import json
import os
import subprocess
import time

from absl import app
from absl import flags
import jax
import numpy as np

from jaxrec.data import batching
from jaxrec.data import loading
from jaxrec.data import windows as windows_lib
from jaxrec.data.splits import leave_one_out
from jaxrec.generator import config as t5_config
from jaxrec.generator import decoder_only_model
from jaxrec.generator import model as model_lib
from jaxrec.generator import sequence_batch
from jaxrec.generator import sequence_model
from jaxrec.generator import vocab
from jaxrec import files
from jaxrec.training import trainer as trainer_lib

_DATASET = flags.DEFINE_string("dataset", "beauty", "dataset (loading.dataset_names()).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "global batch size.")
_STEPS = flags.DEFINE_integer("steps", 30, "timed steps per variant.")
_LEVELS = flags.DEFINE_integer("levels", 4, "codes per item (3 + collision level).")
_TORCH = flags.DEFINE_string("torch_python", None, "python with torch + transformers.")
_JSON = flags.DEFINE_string("json", None, "also write the figures here.")
_LAYOUTS = flags.DEFINE_bool("layouts", False, "compare per-example and per-sequence "
                             "training in targets/s instead (see the module docstring).")

_LOOP = flags.DEFINE_enum("loop", None, ["item_encoder", "decoder_only"],
                          "time the trainer loop against the bare jitted step instead, "
                          "for this per-sequence layout at its CPU size.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp", "scratch folder for --loop's run.")

# The CPU-sized per-sequence model (gin_configs/models/per_sequence.gin); the decoder-only
# layout stacks the 2 + 2 layers in one causal stack.
_CPU_MODEL = dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=512, num_encoder_layers=2,
                  num_decoder_layers=2)

_TORCH_SCRIPT = r"""
import json, sys, time, torch
from transformers import T5Config, T5ForConditionalGeneration
a = json.loads(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(a["threads"])
cfg = T5Config(vocab_size=a["vocab"], d_model=128, d_kv=64, d_ff=1024, num_layers=4,
               num_decoder_layers=4, num_heads=6, dropout_rate=0.1,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False,
               decoder_start_token_id=1, pad_token_id=0)
model = T5ForConditionalGeneration(cfg).train()
opt = torch.optim.Adafactor(model.parameters(), lr=0.01) if hasattr(torch.optim, "Adafactor") \
    else torch.optim.AdamW(model.parameters(), lr=0.01)
B, W, L = a["batch"], a["enc_len"], a["levels"]
x = torch.randint(2, a["vocab"], (B, W)); y = torch.randint(2, 1026, (B, L))
def step():
  opt.zero_grad(); loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=y).loss
  loss.backward(); opt.step()
for _ in range(2): step()
t = time.perf_counter()
for _ in range(a["steps"]): step()
print(json.dumps({"examples_per_s": B * a["steps"] / (time.perf_counter() - t),
                  "optimizer": type(opt).__name__, "torch": torch.__version__}))
"""


def _time_steps(trainer, state, batches, steps):
  """Examples/s over `steps` batches (compilation excluded: every shape is warmed up)."""
  for b in {b["encoder_input_tokens"].shape[1]: b for b in batches}.values():
    state, m = trainer.step(state, b)
  jax.block_until_ready(m["loss"])
  start = time.perf_counter()
  n = 0
  for i in range(steps):
    state, m = trainer.step(state, batches[i % len(batches)])
    n += len(batches[i % len(batches)]["decoder_target_tokens"])
  jax.block_until_ready(m["loss"])
  return state, n / (time.perf_counter() - start)


def _flops(trainer, state, batch):
  """XLA's count of FLOPs for one train step on `batch`."""
  lowered = jax.jit(trainer_lib.make_train_step(trainer.model, trainer.optimizer)).lower(
      state, trainer.shard_batch(batch), trainer.step_rng)
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _targets(batch, tokens_per_item: int) -> float:
  """Target items in a model batch (weighted decoder tokens / tokens per item)."""
  return float((batch["decoder_loss_weights"] > 0).sum()) / tokens_per_item


def _shape_key(batch) -> tuple:
  return tuple(sorted((k, v.shape) for k, v in batch.items()))


def compare_layouts(split, sids, layout, steps: int) -> dict:
  """Targets/s and FLOPs/target of the per-example and per-sequence layouts (same run)."""
  optimizer = trainer_lib.optimizers.OptimizerConfig(name="adamw", schedule="constant",
                                                     learning_rate=1e-3)
  config = t5_config.T5Config.tiger(layout.vocab_size)
  variants = {
      "per_example": (model_lib.EncoderDecoderModel.from_config(config, layout),
                      split.train_examples(20), 256, (5, 10, 20),
                      lambda b: vocab.make_token_batch(b, sids, layout, max_history=20)),
      # What the trainer runs: the decoder over the packed target rows only.
      "item_encoder": (sequence_model.ItemEncoderDecoderModel.from_config(config, layout),
                       windows_lib.split_windows(split, 20), 128, (6, 11, 21),
                       lambda b: sequence_batch.pack_target_rows(
                           sequence_batch.make_sequence_token_batch(b, sids, layout))),
      # The decoder at every window position (tail windows and bucket padding included).
      "item_encoder_unpacked": (
          sequence_model.ItemEncoderDecoderModel.from_config(config, layout),
          windows_lib.split_windows(split, 20), 128, (6, 11, 21),
          lambda b: sequence_batch.make_sequence_token_batch(b, sids, layout)),
      # The same number of layers as TIGER's 4 + 4, in one causal stack.
      "decoder_only": (decoder_only_model.DecoderOnlyModel.from_config(config, layout),
                       windows_lib.split_windows(split, 20), 128, (6, 11, 21),
                       lambda b: sequence_batch.make_decoder_only_batch(b, sids, layout)),
  }
  per_item = layout.num_levels
  results = {}
  for name, (model, rows, batch_size, boundaries, convert) in variants.items():
    bcfg = batching.BatchingConfig(batch_size=batch_size, bucket_boundaries=boundaries,
                                   sort_pool_batches=8)
    it = batching.train_iterator(rows, bcfg)
    batches = [convert(next(it)) for _ in range(steps)]
    tcfg = trainer_lib.TrainerConfig(batching=bcfg, optimizer=optimizer)
    full = convert(trainer_lib.example_batch(rows, batch_size))
    trainer = trainer_lib.Trainer(model, tcfg, {k: v.shape for k, v in full.items()})
    state = trainer.init_state()
    by_shape = {_shape_key(b): b for b in batches}
    flops = {k: _flops(trainer, state, b) / max(_targets(b, per_item), 1.0)
             for k, b in by_shape.items()}
    for b in by_shape.values():
      state, m = trainer.step(state, b)
    jax.block_until_ready(m["loss"])
    start, targets = time.perf_counter(), 0.0
    for b in batches:
      state, m = trainer.step(state, b)
      targets += _targets(b, per_item)
    jax.block_until_ready(m["loss"])
    seconds = time.perf_counter() - start
    mean_flops = float(np.mean([flops[_shape_key(b)] for b in batches]))
    results[name] = {"targets_per_s": round(targets / seconds, 1),
                     "steps_per_s": round(steps / seconds, 3),
                     "targets_per_step": round(targets / steps, 1),
                     "mean_flops_per_target": mean_flops,
                     "targets_per_epoch": int(getattr(rows, "num_targets", len(rows))),
                     "params": int(sum(x.size for x in jax.tree.leaves(state.params)))}
    print(name, results[name], flush=True)
  base = results["per_example"]
  for name in variants:
    results[name]["targets_per_s_ratio"] = round(
        results[name]["targets_per_s"] / base["targets_per_s"], 2)
    results[name]["flops_per_target_ratio"] = round(
        results[name]["mean_flops_per_target"] / base["mean_flops_per_target"], 3)
  return results


def compare_loop(split, sids, layout, steps: int, training_layout: str, workdir: str
                 ) -> dict:
  """Steps/s of `trainer.train` (host conversion, logging, metric fetches, the final
  checkpoint) against the bare jitted step on pre-converted batches, same config, same
  data order, same run. Both unbucketed (one shape) so compilation is timed out of both:
  the bare loop is warmed up, and the trainer's first log window (which compiles) is
  dropped."""
  import tempfile  # pylint: disable=g-import-not-at-top
  # The trainer's packed rows, at one fixed capacity (every batch one shape).
  packed = lambda b, sids, layout: sequence_batch.pack_target_rows(  # noqa: E731
      sequence_batch.make_sequence_token_batch(b, sids, layout), quantum=128 * 20)
  model_cls, convert_fn = {
      "item_encoder": (sequence_model.ItemEncoderDecoderModel, packed),
      "decoder_only": (decoder_only_model.DecoderOnlyModel,
                       sequence_batch.make_decoder_only_batch)}[training_layout]
  config = t5_config.T5Config.tiger(layout.vocab_size, **_CPU_MODEL)
  model = model_cls.from_config(config, layout)
  convert = lambda b: convert_fn(b, sids, layout)  # noqa: E731
  rows = windows_lib.split_windows(split, 20)
  bcfg = batching.BatchingConfig(batch_size=128, bucket_boundaries=())
  optimizer = trainer_lib.optimizers.OptimizerConfig(name="adamw", schedule="constant",
                                                     learning_rate=1e-3)
  warm = 10
  tcfg = trainer_lib.TrainerConfig(batching=bcfg, optimizer=optimizer, num_steps=warm + steps,
                                   log_every=warm, eval_every=0,
                                   checkpoint_every=10 ** 9, max_history=20)
  it = batching.train_iterator(rows, bcfg)
  batches = [convert(next(it)) for _ in range(warm + steps)]
  trainer = trainer_lib.Trainer(model, tcfg, {k: v.shape for k, v in batches[0].items()})
  state = trainer.init_state()
  for b in batches[:warm]:
    state, m = trainer.step(state, b)
  jax.block_until_ready(m["loss"])
  start = time.perf_counter()
  for b in batches[warm:]:
    state, m = trainer.step(state, b)
  jax.block_until_ready(m["loss"])
  bare = steps / (time.perf_counter() - start)
  del state
  with tempfile.TemporaryDirectory(dir=workdir) as tmp:
    trainer_lib.train(model, split, convert, tcfg, tmp, progress=False, examples=rows)
    entries = [e for e in files.read_jsonl(os.path.join(tmp, "metrics.jsonl"))
               if "examples_per_s" in e and e["step"] > warm]
  seconds = sum(warm * bcfg.batch_size / e["examples_per_s"] for e in entries)
  loop = warm * len(entries) / seconds
  out = {"training_layout": training_layout, "timed_steps": steps, "batch_size": 128,
         "bare_step_steps_per_s": round(bare, 3), "trainer_loop_steps_per_s": round(loop, 3),
         "loop_over_bare": round(loop / bare, 3)}
  print(out, flush=True)
  return out


def main(argv):
  del argv
  data = loading.load_dataset(_DATASET.value)
  split = leave_one_out(data)
  examples = split.train_examples(20)
  rng = np.random.default_rng(0)
  levels = _LEVELS.value
  sids = np.concatenate([np.zeros([1, levels], np.int32),
                         rng.integers(0, 256, [data.num_items, levels]).astype(np.int32)])
  layout = vocab.TokenLayout(num_levels=levels, codebook_sizes=256)
  config = t5_config.T5Config.tiger(layout.vocab_size)
  model = model_lib.EncoderDecoderModel.from_config(config, layout)
  results = {"dataset": _DATASET.value, "batch_size": _BATCH.value, "levels": levels,
             "vocab_size": layout.vocab_size, "devices": jax.device_count(),
             "backend": jax.default_backend()}
  if _LOOP.value:
    results["loop"] = compare_loop(split, sids, layout, _STEPS.value, _LOOP.value,
                                   _WORKDIR.value)
    print(json.dumps(results, indent=1))
    if _JSON.value:
      with open(_JSON.value, "w") as f:
        json.dump(results, f, indent=1)
    return
  if _LAYOUTS.value:
    results["layouts"] = compare_layouts(split, sids, layout, _STEPS.value)
    print(json.dumps(results, indent=1))
    if _JSON.value:
      with open(_JSON.value, "w") as f:
        json.dump(results, f, indent=1)
    return
  state = None
  variants = (("unbucketed", ()), ("bucketed", (5, 10, 20)),
              ("bucketed_fine", (2, 3, 4, 6, 8, 12, 16, 20)))
  for name, boundaries in variants:
    bcfg = batching.BatchingConfig(batch_size=_BATCH.value, bucket_boundaries=boundaries,
                                   sort_pool_batches=32 if boundaries else 0)
    it = batching.train_iterator(examples, bcfg)
    batches = [vocab.make_token_batch(next(it), sids, layout, max_history=20)
               for _ in range(_STEPS.value)]
    tcfg = trainer_lib.TrainerConfig(batching=bcfg)
    shapes = {k: v.shape for k, v in batches[0].items()}
    trainer = trainer_lib.Trainer(model, tcfg, shapes)
    if state is None:
      state = trainer.init_state()
      results["params"] = int(sum(x.size for x in jax.tree.leaves(state.params)))
    by_width = {b["encoder_input_tokens"].shape[1]: b for b in batches}
    flops = {w: _flops(trainer, state, b) / _BATCH.value for w, b in sorted(by_width.items())}
    mean_flops = float(np.mean([flops[b["encoder_input_tokens"].shape[1]] for b in batches]))
    state, eps = _time_steps(trainer, state, batches, _STEPS.value)
    results[name] = {"examples_per_s": round(eps, 1),
                     "flops_per_example_by_encoder_length": flops,
                     "mean_flops_per_example": mean_flops,
                     "achieved_gflops_per_s": round(eps * mean_flops / 1e9, 1)}
    print(name, results[name], flush=True)
  if _TORCH.value:
    args = {"vocab": layout.vocab_size, "batch": _BATCH.value, "enc_len": 1 + 20 * levels,
            "levels": levels, "steps": max(3, _STEPS.value // 5), "threads": 2}
    out = subprocess.run([_TORCH.value, "-c", _TORCH_SCRIPT, json.dumps(args)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode == 0:
      results["pytorch_reference"] = json.loads(out.stdout.strip().splitlines()[-1])
      ref = results["pytorch_reference"]["examples_per_s"]
      results["speedup_vs_pytorch"] = {name: round(results[name]["examples_per_s"] / ref, 2)
                                       for name, _ in variants}
    else:
      results["pytorch_reference_error"] = out.stderr[-1000:]
  print(json.dumps(results, indent=1))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
