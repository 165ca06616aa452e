"""Multi-crop augmentation: shapes, determinism, known answers for flips and whole-image crops."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.encoders import augment

NO_JITTER = dict(brightness=0.0, contrast=0.0, saturation=0.0)
multi_crop = jax.jit(augment.multi_crop, static_argnums=2)


def images(n=4, size=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_shapes_dtype_and_range():
  config = augment.MultiCropConfig(global_size=16, local_size=8, num_local=3)
  g, l = multi_crop(jax.random.PRNGKey(0), images(), config)
  chex.assert_shape(g, (4, 2, 16, 16, 3))
  chex.assert_shape(l, (4, 3, 8, 8, 3))
  assert g.dtype == jnp.float32 and l.dtype == jnp.float32
  lo, hi = -augment.NORMALIZE_MEAN / augment.NORMALIZE_STD, 0.5 / augment.NORMALIZE_STD
  assert float(jnp.min(g)) >= lo - 1e-5 and float(jnp.max(g)) <= hi + 1e-5
  g0, l0 = multi_crop(jax.random.PRNGKey(0), images(),
                              augment.MultiCropConfig(global_size=8, local_size=4, num_local=0))
  chex.assert_shape(g0, (4, 2, 8, 8, 3))
  chex.assert_shape(l0, (4, 0, 4, 4, 3))


def test_deterministic_for_a_key():
  config = augment.MultiCropConfig(global_size=8, local_size=4, num_local=2)
  a = multi_crop(jax.random.PRNGKey(3), images(), config)
  b = multi_crop(jax.random.PRNGKey(3), images(), config)
  c = multi_crop(jax.random.PRNGKey(4), images(), config)
  chex.assert_trees_all_equal(a, b)
  assert not np.allclose(a[0], c[0])
  # The two global views of an item differ (independent crops).
  assert not np.allclose(a[0][:, 0], a[0][:, 1])


def test_whole_image_crop_without_jitter_is_the_resized_image():
  config = augment.MultiCropConfig(global_size=8, local_size=4, num_local=1,
                                   global_scale=(1.0, 1.0), flip=False, **NO_JITTER)
  x = images(n=3)
  g, _ = multi_crop(jax.random.PRNGKey(0), x, config)
  resized = jax.image.resize(jnp.asarray(x, jnp.float32), (3, 8, 8, 3), "linear",
                             antialias=True)
  expected = augment.normalize(resized)
  np.testing.assert_allclose(g[:, 0], expected, atol=1e-4)
  np.testing.assert_allclose(g[:, 1], expected, atol=1e-4)
  np.testing.assert_allclose(augment.full_view(x, 8), expected, atol=1e-5)


def test_flip_only_gives_the_image_or_its_mirror():
  ramp = np.broadcast_to(np.arange(16, dtype=np.uint8)[None, :, None] * 15, (16, 16, 3))
  x = np.stack([ramp] * 8)
  config = augment.MultiCropConfig(global_size=16, local_size=16, num_local=2,
                                   global_scale=(1.0, 1.0), local_scale=(1.0, 1.0),
                                   flip=True, **NO_JITTER)
  g, l = multi_crop(jax.random.PRNGKey(1), x, config)
  views = np.concatenate([np.asarray(g), np.asarray(l)], axis=1).reshape(-1, 16, 16, 3)
  plain = np.asarray(augment.normalize(ramp))
  mirror = plain[:, ::-1]
  is_plain = np.all(np.isclose(views, plain, atol=1e-4), axis=(1, 2, 3))
  is_mirror = np.all(np.isclose(views, mirror, atol=1e-4), axis=(1, 2, 3))
  assert np.all(is_plain | is_mirror)
  assert is_plain.any() and is_mirror.any()


def test_crop_box_covers_the_sampled_area_inside_the_image():
  for seed in range(20):
    y0, x0, h, w = np.asarray(augment.crop_box(jax.random.PRNGKey(seed), 32, 32, (0.05, 1.0),
                                               (3 / 4, 4 / 3)))
    assert 0 <= y0 and 0 <= x0 and y0 + h <= 32 + 1e-4 and x0 + w <= 32 + 1e-4
    assert 3 / 4 - 1e-4 <= w / h <= 4 / 3 + 1e-4
    assert 0.05 * 32 * 32 - 1e-2 <= h * w <= 32 * 32 + 1e-2
