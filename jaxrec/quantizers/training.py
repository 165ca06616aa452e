"""Fitting the tokenizers on an item-embedding matrix: the jittable RQ-VAE step, its
resumable loop (the caller owns checkpoints through `on_step`), and RQ-k-means.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.data.errors import DataError
from jaxrec.quantizers import rqkmeans, rqvae, vq
from jaxrec.training import loop
from jaxrec.training import optimizers

# fold_in tags deriving independent streams from the seed.
_INIT, _DATA, _STEP, _KMEANS = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class QuantizerFitConfig(loop.FitConfig):
  """The fields the quantizer fits share (RQ-VAE, fused RQ-VAE, DINO-RQ): the loop's and
  the AdamW + warmup-cosine optimizer's (`optimizer_config`).

  Attributes:
    batch_size: items per step, drawn without replacement; all items when larger than n.
    learning_rate: peak AdamW learning rate.
    warmup_steps: linear warmup from 0, then cosine decay to
      learning_rate * final_learning_rate_fraction at num_steps.
    final_learning_rate_fraction: see warmup_steps.
    weight_decay: AdamW weight decay.
    kmeans_init: initialize the codebooks by residual k-means.
    kmeans_iters: Lloyd iterations per level for that init.
    revive_dead_codes_every: a code unused for this many consecutive steps is reset to a
      random current input of its level; 0 disables.
  """
  batch_size: int = 1024
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  final_learning_rate_fraction: float = 0.0
  weight_decay: float = 1e-4
  kmeans_init: bool = True
  kmeans_iters: int = 20
  revive_dead_codes_every: int = 0


@dataclasses.dataclass(frozen=True)
class TokenizerTrainConfig(QuantizerFitConfig):
  """How to fit the RQ-VAE (`QuantizerFitConfig`'s fields, defaults redefined here).

  Attributes:
    num_steps: optimizer steps.
    batch_size: items per step, drawn without replacement; all items when larger than n.
    learning_rate: peak AdamW learning rate.
    weight_decay: AdamW weight decay.
    warmup_steps: linear warmup from 0, then cosine decay to
      learning_rate * final_learning_rate_fraction at num_steps.
    final_learning_rate_fraction: see warmup_steps.
    seed: the one seed (init, batches, dropout, k-means, revival).
    kmeans_init: initialize the codebooks by residual k-means on the first batch's latents
      (TIGER); when batch_size < codebook_size the first max(batch_size, K) items drawn.
    kmeans_iters: Lloyd iterations per level for that init.
    log_every: steps between history entries (and progress-bar updates).
    revive_dead_codes_every: a code unused for this many consecutive steps is reset to a
      random current input of its level; 0 disables (TIGER and LETTER do not revive).
  """
  num_steps: int = 3000
  batch_size: int = 1024
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  warmup_steps: int = 100
  final_learning_rate_fraction: float = 0.0
  seed: int = 0
  kmeans_init: bool = True
  kmeans_iters: int = 20
  log_every: int = 100
  revive_dead_codes_every: int = 0


@flax.struct.dataclass
class RqVaeTrainState:
  """A TrainState-like pytree (no static fields, so Orbax saves it as is).

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params: the RqVae params (unboxed); codebooks at params["quantizer"]["codebooks"].
    opt_state: the optax state.
    ema: vq.EmaState with cluster_size [L, K], embed_sum [L, K, d] (used when use_ema).
    unused_steps: [L, K] int32 consecutive steps each code went unused.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  ema: vq.EmaState
  unused_steps: jax.Array


@dataclasses.dataclass(frozen=True)
class TokenizerCodes:
  """Codes of every item plus what the Sinkhorn / nearest-unused strategies need.

  Attributes:
    codes: [n, L] int32.
    last_residuals: [n, d] float32 inputs of the last level.
    last_codebook: [K, d] float32.
    codebooks: [L, K, d] float32.
  """
  codes: np.ndarray
  last_residuals: np.ndarray
  last_codebook: np.ndarray
  codebooks: np.ndarray


@dataclasses.dataclass
class FitHistory:
  """What `fit_rqvae` reports: logged metrics and the final codes of all items."""
  metrics: list
  tokens: Optional[TokenizerCodes] = None


def optimizer_config(config) -> optimizers.OptimizerConfig:
  """A tokenizer fit's optimizer (a TokenizerTrainConfig, FusedTrainConfig or
  DinoRqTrainConfig): AdamW, linear warmup to learning_rate, then cosine decay to
  learning_rate * final_learning_rate_fraction at num_steps; DINO-RQ clips first."""
  return optimizers.OptimizerConfig(
      name="adamw", schedule="cosine", learning_rate=config.learning_rate,
      warmup_steps=config.warmup_steps, total_steps=max(config.num_steps, 1),
      end_learning_rate_fraction=config.final_learning_rate_fraction,
      weight_decay=config.weight_decay, grad_clip=getattr(config, "clip_grad_norm", 0.0))


def make_optimizer(config, decay_mask=None) -> optax.GradientTransformation:
  """`optimizers.make_optimizer` of `optimizer_config(config)`."""
  return optimizers.make_optimizer(optimizer_config(config), decay_mask)


def with_codebooks(params, codebooks):
  return {**params, "quantizer": {**params["quantizer"], "codebooks": codebooks}}


def make_rqvae_train_step(model: rqvae.RqVae, optimizer: optax.GradientTransformation, *,
                          revive_dead_codes_every: int = 0) -> Callable:
  """Returns `step(state, batch, rng) -> (state, metrics)` to wrap in `jax.jit`.

  batch: {"x": [batch, input_dim]} plus "targets": [batch, t] when alignment_weight > 0.
  rng: the step's key (dropout and dead-code revival).
  """
  def forward(params, batch, dropout_rng):
    return model.apply({"params": params}, batch["x"], batch.get("targets"),
                       deterministic=False, rngs={"dropout": dropout_rng})
  return make_quantizer_train_step(forward, model.config, optimizer,
                                   revive_dead_codes_every=revive_dead_codes_every)


def make_quantizer_train_step(forward: Callable, config: rqvae.RqVaeConfig,
                              optimizer: optax.GradientTransformation, *,
                              revive_dead_codes_every: int = 0) -> Callable:
  """The training step of any model with a residual quantizer at params["quantizer"].

  Args:
    forward: `forward(params, batch, dropout_rng) -> out` with out.losses (a dict with
      "total"), out.residuals [batch, L, d], out.codes [batch, L] and out.usage (the
      `rqvae.RqVaeOutput` fields).
    config: the quantizer's settings (num_levels, use_ema, ema_decay, ema_epsilon).
    optimizer: the optax transformation.
    revive_dead_codes_every: re-seed codes unused for this many steps (0: never).

  Returns:
    `step(state, batch, rng) -> (state, metrics)` over an `RqVaeTrainState`: a gradient
    step, EMA codebook updates when `use_ema`, unused-step counts, dead-code revival.
  """
  cfg = config

  def step(state: RqVaeTrainState, batch: dict, rng: jax.Array):
    dropout_rng, revive_rng = jax.random.split(rng)

    def loss_fn(params):
      out = forward(params, batch, dropout_rng)
      return out.losses["total"], out

    grads, out = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    codebooks, ema = params["quantizer"]["codebooks"], state.ema
    if cfg.use_ema:
      update = functools.partial(vq.ema_update, decay=cfg.ema_decay, epsilon=cfg.ema_epsilon)
      ema, codebooks = jax.vmap(update, in_axes=(0, 1, 1))(ema, out.residuals, out.codes)
    unused = jax.vmap(vq.update_unused_steps, in_axes=(0, 1))(state.unused_steps, out.codes)
    if revive_dead_codes_every > 0:
      keys = jax.random.split(revive_rng, cfg.num_levels)
      codebooks, revived = jax.vmap(vq.revive_dead_codes, in_axes=(0, 0, 1, 0, None))(
          codebooks, unused, out.residuals, keys, revive_dead_codes_every)
      unused = jnp.where(revived, 0, unused)
      ema = vq.EmaState(jnp.where(revived, 1.0, ema.cluster_size),
                        jnp.where(revived[..., None], codebooks, ema.embed_sum))
    new_state = state.replace(step=state.step + 1, params=with_codebooks(params, codebooks),
                              opt_state=opt_state, ema=ema, unused_steps=unused)
    metrics = {"loss": out.losses["total"], **{k: v for k, v in out.losses.items()
                                               if k != "total"}, **out.usage}
    return new_state, metrics

  return step


def _check_inputs(embeddings, model_config, align_targets):
  x = vq.check_embeddings(embeddings, codebook_size=model_config.codebook_size,
                          input_dim=model_config.input_dim,
                          binding="RqVaeConfig.codebook_size")
  targets = None
  if model_config.alignment_weight > 0:
    if align_targets is None:
      raise DataError("alignment_weight > 0 but no align_targets were given.",
                      path="RqVaeConfig.alignment_weight",
                      fix="pass align_targets [num_items, t] or set alignment_weight = 0.")
    targets = vq.check_embeddings(align_targets, source="align_targets")
    if len(targets) != len(x):
      raise DataError(f"align_targets has {len(targets)} rows but embeddings has {len(x)}.",
                      path="align_targets", fix="pass one target row per item, same order.")
  return x, targets


def batch_indices(data_key, step, num_items: int, batch_size: int) -> jax.Array:
  """[min(batch_size, n)] int32 items of a step: a fixed function of (seed, step)."""
  if batch_size >= num_items:
    return jnp.arange(num_items, dtype=jnp.int32)
  perm = jax.random.permutation(jax.random.fold_in(data_key, step), num_items)
  return perm[:batch_size].astype(jnp.int32)


def init_rqvae_state(embeddings, model_config: rqvae.RqVaeConfig,
                     train_config: TokenizerTrainConfig, *,
                     align_targets=None) -> RqVaeTrainState:
  """The state at step 0 (also the restore target; wrap in jax.eval_shape to get shapes).

  With kmeans_init, the codebooks are residual k-means of the first batch's latents.
  """
  x, targets = _check_inputs(embeddings, model_config, align_targets)
  # Loss weights do not change the params: one compiled init serves them all.
  shape_only = dataclasses.replace(
      model_config, beta=0.25, dropout=0.0, diversity_weight=0.0, diversity_temperature=1.0,
      alignment_weight=float(model_config.alignment_weight > 0), alignment_temperature=0.1,
      use_ema=False, ema_decay=0.99, ema_epsilon=1e-5)
  init = _make_init_fn(shape_only, dataclasses.replace(_step_fields(train_config),
                                                       revive_dead_codes_every=0), len(x))
  return init(jax.random.PRNGKey(train_config.seed), jnp.asarray(x),
              None if targets is None else jnp.asarray(targets[:1]))


def _step_fields(train_config):
  """The config with the fields a compiled init/step never depends on set to defaults."""
  return dataclasses.replace(train_config, seed=0, log_every=1)


@functools.lru_cache(maxsize=8)
def _make_init_fn(model_config, train_config, num_items):
  """A jitted `init(key, x [n, input_dim], targets_row [1, t] | None) -> state`."""
  model, optimizer = rqvae.RqVae(model_config), make_optimizer(train_config)
  num_levels, num_codes = model_config.num_levels, model_config.codebook_size

  def init(key, x, targets_row):
    variables = model.init(jax.random.fold_in(key, _INIT), x[:1], targets_row)
    params = nn.meta.unbox(variables)["params"]
    if train_config.kmeans_init:
      size = min(num_items, max(train_config.batch_size, num_codes))
      idx = batch_indices(jax.random.fold_in(key, _DATA), 0, num_items, size)
      latents = model.apply({"params": params}, x[idx], method=rqvae.RqVae.encode)
      fitted = rqkmeans.residual_kmeans(latents, num_levels, num_codes,
                                        train_config.kmeans_iters,
                                        jax.random.fold_in(key, _KMEANS), check_unique=False)
      params = with_codebooks(params, fitted.codebooks)
    codebooks = params["quantizer"]["codebooks"]
    return RqVaeTrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init(params), ema=vq.ema_init(codebooks),
                           unused_steps=jnp.zeros(codebooks.shape[:2], jnp.int32))

  return jax.jit(init)


