"""RQ-VAE: shapes and axes, deterministic codes, loss falls, code usage, regularizers."""

import dataclasses
import functools
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxrec.quantizers import rqvae, training, vq

TINY = rqvae.RqVaeConfig(input_dim=32, hidden_dims=(64,), latent_dim=8, num_levels=2,
                         codebook_size=8)
FAST = training.TokenizerTrainConfig(num_steps=50, batch_size=128, learning_rate=1e-2,
                                     warmup_steps=0, log_every=10)


def clustered(num_clusters, n=512, dim=32, noise=0.1, seed=0):
  """A balanced mixture: n points around num_clusters unit-variance centers in dim-d."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_clusters, dim))
  labels = np.arange(n) % num_clusters
  return (centers[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32)


@functools.lru_cache(maxsize=None)
def jitted_apply(config):
  return jax.jit(rqvae.RqVae(config).apply)


def losses(config, params, x, targets=None):
  """The deterministic losses on x (jitted: eager linen is slow)."""
  return jax.device_get(jitted_apply(config)({"params": params}, jnp.asarray(x), targets).losses)


def test_forward_shapes_losses_and_usage():
  x = jnp.asarray(clustered(4))
  params = training.init_rqvae_state(x, TINY, FAST).params
  out = jitted_apply(TINY)({"params": params}, x)
  chex.assert_shape(out.recon, (512, 32))
  chex.assert_shape((out.latent, out.quantized), (512, 8))
  chex.assert_shape(out.codes, (512, 2))
  chex.assert_type(out.codes, jnp.int32)
  chex.assert_shape(out.residuals, (512, 2, 8))
  assert set(out.losses) == {"recon", "quantization", "codebook", "commitment", "diversity",
                             "alignment", "total"}
  np.testing.assert_allclose(out.losses["total"],
                             out.losses["recon"] + out.losses["quantization"], rtol=1e-6)
  chex.assert_shape((out.usage["used_fraction"], out.usage["perplexity"]), (2,))
  chex.assert_tree_all_finite(out.losses)


def test_logical_axes():
  axes = rqvae.logical_param_axes(TINY, target_dim=5)
  assert axes["quantizer"]["codebooks"] == P(None, "codebook", "embed")
  assert axes["encoder"]["dense_0"]["kernel"] == P("embed", "mlp")
  assert axes["encoder"]["dense_1"]["kernel"] == P("mlp", "embed")
  assert "align_head" not in axes  # alignment_weight = 0 creates no projection
  aligned = rqvae.logical_param_axes(
      rqvae.RqVaeConfig(input_dim=32, hidden_dims=(64,), latent_dim=8, num_levels=2,
                        codebook_size=8, alignment_weight=1.0), target_dim=5)
  assert aligned["align_head"]["proj"]["kernel"] == P("embed", "mlp")


def test_codes_are_deterministic_and_match_the_forward_pass():
  model = rqvae.RqVae(dataclasses.replace(TINY, dropout=0.5))
  x = jnp.asarray(clustered(4))
  params = training.init_rqvae_state(x, model.config, FAST).params
  codes = jax.jit(lambda p, x: model.apply({"params": p}, x, method=rqvae.RqVae.codes))(params, x)
  again, residuals = rqvae.make_codes_fn(model.config)(params, x)
  np.testing.assert_array_equal(codes, again)
  np.testing.assert_array_equal(codes, jitted_apply(model.config)({"params": params}, x).codes)
  chex.assert_shape(residuals, (512, 2, 8))


def test_loss_falls_on_clustered_data():
  # beta = 1: in a 50-step run with Adam-learned codes, TIGER's beta = 0.25 lets the encoder
  # outrun its codes (the commitment term grows while reconstruction falls; see the next test).
  config = dataclasses.replace(TINY, beta=1.0)
  x = clustered(8)
  start = training.init_rqvae_state(x, config, FAST)
  state, history = training.fit_rqvae(x, config, FAST, start_state=start, progress=False)
  before, after = losses(config, start.params, x), losses(config, state.params, x)
  assert after["total"] < 0.5 * before["total"], (before, after)
  assert after["recon"] < 0.5 * before["recon"], (before, after)
  assert [m["step"] for m in history.metrics] == [10, 20, 30, 40, 50]
  chex.assert_shape(history.tokens.codes, (512, 2))


def test_defaults_use_more_than_half_the_codes_on_a_balanced_mixture():
  x = clustered(64)
  start = training.init_rqvae_state(x, TINY, FAST)
  state, history = training.fit_rqvae(x, TINY, FAST, start_state=start, progress=False)
  usage = vq.code_usage(jnp.asarray(history.tokens.codes), TINY.codebook_size)
  assert np.all(np.asarray(usage["used_fraction"]) > 0.5), usage
  before, after = losses(TINY, start.params, x), losses(TINY, state.params, x)
  assert after["recon"] < 0.8 * before["recon"], (before, after)  # seeds 0-3: 0.57-0.63


def collapsed_state(config, train_config, x):
  """Code 0 of every level at the latents' centre, the other codes far away."""
  state = training.init_rqvae_state(x, config, train_config)
  z = rqvae.RqVae(config).apply({"params": state.params}, jnp.asarray(x),
                                method=rqvae.RqVae.encode)
  spread = 3 * jnp.sqrt(jnp.mean(jnp.sum(jnp.square(z - z.mean(0)), -1)))
  dirs = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8))
  codebooks = spread * dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
  codebooks = codebooks.at[0].add(z.mean(0)).at[:, 0].set(jnp.stack([z.mean(0), 0 * z[0]]))
  # Adam's state at step 0 does not depend on the values: keep it.
  return state.replace(params=training.with_codebooks(state.params, codebooks))


