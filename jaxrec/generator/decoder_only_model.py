"""`DecoderOnlyModel`: the per-sequence decoder-only generator (t5x's decoder-only model)
over `decoder_only_network.DecoderOnlyTransformer`. Training reads a window's code tokens
as one causal sequence (`sequence_batch.make_decoder_only_batch`) with the loss at the
generated columns of every target item; decoding (beam search, greedy, exact scoring) is
inherited from `EncoderDecoderModel` through the network's encoder-decoder interface (the
history encoded once per user, its keys/values shared by every beam).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from jaxrec.generator.config import T5Config
from jaxrec.generator.decoder_only_network import DecoderOnlyTransformer
from jaxrec.generator.errors import ModelConfigError
from jaxrec.generator.model import EncoderDecoderModel, _check_batch, _weights
from jaxrec.generator.vocab import TargetLayout, TokenLayout

Array = jax.Array
PyTree = Any
DECODER_ONLY_KEYS = ("decoder_input_tokens", "decoder_target_tokens")


class DecoderOnlyModel(EncoderDecoderModel):
  """Loss, scores and prediction around a `DecoderOnlyTransformer`.

  Training batches hold decoder_input_tokens / decoder_target_tokens /
  decoder_loss_weights [B, S] (S = U + W * E: user tokens, then W items of E block
  columns, the G generated columns first). Inference takes the history tokens of
  `vocab.make_token_batch` read with the same block columns. Arguments as
  `EncoderDecoderModel`; MSCGRec's dual position embeddings and modality masking do not
  apply (a masked history token would also hide a training target).
  """

  def __init__(self, network: DecoderOnlyTransformer,
               layout: Union[TokenLayout, TargetLayout], config: Optional[T5Config] = None,
               trie: Any = None, constrained_loss: bool = False, decoding: Any = None,
               modality_mask_rate: float = 0.0,
               encoder_token_modalities: Optional[Sequence[int]] = None,
               decode_fn: Optional[Callable[..., Any]] = None):
    super().__init__(network, layout, config, trie, constrained_loss, decoding,
                     modality_mask_rate, encoder_token_modalities, decode_fn)
    if self.config.position_embeddings:
      raise ModelConfigError("the decoder-only layout uses relative positions; MSCGRec's "
                             "dual position embeddings do not apply.",
                             fix="bind generator_job.GeneratorConfig.position_embeddings = "
                                 "False (POSITION_EMBEDDINGS) with training_layout = "
                                 "'decoder_only'.")
    if self.modality_mask_rate > 0.0:
      raise ModelConfigError("modality masking hides history tokens, which in the "
                             "decoder-only sequence are also training targets.",
                             fix="bind MODALITY_MASK_RATE = 0.0 with training_layout = "
                                 "'decoder_only', or use 'item_encoder' / 'per_example'.")
    if self.encoder_tokens_per_item < self.target_length:
      raise ModelConfigError(f"a decoder-only item block of {self.encoder_tokens_per_item} "
                             f"column(s) cannot hold the {self.target_length} generated "
                             "codes.",
                             fix="let the history read the target modality "
                                 "(generator_job.setup orders the block columns).")

  @classmethod
  def make_network(cls, config: T5Config, layout: Union[TokenLayout, TargetLayout],
                   encoder_token_modalities: Optional[Sequence[int]] = None) -> Any:
    """One causal decoder stack over the window's code tokens."""
    del layout, encoder_token_modalities
    return DecoderOnlyTransformer(config)

  # ---------------------------------------------------------------- variables
  def default_input_shapes(self, batch_size: int = 1, max_history: int = 1) -> dict:
    """Shapes of a `make_decoder_only_batch` sequence of max_history + 1 items."""
    width = self.prefix_tokens + (max_history + 1) * self.encoder_tokens_per_item
    return {"decoder_input_tokens": (batch_size, width)}

  def get_initial_variables(self, rng: Array, input_shapes: Optional[Mapping] = None,
                            input_types: Optional[Mapping] = None) -> PyTree:
    """As `EncoderDecoderModel.get_initial_variables` (parameters do not depend on the
    sequence length; only decoder_input_tokens' shape is read)."""
    del input_types
    shapes = dict(self.default_input_shapes())
    shapes.update(input_shapes or {})
    shape = tuple(shapes["decoder_input_tokens"])
    tokens = jnp.ones((shape[0], max(shape[-1], 2)), jnp.int32)
    params_rng, dropout_rng = jax.random.split(rng)
    return self.module.init({"params": params_rng, "dropout": dropout_rng}, None, tokens,
                            enable_dropout=False)

  # ---------------------------------------------------------------- training
  def sequence_logits(self, params: PyTree, batch: Mapping[str, Array],
                      dropout_rng: Optional[Array] = None) -> Array:
    """logits [B, S, vocab] float32 of a sequence batch (dropout with a key)."""
    _check_batch(batch, DECODER_ONLY_KEYS)
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply({"params": params}, None, batch["decoder_input_tokens"],
                             enable_dropout=rngs is not None, rngs=rngs)

  def item_rows(self, x: Array) -> Array:
    """[B, S, ...] sequence-aligned -> [B * W, G, ...]: each item's generated columns."""
    size, length = x.shape[:2]
    block = self.encoder_tokens_per_item
    items = (length - self.prefix_tokens) // block
    x = x[:, self.prefix_tokens:self.prefix_tokens + items * block]
    x = x.reshape((size * items, block) + x.shape[2:])
    return x[:, :self.target_length]

  def loss_fn(self, params: PyTree, batch: Mapping[str, Array],
              dropout_rng: Optional[Array]) -> Tuple[Array, dict]:
    """Token cross-entropy (+ z-loss; constrained per item with `constrained_loss`) at
    the generated columns of every target item, normalized by the weight sum; metrics as
    `EncoderDecoderModel.loss_fn` (sequence_accuracy per target item)."""
    logits = self.sequence_logits(params, batch, dropout_rng)
    return self.token_loss(self.item_rows(logits),
                           self.item_rows(batch["decoder_target_tokens"]),
                           self.item_rows(_weights(batch)))

  def position_logits(self, params: PyTree, batch: Mapping[str, Array]) -> Array:
    """[B, W - 1, G, vocab] float32: the logits of item t + 1's generated codes at
    position t (the layout of `ItemEncoderDecoderModel.sequence_logits`)."""
    logits = self.sequence_logits(params, batch)
    rows = self.item_rows(logits)
    return rows.reshape((logits.shape[0], -1) + rows.shape[1:])[:, 1:]

  def score_batch(self, params: PyTree, batch: Mapping[str, Array]) -> Array:
    """[B, W - 1] float32: log-likelihood of item t + 1's generated codes (weight > 0),
    as `ItemEncoderDecoderModel.score_batch`."""
    logits = self.sequence_logits(params, batch)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    targets = batch["decoder_target_tokens"]
    token_scores = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    token_scores = jnp.where(_weights(batch) > 0, token_scores, 0.0)
    return self.item_rows(token_scores).sum(-1).reshape(targets.shape[0], -1)[:, 1:]