def _compiled(model_config, train_config, num_items):
  """The jitted step and batch function for a pair of configs (reused across fits)."""
  # Fields that do not change the step share one compiled function.
  train_config = dataclasses.replace(_step_fields(train_config), kmeans_init=False,
                                     kmeans_iters=0)
  return _compiled_cached(model_config, train_config, num_items)


@functools.lru_cache(maxsize=8)
def _compiled_cached(model_config, train_config, num_items):
  step = make_rqvae_train_step(rqvae.RqVae(model_config), make_optimizer(train_config),
                               revive_dead_codes_every=train_config.revive_dead_codes_every)
  batch_fn = functools.partial(batch_indices, num_items=num_items,
                               batch_size=train_config.batch_size)
  return jax.jit(step), jax.jit(batch_fn)


def fit_rqvae(embeddings, model_config: rqvae.RqVaeConfig, train_config: TokenizerTrainConfig,
              *, align_targets=None, start_state: Optional[RqVaeTrainState] = None,
              on_step: Optional[Callable] = None, progress: bool = True,
              until_step: Optional[int] = None,
              compute_codes: bool = True) -> tuple[RqVaeTrainState, FitHistory]:
  """Trains the RQ-VAE; resumable, with batches fixed by (seed, step).

  Args:
    embeddings: [num_items, input_dim] float.
    model_config: RqVaeConfig.
    train_config: TokenizerTrainConfig.
    align_targets: [num_items, t] targets of the alignment loss (e.g. CF embeddings).
    start_state: resume from this state (e.g. restored from a checkpoint).
    on_step: called as on_step(step, state, metrics) after every step, step = steps done.
    progress: show a tqdm bar with the loss.
    until_step: stop after this many steps (the schedule still spans num_steps).
    compute_codes: also return the codes of all items under the final params.

  Returns:
    (state, history): history.metrics is a list of {"step", "loss", ...} every log_every
    steps and at the end; history.tokens the TokenizerCodes of all items.
  """
  x, targets = _check_inputs(embeddings, model_config, align_targets)
  state = start_state if start_state is not None else init_rqvae_state(
      x, model_config, train_config, align_targets=targets)
  step_fn, batch_fn = _compiled(model_config, train_config, len(x))
  key = jax.random.PRNGKey(train_config.seed)
  data_key, step_key = jax.random.fold_in(key, _DATA), jax.random.fold_in(key, _STEP)
  x_dev = jnp.asarray(x)
  t_dev = None if targets is None else jnp.asarray(targets)
  start = int(state.step)
  stop = train_config.num_steps if until_step is None else min(until_step,
                                                               train_config.num_steps)

  def make_batch(step):
    idx = batch_fn(data_key, step)
    batch = {"x": x_dev[idx]}
    if t_dev is not None:
      batch["targets"] = t_dev[idx]
    return batch

  state, history = run_steps(state, step_fn, make_batch, step_key, start, stop,
                             train_config.log_every, on_step, progress, "rq-vae")
  if compute_codes:
    history.tokens = rqvae_tokens(x, model_config, state.params)
  return state, history


