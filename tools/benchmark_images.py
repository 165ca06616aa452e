"""Image codes vs item labels: DINO-RQ beside the "extract, then quantize" baselines.

For each dataset (synthetic: rendered attributes; ml100k: posters vs first genre; hm:
photos vs product group), in one run:
  dino_rq        DINO-RQ (gin_configs/tokenizers/dino_rq.gin): codes trained by
                 self-distillation with the quantizer before the head
  dino_then_rq   the same DINO recipe and budget with the head on the unquantized
                 embedding and no quantization loss, then residual k-means on its
                 embeddings (MSCGRec's post-quantization ablation)
  effnet_then_rq ImageNet EfficientNet-Lite0 features, then residual k-means
  pixels_then_rq the raw pixels at the DINO image size, then residual k-means (a floor)
Each: normalized mutual information of the first-level codes and of the two-level
prefix with the label, beside the max over 10 label shuffles, first-level codes used,
collision rate and seconds. All quantizers use the same levels x codebook size.

  python tools/benchmark_images.py --datasets=synthetic,ml100k,hm --workdir=/tmp/bench_images

Real datasets come from $JAXREC_DATA_DIR. Writes <workdir>/benchmark_images.{json,md};
the DINO fits keep their artifacts in <workdir>/<dataset>/ (a rerun skips them).
EfficientNet runs at about 7 images/s on 2 CPU cores, so --effnet_max_items caps the
labelled items it encodes (default 1,500; the rest of the table uses every item).
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from jaxrec import configs
from jaxrec import files
from jaxrec.data.config import DatasetConfig
from jaxrec.encoders import efficientnet
from jaxrec.encoders import image_io
from jaxrec.quantizers import agreement
from jaxrec.quantizers import semantic_ids
from jaxrec.quantizers import training as qtraining
from jaxrec.jobs import image_tokenizer_job

LABELS = {"synthetic": "color", "ml100k": "genre", "hm": "product_group"}

_DATASETS = flags.DEFINE_list("datasets", ["synthetic", "ml100k", "hm"], "datasets to run.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/bench_images", "output folder.")
_STEPS = flags.DEFINE_integer("steps", None, "DINO steps (default: the gin file's).")
_EFFNET_MAX = flags.DEFINE_integer("effnet_max_items", 1500,
                                   "labelled items EfficientNet encodes at most (0 = skip).")
_SYNTHETIC_ITEMS = flags.DEFINE_integer("synthetic_items", 600, "synthetic catalog size.")


def dataset_config(name: str) -> DatasetConfig:
  if name == "synthetic":
    return DatasetConfig(name="synthetic", options={"num_items": _SYNTHETIC_ITEMS.value,
                                                    "num_users": 200, "image_size": 32})
  return DatasetConfig(name=name)


def dino_configs():
  """(DinoRqConfig, DinoRqTrainConfig, ImageIdsJobConfig) bound by the gin files."""
  configs.parse(["gin_configs/runs/image_ids.gin"], ["WORKDIR = '/unused'"])
  bound = configs.bound_arguments(image_tokenizer_job.build_image_semantic_ids)
  train = bound["train_config"]
  if _STEPS.value:
    train = dataclasses.replace(train, num_steps=_STEPS.value)
  return bound["model_config"], train, bound["job"]


def score(codes: np.ndarray, labels: np.ndarray, codebook_size: int, seconds: float) -> dict:
  """NMI report of codes [n, L] vs labels [n] (-1 ignored) + usage, collisions, time."""
  rep = agreement.nmi_report(codes, labels)
  return {"nmi_first": rep["nmi_first"], "nmi_prefix": rep["nmi_prefix"],
          "shuffled_first_max": rep["shuffled_first_max"],
          "shuffled_prefix_max": rep["shuffled_prefix_max"],
          "first_level_used": rep["first_level_used"], "labelled": rep["num_labelled"],
          "collision_rate": semantic_ids.collision_stats(codes, codebook_size)["collision_rate"],
          "seconds": round(seconds, 1)}


def rq_codes(x: np.ndarray, model_config) -> np.ndarray:
  """Residual k-means codes [n, L] of features [n, d], first reduced by PCA to code_dim.

  Without the PCA, residual k-means on 1280-d features puts most items in one cluster
  at levels 2-3 (hubness: after level 1 the residuals are near-isotropic noise), which
  would make the baseline look worse than it is.
  """
  x = np.asarray(x, np.float64)
  x = x - x.mean(0)
  if x.shape[1] > model_config.code_dim:
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    x = x @ vt[:model_config.code_dim].T
  x = (x / (x.std() + 1e-9)).astype(np.float32)
  return qtraining.fit_rqkmeans(x, model_config.num_levels, model_config.codebook_size).codes


def run_dataset(name: str, workdir: str) -> dict:
  model_config, train_config, job = dino_configs()
  dataset = dataset_config(name)
  size = model_config.crops.global_size
  data, item_images = image_tokenizer_job.load_images(dataset, size, progress=False)
  has = item_images.has_image[1:]
  labels = np.asarray(data.item_table.attributes[LABELS[name]])[1:]
  labels = np.where(has, labels, -1)  # Agreement over the items with an image.
  out = {"dataset": name, "label": LABELS[name], "num_items": int(data.num_items),
         "with_image": int(has.sum()), "labelled": int((labels >= 0).sum()),
         "image_report": {k: v for k, v in item_images.report.items() if k != "skipped"},
         "model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config),
         "methods": {}}
  k = model_config.codebook_size

  def dino(tag, config):
    t = time.perf_counter()
    stats = image_tokenizer_job.build_image_semantic_ids(
        os.path.join(workdir, name, tag), dataset, config, train_config, job, progress=True)
    ids = np.load(os.path.join(workdir, name, tag, "semantic_ids.npy"))
    emb = np.load(os.path.join(workdir, name, tag, "image_embeddings.npy"))
    return ids[:, :config.num_levels], emb, stats.get("fit_seconds", time.perf_counter() - t)

  codes, _, secs = dino("dino_rq", model_config)
  out["methods"]["dino_rq"] = score(codes, labels, k, secs)
  plain = dataclasses.replace(model_config, quantize_before_head=False, quantization_weight=0.0)
  _, emb, secs = dino("dino_plain", plain)
  t = time.perf_counter()
  out["methods"]["dino_then_rq"] = score(rq_codes(emb[has], model_config), labels[has], k,
                                         secs + time.perf_counter() - t)
  t = time.perf_counter()
  pixels = item_images.images[1:][has].reshape(int(has.sum()), -1)
  out["methods"]["pixels_then_rq"] = score(rq_codes(pixels, model_config), labels[has], k,
                                           time.perf_counter() - t)
  rows = np.flatnonzero(has & (labels >= 0))[:_EFFNET_MAX.value]
  if len(rows) >= k:
    t = time.perf_counter()
    cache = os.path.join(workdir, name, "effnet_features.npz")
    old = np.load(cache) if os.path.isfile(cache) else None
    if old is not None and np.array_equal(old["rows"], rows):
      feats, seconds = old["features"], float(old["seconds"])
    else:
      encoder = efficientnet.load_efficientnet("efficientnet_lite0")
      big = image_io.load_item_images(data.item_table.subset(rows + 1), encoder.resolution,
                                      progress=False)
      feats = encoder.encode(big.images[1:], batch_size=32, progress=True)
      seconds = time.perf_counter() - t
      files.write_atomically(cache, lambda f: np.savez(f, rows=rows, features=feats,
                                                       seconds=seconds))
    t = time.perf_counter() - seconds
    out["methods"]["effnet_then_rq"] = score(rq_codes(feats, model_config), labels[rows], k,
                                             time.perf_counter() - t)
    out["methods"]["effnet_then_rq"]["items"] = int(len(rows))
  return out


def markdown(results: list) -> str:
  lines = ["| dataset (label) | method | NMI first level (shuffled max) | NMI 2-level prefix "
           "(shuffled max) | first-level codes used | collision rate | seconds |",
           "|---|---|---|---|---|---|---|"]
  for r in results:
    for method, m in r["methods"].items():
      lines.append(f"| {r['dataset']} ({r['label']}, {m['labelled']:,} items) | {method} | "
                   f"{m['nmi_first']:.3f} ({m['shuffled_first_max']:.3f}) | "
                   f"{m['nmi_prefix']:.3f} ({m['shuffled_prefix_max']:.3f}) | "
                   f"{m['first_level_used']} | {m['collision_rate']:.3f} | {m['seconds']:.0f} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint save at INFO.
  os.makedirs(_WORKDIR.value, exist_ok=True)
  results = []
  for name in _DATASETS.value:
    if name not in LABELS:
      raise app.UsageError(f"--datasets: {name!r} has no images; use {sorted(LABELS)}")
    results.append(run_dataset(name, _WORKDIR.value))
    files.write_json(os.path.join(_WORKDIR.value, "benchmark_images.json"), results, indent=1)
    table = markdown(results)
    files.write_text(os.path.join(_WORKDIR.value, "benchmark_images.md"), table)
    print(table)


if __name__ == "__main__":
  app.run(main)
