"""A small Vision Transformer trained from scratch (DINO's ViT, pre-LN), returning the CLS output.

Inputs of another size than `image_size` (DINO's local crops) use the learned position
embeddings resized to their patch grid.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

_INIT = nn.initializers.truncated_normal(0.02)


@dataclasses.dataclass(frozen=True)
class VitConfig:
  """ViT shape (defaults: ViT-Tiny width at 4 layers, for 32 px images).

  Attributes:
    patch_size: side of the square patches (conv stride).
    hidden: model width.
    num_layers: transformer blocks.
    num_heads: attention heads (hidden must be a multiple).
    mlp_dim: feed-forward width.
    image_size: native input side; the position table has (image_size // patch_size)^2
      patch rows plus one CLS row.
    dropout: dropout rate after attention and MLP.
    pos_interpolation: jax.image.resize method for other grids ("bicubic" as DINO).
  """
  patch_size: int = 4
  hidden: int = 192
  num_layers: int = 4
  num_heads: int = 3
  mlp_dim: int = 768
  image_size: int = 32
  dropout: float = 0.0
  pos_interpolation: str = "bicubic"

  def __post_init__(self):
    if self.hidden % self.num_heads:
      raise ValueError(f"VitConfig.hidden={self.hidden} is not a multiple of "
                       f"num_heads={self.num_heads}.")
    if self.image_size % self.patch_size:
      raise ValueError(f"VitConfig.image_size={self.image_size} is not a multiple of "
                       f"patch_size={self.patch_size}.")

  @property
  def grid(self) -> int:
    """Patches per side at the native size."""
    return self.image_size // self.patch_size


def _dense(features, axes, name):
  return nn.Dense(features, name=name, kernel_init=nn.with_logical_partitioning(_INIT, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


def _layer_norm(name):
  return nn.LayerNorm(epsilon=1e-6, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def interpolate_pos_embed(pos: jax.Array, grid: int, method: str = "bicubic") -> jax.Array:
  """Resizes the patch rows of a position table to another grid.

  Args:
    pos: [1 + G * G, d] (row 0: CLS).
    grid: target patches per side g.
    method: jax.image.resize method.

  Returns:
    [1 + g * g, d]; `pos` itself when g == G.
  """
  native = int(round((pos.shape[0] - 1) ** 0.5))
  if grid == native:
    return pos
  patches = pos[1:].reshape(native, native, pos.shape[-1])
  patches = jax.image.resize(patches, (grid, grid, pos.shape[-1]), method, antialias=False)
  return jnp.concatenate([pos[:1], patches.reshape(grid * grid, pos.shape[-1])], axis=0)


class Attention(nn.Module):
  """Multi-head self-attention over [B, T, d]."""
  num_heads: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """x: [B, T, d] -> [B, T, d]."""
    d = x.shape[-1]
    head_dim = d // self.num_heads

    def project(name):
      return nn.DenseGeneral(
          (self.num_heads, head_dim), name=name,
          kernel_init=nn.with_logical_partitioning(_INIT, ("embed", "heads", "kv")),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")))(x)

    q, k, v = project("query"), project("key"), project("value")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(x.dtype)
    weights = nn.Dropout(self.dropout)(jax.nn.softmax(logits, axis=-1),
                                       deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return nn.DenseGeneral(
        d, axis=(-2, -1), name="out",
        kernel_init=nn.with_logical_partitioning(_INIT, ("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(out)


class Block(nn.Module):
  """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""
  config: VitConfig

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """x: [B, T, d] -> [B, T, d]."""
    cfg = self.config
    drop = nn.Dropout(cfg.dropout)
    h = Attention(cfg.num_heads, cfg.dropout, name="attention")(_layer_norm("ln_attention")(x),
                                                                deterministic)
    x = x + drop(h, deterministic=deterministic)
    h = _dense(cfg.mlp_dim, ("embed", "mlp"), "mlp_in")(_layer_norm("ln_mlp")(x))
    h = _dense(cfg.hidden, ("mlp", "embed"), "mlp_out")(nn.gelu(h, approximate=False))
    return x + drop(h, deterministic=deterministic)


class Vit(nn.Module):
  """Patch embedding (strided conv) + CLS token + position embeddings + pre-LN blocks."""
  config: VitConfig

  @nn.compact
  def __call__(self, images: jax.Array, deterministic: bool = True) -> jax.Array:
    """images: float [B, H, W, 3] (H = W, a multiple of patch_size) -> CLS output [B, hidden].

    Any side is accepted: the position embeddings are resized to its patch grid.
    """
    cfg = self.config
    if images.shape[1] != images.shape[2] or images.shape[1] % cfg.patch_size:
      raise ValueError(f"expected square images with a side divisible by "
                       f"patch_size={cfg.patch_size}, got {images.shape[1:3]}.")
    x = nn.Conv(cfg.hidden, (cfg.patch_size, cfg.patch_size),
                strides=(cfg.patch_size, cfg.patch_size), padding="VALID", name="patch_embed",
                kernel_init=nn.with_logical_partitioning(_INIT, (None, None, None, "embed")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(
                    images)
    batch, grid = x.shape[0], x.shape[1]
    x = x.reshape(batch, grid * grid, cfg.hidden)
    cls = self.param("cls", nn.with_logical_partitioning(_INIT, (None, "embed")),
                     (1, cfg.hidden))
    pos = self.param("pos_embed", nn.with_logical_partitioning(_INIT, (None, "embed")),
                     (1 + cfg.grid * cfg.grid, cfg.hidden))
    x = jnp.concatenate([jnp.broadcast_to(cls[None], (batch, 1, cfg.hidden)), x], axis=1)
    x = x + interpolate_pos_embed(pos, grid, cfg.pos_interpolation)[None]
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    for i in range(cfg.num_layers):
      x = Block(cfg, name=f"block_{i}")(x, deterministic)
    return _layer_norm("ln_final")(x[:, 0])
