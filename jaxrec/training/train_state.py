"""The generator train state: a plain pytree (step, params, opt_state) that Orbax saves as is."""

from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """No static fields (the optimizer lives outside), so Orbax round-trips it.

  Attributes:
    step: int32 scalar, optimizer updates taken.
    params: the model parameters (possibly boxed with logical axes before
      `nn.meta.unbox`).
    opt_state: the optax state of `params`.
  """
  step: jax.Array
  params: Any
  opt_state: Any


def create_train_state(model: Any, optimizer: optax.GradientTransformation, rng: jax.Array,
                       input_shapes: Mapping[str, tuple]) -> TrainState:
  """Initial state from `model.get_initial_variables(rng, input_shapes)["params"]`.

  Logical boxes on the params are kept (and propagate into the optimizer
  moments), so `partitioning.sharded_init` can read the partition specs.
  """
  variables = model.get_initial_variables(rng, dict(input_shapes))
  params = variables["params"]
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def apply_gradients(state: TrainState, grads: Any,
                    optimizer: optax.GradientTransformation) -> TrainState:
  """One optimizer update; step + 1."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state)
