"""DINO-RQ (MSCGRec's image codes): residual quantization inside DINO self-distillation.

Student: ViT -> CLS [B, hidden] -> linear projection z [B, code_dim] -> residual
quantizer (straight-through, commitment + codebook losses) -> DINO head -> prototype
logits [B, out_dim]. Teacher: an EMA copy of all of it (backbone, projection, codebooks,
head) run on the 2 global crops; the student runs on every crop. The loss is DINO's
cross-entropy between the centred, sharpened teacher softmax of one global view and the
student softmax of every other view, plus the quantization losses. There is no decoder:
the codes are shaped by self-distillation only.

Choices (the paper's values are not known to us):
  * Codebooks are learned by the optimizer through the codebook loss ||sg(r) - e||²
    (AdamW, no weight decay on them), or by EMA k-means updates with `use_ema`. The
    codebook loss only sees the global views (the codes of an item are read from its
    whole image, which a local crop does not resemble); the commitment loss pulls every
    view's projection towards its codes.
  * Item codes and embeddings are read from the STUDENT on the whole image resized to the
    global crop size: its codebooks are fitted to its own projections by the codebook
    loss, while the teacher's are an average of past student codebooks, and in our
    synthetic runs the student's codes used more of the codebook and agreed more with the
    rendered attributes. `which="teacher"` reads the teacher (DINO evaluates the teacher).
  * The head standardises its hidden layers over the batch (DINO's `use_bn`). Without
    it, small ViTs trained for a few hundred steps fell into DINO's uniform collapse
    (teacher entropy = log out_dim) in our runs; with it the teacher stays sharp.
  * k-means initialises the codebooks (residual, level by level) from the first batch's
    projections of whole images, as `training.py` does for the RQ-VAE; the centre starts
    at the mean teacher output on those images (see `init_dino_rq_state`).
  * The projection z is divided by its RMS (`normalize_embeddings`) so it cannot shrink
    under the commitment loss.
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
from jaxrec.encoders import augment, vit
from jaxrec.quantizers import rqkmeans, training, vq
from jaxrec.quantizers.dino_head import (  # noqa: F401 (part of this module's API)
    DinoHead, batch_standardize, dino_loss, ema_update, teacher_momentum, update_center)

# fold_in tags deriving independent streams from the seed (as in training.py).
_INIT, _DATA, _STEP, _KMEANS = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class DinoRqConfig:
  """DINO-RQ model and loss (defaults: MSCGRec's 3 x 256 codes, a small DINO).

  Attributes:
    vit: the backbone.
    crops: the multi-crop views (global_size should be vit.image_size).
    num_levels: L codebooks.
    codebook_size: K codes per codebook.
    code_dim: width of the projection of the CLS output that is quantized.
    normalize_embeddings: divide each projection by its root mean square (no learned
      scale), so the quantized space cannot shrink under the commitment loss and strand
      the codes (without it the first level collapsed to a few codes in our runs).
    head_hidden: width of the DINO head's 2 hidden layers (DINO: 2048).
    head_bottleneck: width of the L2-normalised bottleneck (DINO: 256).
    out_dim: number of prototypes (DINO: 65536).
    head_batch_norm: standardise the head's hidden layers over the batch (DINO's use_bn).
    quantize_before_head: True (DINO-RQ): the head sees the quantized embedding, so the
      codes are trained by self-distillation. False: plain DINO (the head sees z); with
      quantization_weight = 0 this is the backbone of the "extract, then quantize"
      baseline (MSCGRec's ablation): quantize its embeddings afterwards.
    student_temp: student softmax temperature.
    teacher_temp: teacher temperature after the warmup.
    warmup_teacher_temp: teacher temperature at step 0 (DINO: 0.04 -> 0.07 over 30 epochs).
    warmup_teacher_temp_steps: steps of the linear teacher-temperature warmup (0 = none).
    center_momentum: EMA momentum of the centre of the teacher outputs.
    teacher_momentum: teacher EMA momentum at step 0; cosine increase to 1 at the end.
    beta: commitment weight.
    quantization_weight: weight of codebook + beta * commitment against the DINO loss.
    use_ema: learn codebooks by EMA k-means updates instead of the codebook loss.
    ema_decay: EMA decay of those updates.
    ema_epsilon: Laplace smoothing of the EMA counts.
  """
  vit: vit.VitConfig = dataclasses.field(default_factory=vit.VitConfig)
  crops: augment.MultiCropConfig = dataclasses.field(default_factory=augment.MultiCropConfig)
  num_levels: int = 3
  codebook_size: int = 256
  code_dim: int = 64
  normalize_embeddings: bool = True
  head_hidden: int = 512
  head_bottleneck: int = 128
  out_dim: int = 1024
  head_batch_norm: bool = True
  quantize_before_head: bool = True
  student_temp: float = 0.1
  teacher_temp: float = 0.04
  warmup_teacher_temp: float = 0.04
  warmup_teacher_temp_steps: int = 0
  center_momentum: float = 0.9
  teacher_momentum: float = 0.996
  beta: float = 0.25
  quantization_weight: float = 1.0
  use_ema: bool = False
  ema_decay: float = 0.99
  ema_epsilon: float = 1e-5

  @classmethod
  def small(cls, image_size: int = 32, **overrides) -> "DinoRqConfig":
    """A CPU-sized model for small catalogs (the synthetic one: 300-600 items, 16-32 px):
    a 2-layer, 64-wide ViT, 2 local crops, 3 x 32 codes, teacher momentum 0.99 (the
    DINO default 0.996 leaves the teacher near its random init in a few hundred steps)."""
    return cls(**{
        "vit": vit.VitConfig(patch_size=4, hidden=64, num_layers=2, num_heads=2, mlp_dim=128,
                             image_size=image_size),
        "crops": augment.MultiCropConfig(global_size=image_size, local_size=image_size // 2,
                                         num_local=2),
        "codebook_size": 32, "code_dim": 32, "head_hidden": 256, "head_bottleneck": 32,
        "out_dim": 128, "teacher_momentum": 0.99, **overrides})

  def __post_init__(self):
    for name in ("global_size", "local_size"):
      side = getattr(self.crops, name)
      if side % self.vit.patch_size:
        raise ValueError(f"MultiCropConfig.{name}={side} is not a multiple of "
                         f"VitConfig.patch_size={self.vit.patch_size}.")


@dataclasses.dataclass(frozen=True)
class DinoRqTrainConfig(training.QuantizerFitConfig):
  """How to fit DINO-RQ (`training.QuantizerFitConfig`'s fields, defaults redefined here,
  and the gradient clip) (defaults: DINO's lr 5e-4 at batch 256; for `DinoRqConfig.small()`
  on the synthetic catalog we use num_steps=200, batch_size=64, learning_rate=1e-3,
  warmup_steps=20: about 80 s on 2 CPU cores).

  Attributes:
    num_steps: optimizer steps (the teacher-momentum and learning-rate schedules span them).
    batch_size: items per step, drawn without replacement; all items when larger than n.
    learning_rate: peak AdamW learning rate.
    warmup_steps: linear warmup from 0, then cosine decay to
      learning_rate * final_learning_rate_fraction at num_steps.
    final_learning_rate_fraction: see warmup_steps.
    weight_decay: AdamW weight decay on matrices (not on biases, norms or codebooks).
    clip_grad_norm: global gradient-norm clip (DINO: 3.0; 0 = off).
    seed: the one seed (init, batches, crops, k-means, revival).
    kmeans_init: residual k-means of the first batch's projections initialises the codebooks.
    kmeans_iters: Lloyd iterations per level for that init.
    log_every: steps between history entries (and progress-bar updates).
    revive_dead_codes_every: a code unused for this many consecutive steps is reset to a
      random current input of its level; 0 disables.
  """
  num_steps: int = 1000
  batch_size: int = 256
  learning_rate: float = 5e-4
  warmup_steps: int = 100
  final_learning_rate_fraction: float = 0.0
  weight_decay: float = 0.04
  clip_grad_norm: float = 3.0
  seed: int = 0
  kmeans_init: bool = True
  kmeans_iters: int = 20
  log_every: int = 50
  revive_dead_codes_every: int = 0


@flax.struct.dataclass
class DinoRqTrainState:
  """A TrainState-like pytree (no static fields, so Orbax saves it as is).

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params: student params; codebooks at params["quantizer"]["codebooks"] [L, K, code_dim].
    teacher_params: the EMA teacher, same tree.
    opt_state: the optax state of the student.
    center: [out_dim] EMA of the teacher's mean output.
    ema: vq.EmaState with cluster_size [L, K], embed_sum [L, K, code_dim] (with use_ema).
    unused_steps: [L, K] int32 consecutive steps each code went unused.
  """
  step: jax.Array
  params: Any
  teacher_params: Any
  opt_state: Any
  center: jax.Array
  ema: vq.EmaState
  unused_steps: jax.Array


# ---------------------------------------------------------------- schedules

def teacher_temperature(step, config: DinoRqConfig):
  """Linear warmup from warmup_teacher_temp to teacher_temp over warmup_teacher_temp_steps."""
  if config.warmup_teacher_temp_steps <= 0:
    return jnp.asarray(config.teacher_temp, jnp.float32)
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / config.warmup_teacher_temp_steps, 0, 1)
  return config.warmup_teacher_temp + progress * (config.teacher_temp -
                                                  config.warmup_teacher_temp)


class DinoRq(nn.Module):
  """ViT -> projection -> residual quantizer (straight-through) -> DINO head."""
  config: DinoRqConfig

  def setup(self):
    cfg = self.config
    self.backbone = vit.Vit(cfg.vit)
    self.projection = nn.Dense(
        cfg.code_dim, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))
    self.quantizer = vq.ResidualQuantizer(cfg.num_levels, cfg.codebook_size, cfg.code_dim,
                                          cfg.beta, cfg.use_ema)
    self.head = DinoHead(cfg.head_hidden, cfg.head_bottleneck, cfg.out_dim,
                         cfg.head_batch_norm)

  def __call__(self, images: jax.Array, deterministic: bool = True) -> dict:
    """Runs one batch of views.

    Args:
      images: normalised float [B, s, s, 3] (any side that is a multiple of patch_size).
      deterministic: False applies ViT dropout (needs a "dropout" rng).

    Returns:
      dict with z [B, code_dim], quantized [B, code_dim] (straight-through), codes
      [B, L] int32, residuals [B, L, code_dim], logits [B, out_dim], and scalar
      losses codebook, commitment.
    """
    z = self.embed(images, deterministic)
    quant = self.quantizer(z)
    return {"z": z, "quantized": quant["quantized"], "codes": quant["codes"],
            "residuals": quant["residuals"],
            "logits": self.head(quant["quantized"] if self.config.quantize_before_head else z),
            "codebook": quant["codebook"], "commitment": quant["commitment"]}

  def embed(self, images: jax.Array, deterministic: bool = True) -> jax.Array:
    """images: normalised float [B, s, s, 3] -> pre-quantization embeddings z [B, code_dim]."""
    z = self.projection(self.backbone(images, deterministic))
    if self.config.normalize_embeddings:
      z = z * jax.lax.rsqrt(jnp.mean(z * z, axis=-1, keepdims=True) + 1e-6)
    return z

  def quantize(self, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """images -> (z [B, code_dim], codes [B, L] int32, residuals [B, L, code_dim])."""
    z = self.embed(images)
    quant = self.quantizer(z)
    return z, quant["codes"], quant["residuals"]


def logical_param_axes(config: DinoRqConfig):
  """The params' logical axis names (a tree of PartitionSpec), without allocating them."""
  side = config.crops.global_size
  abstract = jax.eval_shape(lambda: DinoRq(config).init(
      jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3))))
  return nn.get_partition_spec(abstract)["params"]


