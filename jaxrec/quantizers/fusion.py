"""Multimodal fusion layers that turn per-item features into the RQ-VAE's input vector.

* `pca`: NumPy PCA with a deterministic sign (CEMG reduces raw text/image features).
* `CollaborativeGuidedAttention` (CEMG): the collaborative embedding is the query, the
  PCA-reduced modality features are keys and values; fused = [attended ; collab].
* `SharedSpecificFusion` (MusicRec): a shared encoder for all modalities plus one
  specific encoder per modality, per-modality decoders, and a fused vector; its losses
  (`shared_alignment_loss`, `orthogonality_loss`, `reconstruction_loss`,
  `collaborative_guidance_loss`, combined by `musicrec_losses`) are pure functions.

The fused vectors are plain [items, width] arrays: write them out and fit the existing
RQ-VAE on them (`RqVaeConfig.input_dim = config.fused_dim`), or call the module inside a
joint loss (`quantizers/fused_rqvae.py`, used by `jobs/fused_tokenizer_job.py`).
Choices the papers leave open are ours and are marked "Our choice".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.quantizers import rqvae, vq

# A finite "minus infinity" for masked logits: cosine logits are bounded by 1 / temperature,
# and a finite value keeps fully masked rows free of NaN.
_MASKED = -1e9


# ---------------------------------------------------------------- PCA (host, NumPy)

def pca(x, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Principal component analysis by SVD of the centred data.

  Sign convention: each component is flipped so that its largest-|value| entry (the
  first such entry on ties) is positive, so the result does not depend on the SVD routine.

  Args:
    x: [N, d] real features (rows = items).
    dim: number of components, 1 <= dim <= min(N, d).

  Returns:
    projected: [N, dim] float32, (x - mean) @ components.T.
    components: [dim, d] float32, orthonormal rows, by decreasing variance.
    mean: [d] float32.

  Raises:
    DataError: x not a finite [N, d] matrix. ValueError: dim out of range.
  """
  x = vq.check_embeddings(x, source="pca input").astype(np.float64)
  if not 1 <= dim <= min(x.shape):
    raise ValueError(f"pca dim={dim} must lie in [1, min(N, d)] = [1, {min(x.shape)}] for "
                     f"features of shape {x.shape}; lower the PCA dim (e.g. "
                     f"CemgFusionConfig.pca_dim).")
  mean = x.mean(axis=0)
  centred = x - mean
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  components = vt[:dim]
  pivot = np.argmax(np.abs(components), axis=1)
  signs = np.sign(components[np.arange(dim), pivot])
  components = components * np.where(signs == 0, 1.0, signs)[:, None]
  projected = centred @ components.T
  return (projected.astype(np.float32), components.astype(np.float32),
          mean.astype(np.float32))


def pca_apply(x, components: np.ndarray, mean: np.ndarray) -> np.ndarray:
  """x: [N, d] -> [N, dim] float32 with a fitted `pca` (components [dim, d], mean [d])."""
  return ((np.asarray(x, np.float64) - mean) @ np.asarray(components, np.float64).T).astype(
      np.float32)


def pca_modalities(features: Sequence, dim: int,
                   present: Optional[Sequence] = None) -> tuple[np.ndarray, np.ndarray]:
  """PCA of each modality to a common width, stacked as CEMG's keys/values.

  Each modality's PCA is fitted on its present rows only; missing rows are zeros.

  Args:
    features: M arrays [N, d_m] (d_m may differ, e.g. 384-d text, 1280-d image).
    dim: the common PCA width.
    present: M bool arrays [N] (None: every item has every modality).

  Returns:
    stacked: [N, M, dim] float32; mask: [N, M] bool.
  """
  n = len(features[0])
  present = [np.ones(n, bool)] * len(features) if present is None else present
  if len(present) != len(features) or any(len(f) != n for f in features):
    raise ValueError("pca_modalities needs one [N, d_m] array and one [N] presence mask "
                     "per modality, all with the same N (one row per item, same order).")
  stacked = np.zeros((n, len(features), dim), np.float32)
  for m, (f, keep) in enumerate(zip(features, present)):
    keep = np.asarray(keep, bool)
    stacked[keep, m] = pca(np.asarray(f)[keep], dim)[0]
  return stacked, np.stack([np.asarray(p, bool) for p in present], axis=1)


