"""MSCGRec's item IDs: one semantic-ID sequence per modality, concatenated.

text   -> RQ-VAE over the text embeddings               (workdir/text/, tokenizer_job)
image  -> DINO-RQ over the item images                  (workdir/image/, image_tokenizer_job)
collab -> RQ-VAE over SASRec's item embeddings          (workdir/collab/, tokenizer_job)

Each modality's IDs end in their own collision level (TIGER's extra level by default), so
each modality alone names every item uniquely and any of them can be the decode target.
Artifacts in the workdir: `semantic_ids.npy` [num_items, sum of L_m] int32 (columns in
the order text, image, collab), `modalities.json` (each modality's columns,
`quantizers.modalities`), `tokenizer_stats.json` (every modality's stats and those of the
concatenation) and the sub-jobs' folders. The job always computes every modality (jobs
never skip themselves): the pipeline's "semantic_ids" stage skips it when up to date, and an
interrupted build resumes each modality's fit from its checkpoints.
"""

from __future__ import annotations

import os
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from jaxrec import files
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.quantizers import dino_rq
from jaxrec.quantizers import modalities as modalities_lib
from jaxrec.quantizers import rqvae
from jaxrec.quantizers import semantic_ids
from jaxrec.quantizers import training as qtraining
from jaxrec.jobs import image_tokenizer_job
from jaxrec.jobs import tokenizer_job

ORDER = ("text", "image", "collab")


def build_multimodal_ids(
    workdir: str, features: Mapping[str, str], dataset: DatasetConfig = DatasetConfig(),
    modalities: Sequence[str] = ORDER,
    text_model: rqvae.RqVaeConfig = rqvae.RqVaeConfig(),
    text_train: qtraining.TokenizerTrainConfig = qtraining.TokenizerTrainConfig(),
    collab_model: rqvae.RqVaeConfig = rqvae.RqVaeConfig(),
    collab_train: qtraining.TokenizerTrainConfig = qtraining.TokenizerTrainConfig(),
    job: tokenizer_job.TokenizerJobConfig = tokenizer_job.TokenizerJobConfig(),
    image_model: dino_rq.DinoRqConfig = dino_rq.DinoRqConfig(),
    image_train: dino_rq.DinoRqTrainConfig = dino_rq.DinoRqTrainConfig(),
    image_job: image_tokenizer_job.ImageIdsJobConfig = image_tokenizer_job.ImageIdsJobConfig(),
    image_size: Optional[int] = None, progress: bool = True) -> dict:
  """Builds each used modality's IDs and writes their concatenation (see module docstring).

  Args:
    workdir: output folder.
    features: {"text": [num_items, d] .npy, "collab": [num_items, d'] .npy} from the
      pipeline (the image modality reads the dataset's images itself).
    dataset: the catalog (its images, for DINO-RQ).
    modalities: the modalities to tokenize (the pipeline passes those it uses).
    text_model, text_train: the text RQ-VAE and its training.
    collab_model, collab_train: the collaborative RQ-VAE and its training.
    job: method and collision strategy of both RQ-VAE modalities.
    image_model, image_train, image_job: DINO-RQ, its training and collision strategy.
    image_size: host load size of the images (default: DINO-RQ's global crop size).
    progress: progress bars and prints.

  Returns:
    The stats written to tokenizer_stats.json.

  Raises:
    DataError: an unknown modality, a missing feature file, or sub-job errors.
  """
  used = [m for m in ORDER if m in modalities]
  unknown = [m for m in modalities if m not in ORDER]
  if unknown or not used:
    raise DataError(f"unknown or no modalities {list(modalities)}",
                    path="multimodal_ids_job.build_multimodal_ids.modalities",
                    fix=f"use a non-empty subset of {ORDER}.")
  started = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  tables, segments, per_modality = [], [], {}
  for name in used:
    sub = os.path.join(workdir, name)
    if name == "image":
      stats = image_tokenizer_job.build_image_semantic_ids(
          sub, dataset, image_model, image_train, image_job, image_size=image_size,
          progress=progress)
    else:
      if name not in features:
        raise DataError(f"the {name!r} features are missing (the pipeline gave "
                        f"{sorted(features)})", path="system_pipeline.run_system.modalities",
                        fix=f"the pipeline builds {name!r} features when {name!r} is in its "
                            "modalities (and, for collab, a collaborative job is bound).")
      model, train = (text_model, text_train) if name == "text" else (collab_model,
                                                                      collab_train)
      if progress:
        print(f"{name} semantic IDs:", flush=True)
      stats = tokenizer_job.build_semantic_ids(sub, features[name], model, train, job,
                                               progress=progress)
    ids = np.load(tokenizer_job.artifact_paths(sub)[0])
    start = sum(t.shape[1] for t in tables)
    tables.append(ids)
    segments.append(modalities_lib.Segment(name, start, start + ids.shape[1]))
    per_modality[name] = {k: stats.get(k) for k in (
        "fingerprint", "method", "num_levels", "codebook_size", "id_length", "before", "after",
        "fit_seconds", "total_seconds", "agreement") if k in stats}
  rows = {len(t) for t in tables}
  if len(rows) != 1:
    raise DataError(f"the modalities' ID tables have different item counts "
                    f"{ {s.name: len(t) for s, t in zip(segments, tables)} }", path=workdir,
                    fix="build every modality from the same dataset.")
  table = np.concatenate(tables, axis=1).astype(np.int32)
  ids_path, stats_path = tokenizer_job.artifact_paths(workdir)
  files.save_npy(ids_path, table)
  modalities_lib.write(ids_path, segments, table.shape[1])
  stats = {
      "method": "per-modality semantic IDs (MSCGRec)", "modalities": used,
      "segments": {s.name: [s.start, s.end] for s in segments},
      "num_items": int(len(table)), "id_length": int(table.shape[1]),
      "per_modality": per_modality,
      "after": semantic_ids.collision_stats(table),
      "total_seconds": round(time.perf_counter() - started, 2),
  }
  files.write_json(stats_path, stats, default=str)
  if progress:
    widths = ", ".join(f"{s.name} {s.end - s.start}" for s in segments)
    print(f"{len(table):,} items -> multimodal IDs of length {table.shape[1]} ({widths})")
  return stats
