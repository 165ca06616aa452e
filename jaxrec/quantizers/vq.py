"""Vector-quantization primitives: nearest codes, residual assignment, k-means, EMA updates,
dead-code revival, usage statistics, and the linen `VectorQuantizer` / `ResidualQuantizer`.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.errors import DataError

_HIGHEST = jax.lax.Precision.HIGHEST


def squared_distances(x: jax.Array, codebook: jax.Array) -> jax.Array:
  """Squared L2 distances `[n, K]` between rows of x `[n, d]` and codebook `[K, d]`."""
  x2 = jnp.sum(x * x, axis=-1, keepdims=True)
  c2 = jnp.sum(codebook * codebook, axis=-1)
  cross = jnp.matmul(x, codebook.T, precision=_HIGHEST)
  return jnp.maximum(x2 - 2.0 * cross + c2, 0.0)


def nearest_code(x: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The closest code of every row (ties: the lowest index).

  Args:
    x: [n, d] float.
    codebook: [K, d] float.

  Returns:
    idx: [n] int32 code indices; dist: [n] float squared L2 distances to them.
  """
  d2 = squared_distances(x, codebook)
  idx = jnp.argmin(d2, axis=-1).astype(jnp.int32)
  return idx, jnp.take_along_axis(d2, idx[:, None], axis=-1)[:, 0]


