"""T5 1.1 network: shapes, padding invariance, cached decoding == full forward, bfloat16,
tied logits."""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.generator.config import T5Config
from jaxrec.generator.network import Transformer
from jaxrec.generator.errors import ModelConfigError

VOCAB = 20
CFG = T5Config.tiny(VOCAB, num_decoder_layers=2, dropout_rate=0.3)
ENC = jnp.array([[5, 9, 3, 11, 4, 0, 0], [7, 2, 8, 0, 0, 0, 0]], jnp.int32)
DEC_IN = jnp.array([[1, 12, 6, 15], [1, 13, 17, 19]], jnp.int32)
DEC_TGT = jnp.array([[12, 6, 15, 10], [13, 17, 19, 14]], jnp.int32)


@functools.lru_cache(maxsize=None)
def init(config):
  fn = lambda rng: Transformer(config).init(rng, ENC, DEC_IN, DEC_TGT, enable_dropout=False)
  return jax.jit(fn)(jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=None)
def forward(config):
  return jax.jit(functools.partial(Transformer(config).apply, enable_dropout=False))


def abstract_params(config):
  fn = lambda rng: Transformer(config).init(rng, ENC, DEC_IN, DEC_TGT, enable_dropout=False)
  return nn.meta.unbox(jax.eval_shape(fn, jax.random.PRNGKey(0)))["params"]


def test_shapes_and_names():
  variables = init(CFG)
  logits = forward(CFG)(variables, ENC, DEC_IN, DEC_TGT)
  chex.assert_shape(logits, (2, 4, VOCAB))
  chex.assert_type(logits, jnp.float32)
  encoded = jax.eval_shape(functools.partial(Transformer(CFG).apply, enable_dropout=False,
                                             method=Transformer.encode), variables, ENC)
  chex.assert_shape(encoded, (2, 7, CFG.emb_dim))
  params = abstract_params(T5Config.tiny(VOCAB, num_encoder_layers=2, num_decoder_layers=3))
  assert set(params) == {"token_embedder", "encoder", "decoder"}
  assert set(params["encoder"]) == {"relpos_bias", "layers_0", "layers_1", "encoder_norm"}
  assert set(params["decoder"]) == {"relpos_bias", "layers_0", "layers_1", "layers_2",
                                    "decoder_norm", "logits_dense"}
  assert set(params["decoder"]["layers_0"]) == {
      "pre_self_attention_layer_norm", "self_attention", "pre_cross_attention_layer_norm",
      "encoder_decoder_attention", "pre_mlp_layer_norm", "mlp"}
  assert set(params["encoder"]["layers_0"]) == {"pre_attention_layer_norm", "attention",
                                                "pre_mlp_layer_norm", "mlp"}
  chex.assert_shape(params["decoder"]["logits_dense"]["kernel"], (CFG.emb_dim, VOCAB))
  chex.assert_shape(params["encoder"]["relpos_bias"]["rel_embedding"], (CFG.num_heads, 32))


def test_padding_is_ignored():
  variables = init(CFG)
  logits = forward(CFG)(variables, ENC, DEC_IN, DEC_TGT)
  # More padding at the end of the encoder input changes nothing (relative positions only).
  longer = jnp.pad(ENC, ((0, 0), (0, 5)))
  np.testing.assert_allclose(forward(CFG)(variables, longer, DEC_IN, DEC_TGT), logits,
                             atol=1e-5)
  # A real encoder token does change the logits.
  changed = ENC.at[1, 0].set(6)
  assert not np.allclose(forward(CFG)(variables, changed, DEC_IN, DEC_TGT)[1], logits[1])
  # An all-padding row (a padded batch row) stays finite.
  chex.assert_tree_all_finite(forward(CFG)(variables, ENC.at[1].set(0), DEC_IN, DEC_TGT))
  # Decoder: positions after a padded target cannot influence earlier positions.
  tgt = DEC_TGT.at[:, 3].set(0)
  masked = forward(CFG)(variables, ENC, DEC_IN, tgt)
  np.testing.assert_allclose(masked[:, :3], logits[:, :3], atol=1e-5)


def test_decoder_is_causal():
  variables = init(CFG)
  logits = forward(CFG)(variables, ENC, DEC_IN, DEC_TGT)
  later = DEC_IN.at[:, 2:].set(3)
  np.testing.assert_allclose(forward(CFG)(variables, ENC, later, DEC_TGT)[:, :2],
                             logits[:, :2], atol=1e-5)


