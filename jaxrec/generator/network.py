"""T5 1.1 encoder-decoder (t5x `examples/t5/network.py` layout): pre-norm layers,
relative position biases shared per stack, padding token 0 masked everywhere.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.generator import layers
from jaxrec.generator import positions
from jaxrec.generator.config import T5Config

Array = jax.Array
KeyValue = Tuple[Array, Array]


def _dropout(config: T5Config, broadcast: bool = True) -> nn.Dropout:
  return nn.Dropout(config.dropout_rate, broadcast_dims=(-2,) if broadcast else ())


def _mlp_residual(cfg: T5Config, x: Array, deterministic: bool) -> Array:
  """The pre-norm gated-MLP residual block ending every layer (called inside a compact
  `__call__`, so its submodules `pre_mlp_layer_norm` and `mlp` belong to that layer).

  x: [batch, length, embed] -> [batch, length, embed].
  """
  dtype = cfg.activation_dtype
  y = layers.RMSNorm(dtype=dtype, name="pre_mlp_layer_norm")(x)
  y = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype,
                      name="mlp")(y, deterministic)
  x = x + _dropout(cfg)(y, deterministic)
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  """Pre-norm self-attention then gated MLP, each with a residual connection."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array], bias: Array,
               deterministic: bool) -> Array:
    """x: [batch, length, embed]; mask: [batch, 1, length, length]; bias: [1, heads, l, l]."""
    cfg = self.config
    dtype = cfg.activation_dtype
    y = layers.RMSNorm(dtype=dtype, name="pre_attention_layer_norm")(x)
    y = layers.MultiHeadDotProductAttention(
        cfg.num_heads, cfg.head_dim, dtype=dtype, dropout_rate=cfg.dropout_rate,
        name="attention")(y, y, mask, bias, deterministic=deterministic)
    x = x + _dropout(cfg)(y, deterministic)
    return _mlp_residual(cfg, x, deterministic)


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention, gated MLP (residual each)."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Optional[Array], encoded: Optional[Array],
               decoder_mask: Optional[Array], encoder_decoder_mask: Optional[Array],
               bias: Optional[Array], deterministic: bool, decode: bool = False,
               cross_kv: Optional[KeyValue] = None) -> Array:
    """x: [batch, length, embed]; encoded: [batch, enc_length, embed].

    x None: returns this layer's cross-attention (key, value) of `encoded`, each
    [batch, enc_length, heads, head_dim]; pass them back as `cross_kv` (with
    batch = group * kv_batch query rows, see `MultiHeadDotProductAttention`).
    """
    cfg = self.config
    dtype = cfg.activation_dtype
    attention = lambda name: layers.MultiHeadDotProductAttention(  # noqa: E731
        cfg.num_heads, cfg.head_dim, dtype=dtype, dropout_rate=cfg.dropout_rate, name=name)
    if x is None:
      return attention("encoder_decoder_attention")(None, encoded)
    y = layers.RMSNorm(dtype=dtype, name="pre_self_attention_layer_norm")(x)
    y = attention("self_attention")(y, y, decoder_mask, bias, decode=decode,
                                    deterministic=deterministic)
    x = x + _dropout(cfg)(y, deterministic)
    y = layers.RMSNorm(dtype=dtype, name="pre_cross_attention_layer_norm")(x)
    y = attention("encoder_decoder_attention")(y, encoded, encoder_decoder_mask,
                                               deterministic=deterministic, kv=cross_kv)
    x = x + _dropout(cfg)(y, deterministic)
    return _mlp_residual(cfg, x, deterministic)


