"""RQ-VAE tokenizer (TIGER, with LETTER/CEMG regularizers): MLP encoder -> residual
quantizer (straight-through) -> MLP decoder, with its losses and code-usage statistics.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.quantizers import vq


@dataclasses.dataclass(frozen=True)
class RqVaeConfig:
  """RQ-VAE shape and loss weights (defaults: TIGER, 768->512->256->128->32, 3 x 256).

  Attributes:
    input_dim: width of the item embeddings.
    hidden_dims: encoder widths; the decoder mirrors them.
    latent_dim: width of the quantized latent (code vectors).
    num_levels: L codebooks.
    codebook_size: K codes per codebook.
    beta: commitment weight.
    dropout: dropout rate after each hidden layer.
    diversity_weight: CEMG's lambda_div. Our choice (the paper gives no formula): per
      level, log K minus the entropy of the batch-average soft assignment
      softmax(-||r - e_k||^2 / diversity_temperature), summed over levels; 0 when the batch
      spreads evenly over the codebook.
    diversity_temperature: temperature of that soft assignment.
    alignment_weight: LETTER's collaborative weight: in-batch InfoNCE between a linear
      projection of the quantized latent and the item's target vector (e.g. CF embedding),
      cosine similarities divided by alignment_temperature; the positive is the same item.
    alignment_temperature: InfoNCE temperature.
    use_ema: learn codebooks by EMA updates instead of the codebook loss.
    ema_decay: EMA decay.
    ema_epsilon: Laplace smoothing of EMA counts.
  """
  input_dim: int = 768
  hidden_dims: Sequence[int] = (512, 256, 128)
  latent_dim: int = 32
  num_levels: int = 3
  codebook_size: int = 256
  beta: float = 0.25
  dropout: float = 0.0
  diversity_weight: float = 0.0
  diversity_temperature: float = 1.0
  alignment_weight: float = 0.0
  alignment_temperature: float = 0.1
  use_ema: bool = False
  ema_decay: float = 0.99
  ema_epsilon: float = 1e-5

  def __post_init__(self):
    object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))


@flax.struct.dataclass
class RqVaeOutput:
  """What `RqVae.__call__` returns.

  Attributes:
    recon: [batch, input_dim] reconstruction.
    latent: [batch, latent_dim] encoder output z.
    quantized: [batch, latent_dim] straight-through quantized latent.
    codes: [batch, num_levels] int32.
    residuals: [batch, num_levels, latent_dim] inputs of each level (no gradient).
    losses: scalars recon, quantization, codebook, commitment, diversity, alignment, total.
    usage: used_fraction [num_levels], perplexity [num_levels] within the batch.
  """
  recon: jax.Array
  latent: jax.Array
  quantized: jax.Array
  codes: jax.Array
  residuals: jax.Array
  losses: dict
  usage: dict


class Mlp(nn.Module):
  """Dense layers with ReLU and dropout between them (none after the last)."""
  features: Sequence[int]
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """x: [batch, in] -> [batch, features[-1]]."""
    for i, width in enumerate(self.features):
      axes = ("embed", "mlp") if i % 2 == 0 else ("mlp", "embed")
      x = nn.Dense(width, name=f"dense_{i}",
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    return x


class AlignmentHead(nn.Module):
  """In-batch InfoNCE between projected quantized latents and target vectors."""
  temperature: float = 0.1

  @nn.compact
  def __call__(self, quantized: jax.Array, targets: jax.Array) -> jax.Array:
    """quantized: [batch, latent_dim], targets: [batch, t] -> scalar loss."""
    proj = nn.Dense(targets.shape[-1], name="proj", kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "mlp")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(quantized)
    return info_nce(proj, targets, self.temperature)


def info_nce(queries: jax.Array, keys: jax.Array, temperature: float) -> jax.Array:
  """Mean cross-entropy of cosine-similarity logits [batch, batch] with the diagonal positive."""
  def unit(v):
    return v * jax.lax.rsqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)
  logits = unit(queries) @ unit(keys).T / temperature
  return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))


def diversity_loss(distances: jax.Array, temperature: float) -> jax.Array:
  """Sum over levels of log K - H(mean_batch softmax(-distances / temperature)).

  Args:
    distances: [batch, L, K] squared distances of each level's input to its codes.
    temperature: soft-assignment temperature.
  """
  probs = jnp.mean(jax.nn.softmax(-distances / temperature, axis=-1), axis=0)  # [L, K]
  entropy = -jnp.sum(probs * jnp.log(probs + 1e-12), axis=-1)
  return jnp.sum(jnp.log(distances.shape[-1]) - entropy)


class RqVae(nn.Module):
  """Residual-quantized variational autoencoder over item embeddings."""
  config: RqVaeConfig

  def setup(self):
    cfg = self.config
    self.encoder = Mlp(cfg.hidden_dims + (cfg.latent_dim,), cfg.dropout)
    self.quantizer = vq.ResidualQuantizer(cfg.num_levels, cfg.codebook_size, cfg.latent_dim,
                                          cfg.beta, cfg.use_ema)
    self.decoder = Mlp(tuple(reversed(cfg.hidden_dims)) + (cfg.input_dim,), cfg.dropout)
    self.align_head = AlignmentHead(cfg.alignment_temperature)

  def __call__(self, x: jax.Array, targets: Optional[jax.Array] = None, *,
               deterministic: bool = True) -> RqVaeOutput:
    """Encodes, quantizes, decodes and scores.

    Args:
      x: [batch, input_dim] float item embeddings.
      targets: [batch, t] alignment targets; used (and the projection created) only when
        alignment_weight > 0.
      deterministic: False applies dropout (needs a "dropout" rng).
    """
    cfg = self.config
    z = self.encoder(x, deterministic=deterministic)
    quant = self.quantizer(z)
    recon = self.decoder(quant["quantized"], deterministic=deterministic)
    losses = {"recon": jnp.mean(jnp.square(recon - x)), "quantization": quant["total"],
              "codebook": quant["codebook"], "commitment": quant["commitment"],
              "diversity": jnp.zeros(()), "alignment": jnp.zeros(())}
    total = losses["recon"] + losses["quantization"]
    if cfg.diversity_weight > 0:
      losses["diversity"] = diversity_loss(quant["distances"], cfg.diversity_temperature)
      total = total + cfg.diversity_weight * losses["diversity"]
    if cfg.alignment_weight > 0:
      if targets is None:
        raise ValueError("alignment_weight > 0 needs targets [batch, t].")
      losses["alignment"] = self.align_head(quant["quantized"], targets)
      total = total + cfg.alignment_weight * losses["alignment"]
    losses["total"] = total
    return RqVaeOutput(recon=recon, latent=z, quantized=quant["quantized"],
                       codes=quant["codes"], residuals=quant["residuals"], losses=losses,
                       usage=vq.code_usage(quant["codes"], cfg.codebook_size))

  def encode(self, x: jax.Array) -> jax.Array:
    """x: [batch, input_dim] -> latents [batch, latent_dim] (deterministic)."""
    return self.encoder(x, deterministic=True)

  def quantize(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: [batch, input_dim] -> codes [batch, L] int32, residuals [batch, L, latent_dim]."""
    quant = self.quantizer(self.encode(x))
    return quant["codes"], quant["residuals"]

  def codes(self, x: jax.Array) -> jax.Array:
    """x: [batch, input_dim] -> codes [batch, L] int32 (deterministic)."""
    return self.quantize(x)[0]


@functools.lru_cache(maxsize=16)
def make_codes_fn(config: RqVaeConfig):
  """A jitted `codes(params, x: [batch, input_dim]) -> (codes [batch, L], residuals)`.

  Cached per config, so repeated calls reuse one compiled function.
  """
  model = RqVae(config)

  def codes(params, x):
    return model.apply({"params": params}, x, method=RqVae.quantize)
  return jax.jit(codes)


@functools.lru_cache(maxsize=16)
def make_encode_fn(config: RqVaeConfig):
  """A jitted `encode(params, x: [batch, input_dim]) -> latents [batch, latent_dim]`."""
  model = RqVae(config)
  return jax.jit(lambda params, x: model.apply({"params": params}, x, method=RqVae.encode))


def logical_param_axes(config: RqVaeConfig, target_dim: Optional[int] = None):
  """The params' logical axis names (a tree of PartitionSpec), without allocating them."""
  model = RqVae(config)
  x = jnp.zeros((1, config.input_dim))
  t = None if target_dim is None else jnp.zeros((1, target_dim))
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t))
  return nn.get_partition_spec(abstract)["params"]