def run_steps(state, step_fn: Callable, make_batch: Callable, step_key: jax.Array, start: int,
              stop: int, log_every: int, on_step: Optional[Callable] = None,
              progress: bool = True, desc: str = "fit",
              postfix: Callable[[dict], dict] = lambda e: {"loss": f"{e['loss']:.4f}"}):
  """The tokenizers' fit: steps [start, stop) of the package's one loop (`training.loop`).

  Step s runs `step_fn(state, make_batch(s), fold_in(step_key, s))`, so batches and keys
  depend on (seed, step) only and a resumed fit repeats an uninterrupted one. `on_step`
  (step done, state, metrics) runs after every step (the resumable jobs checkpoint there).

  Returns:
    (state, FitHistory): the last step's metrics {"step", ...} every `log_every` steps and
    at the end.
  """
  actions = [] if on_step is None else [loop.Hook(on_step)]
  result = loop.run_loop(
      state, lambda st, b: step_fn(st, b[0], jax.random.fold_in(step_key, b[1])),
      lambda step: (make_batch(step), step), start=start, num_steps=stop, log_every=log_every, actions=actions,
      reduce="last", postfix=postfix, progress=progress, desc=desc)
  for entry in result.history:
    entry.pop("seconds")
  return result.state, FitHistory(metrics=result.history)