def _step_by_step(config, variables, enc, dec_in):
  module = Transformer(config)
  length = dec_in.shape[1]
  shapes = jax.eval_shape(functools.partial(
      module.apply, enable_dropout=False, decode=True, max_decode_length=length,
      mutable=["cache"]), variables, enc, dec_in)[1]["cache"]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  encoded = jax.jit(functools.partial(module.apply, enable_dropout=False,
                                      method=Transformer.encode))(variables, enc)

  @jax.jit
  def step(cache, token):
    logits, new = module.apply({**variables, "cache": cache}, encoded, enc, token,
                               enable_dropout=False, decode=True, max_decode_length=length,
                               mutable=["cache"], method=Transformer.decode)
    return logits, new["cache"]

  outputs = []
  for t in range(length):
    logits, cache = step(cache, dec_in[:, t:t + 1])
    chex.assert_shape(logits, (enc.shape[0], 1, config.vocab_size))
    outputs.append(logits[:, 0])
  return jnp.stack(outputs, axis=1), cache


def test_cached_decoding_equals_full_forward():
  variables = init(CFG)
  full = forward(CFG)(variables, ENC, DEC_IN, DEC_TGT)
  stepped, cache = _step_by_step(CFG, variables, ENC, DEC_IN)
  np.testing.assert_allclose(stepped, full, atol=1e-4, rtol=1e-4)
  index = cache["decoder"]["layers_0"]["self_attention"]["cache_index"]
  assert int(index) == DEC_IN.shape[1]
  chex.assert_shape(cache["decoder"]["layers_1"]["self_attention"]["cached_key"],
                    (2, 4, CFG.num_heads, CFG.head_dim))


def test_bfloat16_activations_keep_float32_params():
  cfg = dataclasses.replace(CFG, dtype="bfloat16")
  dtypes = {x.dtype for x in jax.tree.leaves(abstract_params(cfg))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  variables = init(CFG)  # same parameter tree: the dtype only changes activations
  logits = forward(cfg)(variables, ENC, DEC_IN, DEC_TGT)
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  encoded = jax.eval_shape(functools.partial(Transformer(cfg).apply, enable_dropout=False,
                                             method=Transformer.encode), variables, ENC)
  assert encoded.dtype == jnp.bfloat16
  full32 = forward(CFG)(variables, ENC, DEC_IN, DEC_TGT)
  np.testing.assert_allclose(logits, full32, atol=0.05 * float(jnp.abs(full32).max()))


def test_dropout_changes_training_outputs_only():
  variables = init(CFG)
  encode = lambda train: jax.jit(functools.partial(  # noqa: E731
      Transformer(CFG).apply, enable_dropout=train, method=Transformer.encode))
  # rbg keys compile ~3x faster than threefry on CPU.
  a = encode(True)(variables, ENC, rngs={"dropout": jax.random.key(3, impl="rbg")})
  b = encode(True)(variables, ENC, rngs={"dropout": jax.random.key(4, impl="rbg")})
  assert not np.allclose(a, b)
  assert not np.allclose(a, encode(False)(variables, ENC))


def test_tied_logits_and_single_activation():
  cfg = T5Config.tiny(VOCAB, logits_via_embedding=True, mlp_activations=("relu",))
  params = abstract_params(cfg)
  assert "logits_dense" not in params["decoder"]
  assert set(params["encoder"]["layers_0"]["mlp"]) == {"wi", "wo"}
  logits = jax.eval_shape(functools.partial(Transformer(cfg).apply, enable_dropout=False),
                          {"params": params}, ENC, DEC_IN, DEC_TGT)
  chex.assert_shape(logits, (2, 4, VOCAB))


@pytest.mark.parametrize("field, value", [("num_heads", 0), ("dropout_rate", 1.0),
                                          ("mlp_activations", ("gelu", "nope")),
                                          ("dtype", "float64"), ("z_loss", -1.0)])
def test_config_errors_name_the_field(field, value):
  with pytest.raises(ModelConfigError, match=f"T5Config.{field}"):
    T5Config.tiny(VOCAB, **{field: value})


def test_tiger_preset():
  cfg = T5Config.tiger(3026)
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.emb_dim, cfg.num_heads,
          cfg.head_dim, cfg.mlp_dim, cfg.dropout_rate) == (4, 4, 128, 6, 64, 1024, 0.1)
  assert cfg.mlp_activations == ("gelu", "linear") and not cfg.logits_via_embedding
