"""Causal item encoder + code decoder (per-sequence layout): one encoder token per history
item (its codes' embeddings summed), a causal T5 encoder over items, and for every position
t a short T5 decoder that generates the next item's codes, cross-attending to states <= t.

The decoder is the T5 1.1 `network.Decoder` (same parameter names); the encoder reuses
`network.EncoderLayer` with a causal mask and the decoder-style (unidirectional) relative
position bias, so the state of item t depends on items <= t only. All positions of a window
decode in one batched pass: decoder rows [b * n, (b + 1) * n) share user b's cross-attention
keys/values (see `layers.MultiHeadDotProductAttention`, grouped `kv`) and a causal
[n * L, N] key mask.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.generator import layers, positions
from jaxrec.generator.config import T5Config
from jaxrec.generator.network import Decoder, EncoderLayer, _dropout

Array = jax.Array
KeyValue = Tuple[Array, Array]


def item_valid(tokens: Array, prefix: int, tokens_per_item: int) -> Array:
  """Flat encoder tokens [B, U + n * E] (`vocab.make_token_batch`) -> [B, U + n] bool:
  which encoder positions (user token, then one per item) are real."""
  size = tokens.shape[0]
  items = tokens[:, prefix:].reshape(size, -1, tokens_per_item) > 0
  return jnp.concatenate([tokens[:, :prefix] > 0, jnp.any(items, axis=-1)], axis=1)


def window_cross_mask(valid: Array, prefix: int, num_levels: int) -> Array:
  """The training cross-attention mask of a window.

  Args:
    valid: [B, N] bool encoder positions (N = prefix + n).
    prefix: U, encoder positions before the items.
    num_levels: L, decoder tokens per position.

  Returns:
    [B, 1, n * L, N] float32: query (t, l) (the codes of item t + 1) attends encoder
    position j iff j <= U + t and j is real.
  """
  n = valid.shape[1] - prefix
  allowed = np.arange(valid.shape[1])[None, :] <= prefix + np.arange(n)[:, None]  # [n, N]
  allowed = np.repeat(allowed, num_levels, axis=0)  # [n * L, N]
  return (jnp.asarray(allowed)[None] & valid[:, None, :])[:, None].astype(jnp.float32)


def packed_cross_mask(valid: Array, prefix: int, num_levels: int, row_window: Array,
                      row_position: Array) -> Array:
  """The cross-attention mask of packed decoder rows (`sequence_batch.pack_target_rows`).

  Args:
    valid: [B, N] bool encoder positions; prefix: U; num_levels: L.
    row_window, row_position: [R] int32, row r decodes window b_r's item t_r + 1.

  Returns:
    [R, 1, L, N] float32: row r attends position j iff j <= U + t_r and j is real in b_r.
  """
  allowed = jnp.arange(valid.shape[1])[None, :] <= prefix + row_position[:, None]
  mask = (allowed & valid[row_window]).astype(jnp.float32)  # [R, N]
  return jnp.broadcast_to(mask[:, None, None, :], (mask.shape[0], 1, num_levels,
                                                   mask.shape[1]))


class CausalItemEncoder(nn.Module):
  """Summed code embeddings per item -> causal encoder layers -> `encoder_norm`.

  With MSCGRec's dual position embeddings (`T5Config.position_embeddings`), each code's
  embedding gets its within-item position and its item's slot in the window (from the
  window start, so a state never depends on later items) before the codes are summed.

  Attributes:
    config: the `T5Config` (num_encoder_layers, widths, dropout).
    shared_embedding: the token embedder shared with the decoder.
    prefix: U, user tokens before the items (embedded as single tokens).
    tokens_per_item: E, encoder columns per history item.
  """
  config: T5Config
  shared_embedding: nn.Module
  prefix: int
  tokens_per_item: int

  @nn.compact
  def __call__(self, tokens: Array, deterministic: bool) -> Array:
    """tokens: [B, U + n * E] int32 (0 = pad) -> encoded [B, U + n, embed]."""
    cfg = self.config
    size = tokens.shape[0]
    tokens = tokens.astype(jnp.int32)
    valid = item_valid(tokens, self.prefix, self.tokens_per_item)
    embedded = self.shared_embedding(tokens) * (tokens > 0)[..., None]
    if cfg.position_embeddings:  # MSCGRec's dual positions, on each code before the sum.
      embedded = embedded + positions.encoder_position_embeddings(cfg, tokens, causal=True)
    items = embedded[:, self.prefix:].reshape(size, -1, self.tokens_per_item,
                                              embedded.shape[-1]).sum(axis=2)
    x = jnp.concatenate([embedded[:, :self.prefix], items], axis=1)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    length = x.shape[1]
    mask = layers.combine_masks(layers.make_attention_mask(valid, valid),
                                jnp.asarray(np.tril(np.ones((length, length)))[None, None],
                                            jnp.float32))
    bias = layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, dtype=cfg.activation_dtype, name="relpos_bias")(length, length, False)
    x = _dropout(cfg)(x, deterministic)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, mask, bias, deterministic)
    x = layers.RMSNorm(dtype=cfg.activation_dtype, name="encoder_norm")(x)
    return _dropout(cfg)(x, deterministic)


class ItemTransformer(nn.Module):
  """Causal item encoder + T5 code decoder over one shared `token_embedder`.

  Attributes:
    config: a `T5Config`.
    prefix: U, user tokens before the items in the encoder input.
    tokens_per_item: E, encoder columns per history item.
  """
  config: T5Config
  prefix: int = 0
  tokens_per_item: int = 1

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim,
                                       dtype=cfg.activation_dtype, name="token_embedder")
    self.encoder = CausalItemEncoder(cfg, self.token_embedder, self.prefix,
                                     self.tokens_per_item, name="encoder")
    self.decoder = Decoder(cfg, self.token_embedder, name="decoder")

  def valid(self, encoder_input_tokens: Array) -> Array:
    """[B, U + n * E] tokens -> [B, U + n] bool real encoder positions."""
    return item_valid(encoder_input_tokens, self.prefix, self.tokens_per_item)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = True) -> Array:
    """[B, U + n * E] int32 -> encoded [B, U + n, embed] (state t sees items <= t)."""
    return self.encoder(encoder_input_tokens, deterministic=not enable_dropout)

  def cross_attention_kv(self, encoded: Array) -> List[KeyValue]:
    """encoded [B, N, embed] -> per decoder layer (key, value) [B, N, heads, head_dim]."""
    return self.decoder(encoded, None, None, None, deterministic=True)

  def decode(self, encoded: Optional[Array], encoder_input_tokens: Array,
             decoder_input_tokens: Array, decoder_target_tokens: Optional[Array] = None,
             enable_dropout: bool = False, decode: bool = False,
             max_decode_length: Optional[int] = None,
             cross_kv: Optional[List[KeyValue]] = None) -> Array:
    """Decodes from the LAST encoder state (inference: beam search, scoring).

    Args:
      encoded: [B, N, embed] (unused with cross_kv).
      encoder_input_tokens: [B, U + n * E] int32 (for the key mask).
      decoder_input_tokens: [rows, length] int32, rows = group * B (rows
        [b * group, (b + 1) * group) are user b's beams or candidates); with `decode`,
        [rows, 1] the current token.
      decoder_target_tokens: unused (every decoder row is real); the signature of
        `network.Transformer.decode`, so `EncoderDecoderModel` decodes this network too.
      enable_dropout, decode, max_decode_length: as `network.Transformer.decode`.
      cross_kv: from `cross_attention_kv`, or None (computed from `encoded`).

    Returns:
      logits: [rows, length, vocab] float32.
    """
    if cross_kv is None:
      cross_kv = self.cross_attention_kv(encoded)
    key_mask = self.valid(encoder_input_tokens).astype(jnp.float32)[:, None, None, :]
    decoder_mask = None if decode else layers.make_causal_mask(decoder_input_tokens)
    return self.decoder(None, decoder_input_tokens, decoder_mask, key_mask,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length, cross_kv=cross_kv)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               enable_dropout: bool = True, decode: bool = False,
               max_decode_length: Optional[int] = None,
               decoder_row_window: Optional[Array] = None,
               decoder_row_position: Optional[Array] = None) -> Array:
    """Per-sequence teacher forcing: every position decodes the next item in one pass.

    Args:
      encoder_input_tokens: [B, U + n * E] int32, the window's first n items.
      decoder_input_tokens: [B, n, L] int32, BOS then the first L - 1 code tokens of
        item t + 1 at position t; packed (with the row indices): [R, L], row r those of
        window b_r's item t_r + 1. With `decode` (cache creation only): [rows, L].
      decoder_row_window, decoder_row_position: [R] int32 b_r and t_r of packed rows
        (`sequence_batch.pack_target_rows`), or None (every position of every window).

    Returns:
      logits: [B, n, L, vocab] float32 (position t scores item t + 1); packed: [R, L,
      vocab].
    """
    encoded = self.encode(encoder_input_tokens, enable_dropout)
    cross_kv = self.cross_attention_kv(encoded)
    if decode:
      return self.decode(None, encoder_input_tokens, decoder_input_tokens, None,
                         enable_dropout, True, max_decode_length, cross_kv)
    if decoder_row_window is not None:
      rows = decoder_input_tokens.astype(jnp.int32)
      # Each packed row reads its own window's keys/values (a gather; its gradient is a
      # scatter-add), so the decoder runs over target rows only.
      row_kv = [(k[decoder_row_window], v[decoder_row_window]) for k, v in cross_kv]
      cross_mask = packed_cross_mask(self.valid(encoder_input_tokens), self.prefix,
                                     rows.shape[1], decoder_row_window, decoder_row_position)
      return self.decoder(None, rows, layers.make_causal_mask(rows), cross_mask,
                          deterministic=not enable_dropout, cross_kv=row_kv)
    size, n, num_levels = decoder_input_tokens.shape
    if self.prefix + n != encoded.shape[1]:
      raise ValueError(f"decoder positions ({n}) must equal the encoder's items "
                       f"({encoded.shape[1] - self.prefix})")
    rows = decoder_input_tokens.reshape(size * n, num_levels).astype(jnp.int32)
    cross_mask = window_cross_mask(self.valid(encoder_input_tokens), self.prefix, num_levels)
    logits = self.decoder(None, rows, layers.make_causal_mask(rows), cross_mask,
                          deterministic=not enable_dropout, cross_kv=cross_kv)
    return logits.reshape(size, n, num_levels, -1)
