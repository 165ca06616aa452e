"""VQ primitives: hand-computed nearest codes, residual assignment, losses, EMA, revival."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.errors import DataError
from jaxrec.quantizers import vq

SQUARE = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def test_nearest_code_known_answer():
  x = jnp.array([[0.1, 0.2], [0.9, 0.1], [0.4, 0.8], [2.0, 2.0], [0.5, 0.0]])
  idx, dist = vq.nearest_code(x, SQUARE)
  chex.assert_shape((idx, dist), (5,))
  chex.assert_type(idx, jnp.int32)
  np.testing.assert_array_equal(idx, [0, 1, 2, 3, 0])  # the last is a tie: lowest index
  np.testing.assert_allclose(dist, [0.05, 0.02, 0.2, 2.0, 0.25], atol=1e-6)


def test_residual_assign_two_levels_by_hand():
  codebooks = jnp.array([[[0.0, 0.0], [4.0, 4.0]],
                         [[1.0, 0.0], [0.0, 1.0]]])
  x = jnp.array([[4.9, 4.2], [0.1, 0.8]])
  codes, quantized, residuals = vq.residual_assign(x, codebooks)
  chex.assert_shape(codes, (2, 2))
  chex.assert_shape(residuals, (2, 2, 2))
  # Item 0: (4,4) leaves (0.9,0.2) -> (1,0). Item 1: (0,0) leaves (0.1,0.8) -> (0,1).
  np.testing.assert_array_equal(codes, [[1, 0], [0, 1]])
  np.testing.assert_allclose(quantized, [[5.0, 4.0], [0.0, 1.0]])
  np.testing.assert_allclose(residuals[:, 1], [[0.9, 0.2], [0.1, 0.8]], atol=1e-6)
  np.testing.assert_allclose(residuals[:, 0], x)


def test_straight_through_value_is_q_and_gradient_is_identity():
  x = jnp.array([[0.3, -1.0], [2.0, 0.5]])
  q = jnp.array([[0.0, -1.0], [2.0, 1.0]])
  weights = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  np.testing.assert_allclose(vq.straight_through(x, q), q)
  grad = jax.grad(lambda x: jnp.sum(weights * vq.straight_through(x, q)))(x)
  np.testing.assert_allclose(grad, weights)


def test_vq_losses_values_and_gradients():
  x, q = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]])
  losses = vq.vq_losses(x, q, beta=0.25)
  np.testing.assert_allclose([losses["codebook"], losses["commitment"], losses["total"]],
                             [2.5, 2.5, 3.125])
  gx, gq = jax.grad(lambda x, q: vq.vq_losses(x, q, 0.25)["total"], argnums=(0, 1))(x, q)
  np.testing.assert_allclose(gq, [[-1.0, -2.0]])  # only the codebook term moves q
  np.testing.assert_allclose(gx, [[0.25, 0.5]])  # only beta * commitment moves x


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_kmeans_recovers_separated_clusters(init):
  rng = np.random.default_rng(0)
  centers = np.array([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
  labels = np.repeat(np.arange(4), 30)
  x = centers[labels] + rng.normal(size=(120, 2)) * 0.1
  found, assignment = vq.kmeans(x, 4, 10, jax.random.PRNGKey(3), init=init)
  chex.assert_shape(found, (4, 2))
  chex.assert_shape(assignment, (120,))
  order = np.lexsort(np.round(np.asarray(found)).T)
  np.testing.assert_allclose(np.asarray(found)[order], centers[np.lexsort(centers.T)], atol=0.1)
  # Each true cluster maps to one found cluster (purity 1).
  pairs = {(int(a), int(b)) for a, b in zip(labels, np.asarray(assignment))}
  assert len(pairs) == 4


def test_kmeans_is_deterministic_per_key():
  x = np.random.default_rng(1).normal(size=(50, 3))
  a = vq.kmeans(x, 5, 5, jax.random.PRNGKey(0))
  b = vq.kmeans(x, 5, 5, jax.random.PRNGKey(0))
  chex.assert_trees_all_equal(a, b)


def test_kmeans_more_clusters_than_distinct_rows_is_an_error():
  x = np.repeat(np.eye(3), 4, axis=0)  # 12 rows, 3 distinct
  with pytest.raises(DataError, match="codebook_size"):
    vq.kmeans(x, 4, 5, jax.random.PRNGKey(0))


def test_ema_update_known_answer():
  state = vq.EmaState(cluster_size=jnp.array([1.0, 1.0]), embed_sum=jnp.array([[0.0], [10.0]]))
  x, idx = jnp.array([[2.0], [4.0], [20.0]]), jnp.array([0, 0, 1])
  new, codebook = vq.ema_update(state, x, idx, decay=0.5, epsilon=0.0)
  np.testing.assert_allclose(new.cluster_size, [1.5, 1.0])
  np.testing.assert_allclose(new.embed_sum, [[3.0], [15.0]])
  np.testing.assert_allclose(codebook, [[2.0], [15.0]])
  # Laplace smoothing: (n_k + eps) / (N + K eps) * N with N = 2.5, eps = 1.
  _, smoothed = vq.ema_update(state, x, idx, decay=0.5, epsilon=1.0)
  np.testing.assert_allclose(smoothed, [[3.0 / (2.5 / 4.5 * 2.5)], [15.0 / (2.0 / 4.5 * 2.5)]],
                             rtol=1e-6)


def test_ema_init_keeps_the_codebook():
  codebook = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  _, out = vq.ema_update(vq.ema_init(codebook), jnp.zeros((0, 2)), jnp.zeros((0,), jnp.int32),
                         decay=0.9, epsilon=0.0)
  np.testing.assert_allclose(out, codebook, rtol=1e-6)


def test_unused_steps_and_dead_code_revival():
  unused = vq.update_unused_steps(jnp.array([0, 3, 5]), jnp.array([0, 0, 2]))
  np.testing.assert_array_equal(unused, [0, 4, 0])
  codebook = jnp.array([[0.0, 0.0], [9.0, 9.0], [1.0, 1.0]])
  inputs = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
  new, revived = vq.revive_dead_codes(codebook, jnp.array([0, 10, 4]), inputs,
                                      jax.random.PRNGKey(0), threshold=5)
  np.testing.assert_array_equal(revived, [False, True, False])
  np.testing.assert_allclose(new[jnp.array([0, 2])], codebook[jnp.array([0, 2])])
  assert any(np.allclose(new[1], row) for row in np.asarray(inputs))


def test_code_usage_fraction_and_perplexity():
  codes = jnp.array([[0, 0], [0, 1], [1, 2], [1, 3]])
  usage = vq.code_usage(codes, codebook_size=4)
  np.testing.assert_allclose(usage["used_fraction"], [0.5, 1.0])
  np.testing.assert_allclose(usage["perplexity"], [2.0, 4.0], rtol=1e-6)
  np.testing.assert_allclose(vq.code_usage(jnp.zeros(5, jnp.int32), 8)["perplexity"], [1.0])


def test_vector_quantizer_module_axes_and_outputs():
  module = vq.VectorQuantizer(codebook_size=4, embed_dim=2)
  x = jnp.array([[0.1, 0.2], [0.9, 0.1], [0.4, 0.8]])
  variables = module.init(jax.random.PRNGKey(0), x)
  assert nn.get_partition_spec(variables)["params"]["codebook"] == \
      jax.sharding.PartitionSpec("codebook", "embed")
  params = {"codebook": SQUARE}
  quantized, idx, losses = module.apply({"params": params}, x)
  chex.assert_shape(quantized, (3, 2))
  np.testing.assert_array_equal(idx, [0, 1, 2])
  np.testing.assert_allclose(quantized, SQUARE[np.array([0, 1, 2])])
  assert np.isfinite(losses["total"])


def test_residual_quantizer_matches_residual_assign_and_passes_gradients():
  module = vq.ResidualQuantizer(num_levels=2, codebook_size=4, embed_dim=2)
  z = jnp.array([[0.3, 1.2], [1.4, 0.1], [-0.2, 0.9]])
  variables = module.init(jax.random.PRNGKey(0), z)
  assert nn.get_partition_spec(variables)["params"]["codebooks"] == \
      jax.sharding.PartitionSpec(None, "codebook", "embed")
  codebooks = jnp.stack([SQUARE, SQUARE * 0.25])
  out = module.apply({"params": {"codebooks": codebooks}}, z)
  codes, quantized, residuals = vq.residual_assign(z, codebooks)
  chex.assert_shape(out["codes"], (3, 2))
  chex.assert_shape(out["distances"], (3, 2, 4))
  np.testing.assert_array_equal(out["codes"], codes)
  np.testing.assert_allclose(out["quantized"], quantized, atol=1e-6)
  np.testing.assert_allclose(out["residuals"], residuals, atol=1e-6)
  grad = jax.grad(lambda z: jnp.sum(module.apply({"params": {"codebooks": codebooks}},
                                                 z)["quantized"]))(z)
  np.testing.assert_allclose(grad, jnp.ones_like(z))


def test_check_embeddings_errors_name_the_problem():
  good = np.ones((4, 3))
  assert vq.check_embeddings(good).dtype == np.float32
  bad = good.copy()
  bad[2, 1] = np.nan
  with pytest.raises(DataError, match=r"NaN or Inf.*\[2\]"):
    vq.check_embeddings(bad)
  with pytest.raises(DataError, match="codebook_size=8"):
    vq.check_embeddings(good, codebook_size=8)
  with pytest.raises(DataError, match="input_dim"):
    vq.check_embeddings(good, input_dim=5)
  with pytest.raises(DataError, match="shape"):
    vq.check_embeddings(np.ones(4))
