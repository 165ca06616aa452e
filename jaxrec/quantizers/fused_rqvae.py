"""A fusion layer and an RQ-VAE trained as one model (CEMG, MusicRec): content features
(+ collaborative embedding) -> fused vector -> RQ-VAE encoder -> residual quantizer ->
decoder that reconstructs the *inputs* of the fusion, with the joint loss and its fit loop.

Why the decoder reconstructs the fusion's inputs and not the fused vector: when the fusion
layer is trained through an RQ-VAE that reconstructs its own input (the fused vector), the
cheapest way to lower reconstruction + commitment is to make the fused vector small or
constant (the attention's value projections, or MusicRec's `fuse` layer, shrink towards
zero), which loses the items' content. Reconstructing the (PCA-reduced, standardized)
modality features and, for CEMG, the collaborative embedding from the quantized latent keeps
the fused vector informative: it must carry what the codes have to reproduce.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.quantizers import fusion
from jaxrec.quantizers import rqkmeans, rqvae, vq
from jaxrec.quantizers import training as qtraining

METHODS = ("cemg", "musicrec")

# fold_in tags, as in quantizers/training.py.
_INIT, _DATA, _STEP, _KMEANS = 0, 1, 2, 3
# Shared with fit_rqvae, so batches and codebook updates follow the same rules.
_batch_indices = qtraining.batch_indices
_with_codebooks = qtraining.with_codebooks


@dataclasses.dataclass(frozen=True)
class FusedRqVaeConfig:
  """The joint model's shape (built by `fused_tokenizer_job` from the feature widths).

  Attributes:
    method: "cemg" (collaborative-guided attention) or "musicrec" (shared-specific).
    content_dims: width of each content input as the model sees it (CEMG: pca_dim each).
    collab_dim: width of the collaborative embedding; 0 = not used (CEMG: a learned
      query of width attn_dim replaces it and nothing is concatenated; MusicRec: no
      collaborative guidance loss).
    cemg: the attention (its pca_dim must equal every content_dims entry).
    musicrec: the shared-specific fusion (modality_dims = content_dims; its cf_dim is
      unused: the guidance head projects the quantized latent to collab_dim).
    rqvae: the RQ-VAE (input_dim = fused_dim; its decoder outputs sum(target_dims)).
  """
  method: str = "cemg"
  content_dims: Sequence[int] = (64, 64)
  collab_dim: int = 64
  cemg: fusion.CemgFusionConfig = fusion.CemgFusionConfig()
  musicrec: fusion.MusicRecFusionConfig = fusion.MusicRecFusionConfig()
  rqvae: rqvae.RqVaeConfig = rqvae.RqVaeConfig()

  def __post_init__(self):
    object.__setattr__(self, "content_dims", tuple(int(d) for d in self.content_dims))
    if self.method not in METHODS:
      raise ValueError(f"FusedRqVaeConfig.method={self.method!r}; use one of {METHODS}.")

  @property
  def use_collab(self) -> bool:
    return self.collab_dim > 0

  @property
  def guidance(self) -> bool:
    """Whether MusicRec's collaborative guidance loss is on."""
    return (self.method == "musicrec" and self.use_collab
            and self.musicrec.guidance_weight > 0)

  @property
  def fused_dim(self) -> int:
    """Width of the fused vector (the RQ-VAE encoder's input)."""
    if self.method == "cemg":
      return self.cemg.attn_dim + self.collab_dim
    return self.musicrec.fused_dim

  @property
  def target_dims(self) -> tuple:
    """Widths of the decoder's targets: the content inputs (+ collab for CEMG)."""
    if self.method == "cemg" and self.use_collab:
      return self.content_dims + (self.collab_dim,)
    return self.content_dims


@flax.struct.dataclass
class FusedRqVaeOutput:
  """What `FusedRqVae.__call__` returns.

  Attributes:
    fused: [batch, fused_dim].
    quantized: [batch, latent_dim] straight-through quantized latent.
    codes: [batch, num_levels] int32.
    residuals: [batch, num_levels, latent_dim] level inputs (no gradient).
    weights: [batch, num_heads, M] CEMG attention weights (None for MusicRec).
    losses: scalars (see `FusedRqVae.__call__`).
    usage: used_fraction [num_levels], perplexity [num_levels] within the batch.
  """
  fused: jax.Array
  quantized: jax.Array
  codes: jax.Array
  residuals: jax.Array
  weights: Optional[jax.Array]
  losses: dict
  usage: dict