class Encoder(nn.Module):
  """Token embedding (+ MSCGRec's dual position embeddings when configured, see
  `positions.encoder_position_embeddings`) -> encoder layers -> `encoder_norm`."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, deterministic: bool) -> Array:
    """tokens: [batch, length] int32 -> encoded [batch, length, embed]."""
    cfg = self.config
    mask = layers.make_attention_mask(tokens > 0, tokens > 0)
    length = tokens.shape[-1]
    bias = layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, dtype=cfg.activation_dtype, name="relpos_bias")(length, length, True)
    x = self.shared_embedding(tokens.astype(jnp.int32))
    if cfg.position_embeddings:
      x = x + positions.encoder_position_embeddings(cfg, tokens.astype(jnp.int32))
    x = _dropout(cfg)(x, deterministic)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, mask, bias, deterministic)
    x = layers.RMSNorm(dtype=cfg.activation_dtype, name="encoder_norm")(x)
    return _dropout(cfg)(x, deterministic)


class Decoder(nn.Module):
  """Token embedding -> decoder layers -> `decoder_norm` -> float32 logits."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Optional[Array], tokens: Optional[Array],
               decoder_mask: Optional[Array], encoder_decoder_mask: Optional[Array],
               deterministic: bool, decode: bool = False,
               max_decode_length: Optional[int] = None,
               cross_kv: Optional[List[KeyValue]] = None) -> Array:
    """tokens: [batch, length] int32 -> logits [batch, length, vocab] float32.

    tokens None: returns every layer's cross-attention (key, value) of `encoded`
    (a list, one pair per layer) for `cross_kv`.
    """
    cfg = self.config
    if tokens is None:
      return [DecoderLayer(cfg, name=f"layers_{i}")(None, encoded, None, None, None, True)
              for i in range(cfg.num_decoder_layers)]
    length = max_decode_length if decode and max_decode_length else tokens.shape[-1]
    bias = layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, dtype=cfg.activation_dtype, name="relpos_bias")(length, length, False)
    x = self.shared_embedding(tokens.astype(jnp.int32))
    x = _dropout(cfg)(x, deterministic)
    for i in range(cfg.num_decoder_layers):
      x = DecoderLayer(cfg, name=f"layers_{i}")(
          x, encoded, decoder_mask, encoder_decoder_mask, bias, deterministic, decode,
          None if cross_kv is None else cross_kv[i])
    x = layers.RMSNorm(dtype=cfg.activation_dtype, name="decoder_norm")(x)
    x = _dropout(cfg)(x, deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(x) / jnp.sqrt(x.shape[-1])
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, kernel_axes=("embed", "vocab"),
                                   dtype=jnp.float32, name="logits_dense")(x)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
  """T5 1.1 encoder-decoder over one shared `token_embedder`.

  Attributes:
    config: a `T5Config`.
  """
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim,
                                       dtype=cfg.activation_dtype, name="token_embedder")
    self.encoder = Encoder(cfg, self.token_embedder, name="encoder")
    self.decoder = Decoder(cfg, self.token_embedder, name="decoder")

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = True) -> Array:
    """encoder_input_tokens: [batch, enc_length] int32 (0 = pad) ->
    encoded: [batch, enc_length, embed] in the activation dtype."""
    return self.encoder(encoder_input_tokens, deterministic=not enable_dropout)

  def cross_attention_kv(self, encoded: Array) -> List[KeyValue]:
    """encoded: [batch, enc_length, embed] -> per decoder layer (key, value), each
    [batch, enc_length, heads, head_dim]: computed once, shared by all beams."""
    return self.decoder(encoded, None, None, None, deterministic=True)

  def decode(self, encoded: Optional[Array], encoder_input_tokens: Array,
             decoder_input_tokens: Array, decoder_target_tokens: Optional[Array] = None,
             enable_dropout: bool = True, decode: bool = False,
             max_decode_length: Optional[int] = None,
             cross_kv: Optional[List[KeyValue]] = None) -> Array:
    """Runs the decoder.

    Args:
      encoded: [batch, enc_length, embed] from `encode`.
      encoder_input_tokens: [batch, enc_length] int32; 0 = pad (masked in cross-attention).
      decoder_input_tokens: [batch, dec_length] int32 (BOS then shifted targets); with
        `decode=True` and an initialized cache, [batch, 1]: the current token.
      decoder_target_tokens: [batch, dec_length] int32; its zeros are masked. None:
        every decoder position is real.
      enable_dropout: training mode.
      decode: cached step-by-step decoding (see `MultiHeadDotProductAttention`).
      max_decode_length: with `decode`, the cache length (for the position bias).
      cross_kv: from `cross_attention_kv` on kv_batch rows (then `encoded` is unused
        and encoder_input_tokens is [kv_batch, enc_length]); decoder rows
        [b * group, (b + 1) * group) attend to kv row b. All decoder positions must
        be real (no padding targets).

    Returns:
      logits: [batch, dec_length, vocab] float32.
    """
    if cross_kv is not None:
      key_mask = jnp.asarray(encoder_input_tokens > 0, jnp.float32)[:, None, None, :]
      if decode:
        decoder_mask = None
      else:
        decoder_mask = layers.make_causal_mask(decoder_input_tokens)
      return self.decoder(encoded, decoder_input_tokens,
                          decoder_mask, key_mask, deterministic=not enable_dropout,
                          decode=decode, max_decode_length=max_decode_length,
                          cross_kv=cross_kv)
    if decode:
      decoder_mask = None
      query_valid = jnp.ones(decoder_input_tokens.shape, bool)
    else:
      causal = layers.make_causal_mask(decoder_input_tokens)
      if decoder_target_tokens is None:
        decoder_mask = causal
        query_valid = jnp.ones(decoder_input_tokens.shape, bool)
      else:
        query_valid = decoder_target_tokens > 0
        decoder_mask = layers.combine_masks(
            causal, layers.make_attention_mask(query_valid, query_valid))
    encoder_decoder_mask = layers.make_attention_mask(query_valid, encoder_input_tokens > 0)
    return self.decoder(encoded, decoder_input_tokens, decoder_mask, encoder_decoder_mask,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    """Encodes then decodes; returns logits [batch, dec_length, vocab] float32."""
    encoded = self.encode(encoder_input_tokens, enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, enable_dropout, decode, max_decode_length)