def residual_assign(x: jax.Array, codebooks: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Greedy residual quantization: level l quantizes what levels < l left over.

  Args:
    x: [n, d] float.
    codebooks: [L, K, d] float.

  Returns:
    codes: [n, L] int32; quantized: [n, d] sum of the chosen codes; residuals:
    [n, L, d], residuals[:, l] is the input of level l (residuals[:, 0] = x).
  """
  def level(carry, codebook):
    r, q_sum = carry
    idx, _ = nearest_code(r, codebook)
    q = codebook[idx]
    return (r - q, q_sum + q), (idx, r)

  (_, quantized), (codes, residuals) = jax.lax.scan(level, (x, jnp.zeros_like(x)), codebooks)
  return codes.T, quantized, jnp.swapaxes(residuals, 0, 1)


def straight_through(x: jax.Array, q: jax.Array) -> jax.Array:
  """Forward value q, gradient of the identity w.r.t. x: `x + stop_gradient(q - x)`."""
  return x + jax.lax.stop_gradient(q - x)


def vq_losses(x: jax.Array, q: jax.Array, beta: float) -> dict:
  """VQ-VAE losses (means over all elements).

  codebook = ||sg(x) - q||², commitment = ||x - sg(q)||², total = codebook + beta * commitment.
  """
  sg = jax.lax.stop_gradient
  codebook = jnp.mean(jnp.square(sg(x) - q))
  commitment = jnp.mean(jnp.square(x - sg(q)))
  return {"codebook": codebook, "commitment": commitment, "total": codebook + beta * commitment}


def check_embeddings(x, *, codebook_size: Optional[int] = None, input_dim: Optional[int] = None,
                     source: str = "embeddings",
                     binding: str = "codebook_size") -> np.ndarray:
  """Validates an item-embedding matrix on the host; returns it as [n, d] float32.

  Raises:
    DataError: not 2-D, wrong width (naming `input_dim`), a NaN/Inf row, or fewer
      items than `codebook_size` (naming the binding).
  """
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise DataError(f"expected a non-empty [num_items, dim] matrix, got shape {x.shape}.",
                    path=source, fix="pass one embedding row per item.")
  if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
    raise DataError(f"expected real numbers, got dtype {x.dtype}.", path=source,
                    fix="convert the embeddings to float32.")
  if input_dim is not None and x.shape[1] != input_dim:
    raise DataError(f"embeddings have width {x.shape[1]} but input_dim={input_dim}.",
                    path=source, fix=f"set RqVaeConfig.input_dim = {x.shape[1]}, or pass "
                    f"{input_dim}-d embeddings.")
  bad = ~np.isfinite(x).all(axis=1)
  if bad.any():
    rows = np.flatnonzero(bad)
    raise DataError(f"{len(rows)} row(s) contain NaN or Inf (first 0-based rows: "
                    f"{rows[:5].tolist()}).", path=source,
                    fix="recompute those items' features or drop the items.")
  if codebook_size is not None and codebook_size > x.shape[0]:
    raise DataError(f"{binding}={codebook_size} is larger than the number of items "
                    f"({x.shape[0]}).", path=source,
                    fix=f"set {binding} <= {x.shape[0]} (a few times smaller is typical).")
  return x.astype(np.float32)


# ---------------------------------------------------------------- k-means

def kmeans(x, num_clusters: int, iters: int, key: jax.Array, *, init: str = "kmeans++",
           check_unique: bool = True) -> tuple[jax.Array, jax.Array]:
  """Lloyd's k-means in JAX; empty clusters keep their previous centroid.

  Args:
    x: [n, d] float.
    num_clusters: K.
    iters: Lloyd iterations after the initialization.
    key: PRNG key; the result is a deterministic function of (x, key).
    init: "kmeans++" (D² sampling) or "random" (K distinct rows).
    check_unique: when x is concrete, raise if it has fewer than K distinct rows.

  Returns:
    centroids: [K, d] float32; assignment: [n] int32.

  Raises:
    DataError: fewer distinct rows than K (the error names `codebook_size`).
  """
  if init not in ("kmeans++", "random"):
    raise ValueError(f"init must be 'kmeans++' or 'random', got {init!r}")
  if check_unique and not isinstance(x, jax.core.Tracer):
    host = np.asarray(x)
    num_unique = len(np.unique(host, axis=0)) if host.shape[0] >= num_clusters else host.shape[0]
    if num_unique < num_clusters:
      raise DataError(f"k-means with codebook_size={num_clusters} clusters needs at least as "
                      f"many distinct rows, but the data has {num_unique}.",
                      path="codebook_size", fix=f"set codebook_size <= {num_unique}.")
  return _kmeans(jnp.asarray(x, jnp.float32), key, num_clusters, iters, init)


@functools.partial(jax.jit, static_argnames=("num_clusters", "iters", "init"))
def _kmeans(x, key, num_clusters, iters, init):
  n = x.shape[0]
  if init == "random":
    centroids = x[jax.random.choice(key, n, (num_clusters,), replace=n < num_clusters)]
  else:
    centroids = _kmeans_plus_plus(x, key, num_clusters)

  def lloyd(_, c):
    idx, _ = nearest_code(x, c)
    counts = jax.ops.segment_sum(jnp.ones((n,), x.dtype), idx, num_clusters)
    sums = jax.ops.segment_sum(x, idx, num_clusters)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)

  centroids = jax.lax.fori_loop(0, iters, lloyd, centroids)
  return centroids, nearest_code(x, centroids)[0]


def _kmeans_plus_plus(x, key, num_clusters):
  """D² sampling; uniform when every row already coincides with a centroid."""
  first_key, key = jax.random.split(key)
  first = x[jax.random.randint(first_key, (), 0, x.shape[0])]
  centroids = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)
  min_d2 = jnp.sum(jnp.square(x - first), axis=-1)

  def body(i, carry):
    centroids, min_d2 = carry
    logits = jnp.where(min_d2 > 0, jnp.log(jnp.where(min_d2 > 0, min_d2, 1.0)), -jnp.inf)
    logits = jnp.where(jnp.any(min_d2 > 0), logits, 0.0)
    pick = x[jax.random.categorical(jax.random.fold_in(key, i), logits)]
    return centroids.at[i].set(pick), jnp.minimum(min_d2, jnp.sum(jnp.square(x - pick), -1))

  return jax.lax.fori_loop(1, num_clusters, body, (centroids, min_d2))[0]


# ---------------------------------------------------------------- EMA, revival, usage

@flax.struct.dataclass
class EmaState:
  """Exponential moving averages of one codebook (or a stack of them).

  Attributes:
    cluster_size: [..., K] float decayed code counts.
    embed_sum: [..., K, d] float decayed sums of the inputs assigned to each code.
  """
  cluster_size: jax.Array
  embed_sum: jax.Array


def ema_init(codebook: jax.Array) -> EmaState:
  """Counts of 1 and sums equal to the codebook, so the first update starts from it."""
  return EmaState(cluster_size=jnp.ones(codebook.shape[:-1], codebook.dtype),
                  embed_sum=jnp.asarray(codebook))


def ema_update(state: EmaState, x: jax.Array, idx: jax.Array, *, decay: float,
               epsilon: float) -> tuple[EmaState, jax.Array]:
  """One EMA codebook update (VQ-VAE appendix; Laplace-smoothed counts).

  Args:
    state: EmaState with cluster_size [K] and embed_sum [K, d].
    x: [n, d] inputs of this codebook (no gradient flows).
    idx: [n] int32 their assigned codes.
    decay: EMA decay, e.g. 0.99.
    epsilon: Laplace smoothing of the counts, e.g. 1e-5.

  Returns:
    The new state and the codebook [K, d] = embed_sum / smoothed cluster_size, where
    smoothed = (cluster_size + eps) / (total + K * eps) * total.
  """
  x = jax.lax.stop_gradient(x)
  num_codes = state.cluster_size.shape[-1]
  counts = jax.ops.segment_sum(jnp.ones(idx.shape, x.dtype), idx, num_codes)
  sums = jax.ops.segment_sum(x, idx, num_codes)
  cluster_size = decay * state.cluster_size + (1.0 - decay) * counts
  embed_sum = decay * state.embed_sum + (1.0 - decay) * sums
  total = jnp.sum(cluster_size)
  smoothed = (cluster_size + epsilon) / (total + num_codes * epsilon) * total
  return EmaState(cluster_size, embed_sum), embed_sum / smoothed[:, None]


def update_unused_steps(unused_steps: jax.Array, idx: jax.Array) -> jax.Array:
  """[K] int32 consecutive steps each code went unused: 0 where used in idx [n], else +1."""
  used = jax.ops.segment_sum(jnp.ones(idx.shape, jnp.int32), idx, unused_steps.shape[0]) > 0
  return jnp.where(used, 0, unused_steps + 1).astype(jnp.int32)


def revive_dead_codes(codebook: jax.Array, unused_steps: jax.Array, inputs: jax.Array,
                      key: jax.Array, threshold: int) -> tuple[jax.Array, jax.Array]:
  """Re-initializes codes unused for >= threshold steps to random current inputs.

  Args:
    codebook: [K, d].
    unused_steps: [K] int32 from `update_unused_steps`.
    inputs: [n, d] current inputs of this codebook (distinct rows are drawn when n >= K).
    key: PRNG key.
    threshold: steps of disuse that make a code dead.

  Returns:
    codebook [K, d] and revived [K] bool.
  """
  num_codes, n = codebook.shape[0], inputs.shape[0]
  if n >= num_codes:
    pick = jax.random.permutation(key, n)[:num_codes]
  else:
    pick = jax.random.randint(key, (num_codes,), 0, n)
  dead = unused_steps >= threshold
  new = jax.lax.stop_gradient(inputs[pick]).astype(codebook.dtype)
  return jnp.where(dead[:, None], new, codebook), dead


def code_usage(codes: jax.Array, codebook_size: int) -> dict:
  """Usage of each level's codebook.

  Args:
    codes: [n, L] int32 (or [n] for one level).
    codebook_size: K.

  Returns:
    {"used_fraction": [L], "perplexity": [L]}: the fraction of the K codes that occur,
    and exp(entropy in nats) of the code histogram (K when uniform, 1 when collapsed).
  """
  codes = codes[:, None] if codes.ndim == 1 else codes
  hist = jax.vmap(lambda c: jnp.bincount(c, length=codebook_size), in_axes=1)(codes)
  p = hist / jnp.maximum(jnp.sum(hist, axis=-1, keepdims=True), 1)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
  return {"used_fraction": jnp.mean(hist > 0, axis=-1), "perplexity": jnp.exp(entropy)}


# ---------------------------------------------------------------- linen modules

def _codebook_init(codebook_size: int):
  """Uniform in [-1/K, 1/K] (the VQ-VAE / LETTER default); k-means init usually replaces it."""
  scale = 1.0 / codebook_size
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -scale, scale)


class VectorQuantizer(nn.Module):
  """One codebook [K, d]: nearest code, straight-through output, VQ losses.

  Attributes:
    codebook_size: K.
    embed_dim: d.
    beta: commitment weight.
    use_ema: codebook learned by EMA (the caller runs `ema_update`), so the codebook
      loss is dropped here.
  """
  codebook_size: int
  embed_dim: int
  beta: float = 0.25
  use_ema: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
    """x: [n, d] -> (quantized [n, d] straight-through, codes [n] int32, losses)."""
    codebook = self.param("codebook", nn.with_logical_partitioning(
        _codebook_init(self.codebook_size), ("codebook", "embed")),
        (self.codebook_size, self.embed_dim))
    idx, _ = nearest_code(jax.lax.stop_gradient(x), jax.lax.stop_gradient(codebook))
    q = codebook[idx]
    losses = vq_losses(x, jax.lax.stop_gradient(q) if self.use_ema else q, self.beta)
    return straight_through(x, q), idx, losses


class ResidualQuantizer(nn.Module):
  """L stacked codebooks [L, K, d] quantizing successive residuals.

  Level l quantizes r_l = z - sg(e_0 + ... + e_{l-1}) and adds TIGER's
  ||sg(r_l) - e_l||² + beta ||r_l - sg(e_l)||², summed over levels. Our reading of that
  formula: r_l carries gradient to the encoder only, so level l's commitment pulls z towards
  the cumulative quantization (as in Lee et al.'s RQ-VAE); stopping r_l entirely (LETTER's
  code) let the latents drift off their codes faster in our runs. The output is
  z + sg(sum_l e_l - z).
  """
  num_levels: int
  codebook_size: int
  embed_dim: int
  beta: float = 0.25
  use_ema: bool = False

  @nn.compact
  def __call__(self, z: jax.Array) -> dict:
    """Quantizes z.

    Args:
      z: [n, d] float latents.

    Returns:
      dict with quantized [n, d] (straight-through), codes [n, L] int32, residuals
      [n, L, d] (level inputs, no gradient), distances [n, L, K] (differentiable),
      and scalar losses codebook, commitment, total.
    """
    codebooks = self.param("codebooks", nn.with_logical_partitioning(
        _codebook_init(self.codebook_size), (None, "codebook", "embed")),
        (self.num_levels, self.codebook_size, self.embed_dim))
    r, q_sum = z, jnp.zeros_like(z)
    codes, residuals, distances = [], [], []
    totals = {"codebook": 0.0, "commitment": 0.0, "total": 0.0}
    for level in range(self.num_levels):
      codebook = codebooks[level]
      d2 = squared_distances(r, codebook)
      idx = jnp.argmin(jax.lax.stop_gradient(d2), axis=-1).astype(jnp.int32)
      q = codebook[idx]
      losses = vq_losses(r, jax.lax.stop_gradient(q) if self.use_ema else q, self.beta)
      totals = {k: totals[k] + losses[k] for k in totals}
      codes.append(idx)
      residuals.append(jax.lax.stop_gradient(r))
      distances.append(d2)
      q_sum = q_sum + q
      r = z - jax.lax.stop_gradient(q_sum)
    return {"quantized": straight_through(z, q_sum), "codes": jnp.stack(codes, axis=1),
            "residuals": jnp.stack(residuals, axis=1),
            "distances": jnp.stack(distances, axis=1), **totals}