def _kernel(init, axes):
  return nn.with_logical_partitioning(init, axes)


# ---------------------------------------------------------------- CEMG

@dataclasses.dataclass(frozen=True)
class CemgFusionConfig:
  """CEMG's collaborative-guided attention (defaults: MiniLM text, EfficientNet image,
  64-d LightGCN, each modality PCA-reduced to 64-d).

  Attributes:
    modality_dims: raw widths of the content modalities before PCA (text, image).
    pca_dim: width of every modality after PCA (the keys/values' input width d_m).
    collab_dim: width of the collaborative (LightGCN) embedding d_c, the query.
    attn_dim: width of the attended output d_attn (num_heads * head width).
    num_heads: attention heads; 1 is the paper's single attention.
    use_bias: biases in the query/key/value projections (the paper names matrices only).
  """
  modality_dims: Sequence[int] = (384, 1280)
  pca_dim: int = 64
  collab_dim: int = 64
  attn_dim: int = 64
  num_heads: int = 1
  use_bias: bool = False

  def __post_init__(self):
    object.__setattr__(self, "modality_dims", tuple(int(d) for d in self.modality_dims))
    if self.attn_dim % self.num_heads:
      raise ValueError(f"CemgFusionConfig.attn_dim={self.attn_dim} must be divisible by "
                       f"num_heads={self.num_heads}.")

  @property
  def num_modalities(self) -> int:
    return len(self.modality_dims)

  @property
  def fused_dim(self) -> int:
    """Width of the fused vector: bind RqVaeConfig.input_dim to it."""
    return self.attn_dim + self.collab_dim


