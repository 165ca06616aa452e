"""MSCGRec's generator features with known answers: the decoder's target view of the token
layout, target/encoder columns in make_token_batch, item-recency and within-item
positions, the dual position embeddings (off = unchanged model) and modality masking."""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.errors import DataError
from jaxrec.generator import masking
from jaxrec.generator import model as model_lib
from jaxrec.generator import positions
from jaxrec.generator.config import T5Config
from jaxrec.generator.errors import ModelConfigError
from jaxrec.generator.model import EncoderDecoderModel
from jaxrec.generator.network import Transformer
from jaxrec.generator.vocab import TargetLayout, TokenLayout, make_token_batch

# Segments: text columns [0, 2), image [2, 4), collab [4, 6).
LAYOUT = TokenLayout(6, (3, 4, 2, 5, 2, 3), num_user_buckets=4)
SIDS = np.array([[0, 0, 0, 0, 0, 0],
                 [2, 3, 1, 4, 0, 2],    # item 1
                 [0, 1, 0, 0, 1, 1],    # item 2
                 [1, 0, 1, 2, 1, 0]])   # item 3


def test_target_view_offsets_and_token_ranges():
  # Full layout: code-0 tokens 2, 5, 9, 11, 16, 18; users [21, 25).
  np.testing.assert_array_equal(LAYOUT.level_offsets, [2, 5, 9, 11, 16, 18])
  collab = LAYOUT.target((4, 5))
  assert isinstance(collab, TargetLayout)
  assert collab.num_levels == 2 and collab.codebook_sizes == (2, 3)
  np.testing.assert_array_equal(collab.level_offsets, [16, 18])
  assert collab.level_token_range(0) == (16, 18) and collab.level_token_range(1) == (18, 21)
  assert (collab.vocab_size, collab.bos_id, collab.pad_id) == (25, 1, 0)
  assert collab.num_user_buckets == 4 and collab.user_offset == 21
  mask = collab.level_mask()
  assert mask.shape == (2, 25)
  assert np.flatnonzero(mask[0]).tolist() == [16, 17]
  assert np.flatnonzero(mask[1]).tolist() == [18, 19, 20]
  np.testing.assert_array_equal(collab.code_to_token(np.array([[1, 2]])), [[17, 20]])
  np.testing.assert_array_equal(collab.token_to_code(jnp.array([[17, 20]])), [[1, 2]])
  np.testing.assert_array_equal(collab.select(SIDS), SIDS[:, 4:])
  collab.check_semantic_ids(SIDS[:, 4:])
  with pytest.raises(DataError, match="TargetLayout.num_levels"):
    collab.check_semantic_ids(SIDS)
  image = LAYOUT.target((2, 3))
  np.testing.assert_array_equal(image.level_offsets, [9, 11])
  assert image.level_token_range(1) == (11, 16)
  # The default view is the layout itself.
  full = LAYOUT.target()
  assert full.is_all_levels and full.num_levels == 6
  assert full.codebook_sizes == LAYOUT.codebook_sizes
  np.testing.assert_array_equal(full.level_offsets, LAYOUT.level_offsets)
  np.testing.assert_array_equal(full.level_mask(), LAYOUT.level_mask())
  for bad in [(), (4, 4), (6,), (-1,), ("a",)]:
    with pytest.raises(ModelConfigError, match="my.binding"):
      LAYOUT.target(bad, "my.binding")


