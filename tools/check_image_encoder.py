"""One-off check of the Flax EfficientNet-Lite port against PyTorch (a tool, not a test).

Run it with jaxrec's Python; it runs the reference half with a second Python that has
torch (e.g. a throwaway venv: pip install torch==2.13.0 numpy). The reference is a
small plain-torch EfficientNet-Lite written here (lukemelas naming, dynamic TF 'SAME'
padding), loading the same .pth with torch.load; both halves get the same uint8 pixels
(resized by jaxrec.encoders.image_io), so only the networks are compared.

  python tools/check_image_encoder.py --torch_python=$REFVENV/bin/python \
      [--models=efficientnet_lite0,efficientnet_lite2] [--images=a.jpg,b.png,...] \
      [--golden=tests/encoders/golden_efficientnet_lite0.json] [--speed=64]

Without --images it takes 4 MovieLens posters and 4 H&M photos from $JAXREC_DATA_DIR
(ml100k/posters, hm/images) plus two generated images. --golden writes the torch
values of the two generated images (first 8 pooled features, their norm, top-5 logits) for
tests/encoders/efficientnet_test.py. --speed=N times Lite0 encoding of N posters.
"""

from __future__ import annotations

import argparse
import base64
import glob
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

GOLDEN_DIMS, GOLDEN_TOP = 8, 5
# name -> (width, depth, resolution): EfficientNet-Lite builder's coefficients.
LITE = {"efficientnet_lite0": (1.0, 1.0, 224), "efficientnet_lite2": (1.1, 1.2, 260)}
# EfficientNet-B0 block strings, as in efficientnet_lite_builder.py (no SE for Lite).
BLOCKS = ["r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40",
          "r3_k3_s22_e6_i40_o80", "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192",
          "r1_k3_s11_e6_i192_o320"]


