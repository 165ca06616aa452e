"""Tokenizer fitting: k-means init, determinism, resume equivalence, EMA/revival, bad input."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.errors import DataError
from jaxrec.quantizers import rqkmeans, rqvae, training

TINY = rqvae.RqVaeConfig(input_dim=32, hidden_dims=(64,), latent_dim=8, num_levels=2,
                         codebook_size=8)
FAST = training.TokenizerTrainConfig(num_steps=50, batch_size=128, learning_rate=1e-2,
                                     warmup_steps=0, log_every=10)


def clustered(num_clusters=64, n=512, dim=32, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_clusters, dim))
  return (centers[np.arange(n) % num_clusters] + 0.1 * rng.normal(size=(n, dim))).astype(
      np.float32)


def test_kmeans_init_fits_the_first_batch_latents():
  x = clustered()
  state = training.init_rqvae_state(x, TINY, FAST)
  chex.assert_shape(state.params["quantizer"]["codebooks"], (2, 8, 8))
  assert int(state.step) == 0
  idx = training.batch_indices(jax.random.fold_in(jax.random.PRNGKey(FAST.seed), 1), 0,
                                512, 128)
  latents = rqvae.make_encode_fn(TINY)(state.params, jnp.asarray(x)[idx])
  expected = rqkmeans.residual_kmeans(latents, 2, 8, FAST.kmeans_iters,
                                      jax.random.fold_in(jax.random.PRNGKey(FAST.seed), 3),
                                      check_unique=False)
  np.testing.assert_allclose(state.params["quantizer"]["codebooks"], expected.codebooks,
                             atol=1e-5)
  plain = training.init_rqvae_state(x, TINY, dataclasses.replace(FAST, kmeans_init=False))
  assert np.abs(plain.params["quantizer"]["codebooks"]).max() <= 1 / 8


def test_same_seed_same_ids_and_on_step_sees_every_step():
  x = clustered()
  seen = []
  _, first = training.fit_rqvae(x, TINY, FAST, until_step=10, progress=False,
                                on_step=lambda step, state, metrics: seen.append(
                                    (step, int(state.step))))
  _, second = training.fit_rqvae(x, TINY, FAST, until_step=10, progress=False)
  assert seen == [(i, i) for i in range(1, 11)]
  step_fn, _ = training._compiled(TINY, FAST, len(x))
  assert step_fn._cache_size() == 1  # one trace for all steps and both runs
  np.testing.assert_array_equal(first.tokens.codes, second.tokens.codes)
  np.testing.assert_array_equal(first.tokens.last_residuals, second.tokens.last_residuals)
  _, other = training.fit_rqvae(x, TINY, dataclasses.replace(FAST, seed=1), until_step=10,
                                progress=False)
  assert not np.array_equal(first.tokens.last_residuals, other.tokens.last_residuals)


def test_resume_matches_an_uninterrupted_run():
  x = clustered()
  whole, whole_history = training.fit_rqvae(x, TINY, FAST, until_step=20, progress=False)
  half, _ = training.fit_rqvae(x, TINY, FAST, until_step=10, progress=False,
                               compute_codes=False)
  # A restore target has the state's structure; a restored state lives on the host.
  target = jax.eval_shape(lambda: training.init_rqvae_state(x, TINY, FAST))
  chex.assert_trees_all_equal_shapes_and_dtypes(target, half)
  restored = jax.tree.map(np.asarray, half)
  resumed, resumed_history = training.fit_rqvae(x, TINY, FAST, start_state=restored,
                                                until_step=20, progress=False)
  assert int(resumed.step) == 20
  chex.assert_trees_all_close(resumed.params, whole.params, atol=1e-5)
  chex.assert_trees_all_close(resumed.opt_state, whole.opt_state, atol=1e-5)
  np.testing.assert_array_equal(resumed_history.tokens.codes, whole_history.tokens.codes)
  assert [m["step"] for m in resumed_history.metrics] == [20]


def test_tokens_hold_what_sinkhorn_needs():
  x = clustered()
  state, history = training.fit_rqvae(x, TINY, FAST, until_step=5, progress=False)
  tokens = history.tokens
  chex.assert_shape(tokens.codes, (512, 2))
  chex.assert_shape(tokens.last_residuals, (512, 8))
  chex.assert_shape(tokens.last_codebook, (8, 8))
  chex.assert_shape(tokens.codebooks, (2, 8, 8))
  # The last-level code is the nearest code to the last-level residual.
  d2 = ((tokens.last_residuals[:, None] - tokens.last_codebook[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(tokens.codes[:, -1], d2.argmin(1))
  np.testing.assert_array_equal(training.rqvae_tokens(x, TINY, state.params,
                                                      batch_size=100).codes, tokens.codes)


def test_ema_codebooks_and_dead_code_revival_run_and_move_codes():
  x = clustered()
  config = dataclasses.replace(TINY, use_ema=True)
  train = dataclasses.replace(FAST, revive_dead_codes_every=2, kmeans_init=False)
  start = training.init_rqvae_state(x, config, train)
  state, history = training.fit_rqvae(x, config, train, start_state=start, until_step=10,
                                      progress=False)
  chex.assert_tree_all_finite(state)
  before = np.asarray(start.params["quantizer"]["codebooks"])
  after = np.asarray(state.params["quantizer"]["codebooks"])
  assert np.abs(after - before).max() > 0.2  # tiny init codes were pulled to the data
  assert int(np.asarray(state.unused_steps).max()) < 2  # dead codes were revived
  assert history.metrics[-1]["used_fraction"][0] > 0.5


def test_fit_rqkmeans_is_deterministic_and_consistent():
  x = clustered()
  a = training.fit_rqkmeans(x, num_levels=2, codebook_size=16, iters=10, seed=0)
  b = training.fit_rqkmeans(x, num_levels=2, codebook_size=16, iters=10, seed=0)
  chex.assert_shape(a.codes, (512, 2))
  chex.assert_shape(a.codebooks, (2, 16, 32))
  np.testing.assert_array_equal(a.codes, b.codes)
  np.testing.assert_array_equal(a.codebooks, b.codebooks)
  recon = a.codebooks[0][a.codes[:, 0]] + a.codebooks[1][a.codes[:, 1]]
  np.testing.assert_allclose(x - recon, a.last_residuals - a.last_codebook[a.codes[:, 1]],
                             atol=1e-5)


@pytest.mark.parametrize("fit", ["rqvae", "rqkmeans"])
def test_bad_inputs_raise_data_errors_naming_the_binding(fit):
  x = clustered()

  def run(embeddings, codebook_size=8):
    if fit == "rqvae":
      training.init_rqvae_state(embeddings, dataclasses.replace(TINY, codebook_size=codebook_size),
                                FAST)
    else:
      training.fit_rqkmeans(embeddings, 2, codebook_size, iters=2, seed=0)
  bad = x.copy()
  bad[7, 3] = np.inf
  with pytest.raises(DataError, match=r"NaN or Inf.*\[7\]"):
    run(bad)
  with pytest.raises(DataError, match="codebook_size=600 is larger than the number of items"):
    run(x, codebook_size=600)
  with pytest.raises(DataError, match="shape"):
    run(x[0])
  if fit == "rqvae":
    with pytest.raises(DataError, match="input_dim"):
      run(x[:, :16])


def test_alignment_inputs_are_checked():
  x = clustered()
  config = dataclasses.replace(TINY, alignment_weight=1.0)
  with pytest.raises(DataError, match="alignment_weight"):
    training.init_rqvae_state(x, config, FAST)
  with pytest.raises(DataError, match="align_targets"):
    training.init_rqvae_state(x, config, FAST, align_targets=np.ones((10, 4)))
