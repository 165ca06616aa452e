"""The image semantic-ID job (MSCGRec's image modality): item images -> DINO-RQ codes -> IDs.

Artifacts in the workdir:
  semantic_ids.npy         [num_items, L'] int32, row r = item id r + 1 (collisions resolved)
  image_embeddings.npy     [num_items, code_dim] float32 student embeddings before
                           quantization (+ .json sidecar): the input of the
                           "extract, then quantize" baseline (tools/build_semantic_ids.py)
  tokenizer_stats.json     collision rate before/after, per-level usage, agreement (NMI)
                           of the codes with every categorical item attribute against a
                           label-shuffled baseline, the image report (items with an image,
                           missing, unreadable), timings, the training curve, the fingerprint
  codebook_usage.png
  dino_rq_checkpoints/     Orbax checkpoints; an interrupted fit resumes from the latest

Items without a readable image are tokenized from a black image (all share its codes up
to the collision level) and counted in the stats; the fit uses the items with an image.
The job always computes: the pipeline's stage (the "semantic_ids" stage of MSCGRec's
run, or the one-stage pipeline tools/run.py runs gin_configs/runs/image_ids.gin in) skips
it when up to date.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import jax
import numpy as np

from jaxrec import files
from jaxrec import fingerprints
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.encoders import image_io
from jaxrec.jobs import item_job
from jaxrec.quantizers import agreement
from jaxrec.quantizers import dino_rq
from jaxrec.quantizers import semantic_ids
from jaxrec.jobs import tokenizer_job


@dataclasses.dataclass(frozen=True)
class ImageIdsJobConfig:
  """What the image-ID job does besides the model and training configs.

  Attributes:
    collision: "extra_level" (TIGER), "sinkhorn" (LETTER) or "nearest_unused".
    checkpoint_every: DINO-RQ steps between checkpoints.
    max_items: fit and tokenize only the first this many items with an image
      (a quick look at a big catalog); None = all. The IDs file then still has one
      row per item; items left out are tokenized like the rest after the fit.
  """
  collision: str = "extra_level"
  checkpoint_every: int = 200
  max_items: Optional[int] = None


def fingerprint(dataset: DatasetConfig, *configs) -> str:
  """`fingerprints.fingerprint` of the dataset and configs (identifies the checkpoints)."""
  return fingerprints.fingerprint([dataset, *configs])


def load_images(dataset: DatasetConfig, size: int, progress: bool = True,
                image_dir: Optional[str] = None):
  """(SequentialDataset, ItemImages [N + 1, size, size, 3]) of a dataset's items.

  image_dir: a folder of `<raw item id>.jpg|jpeg|png` to read instead of the dataset's
  own images (any dataset, e.g. your photos of the Beauty items).
  """
  data = dataset.load()
  return data, image_io.load_readable_images(data.item_table, size, dataset_name=dataset.name,
                                             image_dir=image_dir, progress=progress)


def attribute_agreement(codes: np.ndarray, attributes: dict, seed: int = 0) -> dict:
  """{attribute: agreement.nmi_report(codes, labels)} for every categorical attribute.

  codes: [N, L] int; attributes: name -> [N + 1] int32 (row 0 padding, -1 unknown).
  """
  out = {}
  for name, labels in sorted(attributes.items()):
    labels = np.asarray(labels)[1:]
    if (labels >= 0).sum() >= 2 and len(np.unique(labels[labels >= 0])) >= 2:
      out[name] = agreement.nmi_report(codes, labels, seed=seed)
  return out


def _fit(images, model_config, train_config, job, workdir, fp, progress):
  """DINO-RQ with Orbax checkpoints every job.checkpoint_every steps; resumes from the latest."""
  state, history = tokenizer_job.fit_resumably(
      os.path.join(workdir, "dino_rq_checkpoints"), fp, job.checkpoint_every,
      lambda: jax.eval_shape(lambda: dino_rq.init_dino_rq_state(images, model_config,
                                                                train_config)),
      lambda start, on_step: dino_rq.fit_dino_rq(images, model_config, train_config,
                                                 start_state=start, on_step=on_step,
                                                 progress=progress, compute_codes=False),
      "DINO-RQ", progress)
  return state, history.metrics


def build_image_semantic_ids(workdir: str, dataset: DatasetConfig = DatasetConfig(),
                             model_config: dino_rq.DinoRqConfig = dino_rq.DinoRqConfig(),
                             train_config: dino_rq.DinoRqTrainConfig = dino_rq.DinoRqTrainConfig(),
                             job: ImageIdsJobConfig = ImageIdsJobConfig(),
                             image_size: Optional[int] = None,
                             image_dir: Optional[str] = None,
                             progress: bool = True) -> dict:
  """Fits DINO-RQ on the item images and writes the image semantic IDs and their stats.

  Args:
    workdir: output folder (see the module docstring).
    dataset: which catalog (item images from `item_table.image_paths` or the
      synthetic catalog's rendered images).
    model_config: DINO-RQ (ViT, crops, quantizer, head).
    train_config: its optimization.
    job: collision strategy, checkpointing, item cap.
    image_size: host load size; default: the global crop size.
    image_dir: read the images from this folder of `<raw item id>.jpg|jpeg|png`
      instead of the dataset's own (part of the fingerprint).
    progress: progress bars and prints.

  Returns:
    The stats dict written to tokenizer_stats.json.
  """
  if job.collision not in semantic_ids.STRATEGIES:
    raise DataError(f"unknown collision strategy {job.collision!r}",
                    path="ImageIdsJobConfig.collision",
                    fix=f"use one of {semantic_ids.STRATEGIES}.")
  size = int(image_size or model_config.crops.global_size)
  os.makedirs(workdir, exist_ok=True)
  ids_path, stats_path = tokenizer_job.artifact_paths(workdir)
  emb_path = os.path.join(workdir, "image_embeddings.npy")
  fp = fingerprint(dataset, model_config, train_config, job, size,
                   os.path.abspath(image_dir) if image_dir else None)
  started = time.perf_counter()
  data, item_images = load_images(dataset, size, progress, image_dir)
  loaded = time.perf_counter()
  all_images = item_images.images[1:]
  fit_rows = np.flatnonzero(item_images.has_image[1:])
  if job.max_items is not None:
    fit_rows = fit_rows[:job.max_items]
  train_images = dino_rq.check_images(all_images[fit_rows], model_config,
                                      source=f"dataset {dataset.name!r} images")
  state, curve = _fit(train_images, model_config, train_config, job, workdir, fp, progress)
  fitted = time.perf_counter()
  tokens = dino_rq.dino_rq_tokens(state, all_images, model_config)
  embeddings = dino_rq.dino_rq_embeddings(state, all_images, model_config)
  ids = semantic_ids.assemble(tokens.codes, job.collision, last_residuals=tokens.last_residuals,
                              last_codebook=tokens.last_codebook)
  with_image = item_images.has_image[1:]
  stats = {
      "fingerprint": fp, "modality": "image", "method": "dino_rq",
      "collision_strategy": job.collision, "dataset": dataset.name,
      "num_items": int(data.num_items), "items_fitted": int(len(fit_rows)),
      "image_report": item_images.report, "image_size": size,
      "num_levels": model_config.num_levels, "codebook_size": model_config.codebook_size,
      "id_length": int(ids.shape[1]),
      "seconds_load_images": round(loaded - started, 2),
      "fit_seconds": round(fitted - loaded, 2), "train_steps": train_config.num_steps,
      "before": semantic_ids.collision_stats(tokens.codes, model_config.codebook_size),
      "after": semantic_ids.collision_stats(ids),
      # Agreement over the items with an image (black-image items would all share codes).
      "agreement": attribute_agreement(tokens.codes[with_image], {
          k: np.concatenate([[-1], np.asarray(v)[1:][with_image]])
          for k, v in data.item_table.attributes.items()}),
      "training_curve": curve, "jax_backend": jax.default_backend(),
  }
  stats["total_seconds"] = round(time.perf_counter() - started, 2)
  sidecar = item_job.sidecar_path(emb_path)
  if os.path.exists(sidecar):
    os.remove(sidecar)
  files.save_npy(emb_path, embeddings)
  files.write_json(sidecar, {
      "fingerprint": fp, "modality": "image", "encoder": "dino_rq (student, pre-quantization)",
      "dim": int(embeddings.shape[1]), "num_items": int(data.num_items),
      "rows": "row r is item id r + 1", "dataset": dataset.name,
      "items_without_image": int((~with_image).sum())}, indent=2)
  files.save_npy(ids_path, ids)
  tokenizer_job.plot_usage(tokens.codes, model_config.codebook_size,
                           os.path.join(workdir, "codebook_usage.png"),
                           title=f"DINO-RQ image codes: {data.num_items:,} items, collision "
                                 f"rate {stats['before']['collision_rate']:.3f}")
  files.write_json(stats_path, stats, default=str)
  if progress:
    print(f"{data.num_items:,} items ({int(with_image.sum()):,} with an image) -> image IDs of "
          f"length {ids.shape[1]} in {stats['total_seconds']:.1f}s; "
          f"{tokenizer_job.collision_summary(stats)}")
    for name, rep in stats["agreement"].items():
      print(f"  NMI with {name}: first level {rep['nmi_first']:.3f} "
            f"(shuffled max {rep['shuffled_first_max']:.3f})")
  return stats