def golden_images() -> np.ndarray:
  """Two 48x64 test images (non-square, so resize + crop are exercised): [2, 48, 64, 3]."""
  y, x = np.mgrid[0:48, 0:64].astype(np.float64)
  stripes = np.stack([(x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256], -1)
  disc = ((x - 30) ** 2 + (y - 22) ** 2 < 15 ** 2)[..., None]
  blob = np.where(disc, [230, 40, 30], [30, 90, 200]) + 20 * np.sin(x / 5)[..., None]
  return np.clip(np.stack([stripes, blob]), 0, 255).astype(np.uint8)


def png_b64(image: np.ndarray) -> str:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode()


def build_torch_lite(name: str):
  """A plain-torch EfficientNet-Lite with lukemelas' parameter names (reference half)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  width, depth, _ = LITE[name]

  def round_filters(f):
    f *= width
    new = max(8, int(f + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * f else new)

  class SameConv(nn.Conv2d):
    def forward(self, x):
      ih, iw = x.shape[-2:]
      kh, kw = self.weight.shape[-2:]
      sh, sw = self.stride
      ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
      pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
      x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
      return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)

  def bn(c):
    return nn.BatchNorm2d(c, momentum=0.01, eps=1e-3)

  class Block(nn.Module):
    def __init__(self, k, s, e, cin, cout):
      super().__init__()
      hid, self.expand, self.skip = cin * e, e != 1, s == 1 and cin == cout
      if self.expand:
        self._expand_conv, self._bn0 = SameConv(cin, hid, 1, bias=False), bn(hid)
      self._depthwise_conv = SameConv(hid, hid, k, stride=s, groups=hid, bias=False)
      self._bn1 = bn(hid)
      self._project_conv, self._bn2 = SameConv(hid, cout, 1, bias=False), bn(cout)

    def forward(self, inputs):
      x = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
      x = F.relu6(self._bn1(self._depthwise_conv(x)))
      x = self._bn2(self._project_conv(x))
      return x + inputs if self.skip else x

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self._conv_stem, self._bn0 = SameConv(3, 32, 3, stride=2, bias=False), bn(32)
      blocks = []
      for i, s in enumerate(BLOCKS):
        o = dict((p[0], p[1:]) for p in s.split("_"))
        r, k, st, e = int(o["r"]), int(o["k"]), int(o["s"][0]), int(o["e"])
        cin = 32 if i == 0 else round_filters(int(o["i"]))
        cout = round_filters(int(o["o"]))
        if 0 < i < len(BLOCKS) - 1:  # fix_head_stem: first and last stage not repeated more.
          r = int(math.ceil(depth * r))
        for j in range(r):
          blocks.append(Block(k, st if j == 0 else 1, e, cin if j == 0 else cout, cout))
      self._blocks = nn.ModuleList(blocks)
      self._conv_head, self._bn1 = SameConv(cout, 1280, 1, bias=False), bn(1280)
      self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
      x = F.relu6(self._bn0(self._conv_stem(x)))
      for b in self._blocks:
        x = b(x)
      pooled = F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))
      return pooled, self._fc(pooled)

  return Net()


def reference(args) -> None:
  """Torch half: the .pth through the plain-torch model -> npz(features, logits)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  model = build_torch_lite(args.name)
  state = torch.load(args.weights, map_location="cpu", weights_only=True)
  model.load_state_dict(state, strict=True)
  model.eval()
  images = np.load(args.images)
  x = (torch.from_numpy(images).float().permute(0, 3, 1, 2) - 127.0) / 128.0
  with torch.no_grad():
    features, logits = model(x)
  np.savez(args.out, features=features.numpy(), logits=logits.numpy(),
           torch=np.array(torch.__version__))


def _default_images(data_dir: str) -> list:
  out = []
  for sub, n in (("ml100k/posters", 4), ("hm/images", 4)):
    out += sorted(glob.glob(os.path.join(data_dir, sub, "*.jpg")))[:n]
  return out


def _labels() -> list:
  try:
    from tensorflow_datasets.datasets.siscore import labels  # pylint: disable=g-import-not-at-top
    return [s.split(",")[0] for s in labels.IMAGENET_LABELS_LIST]
  except ImportError:
    return [str(i) for i in range(1000)]


def compare(args) -> None:
  """JAX half: encode the images, run the torch half, report differences."""
  from jaxrec.encoders import efficientnet  # pylint: disable=g-import-not-at-top
  from jaxrec.encoders import image_io  # pylint: disable=g-import-not-at-top
  paths = (args.images.split(",") if args.images
           else _default_images(os.environ.get("JAXREC_DATA_DIR", "")))
  labels = _labels()
  for name in args.models.split(","):
    enc = efficientnet.load_efficientnet(name)
    r = enc.resolution
    decoded = [image_io.decode_image(p, r) for p in paths]
    bad = [(p, d[2]) for p, d in zip(paths, decoded) if d[0] is None]
    if bad:
      raise SystemExit(f"unreadable images: {bad}")
    names = [os.path.relpath(p, os.path.dirname(os.path.dirname(p))) for p in paths]
    names += ["generated-0", "generated-1"]
    pixels = np.concatenate([np.stack([d[0] for d in decoded]).reshape(-1, r, r, 3),
                             image_io.resize_center_crop_batch(golden_images(), r)])
    features, logits = enc.features_and_logits(pixels, batch_size=4, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
      np.save(os.path.join(tmp, "images.npy"), pixels)
      subprocess.run([args.torch_python, os.path.abspath(__file__), "--reference",
                      f"--name={name}", f"--weights={enc.weights_path}",
                      f"--images={tmp}/images.npy", f"--out={tmp}/ref.npz"], check=True)
      ref = dict(np.load(os.path.join(tmp, "ref.npz")))
    top_ours, top_ref = logits.argmax(1), ref["logits"].argmax(1)
    print(f"== {name} ({enc.weights_path}); torch {ref['torch']}; {len(pixels)} images at {r}px")
    print(f"pooled features: max |jax - torch| = {np.abs(features - ref['features']).max():.3g}"
          f" (max |torch| {np.abs(ref['features']).max():.3g})")
    print(f"logits:          max |jax - torch| = {np.abs(logits - ref['logits']).max():.3g}"
          f" (max |torch| {np.abs(ref['logits']).max():.3g})")
    print(f"top-1 agreement: {(top_ours == top_ref).sum()}/{len(pixels)}")
    for n, row in zip(names, logits):
      top = np.argsort(-row)[:3]
      print(f"  {n:32s} " + ", ".join(f"{labels[i]} ({row[i]:.1f})" for i in top))
    if args.golden and name == "efficientnet_lite0":
      rows = [{"png_base64": png_b64(img),
               "first_features": [round(float(v), 6) for v in ref["features"][len(paths) + i,
                                                                              :GOLDEN_DIMS]],
               "feature_norm": round(float(np.linalg.norm(ref["features"][len(paths) + i])), 6),
               "top_indices": [int(j) for j in np.argsort(-ref["logits"][len(paths) + i])[
                   :GOLDEN_TOP]],
               "top_logits": [round(float(ref["logits"][len(paths) + i, j]), 6) for j in
                              np.argsort(-ref["logits"][len(paths) + i])[:GOLDEN_TOP]]}
              for i, img in enumerate(golden_images())]
      golden = {"model": name, "weights": os.path.basename(enc.weights_path),
                "preprocess": "image_io.resize_center_crop_batch to 224, (x - 127) / 128",
                "source": f"plain-torch EfficientNet-Lite in tools/check_image_encoder.py, "
                          f"torch {ref['torch']} CPU float32", "images": rows}
      with open(args.golden, "w") as f:
        json.dump(golden, f, indent=1)
      print(f"wrote {args.golden}")
  if args.speed:
    _speed(args.speed, os.environ.get("JAXREC_DATA_DIR", ""))


def _speed(n: int, data_dir: str) -> None:
  """Times EfficientNet-Lite0 on n posters (decoding excluded; compile reported apart)."""
  from jaxrec.encoders import efficientnet  # pylint: disable=g-import-not-at-top
  from jaxrec.encoders import image_io  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(data_dir, "ml100k/posters/*.jpg")))[:n]
  start = time.time()
  pixels = np.stack([image_io.decode_image(p, 224)[0] for p in paths])
  decode = time.time() - start
  enc = efficientnet.load_efficientnet("efficientnet_lite0")
  start = time.time()
  enc.encode(pixels[:32], batch_size=32, progress=False)
  first = time.time() - start
  start = time.time()
  enc.encode(pixels, batch_size=32, progress=False)
  steady = time.time() - start
  print(f"speed: {len(pixels)} posters, decode+resize {len(pixels) / decode:.0f} images/s; "
        f"lite0 first batch of 32 (with compile) {first:.1f}s, then {len(pixels) / steady:.1f} "
        f"images/s (batch 32); load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--torch_python", default=sys.executable)
  parser.add_argument("--models", default="efficientnet_lite0,efficientnet_lite2")
  parser.add_argument("--images", default="", help="comma-separated image files")
  parser.add_argument("--golden", default="")
  parser.add_argument("--speed", type=int, default=0)
  parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--name", help=argparse.SUPPRESS)
  parser.add_argument("--weights", help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.reference:
    reference(args)
  else:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    compare(args)


if __name__ == "__main__":
  main()
