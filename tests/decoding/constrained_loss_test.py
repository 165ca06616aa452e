"""MSCGRec's constrained sequence learning: the loss normalizes over the codes the trie
allows after the target's prefix (hand computation), it trains, and it needs a trie."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.decoding import build_trie
from jaxrec.generator import (EncoderDecoderModel, ModelConfigError, T5Config, TokenLayout,
                              make_token_batch)
from jaxrec.generator import model as model_lib

IDS = np.array([[0, 0, 0], [0, 1, 0], [0, 2, 0], [1, 1, 3]])  # items 1..3
LAYOUT = TokenLayout(3, (2, 3, 4), num_user_buckets=0)      # tokens: 2 specials + 9 codes


def test_masked_cross_entropy_known_answer():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 1, 5)), jnp.float32)
  allowed = jnp.array([[[True, False, True, False, False]]])
  loss, _ = model_lib.token_cross_entropy(logits, jnp.array([[2]]), allowed=allowed)
  l = np.asarray(logits[0, 0])
  np.testing.assert_allclose(loss[0, 0], -(l[2] - np.log(np.exp(l[0]) + np.exp(l[2]))),
                             rtol=1e-6)
  # The target always counts as allowed (here token 3 is outside `allowed`).
  loss, _ = model_lib.token_cross_entropy(logits, jnp.array([[3]]), allowed=allowed)
  expected = -(l[3] - np.log(np.exp(l[[0, 2, 3]]).sum()))
  np.testing.assert_allclose(loss[0, 0], expected, rtol=1e-6)
  # Label smoothing spreads over the other allowed tokens only (0 at its optimum).
  best = jnp.log(jnp.array([0.2, 1e-9, 0.8, 1e-9, 1e-9]))[None, None]
  smooth, _ = model_lib.token_cross_entropy(best, jnp.array([[2]]), 0.2, allowed=allowed)
  np.testing.assert_allclose(smooth, [[0.0]], atol=1e-5)


@pytest.fixture(scope="module")
def model_and_batch():
  trie = build_trie(IDS, codebook_sizes=LAYOUT.codebook_sizes)
  config = T5Config.tiny(LAYOUT.vocab_size)
  model = EncoderDecoderModel.from_config(config, LAYOUT, trie, constrained_loss=True)
  plain = EncoderDecoderModel.from_config(config, LAYOUT)
  batch = make_token_batch({"history": np.array([[1, 2], [3, 0]], np.int32),
                            "length": np.array([2, 1], np.int32),
                            "target": np.array([3, 2], np.int32)}, IDS, LAYOUT)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0))["params"])
  return model, plain, batch, params


def test_constrained_loss_equals_hand_computation(model_and_batch):
  model, plain, batch, params = model_and_batch
  loss, metrics = model.loss_fn(params, batch, None)
  logits = np.asarray(plain._logits(params, batch), np.float64)  # [2, 3, vocab 11]
  # Allowed tokens per position, by hand from the trie (offsets 2, 4, 7):
  # target item 3 = (1, 1, 3): level 0 {2, 3}; after (1,): {4 + 1}; after (1, 1): {7 + 3}.
  # target item 2 = (0, 2, 0): level 0 {2, 3}; after (0,): {4 + 1, 4 + 2}; after (0, 2): {7}.
  allowed = [[[2, 3], [5], [10]], [[2, 3], [5, 6], [7]]]
  targets = np.asarray(batch["decoder_target_tokens"])
  total, z_total = 0.0, 0.0
  for b in range(2):
    for pos in range(3):
      row = logits[b, pos, allowed[b][pos]]
      log_z = np.log(np.exp(row).sum())
      total += -(logits[b, pos, targets[b, pos]] - log_z) + 1e-4 * log_z ** 2
      z_total += 1e-4 * log_z ** 2
  np.testing.assert_allclose(float(loss), total / 6, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["z_loss"]), z_total / 6, rtol=1e-5)
  unconstrained, _ = plain.loss_fn(params, batch, None)
  assert float(loss) < float(unconstrained)


def test_constrained_loss_trains_and_jits(model_and_batch):
  model, _, batch, params = model_and_batch
  grad = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, None)[0]))
  losses = []
  for _ in range(30):
    losses.append(float(model.loss_fn(params, batch, None)[0]))
    params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grad(params))
  assert losses[-1] < 0.5 * losses[0], losses[::5]


def test_constrained_loss_needs_a_trie():
  with pytest.raises(ModelConfigError, match="trie"):
    EncoderDecoderModel.from_config(T5Config.tiny(LAYOUT.vocab_size), LAYOUT,
                                    constrained_loss=True)
