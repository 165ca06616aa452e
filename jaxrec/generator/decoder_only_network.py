"""Decoder-only T5 1.1 over the code tokens of a window (t5x's decoder-only network; the
per-sequence layout `decoder_only`): [BOS, user token?, item_0's codes, item_1's codes, ...]
through causal self-attention layers, the next token predicted at every position.

Inference keeps the t5x encoder-decoder interface, so `EncoderDecoderModel`'s beam search,
greedy decoding and exact scoring run unchanged: `encode` runs the stack once over a
user's history (left-aligned, so every row's next position is the same and relative
positions agree across rows) and keeps every layer's keys/values (a `prefix` pytree, the
"cross_kv" of the interface); `decode` appends the generated codes, attending to that
prefix (shared by the user's beams, never copied per beam) and to their own cache. The
first decoder input (BOS in the interface) is replaced by the history's last token, which
is where training predicts an item's first code.
"""

from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.generator import layers
from jaxrec.generator.config import T5Config
from jaxrec.generator.network import _dropout, _mlp_residual
from jaxrec.generator.vocab import BOS_ID

Array = jax.Array
KeyValue = Tuple[Array, Array]


def left_align(tokens: Array) -> Array:
  """[B, T] int32 -> [B, T]: each row's padding (0) moved to the front, real tokens kept
  in order (so the last real token of every row sits at position T - 1)."""
  order = jnp.argsort(tokens > 0, axis=1, stable=True)
  return jnp.take_along_axis(tokens, order, axis=1)


def history_sequence(encoder_input_tokens: Array) -> Tuple[Array, Array]:
  """History tokens of `vocab.make_token_batch` [B, T] (user token?, then item codes,
  0-padded at the end) -> (prefix [B, T] int32 left-aligned [BOS, user?, codes] but its
  last token, last [B] int32: that token, where the first generated code is predicted)."""
  size = encoder_input_tokens.shape[0]
  sequence = jnp.concatenate([jnp.full((size, 1), BOS_ID, jnp.int32),
                              encoder_input_tokens.astype(jnp.int32)], axis=1)
  sequence = left_align(sequence)
  return sequence[:, :-1], sequence[:, -1]