class CollaborativeGuidedAttention(nn.Module):
  """Attention of the collaborative query over the content modalities (CEMG eq. 2-3).

  q = collab W_Q, k_m = f_m W_K^m, u_m = f_m W_V^m (a projection per modality m of the
  features f_m), weights a_m = softmax_m(q . k_m / sqrt(head_dim)) over the present
  modalities, fused = [sum_m a_m u_m ; collab] (the paper's "element-wise addition" of the
  weighted features, then concatenation). Heads split d_attn and are concatenated (no output
  projection). Our choices (the paper's formulas are not legible): values are projected to
  d_attn, scaling by sqrt(head_dim), no biases by default.
  """
  config: CemgFusionConfig

  @nn.compact
  def __call__(self, collab: jax.Array, features: jax.Array,
               mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Fuses one batch of items.

    Args:
      collab: [batch, collab_dim] collaborative embeddings (the query).
      features: [batch, M, pca_dim] modality features (keys and values), any M >= 1.
      mask: [batch, M] bool, False for a missing modality (None: all present).

    Returns:
      fused: [batch, attn_dim + collab_dim], whose last collab_dim entries are `collab`.
      weights: [batch, num_heads, M] attention weights; 0 for masked modalities, and all
        0 (with a zero attended part) for an item with no modality.
    """
    cfg = self.config
    batch, num_mod, d_m = features.shape
    heads, head_dim = cfg.num_heads, cfg.attn_dim // cfg.num_heads
    init = nn.initializers.lecun_normal(in_axis=1, out_axis=(2, 3), batch_axis=(0,))
    w_q = self.param("query", _kernel(nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
                                      ("embed", "heads", "kv")),
                     (collab.shape[-1], heads, head_dim))
    w_k = self.param("key", _kernel(init, (None, "embed", "heads", "kv")),
                     (num_mod, d_m, heads, head_dim))
    w_v = self.param("value", _kernel(init, (None, "embed", "heads", "kv")),
                     (num_mod, d_m, heads, head_dim))
    q = jnp.einsum("bc,chk->bhk", collab, w_q)
    k = jnp.einsum("bmd,mdhk->bmhk", features, w_k)
    v = jnp.einsum("bmd,mdhk->bmhk", features, w_v)
    if cfg.use_bias:
      zeros = nn.initializers.zeros
      q = q + self.param("query_bias", _kernel(zeros, ("heads", "kv")), (heads, head_dim))
      k = k + self.param("key_bias", _kernel(zeros, (None, "heads", "kv")),
                         (num_mod, heads, head_dim))
      v = v + self.param("value_bias", _kernel(zeros, (None, "heads", "kv")),
                         (num_mod, heads, head_dim))
    logits = jnp.einsum("bhk,bmhk->bhm", q, k) / math.sqrt(head_dim)
    if mask is None:
      mask = jnp.ones((batch, num_mod), bool)
    keep = mask[:, None, :]
    weights = jax.nn.softmax(jnp.where(keep, logits, _MASKED), axis=-1) * keep
    attended = jnp.einsum("bhm,bmhk->bhk", weights, v).reshape(batch, heads * head_dim)
    return jnp.concatenate([attended, collab.astype(attended.dtype)], axis=-1), weights


@functools.lru_cache(maxsize=8)
def make_cemg_fuse_fn(config: CemgFusionConfig):
  """A jitted `fuse(params, collab, features, mask) -> fused [batch, fused_dim]`."""
  model = CollaborativeGuidedAttention(config)
  return jax.jit(lambda params, c, f, m: model.apply({"params": params}, c, f, m)[0])


# ---------------------------------------------------------------- MusicRec

@dataclasses.dataclass(frozen=True)
class MusicRecFusionConfig:
  """MusicRec's shared-specific fusion and its loss weights (defaults: 384-d text,
  1280-d image, 64-d CF embeddings).

  Attributes:
    modality_dims: input width of each modality (inputs are a tuple, one [B, d_m] each).
    proj_dim: per-modality linear input projection to this common width (needed because
      one shared encoder reads every modality).
    encoder_hidden: hidden widths of the shared and of each specific encoder.
    hidden_dim: h, width of every shared and specific representation.
    decoder_hidden: hidden widths of each modality's decoder.
    fused_dim: width of the fused vector (bind RqVaeConfig.input_dim to it).
    cf_dim: width of the CF embeddings; > 0 adds a linear head fused -> cf_dim used by
      the guidance loss; 0 compares `fused` with the CF embeddings directly.
    dropout: dropout inside the MLPs.
    reconstruction_weight, alignment_weight, orthogonality_weight, guidance_weight:
      weights of the four losses in `musicrec_losses`.
    alignment_temperature: InfoNCE temperature of `shared_alignment_loss`.
    guidance_temperature: InfoNCE temperature of `collaborative_guidance_loss`.
    use_shared: False drops the shared encoder (MusicRec's "w/o shared" ablation): the
      fused vector and the reconstructions use the specific parts only, and the
      alignment and orthogonality losses are 0.
    use_specific: False drops the specific encoders ("w/o specific"): the fused vector
      and the reconstructions use the shared parts only; the orthogonality loss is 0.
  """
  modality_dims: Sequence[int] = (384, 1280)
  proj_dim: int = 256
  encoder_hidden: Sequence[int] = (256,)
  hidden_dim: int = 128
  decoder_hidden: Sequence[int] = (256,)
  fused_dim: int = 128
  cf_dim: int = 64
  dropout: float = 0.0
  reconstruction_weight: float = 1.0
  alignment_weight: float = 0.1
  orthogonality_weight: float = 0.1
  guidance_weight: float = 0.1
  alignment_temperature: float = 0.1
  guidance_temperature: float = 0.1
  use_shared: bool = True
  use_specific: bool = True

  def __post_init__(self):
    for name in ("modality_dims", "encoder_hidden", "decoder_hidden"):
      object.__setattr__(self, name, tuple(int(d) for d in getattr(self, name)))
    if not (self.use_shared or self.use_specific):
      raise ValueError("MusicRecFusionConfig: use_shared and use_specific are both False, "
                       "so nothing is fused; keep at least one of them.")

  @property
  def num_modalities(self) -> int:
    return len(self.modality_dims)


@flax.struct.dataclass
class MusicRecFusionOutput:
  """What `SharedSpecificFusion.__call__` returns.

  Attributes:
    shared: [batch, M, h] shared-encoder output of each modality (zeros when
      use_shared is False).
    specific: [batch, M, h] specific-encoder output of each modality (zeros when
      use_specific is False).
    fused: [batch, fused_dim].
    recon: tuple of M arrays [batch, d_m], decoder_m(shared_m + specific_m).
    cf_proj: [batch, cf_dim] linear head on `fused` (None when cf_dim = 0).
  """
  shared: jax.Array
  specific: jax.Array
  fused: jax.Array
  recon: tuple
  cf_proj: Optional[jax.Array]


class SharedSpecificFusion(nn.Module):
  """Shared-specific modal fusion (MusicRec; architecture after DSN / MISA).

  Per modality m: p_m = Linear_m(x_m) [B, proj_dim]; shared_m = E_shared(p_m) (one MLP
  for all modalities); specific_m = E_m(p_m); recon_m = D_m(shared_m + specific_m) (DSN's
  decoder input). Our choice of fused vector: Linear([masked mean_m shared_m ;
  specific_1 * mask_1 ; ... ; specific_M * mask_M]) -> [B, fused_dim], so one shared
  summary plus what only each modality carries; a missing modality contributes zeros.
  Ablations: use_shared=False leaves out the shared summary (and shared_m in the decoder
  input), use_specific=False the specific parts.
  """
  config: MusicRecFusionConfig

  def setup(self):
    cfg = self.config
    d = cfg.dropout
    self.input_proj = [rqvae.Mlp((cfg.proj_dim,))
                       for m in range(cfg.num_modalities)]
    if cfg.use_shared:
      self.shared_encoder = rqvae.Mlp(cfg.encoder_hidden + (cfg.hidden_dim,), d)
    if cfg.use_specific:
      self.specific_encoders = [rqvae.Mlp(cfg.encoder_hidden + (cfg.hidden_dim,), d)
                                for m in range(cfg.num_modalities)]
    self.decoders = [rqvae.Mlp(cfg.decoder_hidden + (dim,), d)
                     for m, dim in enumerate(cfg.modality_dims)]
    self.fuse = rqvae.Mlp((cfg.fused_dim,))
    if cfg.cf_dim > 0:
      self.cf_head = rqvae.Mlp((cfg.cf_dim,))

  def __call__(self, inputs: Sequence[jax.Array], mask: Optional[jax.Array] = None, *,
               deterministic: bool = True) -> MusicRecFusionOutput:
    """Encodes, fuses and reconstructs one batch.

    Args:
      inputs: M arrays [batch, d_m], d_m = config.modality_dims[m]; a missing modality's
        row may hold anything (zeros), it is masked.
      mask: [batch, M] bool, False for a missing modality (None: all present).
      deterministic: False applies dropout (needs a "dropout" rng).
    """
    cfg = self.config
    _check_inputs(inputs, cfg)
    batch = inputs[0].shape[0]
    mask = jnp.ones((batch, cfg.num_modalities), bool) if mask is None else mask
    proj = [p(x) for p, x in zip(self.input_proj, inputs)]
    zeros = jnp.zeros((batch, cfg.num_modalities, cfg.hidden_dim), proj[0].dtype)
    shared = specific = zeros
    if cfg.use_shared:
      shared = jnp.stack([self.shared_encoder(p, deterministic=deterministic)
                          for p in proj], 1)
    if cfg.use_specific:
      specific = jnp.stack([e(p, deterministic=deterministic)
                            for e, p in zip(self.specific_encoders, proj)], 1)
    recon = tuple(dec(shared[:, m] + specific[:, m], deterministic=deterministic)
                  for m, dec in enumerate(self.decoders))
    w = mask.astype(shared.dtype)[..., None]                                 # [B, M, 1]
    parts = []
    if cfg.use_shared:
      parts.append(jnp.sum(shared * w, 1) / jnp.maximum(jnp.sum(w, 1), 1.0))  # [B, h]
    if cfg.use_specific:
      parts.append((specific * w).reshape(batch, -1))                          # [B, M h]
    fused = self.fuse(jnp.concatenate(parts, -1))
    cf_proj = self.cf_head(fused) if cfg.cf_dim > 0 else None
    return MusicRecFusionOutput(shared=shared, specific=specific, fused=fused, recon=recon,
                                cf_proj=cf_proj)


def _check_inputs(inputs, cfg: MusicRecFusionConfig):
  widths = tuple(int(x.shape[-1]) for x in inputs)
  if widths != cfg.modality_dims:
    raise ValueError(f"SharedSpecificFusion got modality widths {widths} but "
                     f"MusicRecFusionConfig.modality_dims = {cfg.modality_dims}; bind "
                     f"modality_dims to the feature widths, in the same order.")


def _unit(v):
  return v * jax.lax.rsqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)


def _masked_info_nce(queries, keys, row_valid, col_valid, temperature):
  """Summed InfoNCE (cosine / temperature, diagonal positive) over valid rows, and their
  count; invalid columns are not negatives, rows whose positive is invalid are skipped."""
  logits = _unit(queries) @ _unit(keys).T / temperature
  logp = jax.nn.log_softmax(jnp.where(col_valid[None, :], logits, _MASKED), axis=-1)
  valid = row_valid & col_valid
  return jnp.sum(jnp.where(valid, -jnp.diagonal(logp), 0.0)), jnp.sum(valid)


def shared_alignment_loss(shared: jax.Array, mask: Optional[jax.Array] = None,
                          temperature: float = 0.1) -> jax.Array:
  """InfoNCE between the shared parts of two modalities of the same item.

  For every ordered pair of modalities (a, b), a != b: the query shared[i, a] should be
  closer (cosine) to shared[i, b] than to shared[j, b] of the other items j in the batch.
  Items missing a or b are skipped, and items missing b are not negatives.

  Args:
    shared: [batch, M, h]; M >= 2 (M = 1 returns 0).
    mask: [batch, M] bool (None: all present).
    temperature: softmax temperature.

  Returns:
    scalar, the mean over valid (item, pair) rows (0 if none).
  """
  batch, num_mod, _ = shared.shape
  mask = jnp.ones((batch, num_mod), bool) if mask is None else mask
  total, count = jnp.zeros(()), jnp.zeros(())
  for a in range(num_mod):
    for b in range(num_mod):
      if a != b:
        s, c = _masked_info_nce(shared[:, a], shared[:, b], mask[:, a], mask[:, b],
                                temperature)
        total, count = total + s, count + c
  return total / jnp.maximum(count, 1.0)


def orthogonality_loss(shared: jax.Array, specific: jax.Array,
                       mask: Optional[jax.Array] = None) -> jax.Array:
  """DSN's difference loss ||S_m^T P_m||_F^2, normalised as in DSN's (and MISA's) code.

  Per modality m, over the items having it: centre S_m, P_m [n_m, h] over the batch,
  L2-normalise each row, then take the mean over the h x h entries of (S_m^T P_m)^2; the
  result is averaged over modalities. It is 0 when every shared feature column is
  orthogonal (uncorrelated across the batch) to every specific feature column, and it
  cannot be lowered by shrinking the vectors.

  Args:
    shared, specific: [batch, M, h].
    mask: [batch, M] bool (None: all present); missing rows are dropped.
  """
  batch, num_mod, _ = shared.shape
  mask = jnp.ones((batch, num_mod), bool) if mask is None else mask
  w = mask.astype(shared.dtype)[..., None]                                  # [B, M, 1]
  n = jnp.sum(w, axis=0)                                                    # [M, 1]

  def centred_unit(x):
    mean = jnp.sum(x * w, axis=0) / jnp.maximum(n, 1.0)
    return _unit((x - mean) * w) * w

  gram = jnp.einsum("bmh,bmk->mhk", centred_unit(shared), centred_unit(specific))
  per_mod = jnp.mean(jnp.square(gram), axis=(1, 2))                         # [M]
  present = n[:, 0] > 0
  return jnp.sum(jnp.where(present, per_mod, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def reconstruction_loss(recon: Sequence[jax.Array], inputs: Sequence[jax.Array],
                        mask: Optional[jax.Array] = None) -> jax.Array:
  """Mean squared error per present (item, modality), averaged over those pairs.

  Args:
    recon, inputs: M arrays [batch, d_m] each.
    mask: [batch, M] bool (None: all present); missing modalities do not count.
  """
  per_item = jnp.stack([jnp.mean(jnp.square(r - x), axis=-1)
                        for r, x in zip(recon, inputs)], axis=1)            # [B, M]
  if mask is None:
    return jnp.mean(per_item)
  return jnp.sum(jnp.where(mask, per_item, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def collaborative_guidance_loss(quantized_or_fused: jax.Array, cf_embeddings: jax.Array,
                                temperature: float = 0.1) -> jax.Array:
  """LETTER's collaborative alignment: in-batch InfoNCE, the item's CF embedding is the
  positive and the other items' are negatives (cosine / temperature; `rqvae.info_nce`).

  Args:
    quantized_or_fused: [batch, t] (already projected to the CF width: the RQ-VAE's
      AlignmentHead, or SharedSpecificFusion's cf_proj).
    cf_embeddings: [batch, t].
  """
  if quantized_or_fused.shape[-1] != cf_embeddings.shape[-1]:
    raise ValueError(f"collaborative_guidance_loss: widths {quantized_or_fused.shape[-1]} "
                     f"and {cf_embeddings.shape[-1]} differ; project first (set "
                     f"MusicRecFusionConfig.cf_dim to the CF width).")
  return rqvae.info_nce(quantized_or_fused, cf_embeddings, temperature)


def musicrec_losses(outputs: MusicRecFusionOutput, inputs: Sequence[jax.Array],
                    mask: Optional[jax.Array], cf: Optional[jax.Array],
                    config: MusicRecFusionConfig) -> tuple[jax.Array, dict]:
  """Weighted sum of the four MusicRec fusion losses.

  The alignment loss is 0 without the shared encoder (use_shared=False), the
  orthogonality loss 0 unless both the shared and the specific encoders are used.

  Args:
    outputs: SharedSpecificFusion's output on `inputs`.
    inputs: M arrays [batch, d_m].
    mask: [batch, M] bool or None.
    cf: [batch, cf_dim] CF embeddings; may be None when guidance_weight = 0.
    config: the weights and temperatures.

  Returns:
    (total, {"reconstruction", "alignment", "orthogonality", "guidance", "total"}).
  """
  zero = jnp.zeros(())
  losses = {
      "reconstruction": reconstruction_loss(outputs.recon, inputs, mask),
      "alignment": (shared_alignment_loss(outputs.shared, mask, config.alignment_temperature)
                    if config.use_shared else zero),
      "orthogonality": (orthogonality_loss(outputs.shared, outputs.specific, mask)
                        if config.use_shared and config.use_specific else zero),
      "guidance": zero,
  }
  if config.guidance_weight > 0:
    if cf is None:
      raise ValueError("MusicRecFusionConfig.guidance_weight > 0 needs the CF embeddings "
                       "[batch, cf_dim]; pass cf or set guidance_weight = 0.")
    pred = outputs.fused if outputs.cf_proj is None else outputs.cf_proj
    losses["guidance"] = collaborative_guidance_loss(pred, cf, config.guidance_temperature)
  total = (config.reconstruction_weight * losses["reconstruction"]
           + config.alignment_weight * losses["alignment"]
           + config.orthogonality_weight * losses["orthogonality"]
           + config.guidance_weight * losses["guidance"])
  losses["total"] = total
  return total, losses


def make_musicrec_loss_fn(config: MusicRecFusionConfig):
  """Returns `loss(params, inputs, mask, cf, dropout_rng=None) -> (total, (losses,
  outputs))` for `jax.grad(..., has_aux=True)`; dropout is on iff dropout_rng is given."""
  model = SharedSpecificFusion(config)

  def loss(params, inputs, mask, cf, dropout_rng=None):
    rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
    outputs = model.apply({"params": params}, tuple(inputs), mask,
                          deterministic=dropout_rng is None, rngs=rngs)
    total, losses = musicrec_losses(outputs, inputs, mask, cf, config)
    return total, (losses, outputs)
  return loss


@functools.lru_cache(maxsize=8)
def make_musicrec_fuse_fn(config: MusicRecFusionConfig):
  """A jitted `fuse(params, inputs: tuple of [batch, d_m], mask) -> fused [batch,
  fused_dim]` (deterministic), the RQ-VAE's input."""
  model = SharedSpecificFusion(config)
  return jax.jit(lambda params, xs, m: model.apply({"params": params}, tuple(xs), m).fused)