def rqvae_tokens(embeddings, model_config: rqvae.RqVaeConfig, params, *,
                 batch_size: int = 4096) -> TokenizerCodes:
  """Codes [n, L] of all items (deterministic) and the last level's residuals/codebook."""
  x = vq.check_embeddings(embeddings, input_dim=model_config.input_dim)
  codes_fn = rqvae.make_codes_fn(model_config)
  size = min(batch_size, len(x))
  codes, residuals = [], []
  for start in range(0, len(x), size):
    chunk = x[start:start + size]
    pad = size - len(chunk)
    c, r = codes_fn(params, jnp.asarray(np.pad(chunk, ((0, pad), (0, 0)))))
    codes.append(np.asarray(c)[:len(chunk)])
    residuals.append(np.asarray(r)[:len(chunk), -1])
  codebooks = np.asarray(params["quantizer"]["codebooks"])
  return TokenizerCodes(codes=np.concatenate(codes).astype(np.int32),
                        last_residuals=np.concatenate(residuals), last_codebook=codebooks[-1],
                        codebooks=codebooks)


def fit_rqkmeans(embeddings, num_levels: int, codebook_size: int, iters: int = 50,
                 seed: int = 0) -> TokenizerCodes:
  """Residual k-means on [num_items, d] embeddings; same seed -> same codes."""
  x = vq.check_embeddings(embeddings, codebook_size=codebook_size)
  fitted = rqkmeans.residual_kmeans(x, num_levels, codebook_size, iters,
                                    jax.random.PRNGKey(seed))
  codebooks = np.asarray(fitted.codebooks)
  return TokenizerCodes(codes=np.asarray(fitted.codes, np.int32),
                        last_residuals=np.asarray(fitted.residuals[:, -1]),
                        last_codebook=codebooks[-1], codebooks=codebooks)
