"""EncoderDecoderModel: loss falls on a learnable next-item task, greedy prediction gives
valid (and right) codes, score/loss consistency, golden TIGER logical axes."""

import functools
import json
import os
import pathlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
import pytest

from jaxrec.data.errors import DataError
from jaxrec.generator import model as model_lib
from jaxrec.generator.config import T5Config
from jaxrec.generator.errors import ModelConfigError
from jaxrec.generator.model import EncoderDecoderModel
from jaxrec.generator.vocab import TokenLayout, make_token_batch

GOLDEN = pathlib.Path(__file__).parent / "golden_tiger_partition_specs.json"
NUM_ITEMS, WIDTH, NUM_EXAMPLES, BATCH = 12, 4, 512, 64


def synthetic_task(seed=0):
  """Histories of 1..4 items; the target is a fixed permutation of the LAST item."""
  layout = TokenLayout(3, (4, 4, 2), num_user_buckets=8)
  rng = np.random.default_rng(seed)
  all_codes = np.array([(a, b, c) for a in range(4) for b in range(4) for c in range(2)])
  sids = np.concatenate([np.zeros((1, 3), int), all_codes[rng.permutation(32)[:NUM_ITEMS]]])
  successor = rng.permutation(NUM_ITEMS) + 1
  length = rng.integers(1, WIDTH + 1, NUM_EXAMPLES)
  history = rng.integers(1, NUM_ITEMS + 1, (NUM_EXAMPLES, WIDTH))
  history[np.arange(WIDTH)[None] >= length[:, None]] = 0
  target = successor[history[np.arange(NUM_EXAMPLES), length - 1] - 1]
  batch = {"history": history.astype(np.int32), "length": length.astype(np.int32),
           "target": target.astype(np.int32),
           "user": rng.integers(0, 100, NUM_EXAMPLES).astype(np.int32),
           "weight": np.ones(NUM_EXAMPLES, np.float32)}
  return layout, sids, target, make_token_batch(batch, sids, layout)