class DecoderOnlyLayer(nn.Module):
  """Pre-norm causal self-attention then gated MLP (t5x decoder layer without
  cross-attention)."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array], bias: Optional[Array],
               deterministic: bool, decode: bool = False,
               prefix: Optional[Tuple[Array, Array, Array]] = None,
               return_kv: bool = False):
    """x: [rows, length, embed] -> [rows, length, embed] (and with `return_kv` this
    layer's (key, value) [rows, length, heads, head_dim]). mask, bias, decode, prefix as
    `layers.MultiHeadDotProductAttention`."""
    cfg = self.config
    y = layers.RMSNorm(dtype=cfg.activation_dtype, name="pre_self_attention_layer_norm")(x)
    attention = layers.MultiHeadDotProductAttention(
        cfg.num_heads, cfg.head_dim, dtype=cfg.activation_dtype,
        dropout_rate=cfg.dropout_rate, name="self_attention")
    kv = None
    if return_kv:
      kv = attention(None, y)
      y = attention(y, None, mask, bias, deterministic=deterministic, kv=kv)
    else:
      y = attention(y, y, mask, bias, decode=decode, deterministic=deterministic,
                    prefix=prefix)
    x = x + _dropout(cfg)(y, deterministic)
    x = _mlp_residual(cfg, x, deterministic)
    return (x, kv) if return_kv else x


class DecoderOnlyStack(nn.Module):
  """Token embedding -> causal layers -> `decoder_norm` -> float32 logits.

  Attributes:
    config: the `T5Config` (`decoder_only_layers` layers).
    shared_embedding: the token embedder (logits via it with `logits_via_embedding`).
  """
  config: T5Config
  shared_embedding: nn.Module

  def _bias(self, length: int) -> Array:
    cfg = self.config
    return layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, dtype=cfg.activation_dtype, name="relpos_bias")(length, length, False)

  @nn.compact
  def __call__(self, tokens: Array, deterministic: bool, decode: bool = False,
               prefix: Optional[dict] = None, return_kv: bool = False,
               max_decode_length: Optional[int] = None):
    """Runs the stack.

    Args:
      tokens: [rows, length] int32 (0 = pad, masked as a key).
      deterministic: no dropout.
      decode: cached one-token steps (the first call with decode only creates the cache
        of `max_decode_length` positions).
      prefix: a history from `return_kv` ({"kv": per layer (key, value) [users, P,
        heads, head_dim], "mask": [users, P] bool}); the tokens then follow it (rows =
        group * users).
      return_kv: return every layer's (key, value) instead of logits (the prefix pass).

    Returns:
      logits [rows, length, vocab] float32, or the list of per-layer (key, value).
    """
    cfg = self.config
    tokens = tokens.astype(jnp.int32)
    length = max_decode_length if decode and max_decode_length else tokens.shape[1]
    layer_prefix = [None] * cfg.decoder_only_layers
    if prefix is None:
      bias = self._bias(length)
      mask = None if decode else layers.combine_masks(
          layers.make_causal_mask(tokens),
          layers.make_attention_mask(jnp.ones(tokens.shape, bool), tokens > 0))
    else:
      prefix_length = prefix["mask"].shape[1]
      full = self._bias(prefix_length + length)
      bias = full[:, :, prefix_length:, prefix_length:]
      prefix_bias = (full[:, :, prefix_length:, :prefix_length] +
                     layers.mask_to_bias(prefix["mask"][:, None, None, :]))
      layer_prefix = [(k, v, prefix_bias) for k, v in prefix["kv"]]
      mask = None if decode else layers.make_causal_mask(tokens)
    x = self.shared_embedding(tokens)
    x = _dropout(cfg)(x, deterministic)
    kvs = []
    for i in range(cfg.decoder_only_layers):
      layer = DecoderOnlyLayer(cfg, name=f"layers_{i}")
      if return_kv:
        x, kv = layer(x, mask, bias, deterministic, return_kv=True)
        kvs.append(kv)
      else:
        x = layer(x, mask, bias, deterministic, decode, layer_prefix[i])
    if return_kv:
      return kvs
    x = layers.RMSNorm(dtype=cfg.activation_dtype, name="decoder_norm")(x)
    x = _dropout(cfg)(x, deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(x) / jnp.sqrt(x.shape[-1])
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, kernel_axes=("embed", "vocab"),
                                   dtype=jnp.float32, name="logits_dense")(x)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class DecoderOnlyTransformer(nn.Module):
  """The decoder-only generator network with the encoder-decoder interface of
  `network.Transformer` (see the module docstring).

  Attributes:
    config: a `T5Config` (widths; `decoder_only_layers` = encoder + decoder layers).
  """
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim,
                                       dtype=cfg.activation_dtype, name="token_embedder")
    self.decoder = DecoderOnlyStack(cfg, self.token_embedder, name="decoder")

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False) -> dict:
    """History tokens [B, T] (`vocab.make_token_batch`) -> the prefix {"kv": per layer
    (key, value) [B, T, heads, head_dim], "mask": [B, T] bool, "last": [B] int32}."""
    prefix, last = history_sequence(encoder_input_tokens)
    kv = self.decoder(prefix, deterministic=not enable_dropout, return_kv=True)
    return {"kv": kv, "mask": prefix > 0, "last": last}

  def cross_attention_kv(self, encoded: dict) -> dict:
    """The prefix is already per-layer keys/values: returned as is."""
    return encoded

  def decode(self, encoded: Optional[dict], encoder_input_tokens: Optional[Array],
             decoder_input_tokens: Array, decoder_target_tokens: Optional[Array] = None,
             enable_dropout: bool = False, decode: bool = False,
             max_decode_length: Optional[int] = None,
             cross_kv: Optional[dict] = None) -> Array:
    """Generated-code logits after a user's history.

    Args:
      encoded / cross_kv: the prefix from `encode` on B users (cross_kv first).
      encoder_input_tokens: unused (the prefix holds its mask).
      decoder_input_tokens: [rows, length] int32, rows = group * B (rows [b * group,
        (b + 1) * group) follow user b); BOS (the interface's first input) stands for
        the history's last token. With `decode`, [rows, 1] the current token.
      decoder_target_tokens: unused (every row is real).
      enable_dropout: must be False (inference).
      decode, max_decode_length: cached steps (cache from `__call__` with decode).

    Returns:
      logits [rows, length, vocab] float32.
    """
    del encoder_input_tokens, decoder_target_tokens
    prefix = cross_kv if cross_kv is not None else encoded
    rows, users = decoder_input_tokens.shape[0], prefix["last"].shape[0]
    last = jnp.repeat(prefix["last"], rows // users)[:, None]
    tokens = jnp.where(decoder_input_tokens == BOS_ID, last, decoder_input_tokens)
    return self.decoder(tokens, deterministic=not enable_dropout, decode=decode,
                        prefix=prefix, max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Optional[Array], decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    """Training: decoder_input_tokens [B, S] the window sequence (BOS first, 0-padded)
    -> logits [B, S, vocab] (position s predicts token s + 1). With `decode`: creates
    the self-attention cache of `max_decode_length` positions for [rows, ...] tokens.
    encoder_input_tokens and decoder_target_tokens are unused (t5x signature)."""
    del encoder_input_tokens, decoder_target_tokens
    return self.decoder(decoder_input_tokens, deterministic=not enable_dropout,
                        decode=decode, max_decode_length=max_decode_length)
