"""Residual k-means: shapes, determinism per seed, consistency with residual assignment."""

import chex
import jax
import numpy as np
import pytest

from jaxrec.data.errors import DataError
from jaxrec.quantizers import rqkmeans, vq


def test_two_levels_recover_a_two_scale_mixture():
  # Coarse clusters at +-10 on the first axis, fine clusters at +-1 on the second.
  rng = np.random.default_rng(0)
  coarse = np.array([[10.0, 0.0], [-10.0, 0.0]])
  fine = np.array([[0.0, 1.0], [0.0, -1.0]])
  labels = np.arange(80)
  x = coarse[labels % 2] + fine[(labels // 2) % 2] + 0.05 * rng.normal(size=(80, 2))
  out = rqkmeans.residual_kmeans(x, num_levels=2, codebook_size=2, iters=10,
                                 key=jax.random.PRNGKey(0))
  chex.assert_shape(out.codebooks, (2, 2, 2))
  chex.assert_shape(out.codes, (80, 2))
  chex.assert_shape(out.residuals, (80, 2, 2))
  # Each level's code is a function of the matching true label, and vice versa.
  assert len({(a, b) for a, b in zip(labels % 2, np.asarray(out.codes[:, 0]))}) == 2
  assert len({(a, b) for a, b in zip((labels // 2) % 2, np.asarray(out.codes[:, 1]))}) == 2
  np.testing.assert_allclose(np.sort(np.abs(np.asarray(out.codebooks[1])[:, 1])), [1, 1],
                             atol=0.05)


def test_deterministic_per_seed_and_consistent_with_residual_assign():
  x = np.random.default_rng(1).normal(size=(200, 4))
  a = rqkmeans.residual_kmeans(x, 3, 8, 5, jax.random.PRNGKey(7))
  b = rqkmeans.residual_kmeans(x, 3, 8, 5, jax.random.PRNGKey(7))
  c = rqkmeans.residual_kmeans(x, 3, 8, 5, jax.random.PRNGKey(8))
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a.codebooks, c.codebooks)
  codes, _, residuals = vq.residual_assign(x.astype(np.float32), a.codebooks)
  np.testing.assert_array_equal(codes, a.codes)
  np.testing.assert_allclose(residuals, a.residuals, atol=1e-5)
  # Each level reduces the reconstruction error.
  errors = [np.mean(np.sum(np.asarray(a.residuals[:, level]) ** 2, -1)) for level in range(3)]
  assert errors[0] > errors[1] > errors[2]


def test_too_few_distinct_rows_names_codebook_size():
  x = np.repeat(np.eye(4), 10, axis=0)
  with pytest.raises(DataError, match="codebook_size"):
    rqkmeans.residual_kmeans(x, 2, 8, 5, jax.random.PRNGKey(0))