class FusedRqVae(nn.Module):
  """Fusion (CEMG attention or MusicRec shared-specific) + RQ-VAE, one parameter tree:
  {attention | fusion, [query], [guidance_head], encoder, quantizer, decoder}."""
  config: FusedRqVaeConfig

  def setup(self):
    cfg, rq = self.config, self.config.rqvae
    if cfg.method == "cemg":
      self.attention = fusion.CollaborativeGuidedAttention(cfg.cemg)
      if not cfg.use_collab:
        self.query = self.param("query", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("embed",)), (cfg.cemg.attn_dim,))
    else:
      self.fusion = fusion.SharedSpecificFusion(cfg.musicrec)
      if cfg.guidance:
        self.guidance_head = rqvae.AlignmentHead(cfg.musicrec.guidance_temperature)
    self.encoder = rqvae.Mlp(rq.hidden_dims + (rq.latent_dim,), rq.dropout)
    self.quantizer = vq.ResidualQuantizer(rq.num_levels, rq.codebook_size, rq.latent_dim,
                                          rq.beta, rq.use_ema)
    self.decoder = rqvae.Mlp(tuple(reversed(rq.hidden_dims)) + (sum(cfg.target_dims),),
                             rq.dropout)

  def fuse(self, content: Sequence[jax.Array], mask: jax.Array,
           collab: Optional[jax.Array] = None, *, deterministic: bool = True):
    """Fuses one batch.

    Args:
      content: M arrays [batch, content_dims[m]] (a missing modality's row is masked).
      mask: [batch, M] bool, False for a missing modality.
      collab: [batch, collab_dim] (CEMG with use_collab: the query; else unused).
      deterministic: False applies dropout (needs a "dropout" rng).

    Returns:
      (fused [batch, fused_dim], aux): aux["weights"] the CEMG attention weights
      [batch, heads, M], aux["fusion"] the MusicRecFusionOutput.
    """
    cfg = self.config
    if cfg.method == "cemg":
      features = jnp.stack(list(content), axis=1)                      # [B, M, pca_dim]
      if cfg.use_collab:
        fused, weights = self.attention(collab, features, mask)
      else:
        query = jnp.broadcast_to(self.query, (features.shape[0], self.query.shape[0]))
        fused, weights = self.attention(query, features, mask)
        fused = fused[:, :cfg.cemg.attn_dim]                           # drop the query
      return fused, {"weights": weights}
    out = self.fusion(tuple(content), mask, deterministic=deterministic)
    return out.fused, {"fusion": out}

  def __call__(self, content: Sequence[jax.Array], mask: jax.Array,
               collab: Optional[jax.Array] = None, *,
               deterministic: bool = True) -> FusedRqVaeOutput:
    """Fuses, encodes, quantizes, decodes and scores one batch (args as `fuse`).

    Losses: recon (masked MSE of each target segment, `fusion.reconstruction_loss`),
    quantization (= codebook + beta * commitment), diversity (RqVaeConfig's lambda_div
    term); MusicRec adds fusion_reconstruction, alignment, orthogonality (weighted by
    MusicRecFusionConfig) and guidance (InfoNCE of a projection of the quantized latent
    with the collaborative embedding, weight guidance_weight); total.
    """
    cfg, rq = self.config, self.config.rqvae
    fused, aux = self.fuse(content, mask, collab, deterministic=deterministic)
    z = self.encoder(fused, deterministic=deterministic)
    quant = self.quantizer(z)
    recon = self.decoder(quant["quantized"], deterministic=deterministic)
    targets, tmask = list(content), mask
    if cfg.method == "cemg" and cfg.use_collab:
      targets.append(collab)
      tmask = jnp.concatenate([mask, jnp.ones((mask.shape[0], 1), bool)], axis=1)
    splits = np.cumsum(cfg.target_dims)[:-1].tolist()
    segments = jnp.split(recon, splits, axis=-1)
    zero = jnp.zeros(())
    losses = {"recon": fusion.reconstruction_loss(segments, targets, tmask),
              "quantization": quant["total"], "codebook": quant["codebook"],
              "commitment": quant["commitment"], "diversity": zero}
    total = losses["recon"] + losses["quantization"]
    if rq.diversity_weight > 0:
      losses["diversity"] = rqvae.diversity_loss(quant["distances"], rq.diversity_temperature)
      total = total + rq.diversity_weight * losses["diversity"]
    if cfg.method == "musicrec":
      no_guidance = dataclasses.replace(cfg.musicrec, guidance_weight=0.0)
      fusion_total, fl = fusion.musicrec_losses(aux["fusion"], list(content), mask, None,
                                                no_guidance)
      losses.update(fusion_reconstruction=fl["reconstruction"], alignment=fl["alignment"],
                    orthogonality=fl["orthogonality"], guidance=zero)
      total = total + fusion_total
      if cfg.guidance:
        losses["guidance"] = self.guidance_head(quant["quantized"], collab)
        total = total + cfg.musicrec.guidance_weight * losses["guidance"]
    losses["total"] = total
    return FusedRqVaeOutput(fused=fused, quantized=quant["quantized"], codes=quant["codes"],
                            residuals=quant["residuals"], weights=aux.get("weights"),
                            losses=losses, usage=vq.code_usage(quant["codes"],
                                                               rq.codebook_size))

  def encode(self, content, mask, collab=None) -> jax.Array:
    """-> latents [batch, latent_dim] (deterministic)."""
    return self.encoder(self.fuse(content, mask, collab)[0])

  def quantize(self, content, mask, collab=None):
    """-> codes [batch, L] int32, residuals [batch, L, latent_dim], fused [batch,
    fused_dim], CEMG attention weights [batch, heads, M] or None (deterministic)."""
    fused, aux = self.fuse(content, mask, collab)
    quant = self.quantizer(self.encoder(fused))
    return quant["codes"], quant["residuals"], fused, aux.get("weights")


