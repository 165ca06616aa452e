"""DINO-RQ: known answers for the EMA / centre / loss / schedule pieces, training properties
(loss falls against a frozen teacher, exact resume, codes in range) and a synthetic fit."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data import synthetic
from jaxrec.data.errors import DataError
from jaxrec.encoders import augment, vit
from jaxrec.quantizers import agreement, dino_rq

TINY = dino_rq.DinoRqConfig(
    vit=vit.VitConfig(patch_size=4, hidden=16, num_layers=1, num_heads=2, mlp_dim=32,
                      image_size=16),
    crops=augment.MultiCropConfig(global_size=16, local_size=8, num_local=2),
    num_levels=2, codebook_size=8, code_dim=8, head_hidden=32, head_bottleneck=8, out_dim=32)
FAST = dino_rq.DinoRqTrainConfig(num_steps=6, batch_size=16, learning_rate=1e-3,
                                 warmup_steps=0, log_every=3)


@pytest.fixture(scope="module")
def images():
  table = synthetic.generate_catalog(synthetic.SyntheticConfig.tiny()).item_table
  return table.images[1:]


# ---------------------------------------------------------------- known answers

def test_ema_update_known_answer():
  teacher = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(3.0)}}
  student = {"a": jnp.array([3.0, 4.0]), "b": {"c": jnp.array(5.0)}}
  out = dino_rq.ema_update(teacher, student, 0.75)
  np.testing.assert_allclose(out["a"], [1.5, 2.5])
  np.testing.assert_allclose(out["b"]["c"], 3.5)
  chex.assert_trees_all_equal(dino_rq.ema_update(teacher, student, 1.0), teacher)


def test_update_center_known_answer():
  center = jnp.array([1.0, 0.0])
  out = dino_rq.update_center(center, jnp.array([[1.0, 2.0], [3.0, 4.0]]), 0.9)
  np.testing.assert_allclose(out, [0.9 + 0.1 * 2.0, 0.1 * 3.0], rtol=1e-6)
  # [views, batch, K] averages over views and items alike.
  views = jnp.array([[[1.0, 2.0]], [[3.0, 4.0]]])
  np.testing.assert_allclose(dino_rq.update_center(center, views, 0.9), out, rtol=1e-6)


def test_dino_loss_matches_a_hand_computation():
  rng = np.random.default_rng(0)
  student = rng.normal(size=(3, 2, 3))  # 3 views (2 global + 1 local), 2 items, 3 prototypes
  teacher = rng.normal(size=(2, 2, 3))
  center = np.array([0.1, -0.2, 0.3])
  s_temp, t_temp = 0.1, 0.04

  def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()

  terms = []
  for t in range(2):
    for v in range(3):
      if v == t:
        continue
      per_item = []
      for b in range(2):
        p = softmax((teacher[t, b] - center) / t_temp)
        log_q = np.log(softmax(student[v, b] / s_temp))
        per_item.append(-(p * log_q).sum())
      terms.append(np.mean(per_item))
  expected = np.mean(terms)  # 4 pairs: (0,1), (0,2), (1,0), (1,2)
  got = dino_rq.dino_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(center),
                          s_temp, t_temp)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # No gradient reaches the teacher.
  grad = jax.grad(lambda t: dino_rq.dino_loss(jnp.asarray(student), t, jnp.asarray(center),
                                              s_temp, t_temp))(jnp.asarray(teacher))
  np.testing.assert_array_equal(grad, 0.0)


def test_teacher_momentum_and_temperature_schedules():
  assert float(dino_rq.teacher_momentum(0, 100, 0.996)) == pytest.approx(0.996)
  assert float(dino_rq.teacher_momentum(100, 100, 0.996)) == pytest.approx(1.0)
  assert float(dino_rq.teacher_momentum(50, 100, 0.996)) == pytest.approx(0.998)
  assert float(dino_rq.teacher_momentum(150, 100, 0.996)) == pytest.approx(1.0)
  config = dataclasses.replace(TINY, warmup_teacher_temp=0.04, teacher_temp=0.07,
                               warmup_teacher_temp_steps=10)
  assert float(dino_rq.teacher_temperature(0, config)) == pytest.approx(0.04)
  assert float(dino_rq.teacher_temperature(5, config)) == pytest.approx(0.055)
  assert float(dino_rq.teacher_temperature(20, config)) == pytest.approx(0.07)
  assert float(dino_rq.teacher_temperature(0, TINY)) == pytest.approx(TINY.teacher_temp)


# ---------------------------------------------------------------- training

def test_student_loss_falls_against_a_frozen_teacher(images):
  # Teacher and centre reset after every step, same batch and crops: the step is plain
  # distillation towards fixed targets.
  init = dino_rq.init_dino_rq_state(images, TINY, FAST)
  chex.assert_trees_all_equal(init.params, init.teacher_params)
  chex.assert_shape(init.center, (TINY.out_dim,))
  step, _ = dino_rq.compiled_train_fns(TINY, FAST, len(images))
  batch, rng = jnp.asarray(images[:FAST.batch_size]), jax.random.PRNGKey(0)
  state, losses = init, []
  for _ in range(FAST.num_steps - 1):
    state, metrics = step(state.replace(teacher_params=init.teacher_params,
                                        center=init.center), batch, rng)
    losses.append(float(metrics["dino"]))
  assert losses[-1] < 0.9 * losses[0], losses
  chex.assert_shape(metrics["used_fraction"], (TINY.num_levels,))
  assert int(state.step) == FAST.num_steps - 1


def test_fit_resumes_exactly_and_codes_are_in_range(images):
  state, history = dino_rq.fit_dino_rq(images, TINY, FAST, progress=False)
  assert [m["step"] for m in history.metrics] == [3, 6]
  assert np.isfinite(history.metrics[-1]["loss"])
  half, _ = dino_rq.fit_dino_rq(images, TINY, FAST, progress=False, until_step=3,
                                compute_codes=False)
  resumed, _ = dino_rq.fit_dino_rq(images, TINY, FAST, progress=False, start_state=half,
                                   compute_codes=False)
  chex.assert_trees_all_close(resumed.params, state.params, atol=1e-6)
  chex.assert_trees_all_close(resumed.teacher_params, state.teacher_params, atol=1e-6)

  codes = dino_rq.dino_rq_codes(state, images, TINY, batch_size=24)
  assert codes.dtype == np.int32 and codes.shape == (len(images), 2)
  assert codes.min() >= 0 and codes.max() < TINY.codebook_size
  np.testing.assert_array_equal(codes, history.tokens.codes)
  np.testing.assert_array_equal(codes, dino_rq.dino_rq_codes(state.params, images, TINY))
  teacher = dino_rq.dino_rq_codes(state, images, TINY, which="teacher")
  np.testing.assert_array_equal(teacher, dino_rq.dino_rq_codes(state.teacher_params, images,
                                                               TINY))
  z = dino_rq.dino_rq_embeddings(state, images, TINY)
  assert z.shape == (len(images), TINY.code_dim) and z.dtype == np.float32
  # Embeddings are RMS-normalised; the teacher's codes are their residual quantization.
  np.testing.assert_allclose(np.sqrt(np.mean(z * z, axis=-1)), 1.0, atol=1e-3)
  first = np.argmin(((z[:, None] - history.tokens.codebooks[0][None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(first, codes[:, 0])


def test_bad_images_raise_data_errors(images):
  with pytest.raises(DataError, match="uint8"):
    dino_rq.check_images(images.astype(np.float32))
  with pytest.raises(DataError, match="S, S, 3"):
    dino_rq.check_images(images[..., 0])
  with pytest.raises(DataError, match="codebook_size"):
    dino_rq.check_images(images[:4], TINY)
  with pytest.raises(ValueError, match="patch_size"):
    dataclasses.replace(TINY, crops=augment.MultiCropConfig(global_size=16, local_size=6))


def test_logical_axes():
  specs = dino_rq.logical_param_axes(TINY)
  assert tuple(specs["quantizer"]["codebooks"]) == (None, "codebook", "embed")
  assert tuple(specs["head"]["prototypes"]) == (None, "vocab")


@pytest.mark.slow
def test_synthetic_fit_codes_follow_the_rendered_attributes():
  table = synthetic.generate_catalog(synthetic.SyntheticConfig(
      num_items=300, num_users=20, image_size=16)).item_table
  config = dataclasses.replace(
      TINY, vit=vit.VitConfig(patch_size=4, hidden=32, num_layers=2, num_heads=2, mlp_dim=64,
                              image_size=16),
      code_dim=16, head_hidden=64, head_bottleneck=16, out_dim=64, teacher_momentum=0.99)
  train = dino_rq.DinoRqTrainConfig(num_steps=60, batch_size=64, learning_rate=1e-3,
                                    warmup_steps=10, log_every=20)
  _, history = dino_rq.fit_dino_rq(table.images[1:], config, train, progress=False)
  report = agreement.nmi_report(history.tokens.codes, table.attributes["color"][1:])
  assert report["nmi_first"] > 3 * report["shuffled_first_max"], report
  assert report["first_level_used"] > config.codebook_size // 2, report
  # No collapse: the teacher is sharp per item (low entropy) but spread over the batch.
  last = history.metrics[-1]
  assert last["teacher_batch_entropy"] - last["teacher_entropy"] > 0.5, last


@pytest.mark.slow
def test_ema_codebooks_and_dead_code_revival_run(images):
  config = dataclasses.replace(TINY, use_ema=True)
  train = dataclasses.replace(FAST, revive_dead_codes_every=1)
  state, history = dino_rq.fit_dino_rq(images, config, train, progress=False)
  assert np.isfinite(history.metrics[-1]["loss"])
  # Revival after every step of disuse: every code was used in the last batch or reset.
  assert int(np.max(state.unused_steps)) == 0
  codebooks = state.params["quantizer"]["codebooks"]
  assert not np.allclose(codebooks, dino_rq.init_dino_rq_state(images, config, train)
                         .params["quantizer"]["codebooks"])


def test_plain_dino_head_sees_the_unquantized_embedding(images):
  """quantize_before_head=False (the post-quantization baseline's backbone): the logits do
  not depend on the codebooks; with it on they do."""
  views = augment.full_view(jnp.asarray(images[:4]), 16)
  for before, depends in ((False, False), (True, True)):
    model = dino_rq.DinoRq(dataclasses.replace(TINY, quantize_before_head=before))
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), views))["params"]
    moved = jax.tree_util.tree_map(lambda x: x, params)
    moved["quantizer"]["codebooks"] = moved["quantizer"]["codebooks"] + 1.0
    a = model.apply({"params": params}, views)["logits"]
    b = model.apply({"params": moved}, views)["logits"]
    assert (not np.allclose(a, b)) == depends