def test_make_token_batch_with_target_and_encoder_columns():
  batch = {"history": np.array([[1, 2, 0], [3, 0, 0]]), "length": np.array([2, 1]),
           "target": np.array([3, 1]), "user": np.array([7, -1])}
  out = make_token_batch(batch, SIDS, LAYOUT, max_history=3, target_levels=(4, 5),
                         encoder_levels=(0, 1, 4, 5))
  user = int(LAYOUT.user_token(7))
  assert 21 <= user < 25
  # Encoder columns 0, 1, 4, 5 (code-0 tokens 2, 5, 16, 18) of each history item.
  np.testing.assert_array_equal(out["encoder_input_tokens"], [
      [user, 4, 8, 16, 20, 2, 6, 17, 19, 0, 0, 0, 0],
      [0, 3, 5, 17, 18, 0, 0, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["decoder_target_tokens"], [[17, 18], [16, 20]])
  np.testing.assert_array_equal(out["decoder_input_tokens"], [[1, 17], [1, 16]])
  np.testing.assert_array_equal(out["decoder_loss_weights"], np.ones((2, 2)))
  # A TargetLayout brings its own target columns.
  again = make_token_batch(batch, SIDS, LAYOUT.target((4, 5)), 3, encoder_levels=(0, 1, 4, 5))
  for key, value in out.items():
    np.testing.assert_array_equal(again[key], value)
  # Defaults: every column on both sides, as before.
  full = make_token_batch(batch, SIDS, LAYOUT, max_history=3)
  assert full["encoder_input_tokens"].shape == (2, 1 + 3 * 6)
  np.testing.assert_array_equal(full["decoder_target_tokens"],
                                LAYOUT.code_to_token(SIDS[[3, 1]]))
  with pytest.raises(ModelConfigError, match="make_token_batch.encoder_levels"):
    make_token_batch(batch, SIDS, LAYOUT, 3, encoder_levels=(0, 9))


def test_item_recency_and_code_positions():
  tokens = jnp.array([[9, 4, 8, 2, 6, 3, 5, 0, 0],     # 3 items
                      [0, 4, 8, 0, 0, 0, 0, 0, 0],     # 1 item, PAD user token
                      [9, 0, 8, 2, 0, 0, 0, 0, 0]])    # 2 partly masked items
  np.testing.assert_array_equal(positions.item_recency(tokens, 1, 2), [
      [0, 2, 2, 1, 1, 0, 0, 0, 0],
      [0, 0, 0, 0, 0, 0, 0, 0, 0],
      [0, 1, 1, 0, 0, 0, 0, 0, 0]])
  no_user = jnp.array([[4, 8, 2, 6, 0, 0], [4, 8, 2, 6, 3, 5]])
  np.testing.assert_array_equal(positions.item_recency(no_user, 0, 2),
                                [[1, 1, 0, 0, 0, 0], [2, 2, 1, 1, 0, 0]])
  np.testing.assert_array_equal(positions.code_position(9, 1, 2), [0, 0, 1, 0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(positions.code_position(6, 0, 3), [0, 1, 2, 0, 1, 2])
  with pytest.raises(ModelConfigError, match="encoder_prefix_tokens"):
    positions.item_recency(no_user, 1, 2)


class _Positions(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, tokens):
    return positions.encoder_position_embeddings(self.config, tokens)


def test_encoder_position_embeddings_known_tables():
  cfg = T5Config.tiny(30, emb_dim=2, item_position_embeddings=2, code_position_embeddings=2,
                      encoder_prefix_tokens=1)
  tokens = jnp.array([[9, 4, 8, 2, 6, 3, 5, 0, 0]])
  item = jnp.array([[100.0, 100.0], [200.0, 200.0]])   # recency 2 shares the last row.
  code = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  params = {"item_position_embedder": {"embedding": item},
            "code_position_embedder": {"embedding": code}}
  out = _Positions(cfg).apply({"params": params}, tokens)[0]
  expected = [[0, 0], [201, 200], [200, 201], [201, 200], [200, 201], [101, 100], [100, 101],
              [0, 0], [0, 0]]
  np.testing.assert_allclose(out, expected)


ENC = jnp.array([[9, 4, 8, 2, 6, 3, 5, 0, 0], [0, 4, 8, 3, 5, 0, 0, 0, 0]], jnp.int32)
DEC_IN = jnp.array([[1, 17], [1, 16]], jnp.int32)
DEC_TGT = jnp.array([[17, 18], [16, 20]], jnp.int32)
OFF = T5Config.tiny(LAYOUT.vocab_size)
ON = T5Config.tiny(LAYOUT.vocab_size, item_position_embeddings=4, code_position_embeddings=2,
                   encoder_prefix_tokens=1)


@functools.lru_cache(maxsize=None)
def _init(config):
  fn = lambda rng: Transformer(config).init(rng, ENC, DEC_IN, DEC_TGT, enable_dropout=False)
  return jax.jit(fn)(jax.random.PRNGKey(0))


def _logits(config, params):
  return jax.jit(lambda p: Transformer(config).apply({"params": p}, ENC, DEC_IN, DEC_TGT,
                                                     enable_dropout=False))(params)


def test_position_embeddings_off_is_the_old_model_and_on_adds_two_tables():
  off = nn.meta.unbox(_init(OFF))["params"]
  on_boxed = _init(ON)["params"]
  on = nn.meta.unbox(on_boxed)
  assert not any("position_embedder" in k for k in off["encoder"])
  # Fields as of the checkpoints written before the position embeddings existed.
  assert sorted(OFF.fingerprint_dict()) == sorted([
      "vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
      "num_decoder_layers", "dropout_rate", "mlp_activations",
      "relative_attention_num_buckets", "relative_attention_max_distance", "dtype",
      "logits_via_embedding", "z_loss", "label_smoothing"])
  assert ON.fingerprint_dict()["item_position_embeddings"] == 4
  # The new tables and their logical axes.
  chex.assert_shape(on["encoder"]["item_position_embedder"]["embedding"], (4, OFF.emb_dim))
  chex.assert_shape(on["encoder"]["code_position_embedder"]["embedding"], (2, OFF.emb_dim))
  specs = model_lib.flatten_logical_axes(nn.get_partition_spec(_init(ON)))
  for name in ("item", "code"):
    assert specs[f"params/encoder/{name}_position_embedder/embedding"] == [
        "abspos_buckets", "embed"]
  # Every other parameter is initialized as before (flax folds rngs by module path).
  rest = dict(on["encoder"])
  del rest["item_position_embedder"], rest["code_position_embedder"]
  jax.tree.map(np.testing.assert_array_equal, dict(on, encoder=rest), off)
  # Zero tables give the old outputs; the learned tables change them.
  base = _logits(OFF, off)
  zeroed = jax.tree.map(jnp.zeros_like, on["encoder"]["item_position_embedder"])
  zero_on = dict(on, encoder=dict(on["encoder"], item_position_embedder=zeroed,
                                  code_position_embedder=jax.tree.map(
                                      jnp.zeros_like, on["encoder"]["code_position_embedder"])))
  np.testing.assert_allclose(_logits(ON, zero_on), base, rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(_logits(ON, on)) - np.asarray(base)).max() > 1e-3


def test_config_validation_of_position_fields():
  with pytest.raises(ModelConfigError, match="item_position_embeddings"):
    T5Config.tiny(30, item_position_embeddings=4)   # no item width
  with pytest.raises(ModelConfigError, match="code_position_embeddings"):
    T5Config.tiny(30, code_position_embeddings=3, encoder_tokens_per_item=4)
  with pytest.raises(ModelConfigError, match="encoder_prefix_tokens"):
    T5Config.tiny(30, encoder_prefix_tokens=-1)
  assert T5Config.tiny(30, item_position_embeddings=4, encoder_tokens_per_item=3).item_width == 3
  with pytest.raises(ModelConfigError, match="encoder_prefix_tokens"):   # layout has user buckets
    EncoderDecoderModel.from_config(dataclasses.replace(ON, encoder_prefix_tokens=0), LAYOUT)


def test_mask_modalities_masks_one_whole_modality_per_masked_row():
  item_modalities = (0, 0, 1, 2, 2)
  size, items = 64, 3
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(2, 30, (size, 1 + items * 5)), jnp.int32)
  modality = masking.token_modalities(tokens.shape[1], 1, item_modalities)
  np.testing.assert_array_equal(modality[:6], [-1, 0, 0, 1, 2, 2])
  key = jax.random.PRNGKey(3)
  masked, chosen = masking.mask_modalities(key, tokens, item_modalities, 1, 0.5)
  again, chosen_again = masking.mask_modalities(key, tokens, item_modalities, 1, 0.5)
  np.testing.assert_array_equal(masked, again)
  np.testing.assert_array_equal(chosen, chosen_again)
  masked, chosen, tokens = map(np.asarray, (masked, chosen, tokens))
  assert 10 < (chosen >= 0).sum() < 54 and set(chosen[chosen >= 0]) == {0, 1, 2}
  for row in range(size):
    dropped = masked[row] != tokens[row]
    if chosen[row] < 0:
      assert not dropped.any()
    else:
      np.testing.assert_array_equal(dropped, modality == chosen[row])
      assert (masked[row][dropped] == 0).all()
  assert masked[:, 0].tolist() == tokens[:, 0].tolist()   # the user token stays.
  # Rate 0 or a single modality: nothing is masked.
  for mods, rate in [(item_modalities, 0.0), ((0,) * 5, 0.9)]:
    out, none = masking.mask_modalities(key, jnp.asarray(tokens), mods, 1, rate)
    np.testing.assert_array_equal(out, tokens)
    assert (np.asarray(none) == -1).all()


def test_loss_masks_only_in_training_with_a_key():
  # Encoder columns 0, 1, 4, 5: modalities text, text, collab, collab.
  batch = make_token_batch({"history": np.array([[1, 2, 3], [3, 1, 0]] * 4),
                            "length": np.array([3, 2] * 4), "target": np.array([3, 1] * 4),
                            "user": np.arange(8)}, SIDS, LAYOUT, 3, (4, 5), (0, 1, 4, 5))
  cfg = T5Config.tiny(LAYOUT.vocab_size)   # no dropout: only masking is random.
  kwargs = dict(encoder_token_modalities=(0, 0, 1, 1))
  plain = EncoderDecoderModel.from_config(cfg, LAYOUT.target((4, 5)), **kwargs)
  masking_model = EncoderDecoderModel.from_config(cfg, LAYOUT.target((4, 5)),
                                                  modality_mask_rate=0.5, **kwargs)
  assert masking_model.target_length == 2 and masking_model.encoder_tokens_per_item == 4
  params = nn.meta.unbox(plain.get_initial_variables(
      jax.random.PRNGKey(0), {k: v.shape for k, v in batch.items()}))["params"]
  key = jax.random.PRNGKey(7)
  def loss(model, rng, b=batch):
    if rng is None:
      return float(jax.jit(lambda p, b: model.loss_fn(p, b, None)[0])(params, b))
    return float(jax.jit(lambda p, b, r: model.loss_fn(p, b, r)[0])(params, b, rng))
  base = loss(plain, None)
  assert loss(plain, key) == pytest.approx(base, abs=1e-6)          # rate 0: no masking
  assert loss(masking_model, None) == pytest.approx(base, abs=1e-6)  # no key: evaluation
  masked, chosen = masking_model.mask_modalities(
      jax.random.fold_in(key, model_lib._MASK_SALT), jnp.asarray(batch["encoder_input_tokens"]))
  assert (np.asarray(chosen) >= 0).any()
  expected = loss(plain, None, dict(batch, encoder_input_tokens=masked))
  assert loss(masking_model, key) == pytest.approx(expected, abs=1e-6)
  assert expected != pytest.approx(base, abs=1e-6)
