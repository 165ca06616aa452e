"""Learning-rate schedules (known values) and the optimizers built from OptimizerConfig."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.training import optimizers


def test_rsqrt_schedule_known_values():
  config = optimizers.OptimizerConfig(schedule="rsqrt", learning_rate=0.01, warmup_steps=10_000)
  lr = optimizers.make_schedule(config)
  np.testing.assert_allclose(float(lr(0)), 0.01, rtol=1e-6)
  np.testing.assert_allclose(float(lr(9_999)), 0.01, rtol=1e-6)
  np.testing.assert_allclose(float(lr(10_000)), 0.01, rtol=1e-6)
  np.testing.assert_allclose(float(lr(40_000)), 0.005, rtol=1e-6)
  np.testing.assert_allclose(float(lr(160_000)), 0.0025, rtol=1e-6)


def test_cosine_schedule_known_values():
  config = optimizers.OptimizerConfig(name="adamw", schedule="cosine", learning_rate=1e-3,
                                      warmup_steps=10, total_steps=110,
                                      end_learning_rate_fraction=0.1)
  lr = optimizers.make_schedule(config)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 60, 110)],
                             [0.0, 5e-4, 1e-3, 0.55e-3, 1e-4], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", ["adafactor", "adamw"])
def test_optimizers_step_toward_the_minimum(name):
  config = optimizers.OptimizerConfig(name=name, schedule="constant", learning_rate=0.1,
                                      grad_clip=1.0, weight_decay=1e-4)
  tx = optimizers.make_optimizer(config)
  params = {"w": jnp.full((4, 3), 2.0), "b": jnp.ones(3)}
  loss = lambda p: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))  # noqa: E731
  state = tx.init(params)
  for _ in range(5):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 4 * 3 * 4 + 3


def test_adamw_first_update_is_minus_lr_times_sign():
  tx = optimizers.make_optimizer(optimizers.OptimizerConfig(
      name="adamw", schedule="constant", learning_rate=0.01))
  params = {"w": jnp.array([1.0, -2.0])}
  updates, _ = tx.update({"w": jnp.array([0.5, -3.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.01, 0.01], rtol=1e-4)


def test_bad_configs_are_named():
  with pytest.raises(optimizers.OptimizerError, match="OptimizerConfig.name"):
    optimizers.OptimizerConfig(name="sgd")
  with pytest.raises(optimizers.OptimizerError, match="total_steps"):
    optimizers.OptimizerConfig(schedule="cosine")