def test_diversity_loss_spreads_a_collapsed_codebook():
  x = clustered(64)
  config = FAST  # the collapsed codebooks replace the k-means init
  with_div = dataclasses.replace(TINY, diversity_weight=1.0)
  perplexity = {}
  for name, model_config in (("off", TINY), ("on", with_div)):
    start = collapsed_state(model_config, config, x)
    start_codes = rqvae.make_codes_fn(model_config)(start.params, jnp.asarray(x))[0]
    np.testing.assert_allclose(vq.code_usage(start_codes, 8)["perplexity"], [1.0, 1.0])
    _, history = training.fit_rqvae(x, model_config, config, start_state=start, progress=False,
                                    until_step=30)
    assert np.isfinite(history.metrics[-1]["diversity"])
    perplexity[name] = np.asarray(vq.code_usage(jnp.asarray(history.tokens.codes), 8)
                                  ["perplexity"])
  assert np.all(perplexity["on"] > perplexity["off"] + 1.0), perplexity


def test_diversity_loss_known_values():
  uniform = jnp.zeros((4, 1, 4))  # equal distances: uniform soft assignment
  np.testing.assert_allclose(rqvae.diversity_loss(uniform, 1.0), 0.0, atol=1e-6)
  collapsed = jnp.tile(jnp.array([0.0, 1e4, 1e4, 1e4]), (4, 1, 1))
  np.testing.assert_allclose(rqvae.diversity_loss(collapsed, 1.0), np.log(4), rtol=1e-5)


def test_alignment_loss_is_finite_and_falls_on_learnable_targets():
  x = clustered(16)
  targets = x @ np.random.default_rng(1).normal(size=(32, 6)).astype(np.float32)
  config = dataclasses.replace(TINY, alignment_weight=1.0)
  start = training.init_rqvae_state(x, config, FAST, align_targets=targets)
  state, _ = training.fit_rqvae(x, config, FAST, align_targets=targets, start_state=start,
                                progress=False, compute_codes=False, until_step=40)

  before = losses(config, start.params, x[:128], targets[:128])["alignment"]
  after = losses(config, state.params, x[:128], targets[:128])["alignment"]
  assert np.isfinite(before) and after < before - 0.3, (before, after)


def test_info_nce_prefers_matching_pairs():
  keys = jnp.eye(4)
  good = rqvae.info_nce(keys, keys, 0.1)
  bad = rqvae.info_nce(keys[::-1], keys, 0.1)
  assert good < 0.01 < bad
  with pytest.raises(ValueError, match="targets"):
    config = dataclasses.replace(TINY, alignment_weight=1.0)
    jax.eval_shape(rqvae.RqVae(config).init, jax.random.PRNGKey(0), jnp.zeros((2, 32)))
