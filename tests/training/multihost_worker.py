"""A tiny stand-in for the generator (t5x model interface) and its task; run as a script it is
one process of the localhost multi-host test (gloo CPU collectives, 2 devices per process).

  python multihost_worker.py --process_id=0 --num_processes=2 --port=12345 --steps=4 --out=x.json
"""

import argparse
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

NUM_ITEMS = 63  # item vocab 64 (pad + items) is divisible by the model axis.
CODE_VOCAB = 8
NUM_LEVELS = 2


class _Net(nn.Module):
  """Pooled history embedding + position embedding -> MLP -> code logits [B, L, V]."""
  vocab: int
  code_vocab: int
  num_levels: int
  embed: int = 16
  mlp: int = 32
  dropout: float = 0.1

  @nn.compact
  def __call__(self, tokens, deterministic=True):
    part = nn.with_logical_partitioning
    emb = self.param("embedding", part(nn.initializers.normal(1.0), ("vocab", "embed")),
                     (self.vocab, self.embed))
    pos = self.param("position", part(nn.initializers.normal(1.0), ("length", "embed")),
                     (self.num_levels, self.embed))
    mask = (tokens > 0).astype(jnp.float32)
    count = jnp.maximum(mask.sum(1), 1.0)
    x = jnp.take(emb, tokens, axis=0)
    last = jnp.take_along_axis(tokens, (count.astype(jnp.int32) - 1)[:, None], axis=1)[:, 0]
    pooled = (x * mask[..., None]).sum(1) / count[:, None] + jnp.take(emb, last, axis=0)
    pooled = nn.with_logical_constraint(pooled, ("batch", "embed"))
    z = pooled[:, None, :] + pos[None]
    h = nn.Dense(self.mlp, kernel_init=part(nn.initializers.lecun_normal(), ("embed", "mlp")),
                 bias_init=part(nn.initializers.zeros, ("mlp",)), name="wi")(z)
    h = nn.with_logical_constraint(nn.relu(h), ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    z = z + nn.Dense(self.embed, kernel_init=part(nn.initializers.lecun_normal(),
                                                  ("mlp", "embed")), name="wo")(h)
    return nn.Dense(self.code_vocab, use_bias=False, name="logits",
                    kernel_init=part(nn.initializers.lecun_normal(), ("embed", "vocab")))(z)


class StandInModel:
  """The t5x BaseModel interface over `_Net` (what the trainer needs of the generator)."""

  def __init__(self, vocab=NUM_ITEMS + 1, code_vocab=CODE_VOCAB, num_levels=NUM_LEVELS,
               dropout=0.1):
    self.module = _Net(vocab, code_vocab, num_levels, dropout=dropout)

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    del input_types
    tokens = jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32)
    return self.module.init(rng, tokens)

  def loss_fn(self, params, batch, dropout_rng):
    logits = self.module.apply({"params": params}, batch["encoder_input_tokens"],
                               deterministic=dropout_rng is None,
                               rngs=None if dropout_rng is None else {"dropout": dropout_rng})
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["decoder_target_tokens"])
    w = batch["decoder_loss_weights"]
    loss = (ce * w).sum() / jnp.maximum(w.sum(), 1.0)
    return loss, {"weight_sum": w.sum()}

  def predict_batch(self, params, batch):
    logits = self.module.apply({"params": params}, batch["encoder_input_tokens"])
    return jnp.argmax(logits, -1).astype(jnp.int32)


def semantic_ids() -> np.ndarray:
  """[NUM_ITEMS, 2] int32 unique codes; row r = item r + 1."""
  items = np.arange(1, NUM_ITEMS + 1)
  return np.stack([items // CODE_VOCAB, items % CODE_VOCAB], 1).astype(np.int32)


def make_split(num_users=40, seed=0):
  """Users walk the items in order (item i -> i + 1): a learnable next-item task."""
  from jaxrec.data.dataset import ItemTable, SequentialDataset
  from jaxrec.data.splits import leave_one_out
  rng = np.random.default_rng(seed)
  seqs = []
  for _ in range(num_users):
    start, length = rng.integers(0, NUM_ITEMS), rng.integers(5, 12)
    seqs.append((start + np.arange(length)) % NUM_ITEMS + 1)
  ds = SequentialDataset.from_sequences("walk", seqs, ItemTable.empty(NUM_ITEMS))
  return leave_one_out(ds)


def make_batch_fn(ids=None):
  """Host data batch -> token batch with the target's codes; padding rows get weight 0."""
  ids = semantic_ids() if ids is None else ids

  def batch_fn(batch):
    target = np.maximum(batch["target"], 1) - 1
    weights = np.broadcast_to(batch["weight"][:, None], (len(target), ids.shape[1]))
    return {"encoder_input_tokens": batch["history"].astype(np.int32),
            "decoder_target_tokens": ids[target],
            "decoder_loss_weights": weights.astype(np.float32)}
  return batch_fn


def run_steps(num_steps, batch_size=8, mesh_config=None, devices=None):
  """Losses of `num_steps` sharded train steps fed by this process's data shard."""
  from jaxrec.data import batching
  from jaxrec.training import optimizers, partitioning, trainer
  config = trainer.TrainerConfig(
      max_history=6, mesh=mesh_config or partitioning.MeshConfig(),
      batching=batching.BatchingConfig(batch_size=batch_size, seed=1, num_threads=0,
                                       prefetch=0),
      optimizer=optimizers.OptimizerConfig(name="adamw", schedule="constant",
                                           learning_rate=0.01))
  split = make_split()
  examples = split.train_examples(config.max_history)
  batch_fn = make_batch_fn()
  local = batch_size // jax.process_count()
  shapes = {k: v.shape for k, v in batch_fn(trainer.example_batch(examples, local)).items()}
  tr = trainer.Trainer(StandInModel(), config, shapes, devices)
  state = tr.init_state()
  it = batching.train_iterator(examples, config.batching)
  losses = []
  for _ in range(num_steps):
    state, metrics = tr.step(state, batch_fn(next(it)))
    losses.append(float(jax.device_get(metrics["loss"])))
  return losses


def main(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--model", type=int, default=1)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}",
                             num_processes=args.num_processes, process_id=args.process_id,
                             initialization_timeout=60)
  from jaxrec.training import partitioning
  losses = run_steps(args.steps, mesh_config=partitioning.MeshConfig(model=args.model))
  with open(args.out, "w") as f:
    json.dump({"losses": losses, "device_count": jax.device_count(),
               "local_device_count": jax.local_device_count(),
               "process_index": jax.process_index()}, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
  main(sys.argv[1:])
