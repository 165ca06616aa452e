"""`ItemEncoderDecoderModel`: the per-sequence generator (every item of a window is a
target in one pass) over `item_network.ItemTransformer`. Decoding is inherited from
`EncoderDecoderModel` (`encode` once per user, `cross_attention_kv` shared by every beam,
`init_cache` / `decode_step`, `score_codes`): the network's `encode` / `decode` have the
same signatures, so the trie beam search, greedy decoding and exact scoring run unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from jaxrec.generator.config import T5Config
from jaxrec.generator.errors import ModelConfigError
from jaxrec.generator.item_network import ItemTransformer
from jaxrec.generator.model import _MASK_SALT, EncoderDecoderModel, _check_batch, _weights
from jaxrec.generator.vocab import TargetLayout, TokenLayout

Array = jax.Array
PyTree = Any
SEQUENCE_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")


class ItemEncoderDecoderModel(EncoderDecoderModel):
  """Loss, scores and prediction around an `ItemTransformer`.

  Training batches (`sequence_batch.make_sequence_token_batch`) hold a window of n
  items: encoder_input_tokens [B, U + n * E] (the window's items but the last),
  decoder_input_tokens / decoder_target_tokens / decoder_loss_weights [B, n, L]
  (position t: the codes of item t + 1). At inference the encoder input is the
  history of `vocab.make_token_batch` and the decoder reads the last item's state.
  Attributes and arguments as `EncoderDecoderModel`; MSCGRec's dual position
  embeddings are added to each code before an item's codes are summed
  (`item_network.CausalItemEncoder`).
  """

  def __init__(self, network: ItemTransformer, layout: Union[TokenLayout, TargetLayout],
               config: Optional[T5Config] = None, trie: Any = None,
               constrained_loss: bool = False, decoding: Any = None,
               modality_mask_rate: float = 0.0,
               encoder_token_modalities: Optional[Sequence[int]] = None,
               decode_fn: Optional[Callable[..., Any]] = None):
    super().__init__(network, layout, config, trie, constrained_loss, decoding,
                     modality_mask_rate, encoder_token_modalities, decode_fn)
    if (network.prefix, network.tokens_per_item) != (self.prefix_tokens,
                                                     self.encoder_tokens_per_item):
      raise ModelConfigError(f"ItemTransformer(prefix={network.prefix}, tokens_per_item="
                             f"{network.tokens_per_item}) does not match the layout's "
                             f"{self.prefix_tokens} user token(s) and "
                             f"{self.encoder_tokens_per_item} encoder tokens per item.",
                             fix="build it with ItemEncoderDecoderModel.from_config.")

  @classmethod
  def make_network(cls, config: T5Config, layout: Union[TokenLayout, TargetLayout],
                   encoder_token_modalities: Optional[Sequence[int]] = None) -> Any:
    """The causal item encoder + code decoder, sized for the layout's user token and the
    encoder tokens (columns) per item."""
    target = layout.target() if isinstance(layout, TokenLayout) else layout
    prefix = 1 if target.num_user_buckets else 0
    width = (len(encoder_token_modalities) if encoder_token_modalities is not None
             else target.num_levels)
    return ItemTransformer(config, prefix, width)

  # ---------------------------------------------------------------- variables
  def default_input_shapes(self, batch_size: int = 1, max_history: int = 1) -> dict:
    """Shapes of the token arrays of `make_sequence_token_batch` (n = max_history)."""
    return {"encoder_input_tokens": (batch_size, self.prefix_tokens +
                                     max_history * self.encoder_tokens_per_item),
            "decoder_input_tokens": (batch_size, max_history, self.target_length)}

  def get_initial_variables(self, rng: Array, input_shapes: Optional[Mapping] = None,
                            input_types: Optional[Mapping] = None) -> PyTree:
    """As `EncoderDecoderModel.get_initial_variables` (shapes of a sequence batch)."""
    del input_types
    shapes = dict(self.default_input_shapes())
    shapes.update(input_shapes or {})
    encoder_tokens = jnp.ones(shapes["encoder_input_tokens"], jnp.int32)
    # [B, n, L], or [rows, L] (packed rows, or an inference request): the parameters
    # depend on L only, so initialize on every position of the encoder's B windows.
    num_levels = tuple(shapes["decoder_input_tokens"])[-1]
    items = (encoder_tokens.shape[1] - self.prefix_tokens) // self.encoder_tokens_per_item
    decoder_tokens = jnp.ones((encoder_tokens.shape[0], items, num_levels), jnp.int32)
    params_rng, dropout_rng = jax.random.split(rng)
    return self.module.init({"params": params_rng, "dropout": dropout_rng}, encoder_tokens,
                            decoder_tokens, enable_dropout=False)

  # ---------------------------------------------------------------- training
  def sequence_logits(self, params: PyTree, batch: Mapping[str, Array],
                      dropout_rng: Optional[Array] = None) -> Array:
    """logits [B, n, L, vocab] float32 of a sequence batch (dropout with a key); of a
    packed batch (`sequence_batch.pack_target_rows`, with decoder_row_window /
    decoder_row_position), [R, L, vocab] for its R rows."""
    _check_batch(batch, SEQUENCE_KEYS)
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply({"params": params}, batch["encoder_input_tokens"],
                             batch["decoder_input_tokens"], enable_dropout=rngs is not None,
                             rngs=rngs, decoder_row_window=batch.get("decoder_row_window"),
                             decoder_row_position=batch.get("decoder_row_position"))

  def loss_fn(self, params: PyTree, batch: Mapping[str, Array],
              dropout_rng: Optional[Array]) -> Tuple[Array, dict]:
    """Token cross-entropy (+ z-loss; constrained per position with `constrained_loss`)
    over every weighted position of every window, normalized by the weight sum.

    Modality masking (training only) hides one modality of a whole window's history.
    Packed batches (`sequence_batch.pack_target_rows`) give the same loss with the
    decoder run over their target rows only.
    Returns (loss, metrics) as `EncoderDecoderModel.loss_fn`.
    """
    if dropout_rng is not None and self.modality_mask_rate > 0.0:
      _check_batch(batch, SEQUENCE_KEYS)
      encoder_tokens, _ = self.mask_modalities(
          jax.random.fold_in(dropout_rng, _MASK_SALT), batch["encoder_input_tokens"])
      batch = dict(batch, encoder_input_tokens=encoder_tokens)
    logits = self.sequence_logits(params, batch, dropout_rng)
    num_levels = logits.shape[-2]
    rows = lambda x: x.reshape((-1, num_levels) + x.shape[logits.ndim - 1:])  # noqa: E731
    return self.token_loss(rows(logits), rows(batch["decoder_target_tokens"]),
                           rows(_weights(batch)))

  def position_logits(self, params: PyTree, batch: Mapping[str, Array]) -> Array:
    """[B, n, L, vocab] float32: position t's logits of item t + 1's codes."""
    return self.sequence_logits(params, batch)

  def score_batch(self, params: PyTree, batch: Mapping[str, Array]) -> Array:
    """[B, n] float32 ([R] packed): log-likelihood of each position's target item
    (weight > 0)."""
    logits = self.sequence_logits(params, batch)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    targets = batch["decoder_target_tokens"]
    token_scores = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(_weights(batch) > 0, token_scores, 0.0), axis=-1)