# ---------------------------------------------------------------- data and training

def data_dict(content: Sequence[np.ndarray], mask: np.ndarray,
              collab: Optional[np.ndarray] = None) -> dict:
  """The model's inputs for all items: {"content": M x [n, d_m], "mask": [n, M],
  "collab": [n, c] (only when used)} as float32 / bool NumPy arrays."""
  data = {"content": tuple(np.asarray(c, np.float32) for c in content),
          "mask": np.asarray(mask, bool)}
  if collab is not None:
    data["collab"] = np.asarray(collab, np.float32)
  return data


def _take(data: dict, idx) -> dict:
  return jax.tree.map(lambda a: a[idx], data)


def _apply(model, params, batch, method=None, **kw):
  return model.apply({"params": params}, batch["content"], batch["mask"],
                     batch.get("collab"), method=method, **kw)


def make_train_step(model: FusedRqVae, optimizer: optax.GradientTransformation, *,
                    revive_dead_codes_every: int = 0) -> Callable:
  """Returns `step(state, batch, rng) -> (state, metrics)` to wrap in `jax.jit`; state is
  a `qtraining.RqVaeTrainState` over the joint params, batch a `data_dict` slice."""
  def forward(params, batch, dropout_rng):
    return _apply(model, params, batch, deterministic=False, rngs={"dropout": dropout_rng})
  return qtraining.make_quantizer_train_step(forward, model.config.rqvae, optimizer,
                                             revive_dead_codes_every=revive_dead_codes_every)


def _train_fields(train_config):
  """Fields a compiled init/step never depends on, set to defaults (shares compiles)."""
  return dataclasses.replace(train_config, seed=0, log_every=1)


@functools.lru_cache(maxsize=8)
def _make_init_fn(config: FusedRqVaeConfig, train_config, num_items: int):
  """A jitted `init(key, data) -> RqVaeTrainState` (k-means codebooks on the first batch)."""
  model, optimizer = FusedRqVae(config), qtraining.make_optimizer(train_config)
  rq = config.rqvae

  def init(key, data):
    first = _take(data, slice(0, 1))
    variables = model.init(jax.random.fold_in(key, _INIT), first["content"], first["mask"],
                           first.get("collab"))
    params = nn.meta.unbox(variables)["params"]
    if train_config.kmeans_init:
      size = min(num_items, max(train_config.batch_size, rq.codebook_size))
      idx = _batch_indices(jax.random.fold_in(key, _DATA), 0, num_items, size)
      latents = _apply(model, params, _take(data, idx), method=FusedRqVae.encode)
      fitted = rqkmeans.residual_kmeans(latents, rq.num_levels, rq.codebook_size,
                                        train_config.kmeans_iters,
                                        jax.random.fold_in(key, _KMEANS), check_unique=False)
      params = _with_codebooks(params, fitted.codebooks)
    codebooks = params["quantizer"]["codebooks"]
    return qtraining.RqVaeTrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
        ema=vq.ema_init(codebooks), unused_steps=jnp.zeros(codebooks.shape[:2], jnp.int32))

  return jax.jit(init)