@pytest.fixture(scope="module")
def trained():
  layout, sids, target, tokens = synthetic_task()
  model = EncoderDecoderModel.from_config(T5Config.tiny(layout.vocab_size), layout)
  shapes = {k: v.shape for k, v in tokens.items()}
  variables = jax.jit(functools.partial(model.get_initial_variables, input_shapes=shapes))(
      jax.random.PRNGKey(0))
  params = nn.meta.unbox(variables)["params"]
  optimizer = optax.adam(1e-2)

  @jax.jit
  def train_step(params, opt_state, batch, rng):
    (_, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state = optimizer.init(params)
  losses = []
  for step in range(100):
    rows = np.arange(step * BATCH, (step + 1) * BATCH) % NUM_EXAMPLES
    batch = {k: jnp.asarray(v[rows]) for k, v in tokens.items()}
    params, opt_state, metrics = train_step(params, opt_state, batch, None)
    losses.append(float(metrics["loss"]))
  return dict(model=model, layout=layout, sids=sids, target=target, tokens=tokens,
              params=params, variables=variables, losses=losses, metrics=metrics,
              score=jax.jit(model.score_batch))


def test_initial_variables_are_float32_and_logically_partitioned(trained):
  leaves = jax.tree.leaves(trained["variables"], is_leaf=lambda x: isinstance(
      x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert {x.value.dtype for x in leaves} == {jnp.dtype(jnp.float32)}


def test_loss_falls_on_next_item_task(trained):
  losses = trained["losses"]
  assert losses[-1] < 0.5 * losses[0], losses[::10]
  assert set(trained["metrics"]) >= {"loss", "z_loss", "accuracy", "num_tokens"}
  assert float(trained["metrics"]["num_tokens"]) == BATCH * 3
  assert 0.0 < float(trained["metrics"]["z_loss"]) < 0.1


def test_greedy_prediction_valid_and_learned(trained):
  model, layout, tokens = trained["model"], trained["layout"], trained["tokens"]
  predict = jax.jit(model.predict_batch_with_aux)
  codes, aux = predict(trained["params"], {"encoder_input_tokens": tokens[
      "encoder_input_tokens"]})
  chex.assert_shape(codes, (NUM_EXAMPLES, 3))
  chex.assert_type(codes, jnp.int32)
  codes = np.asarray(codes)
  assert (codes >= 0).all() and (codes < np.array(layout.codebook_sizes)).all()
  for level in range(3):
    start, end = layout.level_token_range(level)
    assert ((aux["tokens"][:, level] >= start) & (aux["tokens"][:, level] < end)).all()
  right = (codes == trained["sids"][trained["target"]]).all(-1).mean()
  assert right > 0.6, right
  # The greedy scores are the model's log-likelihood of its own output.
  first = {"encoder_input_tokens": tokens["encoder_input_tokens"][:BATCH],
           "decoder_input_tokens": jnp.concatenate(
               [jnp.full((BATCH, 1), layout.bos_id), aux["tokens"][:BATCH, :-1]], 1),
           "decoder_target_tokens": aux["tokens"][:BATCH],
           "decoder_loss_weights": jnp.ones((BATCH, 3))}
  scores = trained["score"](trained["params"], first)
  np.testing.assert_allclose(scores, aux["scores"][:BATCH], atol=1e-4, rtol=1e-4)


def test_score_batch_equals_minus_token_cross_entropy(trained):
  model, tokens = trained["model"], trained["tokens"]
  batch = {k: jnp.asarray(v[:BATCH]) for k, v in tokens.items()}
  scores = trained["score"](trained["params"], batch)
  chex.assert_shape(scores, (BATCH,))
  assert (np.asarray(scores) <= 0).all()
  weights = np.zeros((BATCH, 3), np.float32)
  weights[5] = 1.0  # the loss of example 5 alone, normalized by its 3 tokens
  _, metrics = jax.jit(model.loss_fn)(trained["params"],
                                      {**batch, "decoder_loss_weights": weights}, None)
  np.testing.assert_allclose(scores[5], -3 * metrics["cross_ent_loss"], rtol=1e-5)


def test_token_cross_entropy_known_answers():
  logits = jnp.zeros((1, 1, 4))
  targets = jnp.zeros((1, 1), jnp.int32)
  loss, z = model_lib.token_cross_entropy(logits, targets, 0.0, 1e-4)
  np.testing.assert_allclose(loss, [[np.log(4) + 1e-4 * np.log(4) ** 2]], rtol=1e-6)
  np.testing.assert_allclose(z, [[1e-4 * np.log(4) ** 2]], rtol=1e-6)
  smooth, _ = model_lib.token_cross_entropy(logits, targets, 0.3, 0.0)
  entropy = -(0.7 * np.log(0.7) + 3 * 0.1 * np.log(0.1))
  np.testing.assert_allclose(smooth, [[np.log(4) - entropy]], rtol=1e-5)
  # The smoothed loss is 0 when the prediction equals the smoothed target.
  best = jnp.log(jnp.array([0.7, 0.1, 0.1, 0.1]))[None, None]
  np.testing.assert_allclose(model_lib.token_cross_entropy(best, targets, 0.3)[0], [[0.0]],
                             atol=1e-6)


def test_batch_and_vocab_errors():
  layout = TokenLayout(2, 4, num_user_buckets=2)
  with pytest.raises(ModelConfigError, match="vocab_size"):
    EncoderDecoderModel.from_config(T5Config.tiny(layout.vocab_size - 1), layout)
  model = EncoderDecoderModel.from_config(T5Config.tiny(layout.vocab_size), layout)
  with pytest.raises(DataError, match="make_token_batch"):
    model.loss_fn({}, {"history": np.zeros((1, 2))}, None)


def tiger_specs():
  layout = TokenLayout(4, 256, num_user_buckets=2000)
  model = EncoderDecoderModel.from_config(T5Config.tiger(layout.vocab_size), layout)
  shapes = model.default_input_shapes(batch_size=2, max_history=20)
  chex.assert_equal(shapes["encoder_input_tokens"], (2, 81))
  specs = model_lib.flatten_logical_axes(model.logical_axes(shapes))
  abstract = nn.meta.unbox(jax.eval_shape(
      functools.partial(model.get_initial_variables, input_shapes=shapes),
      jax.random.PRNGKey(0)))
  flat_shapes = {k: list(v.shape) for k, v in
                 traverse_util.flatten_dict(abstract, sep="/").items()}
  return {"vocab_size": layout.vocab_size,
          "num_params": int(sum(np.prod(s) for s in flat_shapes.values())),
          "params": {k: {"axes": specs[k], "shape": flat_shapes[k]} for k in specs}}


def write_golden(specs):
  """One line per parameter, so diffs stay readable."""
  lines = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}"
           for k, v in sorted(specs["params"].items())]
  GOLDEN.write_text(
      "{\n" + f' "num_params": {specs["num_params"]},\n "vocab_size": {specs["vocab_size"]},\n'
      + ' "params": {\n' + ",\n".join(lines) + "\n }\n}\n")


def test_tiger_logical_partition_specs_match_golden():
  got = tiger_specs()
  if os.environ.get("JAXREC_UPDATE_GOLDEN"):  # regenerate, then review the diff by eye
    write_golden(got)
  assert got == json.loads(GOLDEN.read_text())
  params = got["params"]
  assert params["params/token_embedder/embedding"]["axes"] == ["vocab", "embed"]
  assert params["params/encoder/layers_0/attention/query/kernel"] == {
      "axes": ["embed", "joined_kv"], "shape": [128, 384]}
  assert params["params/decoder/relpos_bias/rel_embedding"]["axes"] == [
      "heads", "relpos_buckets"]
  # The module-level helper agrees with the model's.
  tiger = T5Config.tiger(got["vocab_size"])
  assert model_lib.flatten_logical_axes(model_lib.logical_axes(tiger)) == {
      k: v["axes"] for k, v in params.items()}


def test_shared_cross_attention_kv_equals_tiled_encoder_output(trained):
  """decode_step with per-user keys/values shared by G rows == with `encoded` tiled G times."""
  model, params = trained["model"], trained["params"]
  tokens = jnp.asarray(trained["tokens"]["encoder_input_tokens"][:3])
  group = 4
  encoded = model.encode(params, tokens)
  cross_kv = model.cross_attention_kv(params, encoded)
  tiled_tokens = jnp.repeat(tokens, group, axis=0)
  tiled = jnp.repeat(encoded, group, axis=0)
  cache_a = model.init_cache(params, 3 * group)
  cache_b = model.init_cache(params, 3 * group)
  step = jnp.arange(3 * group, dtype=jnp.int32) % 5 + 2
  for token in (jnp.ones_like(step), step, step + 1):
    logits_a, cache_a = model.decode_step(params, cache_a, tiled, tiled_tokens, token)
    logits_b, cache_b = model.decode_step(params, cache_b, None, tokens, token,
                                          cross_kv=cross_kv)
    np.testing.assert_allclose(logits_a, logits_b, rtol=1e-5, atol=1e-5)