# ---------------------------------------------------------------- training

def _decay_mask(params):
  """AdamW decays matrices only (not biases, norms or codebooks), as DINO."""
  def keep(path, leaf):
    names = [getattr(p, "key", "") for p in path]
    return leaf.ndim >= 2 and "codebooks" not in names
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(train_config: DinoRqTrainConfig) -> optax.GradientTransformation:
  """Clip, then AdamW (warmup + cosine); no weight decay on vectors or codebooks."""
  return training.make_optimizer(train_config, _decay_mask)


def _views_first(x: jax.Array) -> jax.Array:
  """[B, V, s, s, 3] -> [V * B, s, s, 3], view-major."""
  return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])


def make_dino_rq_train_step(config: DinoRqConfig, optimizer: optax.GradientTransformation,
                            num_steps: int, *, revive_dead_codes_every: int = 0) -> Callable:
  """Returns `step(state, images, rng) -> (state, metrics)` to wrap in `jax.jit`.

  images: [B, S, S, 3] uint8 items of the step; rng: the step's key (crops, dropout,
  revival). The teacher momentum follows `teacher_momentum(step, num_steps, ...)`.
  """
  model = DinoRq(config)
  num_local = config.crops.num_local

  def step(state: DinoRqTrainState, images: jax.Array, rng: jax.Array):
    crop_rng, dropout_rng, revive_rng = jax.random.split(rng, 3)
    global_views, local_views = augment.multi_crop(crop_rng, images, config.crops)
    batch = images.shape[0]
    global_views = _views_first(global_views)                      # [2B, g, g, 3]
    teacher = model.apply({"params": state.teacher_params}, global_views)
    teacher_logits = jax.lax.stop_gradient(teacher["logits"]).reshape(2, batch, -1)
    temp = teacher_temperature(state.step, config)

    def loss_fn(params):
      rngs = {"dropout": dropout_rng}
      out = model.apply({"params": params}, global_views, deterministic=False, rngs=rngs)
      logits = [out["logits"].reshape(2, batch, -1)]
      commitment = out["commitment"] * 2
      if num_local:
        local = model.apply({"params": params}, _views_first(local_views),
                            deterministic=False, rngs=rngs)
        logits.append(local["logits"].reshape(num_local, batch, -1))
        commitment = commitment + local["commitment"] * num_local
      commitment = commitment / (2 + num_local)
      codebook = jnp.zeros(()) if config.use_ema else out["codebook"]
      distill = dino_loss(jnp.concatenate(logits), teacher_logits, state.center,
                          config.student_temp, temp)
      total = distill + config.quantization_weight * (codebook + config.beta * commitment)
      return total, {"loss": total, "dino": distill, "codebook": out["codebook"],
                     "commitment": commitment, "codes": out["codes"],
                     "residuals": out["residuals"]}

    grads, aux = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    codes, residuals = aux.pop("codes"), aux.pop("residuals")
    codebooks, ema = params["quantizer"]["codebooks"], state.ema
    if config.use_ema:
      update = functools.partial(vq.ema_update, decay=config.ema_decay,
                                 epsilon=config.ema_epsilon)
      ema, codebooks = jax.vmap(update, in_axes=(0, 1, 1))(ema, residuals, codes)
    unused = jax.vmap(vq.update_unused_steps, in_axes=(0, 1))(state.unused_steps, codes)
    if revive_dead_codes_every > 0:
      keys = jax.random.split(revive_rng, config.num_levels)
      codebooks, revived = jax.vmap(vq.revive_dead_codes, in_axes=(0, 0, 1, 0, None))(
          codebooks, unused, residuals, keys, revive_dead_codes_every)
      unused = jnp.where(revived, 0, unused)
      ema = vq.EmaState(jnp.where(revived, 1.0, ema.cluster_size),
                        jnp.where(revived[..., None], codebooks, ema.embed_sum))
    params = training.with_codebooks(params, codebooks)
    momentum = teacher_momentum(state.step, num_steps, config.teacher_momentum)
    teacher_params = ema_update(state.teacher_params, params, momentum)
    probs = jax.nn.softmax((teacher_logits - state.center) / temp, axis=-1)
    mean_probs = jnp.mean(probs.reshape(-1, probs.shape[-1]), axis=0)
    new_state = state.replace(
        step=state.step + 1, params=params, teacher_params=teacher_params,
        opt_state=opt_state, center=update_center(state.center, teacher_logits,
                                                  config.center_momentum),
        ema=ema, unused_steps=unused)
    metrics = {**aux, **vq.code_usage(codes, config.codebook_size),
               "teacher_temp": temp, "teacher_momentum": momentum,
               # Collapse monitors: ~0 for one-hot targets, log(out_dim) for uniform ones.
               "teacher_entropy": -jnp.mean(jnp.sum(probs * jnp.log(probs + 1e-12), -1)),
               "teacher_batch_entropy": -jnp.sum(mean_probs * jnp.log(mean_probs + 1e-12))}
    return new_state, metrics

  return step


