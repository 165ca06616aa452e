"""DINO's self-distillation pieces (Caron et al., 2021): the projection head, the multi-view
loss, teacher centring, the EMA teacher update and its momentum schedule. Pure functions
and one Flax module; `dino_rq.py` assembles them with a ViT and a residual quantizer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_INIT_HEAD = nn.initializers.truncated_normal(0.02)


def ema_update(teacher, student, momentum):
  """Teacher <- momentum * teacher + (1 - momentum) * student, leaf by leaf."""
  return jax.tree_util.tree_map(lambda t, s: momentum * t + (1.0 - momentum) * s,
                                teacher, student)


def update_center(center: jax.Array, teacher_out: jax.Array, momentum: float) -> jax.Array:
  """center [K] <- momentum * center + (1 - momentum) * mean of teacher_out [..., K]."""
  batch_mean = jnp.mean(teacher_out.reshape(-1, teacher_out.shape[-1]), axis=0)
  return momentum * center + (1.0 - momentum) * batch_mean


def dino_loss(student_logits: jax.Array, teacher_logits: jax.Array, center: jax.Array,
              student_temp: float, teacher_temp) -> jax.Array:
  """DINO's multi-view cross-entropy.

  Args:
    student_logits: [V_s, B, K]; view v < V_t is the same crop as teacher view v.
    teacher_logits: [V_t, B, K] (no gradient flows into them).
    center: [K].
    student_temp: student temperature.
    teacher_temp: teacher temperature (float or scalar array).

  Returns:
    The mean over the pairs (t, v), v != t, of the batch-mean
    -sum_k softmax((teacher_t - center) / teacher_temp)_k log softmax(student_v / student_temp)_k.
  """
  num_teacher, num_student = teacher_logits.shape[0], student_logits.shape[0]
  targets = jax.nn.softmax(
      jax.lax.stop_gradient(teacher_logits - center) / teacher_temp, axis=-1)
  log_probs = jax.nn.log_softmax(student_logits / student_temp, axis=-1)
  cross = -jnp.einsum("tbk,vbk->tv", targets, log_probs) / student_logits.shape[1]
  mask = 1.0 - jnp.eye(num_teacher, num_student)
  return jnp.sum(cross * mask) / jnp.sum(mask)


def teacher_momentum(step, total: int, base: float):
  """Cosine schedule from `base` at step 0 to 1 at step `total`."""
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total, 1), 0.0, 1.0)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def batch_standardize(x: jax.Array, epsilon: float = 1e-5) -> jax.Array:
  """x: [B, d] -> each column minus its batch mean, over its batch standard deviation."""
  mean = jnp.mean(x, axis=0, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=0, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + epsilon)


class DinoHead(nn.Module):
  """DINO's head: MLP (GELU) -> L2-normalised bottleneck -> weight-normalised prototypes.

  With batch_norm, each hidden layer is standardised over the batch before its GELU
  (DINO's `use_bn`; batch statistics only, no running averages: the head is not used to
  read codes).
  """
  hidden: int
  bottleneck: int
  out_dim: int
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, d] -> logits [B, out_dim] (cosine similarities to the prototypes)."""
    def dense(width, axes, name):
      return nn.Dense(width, name=name,
                      kernel_init=nn.with_logical_partitioning(_INIT_HEAD, axes),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))

    def norm(h, axis_name, name):
      if not self.batch_norm:
        return h
      scale = self.param(f"{name}_scale", nn.with_logical_partitioning(
          nn.initializers.ones, (axis_name,)), (h.shape[-1],))
      bias = self.param(f"{name}_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, (axis_name,)), (h.shape[-1],))
      return batch_standardize(h) * scale + bias

    x = nn.gelu(norm(dense(self.hidden, ("embed", "mlp"), "dense_0")(x), "mlp", "norm_0"),
                approximate=False)
    x = nn.gelu(norm(dense(self.hidden, ("mlp", "embed"), "dense_1")(x), "embed", "norm_1"),
                approximate=False)
    x = dense(self.bottleneck, ("embed", None), "bottleneck")(x)
    x = x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
    prototypes = self.param("prototypes", nn.with_logical_partitioning(
        _INIT_HEAD, (None, "vocab")), (self.bottleneck, self.out_dim))
    prototypes = prototypes * jax.lax.rsqrt(
        jnp.sum(prototypes * prototypes, axis=0, keepdims=True) + 1e-12)
    return x @ prototypes


