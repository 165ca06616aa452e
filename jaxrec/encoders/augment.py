"""DINO multi-crop augmentation in JAX: random-resized crops, flips and colour jitter.

Jittable and vmapped over items; the views are a deterministic function of the key.
Every view is normalised as (x / 255 - NORMALIZE_MEAN) / NORMALIZE_STD.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

NORMALIZE_MEAN = 0.5
NORMALIZE_STD = 0.25


@dataclasses.dataclass(frozen=True)
class MultiCropConfig:
  """The views of DINO's multi-crop (defaults: DINO's, without hue, blur, solarization).

  Attributes:
    global_size: side g of the 2 global views.
    local_size: side l of the local views.
    num_local: number of local views (0 = global views only).
    global_scale: range of the area fraction a global crop covers.
    local_scale: range of the area fraction a local crop covers.
    aspect_ratio: range of the crop's width / height (sampled log-uniformly, then
      narrowed to the ratios that fit the image at the sampled area, so an area
      fraction of 1 is always the whole image).
    flip: mirror each view horizontally with probability 1/2.
    brightness: brightness factor drawn from U[1 - b, 1 + b] (0 = off).
    contrast: contrast factor from U[1 - c, 1 + c] around the mean grey (0 = off).
    saturation: saturation factor from U[1 - s, 1 + s] around each pixel's grey.
    jitter_prob: probability that a view gets colour jitter (DINO: 0.8). Brightness,
      contrast and saturation are applied in that fixed order.
    grayscale_prob: probability that a view is turned grey (DINO: 0.2; 0 here because
      colour is what the synthetic catalog's attributes are made of).
  """
  global_size: int = 32
  local_size: int = 16
  num_local: int = 6
  global_scale: tuple = (0.4, 1.0)
  local_scale: tuple = (0.05, 0.4)
  aspect_ratio: tuple = (3 / 4, 4 / 3)
  flip: bool = True
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.2
  jitter_prob: float = 0.8
  grayscale_prob: float = 0.0

  def __post_init__(self):
    for name in ("global_scale", "local_scale", "aspect_ratio"):
      lo, hi = (float(v) for v in getattr(self, name))
      if not 0.0 < lo <= hi:
        raise ValueError(f"MultiCropConfig.{name} = {(lo, hi)} must satisfy 0 < lo <= hi.")
      object.__setattr__(self, name, (lo, hi))
    for name in ("global_scale", "local_scale"):
      if getattr(self, name)[1] > 1.0:
        raise ValueError(f"MultiCropConfig.{name} must lie within (0, 1].")
    if self.global_size < 1 or self.local_size < 1 or self.num_local < 0:
      raise ValueError("MultiCropConfig needs global_size, local_size >= 1, num_local >= 0.")


def normalize(images: jax.Array) -> jax.Array:
  """uint8 (or float in [0, 255]) [..., 3] -> float32 (x / 255 - 0.5) / 0.25."""
  return (jnp.asarray(images, jnp.float32) / 255.0 - NORMALIZE_MEAN) / NORMALIZE_STD


def full_view(images: jax.Array, size: int) -> jax.Array:
  """The whole image resized: uint8 [B, S, S, 3] -> normalised float32 [B, size, size, 3]."""
  x = jnp.asarray(images, jnp.float32)
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, 3), "linear", antialias=True)
  return normalize(x)


def crop_box(key: jax.Array, height: int, width: int, scale: tuple,
             ratio: tuple) -> jax.Array:
  """A random crop [y0, x0, h, w] (float32, in pixels) covering a fraction of the area.

  The area fraction a ~ U[scale]; log(w / h) is uniform on log(ratio) narrowed to
  [log a, -log a] (for a square image) so that the crop fits; the offset is uniform.
  """
  return _box(jax.random.uniform(key, (4,)), height, width, scale, ratio)


def _box(u: jax.Array, height: int, width: int, scale: tuple, ratio: tuple) -> jax.Array:
  """`crop_box` from 4 uniforms in [0, 1) (one RNG call per view keeps compiles short)."""
  area = scale[0] + u[0] * (scale[1] - scale[0])
  # w = sqrt(area * r) * W <= W and h = sqrt(area / r) * H <= H  <=>  area <= r <= 1 / area.
  log_lo = jnp.maximum(math.log(ratio[0]), jnp.log(area))
  log_hi = jnp.maximum(jnp.minimum(math.log(ratio[1]), -jnp.log(area)), log_lo)
  r = jnp.exp(log_lo + u[1] * (log_hi - log_lo))
  h = jnp.minimum(jnp.sqrt(area / r) * height, height)
  w = jnp.minimum(jnp.sqrt(area * r) * width, width)
  return jnp.stack([u[2] * (height - h), u[3] * (width - w), h, w])


def resized_crop(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
  """image: float [H, W, 3], box [y0, x0, h, w] -> [size, size, 3] (bilinear, antialiased)."""
  y0, x0, h, w = box[0], box[1], box[2], box[3]
  scale = jnp.stack([size / h, size / w])
  translation = jnp.stack([-y0 * size / h, -x0 * size / w])
  return jax.image.scale_and_translate(image, (size, size, 3), (0, 1), scale, translation,
                                       "linear", antialias=True)


def color_jitter(key: jax.Array, image: jax.Array, config: MultiCropConfig) -> jax.Array:
  """image: float [H, W, 3] in [0, 1] -> jittered, clipped to [0, 1]."""
  return _jitter(jax.random.uniform(key, (5,)), image, config)


def _jitter(u: jax.Array, image: jax.Array, config: MultiCropConfig) -> jax.Array:
  """`color_jitter` from 5 uniforms: apply, brightness, contrast, saturation, grey."""
  def factor(v, amount):
    return 1.0 - amount + 2.0 * amount * v

  def grey(x):
    return jnp.sum(x * jnp.array([0.299, 0.587, 0.114], x.dtype), axis=-1, keepdims=True)

  x = image
  if config.brightness > 0:
    x = jnp.clip(x * factor(u[1], config.brightness), 0.0, 1.0)
  if config.contrast > 0:
    mean = jnp.mean(grey(x))
    x = jnp.clip((x - mean) * factor(u[2], config.contrast) + mean, 0.0, 1.0)
  if config.saturation > 0:
    g = grey(x)
    x = jnp.clip((x - g) * factor(u[3], config.saturation) + g, 0.0, 1.0)
  x = jnp.where(u[0] < config.jitter_prob, x, image)
  if config.grayscale_prob > 0:
    x = jnp.where(u[4] < config.grayscale_prob, jnp.broadcast_to(grey(x), x.shape), x)
  return x


def random_view(key: jax.Array, image: jax.Array, size: int, scale: tuple,
                config: MultiCropConfig) -> jax.Array:
  """One augmented view: image uint8 [S, S, 3] -> normalised float32 [size, size, 3]."""
  return _view(jax.random.uniform(key, (_NUM_UNIFORMS,)), image, size, scale, config)


_NUM_UNIFORMS = 10  # per view: box 0-3, flip 4, jitter 5-9


def _view(u, image, size, scale, config):
  """`random_view` from its uniforms u [10]."""
  x = jnp.asarray(image, jnp.float32) / 255.0
  box = _box(u[:4], x.shape[0], x.shape[1], scale, config.aspect_ratio)
  x = jnp.clip(resized_crop(x, box, size), 0.0, 1.0)
  if config.flip:
    x = jnp.where(u[4] < 0.5, x[:, ::-1], x)
  x = _jitter(u[5:], x, config)
  return (x - NORMALIZE_MEAN) / NORMALIZE_STD


def multi_crop(key: jax.Array, images: jax.Array,
               config: MultiCropConfig) -> tuple[jax.Array, jax.Array]:
  """DINO's views of every image; a deterministic function of (key, images).

  Args:
    key: PRNG key.
    images: [B, S, S, 3] uint8.
    config: MultiCropConfig (static).

  Returns:
    globals: [B, 2, g, g, 3] float32; locals: [B, num_local, l, l, 3] float32.
  """
  # One RNG call for all views (threefry is slow to compile on CPU).
  u = jax.random.uniform(key, (images.shape[0], 2 + config.num_local, _NUM_UNIFORMS))

  def views(u_views, size, scale):
    def per_item(u_item, image):
      return jax.vmap(lambda uu: _view(uu, image, size, scale, config))(u_item)
    return jax.vmap(per_item)(u_views, images)

  g = views(u[:, :2], config.global_size, config.global_scale)
  if config.num_local == 0:
    return g, jnp.zeros((images.shape[0], 0, config.local_size, config.local_size, 3),
                        jnp.float32)
  return g, views(u[:, 2:], config.local_size, config.local_scale)
