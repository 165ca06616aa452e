"""Residual k-means (RQ-k-means): level-by-level k-means on residuals, no network.

A fast alternative to the RQ-VAE; also how the RQ-VAE's codebooks are initialized (TIGER).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrec.quantizers import vq


class ResidualKmeans(NamedTuple):
  """Result of `residual_kmeans`.

  Attributes:
    codebooks: [L, K, d] float32.
    codes: [n, L] int32.
    residuals: [n, L, d] float32, residuals[:, l] is the input of level l.
  """
  codebooks: jax.Array
  codes: jax.Array
  residuals: jax.Array


def residual_kmeans(x, num_levels: int, codebook_size: int, iters: int, key: jax.Array, *,
                    init: str = "kmeans++", check_unique: bool = True) -> ResidualKmeans:
  """Fits L codebooks by k-means, level l on what levels < l left over.

  Args:
    x: [n, d] float.
    num_levels: L.
    codebook_size: K.
    iters: Lloyd iterations per level.
    key: PRNG key; level l uses fold_in(key, l). Same key -> same result.
    init: "kmeans++" or "random".
    check_unique: raise DataError if x has fewer than K distinct rows (levels > 0 never
      raise: a residual may legitimately collapse).

  Returns:
    ResidualKmeans(codebooks [L, K, d], codes [n, L], residuals [n, L, d]).
  """
  r = jnp.asarray(x, jnp.float32)
  codebooks, codes, residuals = [], [], []
  for level in range(num_levels):
    centroids, idx = vq.kmeans(r, codebook_size, iters, jax.random.fold_in(key, level),
                               init=init, check_unique=check_unique and level == 0)
    codebooks.append(centroids)
    codes.append(idx)
    residuals.append(r)
    r = r - centroids[idx]
  return ResidualKmeans(jnp.stack(codebooks), jnp.stack(codes, axis=1),
                        jnp.stack(residuals, axis=1))
