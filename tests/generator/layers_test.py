"""Generator layers: RMS norm and relative-position buckets by hand, attention masking,
KV cache, parameter names and logical axes."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.generator import layers


def test_rms_norm_known_answer():
  x = jnp.array([[3.0, 4.0], [1.0, -1.0]])
  variables = layers.RMSNorm().init(jax.random.PRNGKey(0), x)
  y = layers.RMSNorm().apply(variables, x)
  rms = np.sqrt(12.5)
  np.testing.assert_allclose(y, [[3 / rms, 4 / rms], [1.0, -1.0]], rtol=1e-5)
  scale = variables["params"]["scale"]
  assert isinstance(scale, nn.LogicallyPartitioned) and scale.names == ("embed",)
  np.testing.assert_array_equal(nn.meta.unbox(scale), [1.0, 1.0])
  y16 = layers.RMSNorm(dtype=jnp.bfloat16).apply(variables, x)
  assert y16.dtype == jnp.bfloat16


@pytest.mark.parametrize("relative, bidirectional, num_buckets, max_distance, expected", [
    # Bidirectional, 32 buckets: 16 per direction, exact below 8, keys after query + 16.
    ([0, -1, -7, 1, 7], True, 32, 128, [0, 1, 7, 17, 23]),
    # log buckets: 8 + int(log(n / 8) / log(16) * 8).
    ([-8, -20, -127, -128, -1000, 1000], True, 32, 128, [8, 10, 15, 15, 15, 31]),
    # Causal, 32 buckets: future keys share bucket 0, exact below 16, then log(n/16)/log(8)*16.
    ([3, 0, -3, -15, -16, -40, -200], False, 32, 128, [0, 0, 3, 15, 16, 23, 31]),
    # 4 buckets, max_distance 8: 2 per direction, max_exact 1.
    ([0, -1, -5, 1, 5], True, 4, 8, [0, 1, 1, 3, 3]),
])
def test_relative_position_bucket_known_answers(relative, bidirectional, num_buckets,
                                                max_distance, expected):
  got = layers.relative_position_bucket(np.array(relative), bidirectional, num_buckets,
                                        max_distance)
  np.testing.assert_array_equal(got, expected)


def test_relative_position_biases_shape_and_lookup():
  module = layers.RelativePositionBiases(num_buckets=8, max_distance=16, num_heads=2)
  variables = module.init(jax.random.PRNGKey(0), 3, 5, True)
  bias = module.apply(variables, 3, 5, True)
  chex.assert_shape(bias, (1, 2, 3, 5))
  table = nn.meta.unbox(variables["params"]["rel_embedding"])
  buckets = layers.relative_position_bucket(np.arange(5)[None] - np.arange(3)[:, None], True,
                                            8, 16)
  np.testing.assert_allclose(bias[0], table[:, buckets], rtol=1e-6)
  assert variables["params"]["rel_embedding"].names == ("heads", "relpos_buckets")


def _attention(**kwargs):
  return layers.MultiHeadDotProductAttention(**{"num_heads": 2, "head_dim": 4, **kwargs})


def test_attention_masked_keys_do_not_matter():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
  kv = rng.normal(size=(2, 5, 8)).astype(np.float32)
  key_valid = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
  mask = layers.make_attention_mask(jnp.ones((2, 3)), key_valid)
  chex.assert_shape(mask, (2, 1, 3, 5))
  variables = _attention().init(jax.random.PRNGKey(0), q, jnp.asarray(kv), mask)
  out = _attention().apply(variables, q, jnp.asarray(kv), mask)
  chex.assert_shape(out, (2, 3, 8))
  kv2 = kv.copy()
  kv2[0, 3:] = 100.0
  kv2[1, 4:] = -50.0
  out2 = _attention().apply(variables, q, jnp.asarray(kv2), mask)
  np.testing.assert_allclose(out, out2, atol=1e-6)
  kv2[0, 0] = 3.0  # a real key does matter
  assert not np.allclose(out, _attention().apply(variables, q, jnp.asarray(kv2), mask))


def test_attention_params_have_t5x_names_and_axes():
  x = jnp.ones((1, 2, 8))
  params = _attention().init(jax.random.PRNGKey(0), x, x)["params"]
  assert set(params) == {"query", "key", "value", "out"}
  for name in ("query", "key", "value"):
    assert params[name]["kernel"].names == ("embed", "joined_kv")
    chex.assert_shape(params[name]["kernel"].value, (8, 8))
  assert params["out"]["kernel"].names == ("joined_kv", "embed")
  # T5 folds 1/sqrt(head_dim) into the query initializer.
  q_std = np.std(nn.meta.unbox(_attention(head_dim=64).init(
      jax.random.PRNGKey(1), jnp.ones((1, 2, 256)), jnp.ones((1, 2, 256)))["params"]
      ["query"]["kernel"]))
  np.testing.assert_allclose(q_std, 1 / np.sqrt(256) / 8, rtol=0.05)


def test_cached_self_attention_matches_causal_attention():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(1, 2, 4, 4)), jnp.float32)
  causal = layers.make_causal_mask(jnp.ones((2, 4)))
  variables = _attention().init(jax.random.PRNGKey(0), x, x)
  full = _attention().apply(variables, x, x, causal, bias)
  _, cache = _attention().apply(variables, x, x, decode=True, mutable=["cache"])
  cache = jax.tree.map(jnp.zeros_like, cache["cache"])
  for t in range(4):
    step, new = _attention().apply({**variables, "cache": cache}, x[:, t:t + 1], x[:, t:t + 1],
                                   None, bias, decode=True, mutable=["cache"])
    cache = new["cache"]
    np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)
  assert int(cache["cache_index"]) == 4
  chex.assert_shape(cache["cached_key"], (2, 4, 2, 4))


def test_mlp_block_gated_and_single():
  x = jnp.ones((2, 3, 8))
  gated = layers.MlpBlock(mlp_dim=16, activations=("gelu", "linear"))
  params = gated.init(jax.random.PRNGKey(0), x)["params"]
  assert set(params) == {"wi_0", "wi_1", "wo"}
  assert params["wi_0"]["kernel"].names == ("embed", "mlp")
  assert params["wo"]["kernel"].names == ("mlp", "embed")
  chex.assert_shape(gated.apply({"params": params}, x), (2, 3, 8))
  single = layers.MlpBlock(mlp_dim=16, activations=("relu",))
  assert set(single.init(jax.random.PRNGKey(0), x)["params"]) == {"wi", "wo"}


def test_dropout_needs_rng_and_changes_output():
  x = jnp.ones((2, 3, 8))
  mlp = layers.MlpBlock(mlp_dim=16, dropout_rate=0.5)
  variables = mlp.init(jax.random.PRNGKey(0), x)
  a = mlp.apply(variables, x, deterministic=True)
  b = mlp.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(a, b)


def test_embed_lookup_one_hot_and_attend():
  emb = layers.Embed(num_embeddings=6, features=4)
  tokens = jnp.array([[0, 5, 2]])
  variables = emb.init(jax.random.PRNGKey(0), tokens)
  table = nn.meta.unbox(variables["params"]["embedding"])
  assert variables["params"]["embedding"].names == ("vocab", "embed")
  np.testing.assert_allclose(emb.apply(variables, tokens)[0], np.asarray(table)[[0, 5, 2]])
  one_hot = layers.Embed(num_embeddings=6, features=4, one_hot=True)
  np.testing.assert_allclose(one_hot.apply(variables, tokens), emb.apply(variables, tokens),
                             rtol=1e-6)
  logits = emb.apply(variables, jnp.ones((2, 4)), method=emb.attend)
  chex.assert_shape(logits, (2, 6))
  np.testing.assert_allclose(logits[0], table.sum(-1), rtol=1e-5)
