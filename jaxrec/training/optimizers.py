"""The package's one optimizer factory (optax only): `OptimizerConfig` -> `make_optimizer`.

Used by every fit: the generator and SASRec (TrainerConfig.optimizer), LightGCN
(LightGcnTrainConfig.optimizer) and the tokenizer fits (RQ-VAE, fused RQ-VAE, DINO-RQ, whose
train configs give their AdamW + warmup-cosine settings as an OptimizerConfig through
`quantizers.training.optimizer_config`). "rsqrt" is TIGER's / T5's schedule: constant for
`warmup_steps`, then inverse square root. Bottom layer: imports nothing of jaxrec.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax.numpy as jnp
import optax

NAMES = ("adafactor", "adamw")
SCHEDULES = ("rsqrt", "cosine", "constant")


class OptimizerError(ValueError):
  """A bad OptimizerConfig; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Which optimizer and schedule.

  Attributes:
    name: "adafactor" (T5 / TIGER; factored second moments, update clipping,
      parameter-scale steps) or "adamw".
    schedule: "rsqrt": lr for warmup_steps, then lr * sqrt(warmup_steps / step)
      (TIGER: lr 0.01, 10k steps); "cosine": linear warmup from 0 to lr, cosine
      decay to lr * end_learning_rate_fraction at total_steps; "constant".
    learning_rate: peak learning rate.
    warmup_steps: see schedule.
    total_steps: end of the cosine decay (required for "cosine").
    end_learning_rate_fraction: final lr of the cosine decay, as a fraction of lr.
    weight_decay: decoupled weight decay (adamw) / weight_decay_rate (adafactor).
    grad_clip: clip gradients to this global norm first; 0 disables.
    b1: AdamW first-moment decay.
    b2: AdamW second-moment decay.
  """
  name: str = "adafactor"
  schedule: str = "rsqrt"
  learning_rate: float = 0.01
  warmup_steps: int = 10_000
  total_steps: Optional[int] = None
  end_learning_rate_fraction: float = 0.0
  weight_decay: float = 0.0
  grad_clip: float = 0.0
  b1: float = 0.9
  b2: float = 0.999

  def __post_init__(self):
    if self.name not in NAMES:
      raise OptimizerError(f"OptimizerConfig.name = {self.name!r} is unknown. Fix: use one "
                           f"of {NAMES}.")
    if self.schedule not in SCHEDULES:
      raise OptimizerError(f"OptimizerConfig.schedule = {self.schedule!r} is unknown. Fix: "
                           f"use one of {SCHEDULES}.")
    if self.schedule == "cosine" and not self.total_steps:
      raise OptimizerError("OptimizerConfig.schedule = 'cosine' needs total_steps. Fix: "
                           "bind OptimizerConfig.total_steps (usually the trainer's num_steps).")
    if self.learning_rate <= 0 or self.warmup_steps < 0 or self.grad_clip < 0:
      raise OptimizerError(f"OptimizerConfig needs learning_rate > 0, warmup_steps >= 0 and "
                           f"grad_clip >= 0; got {self}.")


def rsqrt_schedule(learning_rate: float, warmup_steps: int) -> optax.Schedule:
  """lr for steps < warmup, then lr * sqrt(warmup / step): lr/2 at 4 * warmup."""
  warmup = float(max(int(warmup_steps), 1))

  def schedule(count):
    return learning_rate * jnp.sqrt(warmup / jnp.maximum(jnp.asarray(count, jnp.float32), warmup))
  return schedule


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
  """The learning rate as a function of the 0-based update count."""
  if config.schedule == "rsqrt":
    return rsqrt_schedule(config.learning_rate, config.warmup_steps)
  if config.schedule == "cosine":
    warmup = min(config.warmup_steps, config.total_steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
        decay_steps=config.total_steps,
        end_value=config.learning_rate * config.end_learning_rate_fraction)
  return optax.constant_schedule(config.learning_rate)


def make_optimizer(config: OptimizerConfig, decay_mask: Optional[Callable] = None
                   ) -> optax.GradientTransformation:
  """The optax transformation (gradient clipping first when grad_clip > 0).

  decay_mask: params -> a tree of bools, the leaves AdamW decays (default all; DINO-RQ
  leaves out vectors and codebooks).
  """
  schedule = make_schedule(config)
  if config.name == "adafactor":
    tx = optax.adafactor(learning_rate=schedule,
                         weight_decay_rate=config.weight_decay or None)
  else:
    tx = optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                     mask=decay_mask)
  if config.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
  return tx
