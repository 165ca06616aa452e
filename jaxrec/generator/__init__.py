"""T5 1.1 generator (t5x layering): config -> layers -> network -> model, plus the token layout."""

from jaxrec.generator.config import T5Config
from jaxrec.generator.errors import ModelConfigError
from jaxrec.generator.model import EncoderDecoderModel, logical_axes
from jaxrec.generator.network import Transformer
from jaxrec.generator.vocab import TargetLayout, TokenLayout, make_token_batch

__all__ = ["T5Config", "EncoderDecoderModel", "ModelConfigError", "logical_axes", "Transformer",
           "TargetLayout", "TokenLayout", "make_token_batch"]