def init_state(data: dict, config: FusedRqVaeConfig,
               train_config: qtraining.TokenizerTrainConfig) -> qtraining.RqVaeTrainState:
  """The state at step 0 (also the checkpoint restore target)."""
  n = len(data["mask"])
  init = _make_init_fn(config, _train_fields(train_config), n)
  return init(jax.random.PRNGKey(train_config.seed), jax.tree.map(jnp.asarray, data))


@functools.lru_cache(maxsize=8)
def _compiled(config: FusedRqVaeConfig, train_config, num_items: int):
  step = make_train_step(FusedRqVae(config), qtraining.make_optimizer(train_config),
                         revive_dead_codes_every=train_config.revive_dead_codes_every)

  def batch_fn(data, data_key, step_index):
    idx = _batch_indices(data_key, step_index, num_items, train_config.batch_size)
    return _take(data, idx)
  return jax.jit(step), jax.jit(batch_fn)


def fit(data: dict, config: FusedRqVaeConfig, train_config: qtraining.TokenizerTrainConfig,
        *, start_state: Optional[qtraining.RqVaeTrainState] = None,
        on_step: Optional[Callable] = None, progress: bool = True,
        until_step: Optional[int] = None) -> tuple:
  """Trains fusion + RQ-VAE jointly; resumable, batches fixed by (seed, step) as
  `qtraining.fit_rqvae`.

  Args:
    data: `data_dict` of all items.
    config, train_config: the model and its optimization.
    start_state: resume from it (e.g. a restored checkpoint).
    on_step: on_step(steps_done, state, metrics) after every step.
    progress: a tqdm bar.
    until_step: stop after this many steps (the schedule still spans num_steps).

  Returns:
    (state, qtraining.FitHistory) with metrics every log_every steps and at the end
    (history.tokens is left None: see `fused_tokens`).
  """
  n = len(data["mask"])
  state = start_state if start_state is not None else init_state(data, config, train_config)
  step_fn, batch_fn = _compiled(config, dataclasses.replace(
      _train_fields(train_config), kmeans_init=False, kmeans_iters=0), n)
  key = jax.random.PRNGKey(train_config.seed)
  data_key, step_key = jax.random.fold_in(key, _DATA), jax.random.fold_in(key, _STEP)
  device_data = jax.tree.map(jnp.asarray, data)
  start = int(state.step)
  stop = train_config.num_steps if until_step is None else min(until_step,
                                                               train_config.num_steps)
  return qtraining.run_steps(state, step_fn, lambda step: batch_fn(device_data, data_key, step),
                             step_key, start, stop, train_config.log_every, on_step,
                             progress, f"{config.method} fusion + rq-vae")


@functools.lru_cache(maxsize=8)
def make_quantize_fn(config: FusedRqVaeConfig):
  """A jitted `quantize(params, batch) -> (codes, residuals, fused, weights)`."""
  model = FusedRqVae(config)
  return jax.jit(lambda params, batch: _apply(model, params, batch,
                                              method=FusedRqVae.quantize))


def fused_tokens(data: dict, config: FusedRqVaeConfig, params, *,
                 batch_size: int = 4096) -> tuple:
  """Codes of all items under `params` (deterministic).

  Returns:
    (qtraining.TokenizerCodes, fused [n, fused_dim] float32, CEMG attention weights
    [n, heads, M] float32 or None).
  """
  quantize = make_quantize_fn(config)
  n = len(data["mask"])
  size = min(batch_size, n)
  parts = []
  for start in range(0, n, size):
    chunk = _take(data, slice(start, start + size))
    pad = size - len(chunk["mask"])
    chunk = jax.tree.map(lambda a: np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)), chunk)
    out = jax.device_get(quantize(params, jax.tree.map(jnp.asarray, chunk)))
    parts.append(jax.tree.map(lambda a: np.asarray(a)[:size - pad], out))
  codes, residuals, fused, weights = (
      None if parts[0][i] is None else np.concatenate([p[i] for p in parts])
      for i in range(4))
  codebooks = np.asarray(params["quantizer"]["codebooks"])
  tokens = qtraining.TokenizerCodes(codes=codes.astype(np.int32),
                                    last_residuals=residuals[:, -1],
                                    last_codebook=codebooks[-1], codebooks=codebooks)
  return tokens, fused, weights