def check_images(images, config: Optional[DinoRqConfig] = None, *,
                 source: str = "images") -> np.ndarray:
  """Validates item images on the host; returns them as uint8 [n, S, S, 3].

  Raises:
    DataError: not [n, S, S, 3], not uint8, or fewer items than codebook_size.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2] or \
      images.shape[0] == 0:
    raise DataError(f"expected square RGB images [num_items, S, S, 3], got shape "
                    f"{images.shape}.", path=source,
                    fix="pass one image per item (drop the padding row 0 of "
                        "ItemTable.images).")
  if images.dtype != np.uint8:
    raise DataError(f"expected uint8 images, got dtype {images.dtype}.", path=source,
                    fix="convert to uint8 in [0, 255].")
  if config is not None and config.codebook_size > images.shape[0]:
    raise DataError(f"codebook_size={config.codebook_size} is larger than the number of "
                    f"items ({images.shape[0]}).", path="DinoRqConfig.codebook_size",
                    fix=f"set DinoRqConfig.codebook_size <= {images.shape[0]}.")
  return images


def init_dino_rq_state(images, config: DinoRqConfig,
                       train_config: DinoRqTrainConfig) -> DinoRqTrainState:
  """The state at step 0 (also the restore target; wrap in jax.eval_shape to get shapes).

  The teacher starts as a copy of the student; with kmeans_init, both codebooks are the
  residual k-means of the first batch's whole-image projections. The centre starts at the
  mean teacher output on those images, not at 0 (our choice: a random ViT's CLS output
  barely depends on the image, so with a zero centre the first steps' targets are one
  common prototype and the student collapses onto it before the centre catches up).
  """
  images = check_images(images, config)
  init = _make_init_fn(config, _init_fields(train_config), len(images))
  return init(jax.random.PRNGKey(train_config.seed), jnp.asarray(images))


def _init_fields(train_config):
  """Only the fields the step-0 state depends on (one compiled init serves the rest)."""
  return DinoRqTrainConfig(batch_size=train_config.batch_size,
                           kmeans_init=train_config.kmeans_init,
                           kmeans_iters=train_config.kmeans_iters if train_config.kmeans_init
                           else 0, clip_grad_norm=float(train_config.clip_grad_norm > 0))


@functools.lru_cache(maxsize=8)
def _make_init_fn(config, train_config, num_items):
  """A jitted `init(key, images uint8 [n, S, S, 3]) -> state`."""
  model, optimizer = DinoRq(config), make_optimizer(train_config)
  num_levels, num_codes = config.num_levels, config.codebook_size
  side = config.crops.global_size

  def init(key, images):
    variables = model.init(jax.random.fold_in(key, _INIT), jnp.zeros((1, side, side, 3)))
    params = nn.meta.unbox(variables)["params"]
    size = min(num_items, max(train_config.batch_size, num_codes))
    idx = training.batch_indices(jax.random.fold_in(key, _DATA), 0, num_items, size)
    views = augment.full_view(images[idx], side)
    if train_config.kmeans_init:
      z = model.apply({"params": params}, views, method=DinoRq.embed)
      fitted = rqkmeans.residual_kmeans(z, num_levels, num_codes, train_config.kmeans_iters,
                                        jax.random.fold_in(key, _KMEANS), check_unique=False)
      params = training.with_codebooks(params, fitted.codebooks)
    codebooks = params["quantizer"]["codebooks"]
    center = jnp.mean(model.apply({"params": params}, views)["logits"], axis=0)
    return DinoRqTrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        teacher_params=jax.tree_util.tree_map(jnp.array, params),
        opt_state=optimizer.init(params), center=center,
        ema=vq.ema_init(codebooks), unused_steps=jnp.zeros(codebooks.shape[:2], jnp.int32))

  return jax.jit(init)


def compiled_train_fns(config: DinoRqConfig, train_config: DinoRqTrainConfig,
                       num_items: int) -> tuple[Callable, Callable]:
  """The jitted `step(state, images, rng)` and `batch_indices(data_key, step)` that
  `fit_dino_rq` runs (cached: fields a step does not depend on share one compile)."""
  step_fields = dataclasses.replace(training._step_fields(train_config), kmeans_init=False,
                                    kmeans_iters=0)
  return _compiled(config, step_fields, num_items)


@functools.lru_cache(maxsize=8)
def _compiled(config, train_config, num_items):
  step = make_dino_rq_train_step(config, make_optimizer(train_config), train_config.num_steps,
                                 revive_dead_codes_every=train_config.revive_dead_codes_every)
  batch_fn = functools.partial(training.batch_indices, num_items=num_items,
                               batch_size=train_config.batch_size)
  return jax.jit(step), jax.jit(batch_fn)


def fit_dino_rq(images, config: DinoRqConfig, train_config: DinoRqTrainConfig, *,
                start_state: Optional[DinoRqTrainState] = None,
                on_step: Optional[Callable] = None, progress: bool = True,
                until_step: Optional[int] = None,
                compute_codes: bool = True) -> tuple[DinoRqTrainState, training.FitHistory]:
  """Trains DINO-RQ; resumable, with batches and crops fixed by (seed, step).

  Args:
    images: [num_items, S, S, 3] uint8, one per item (no padding row).
    config: DinoRqConfig.
    train_config: DinoRqTrainConfig.
    start_state: resume from this state (e.g. restored from a checkpoint).
    on_step: called as on_step(step, state, metrics) after every step, step = steps done.
    progress: show a tqdm bar with the loss.
    until_step: stop after this many steps (the schedules still span num_steps).
    compute_codes: also return the (student's) codes of all items.

  Returns:
    (state, history): history.metrics is a list of {"step", "loss", "dino", ...} every
    log_every steps and at the end; history.tokens the TokenizerCodes of all items.
  """
  images = check_images(images, config)
  state = start_state if start_state is not None else init_dino_rq_state(
      images, config, train_config)
  step_fn, batch_fn = compiled_train_fns(config, train_config, len(images))
  key = jax.random.PRNGKey(train_config.seed)
  data_key, step_key = jax.random.fold_in(key, _DATA), jax.random.fold_in(key, _STEP)
  images_dev = jnp.asarray(images)
  start = int(state.step)
  stop = train_config.num_steps if until_step is None else min(until_step,
                                                               train_config.num_steps)
  state, history = training.run_steps(
      state, step_fn, lambda step: images_dev[batch_fn(data_key, step)], step_key, start, stop,
      train_config.log_every, on_step, progress, "dino-rq",
      postfix=lambda e: {"loss": f"{e['loss']:.4f}", "dino": f"{e['dino']:.3f}"})
  if compute_codes:
    history.tokens = dino_rq_tokens(state, images, config)
  return state, history


# ---------------------------------------------------------------- inference

@functools.lru_cache(maxsize=16)
def make_quantize_fn(config: DinoRqConfig):
  """A jitted `quantize(params, images uint8 [b, S, S, 3]) -> (z, codes, residuals)`.

  The whole image is resized to the global crop size; z [b, code_dim], codes [b, L] int32,
  residuals [b, L, code_dim].
  """
  model = DinoRq(config)

  def quantize(params, images):
    views = augment.full_view(images, config.crops.global_size)
    return model.apply({"params": params}, views, method=DinoRq.quantize)
  return jax.jit(quantize)


def _params_of(state_or_params, which: str):
  if which not in ("teacher", "student"):
    raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
  if isinstance(state_or_params, DinoRqTrainState):
    return state_or_params.teacher_params if which == "teacher" else state_or_params.params
  return state_or_params


def _run_quantize(state_or_params, images, config, batch_size, which):
  params = _params_of(state_or_params, which)
  images = check_images(images)
  fn = make_quantize_fn(config)
  size = min(batch_size, len(images))
  outs = []
  for start in range(0, len(images), size):
    chunk = images[start:start + size]
    pad = size - len(chunk)
    out = fn(params, jnp.asarray(np.pad(chunk, ((0, pad), (0, 0), (0, 0), (0, 0)))))
    outs.append([np.asarray(o)[:len(chunk)] for o in out])
  return [np.concatenate(parts) for parts in zip(*outs)]


def dino_rq_codes(state_or_params, images, config: DinoRqConfig, batch_size: int = 256, *,
                  which: str = "student") -> np.ndarray:
  """Codes [N, num_levels] int32 of each item's whole image.

  Args:
    state_or_params: a DinoRqTrainState (its student, or its teacher with
      which="teacher") or a params tree of `DinoRq`.
    images: [N, S, S, 3] uint8.
    config: DinoRqConfig.
    batch_size: items per device call (the last chunk is padded: one compiled shape).
    which: "student" (default, see the module docstring) or "teacher"; ignored for a
      params tree.
  """
  return _run_quantize(state_or_params, images, config, batch_size, which)[1].astype(np.int32)


def dino_rq_embeddings(state_or_params, images, config: DinoRqConfig, batch_size: int = 256,
                       *, which: str = "student") -> np.ndarray:
  """Pre-quantization embeddings z [N, code_dim] float32 (the "extract, then quantize"
  baseline runs residual k-means on them); arguments as in `dino_rq_codes`."""
  return _run_quantize(state_or_params, images, config, batch_size, which)[0].astype(
      np.float32)


def dino_rq_tokens(state_or_params, images, config: DinoRqConfig, batch_size: int = 256, *,
                   which: str = "student") -> training.TokenizerCodes:
  """Codes and the last level's residuals / codebook, for `semantic_ids.assemble`."""
  params = _params_of(state_or_params, which)
  _, codes, residuals = _run_quantize(params, images, config, batch_size, which)
  codebooks = np.asarray(params["quantizer"]["codebooks"])
  return training.TokenizerCodes(codes=codes.astype(np.int32), last_residuals=residuals[:, -1],
                                 last_codebook=codebooks[-1], codebooks=codebooks)
