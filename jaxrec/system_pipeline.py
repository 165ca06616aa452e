"""The multimodal generative-retrieval pipeline (a gin job): the stages every seed system
and baseline shares, each switched on by the modalities a configuration uses.

  text       -> embeddings/item_embeddings.npy          [num_items, d]   encoders.item_job
  image      -> image_features/image_features.npy       [num_items, d']  encoders.image_job
  collab     -> collaborative/item_embeddings.npy       [num_items, d''] SASRec or LightGCN job
  features   -> semantic_ids/semantic_ids.npy (+ modalities.json)        the configured IDs job
  IDs        -> generator/ (checkpoints, train_summary.json)             generator_job
  generator  -> generator/eval/<split>_metrics.json, results.md, pipeline_summary.json

LETTER, CEMG, MusicRec and MSCGRec are this job with different modalities and IDs jobs
(gin_configs/papers/*.gin). Each stage is skipped when its folder holds the result for
the same inputs and configuration (`end_to_end.run_stage`); with `feature_cache`, the
feature stages (text, image, collaborative) live in `<feature_cache>/<stage>-<fingerprint>`
and are shared by every run that needs the same features (an ablation sweep trains SASRec
once). A cached stage is built under a lock (`<folder>.lock`, released when its process
ends, even by a crash): a run that needs a stage another run is building waits for it and
then reuses it, so parallel sweeps (`--max_parallel=2`) may share one cache.

Missing modalities: a dataset without images (Beauty, Sports, Yelp: `HAS_IMAGES = False` in
their data gin files) drops "image" from the modalities; the summary and results.md say so
(`absent_modalities`). Nothing is faked: a configuration left without any modality fails.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator, Optional, Sequence

import filelock

from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.encoders import image_job
from jaxrec.encoders import item_job
from jaxrec.encoders import text
from jaxrec import configs
from jaxrec.end_to_end import (_RESUMABLE_FIELDS, StageResult, _hash, canonical, finish,
                               generator_stages, run_stage, sha256_file, stage_config)
from jaxrec.training import generator_job
from jaxrec.training import tokenizer_job
from jaxrec.training import trainer as trainer_lib

MODALITIES = ("text", "image", "collab")
COLLAB_FILE = "item_embeddings.npy"


def _stage_folder(workdir: str, cache: Optional[str], name: str, fp: str) -> tuple:
  """(folder, the workdir whose superseded/ it uses) of a feature stage."""
  if cache:
    return os.path.join(cache, f"{name}-{fp}"), cache
  return os.path.join(workdir, name), workdir


@contextlib.contextmanager
def stage_lock(folder: str, label: str = "", progress: bool = True,
               poll_seconds: float = 5.0) -> Iterator[None]:
  """Holds `<folder>.lock` (an OS file lock) while a shared stage folder is checked and built.

  Another process (or thread) holding it makes this wait, saying so once; the OS
  releases the lock when its holder exits, so a crashed run never blocks the next.
  """
  lock = filelock.FileLock(folder + ".lock", thread_local=False)
  try:
    lock.acquire(timeout=0)
  except filelock.Timeout:
    if progress:
      print(f"{label}waiting for another run building {folder} ...", flush=True)
    lock.acquire(poll_interval=poll_seconds)
  try:
    yield
  finally:
    lock.release()


def _run_stage(cache: Optional[str], base: str, name: str, folder: str, *args,
               index: str = "", progress: bool = True, **kwargs):
  """end_to_end.run_stage; under `stage_lock` when the folder is in the shared cache."""
  with stage_lock(folder, f"{index} {name}: ", progress) if cache else contextlib.nullcontext():
    return run_stage(base, name, folder, *args, index=index, progress=progress, **kwargs)


def _effective_modalities(modalities: Sequence[str], has_images: bool) -> tuple:
  """(used modalities in MODALITIES order, {absent modality: why})."""
  unknown = [m for m in modalities if m not in MODALITIES]
  if unknown or not modalities:
    raise DataError(f"unknown or no modalities {list(modalities)}",
                    path="system_pipeline.run_system.modalities",
                    fix=f"use a non-empty subset of {MODALITIES}.")
  absent = {}
  if "image" in modalities and not has_images:
    absent["image"] = "the dataset has no item images (HAS_IMAGES = False in its data gin file)"
  used = tuple(m for m in MODALITIES if m in modalities and m not in absent)
  if not used:
    raise DataError(f"no modality of {list(modalities)} is available for this dataset "
                    f"({absent})", path="system_pipeline.run_system.modalities",
                    fix="this configuration needs item images: run it on a dataset with "
                        "images (synthetic, ml100k, hm).")
  return used, absent


def run_system(workdir: str, dataset: DatasetConfig = DatasetConfig(),
               modalities: Sequence[str] = ("text",), has_images: bool = True,
               system: str = "generative retrieval",
               text_encoder: str = "minilm", encoder_batch_size: int = 128,
               encoder_max_length: int = text.DEFAULT_MAX_LENGTH,
               image_features: bool = False, image_encoder: str = "efficientnet_lite0",
               collaborative: Optional[Callable[..., dict]] = None,
               semantic_ids_job: Optional[Callable[..., dict]] = None,
               train_job: Callable[..., dict] = generator_job.train_generator,
               eval_job: Callable[..., dict] = generator_job.evaluate_generator,
               feature_cache: Optional[str] = None, progress: bool = True) -> dict:
  """Features -> semantic IDs -> generator -> test metrics, in `workdir`.

  Args:
    workdir: the pipeline folder (layout in the module docstring).
    dataset: the catalog; the same config goes to every stage.
    modalities: which of "text", "image", "collab" the system uses.
    has_images: whether the dataset has item images (the data gin file's HAS_IMAGES);
      False drops "image" from `modalities` and records why.
    system: the configuration's name, for results.md and the summary.
    text_encoder: "minilm" or "mpnet" (`encoders.text.ENCODERS`).
    encoder_batch_size: texts per encoder forward pass.
    encoder_max_length: token limit per item text.
    image_features: extract pretrained image features (CEMG, MusicRec); False when
      the IDs job reads the images itself (MSCGRec's DINO-RQ).
    image_encoder: `encoders.image.IMAGE_ENCODERS` name for the image features.
    collaborative: `collaborative(workdir=, dataset=, progress=)` training a
      collaborative model that leaves `<workdir>/item_embeddings.npy` (the
      configurable `sasrec_job.run_sasrec` or `lightgcn_job.run_lightgcn`); needed
      when "collab" is used.
    semantic_ids_job: `semantic_ids_job(workdir=, features=, dataset=, modalities=,
      progress=)` writing `<workdir>/semantic_ids.npy` (and `modalities.json` when the
      table has one segment per modality); `features` maps each used modality with a
      feature file to it.
    train_job, eval_job: the generator jobs (see `end_to_end.run_generative`).
    feature_cache: a folder to share the feature stages between runs (see above).
    progress: progress bars and one status line per stage.

  Returns:
    The pipeline summary (also `<workdir>/pipeline_summary.json`).

  Raises:
    DataError: bad modalities, a missing job for a used modality, bad input files.
  """
  started = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  used, absent = _effective_modalities(modalities, has_images)
  if semantic_ids_job is None:
    raise DataError("no semantic-ID job is bound", path="system_pipeline.run_system."
                    "semantic_ids_job", fix="bind it, e.g. @tokenizer_job."
                    "build_semantic_ids_from_features (see gin_configs/papers/).")
  if "collab" in used and collaborative is None:
    raise DataError("the collab modality needs a collaborative model",
                    path="system_pipeline.run_system.collaborative",
                    fix="bind @sasrec_job.run_sasrec or @lightgcn_job.run_lightgcn "
                        "(gin_configs/collaborative/*.gin), or drop 'collab'.")
  stages, features = [], {}
  passed = {"dataset": dataset}
  total = 3 + sum(["text" in used, "image" in used and image_features, "collab" in used])
  index = lambda: f"[{len(stages) + 1}/{total}]"  # noqa: E731

  if "text" in used:
    fp = item_job.fingerprint(dataset, text_encoder, encoder_max_length)
    folder, base = _stage_folder(workdir, feature_cache, "embeddings", fp)
    path = os.path.join(folder, "item_embeddings.npy")

    def encode(path=path):
      item_job.encode_items(path, dataset, encoder=text_encoder, batch_size=encoder_batch_size,
                            max_length=encoder_max_length, progress=progress)
      return [path, item_job.sidecar_path(path)]
    stages.append(_run_stage(feature_cache, base, "embeddings", folder, fp, {
        "dataset": canonical(dataset), "encoder": text_encoder,
        "max_length": encoder_max_length}, encode, keep_old=False, progress=progress,
        index=index()))
    features["text"] = path

  if "image" in used and image_features:
    size = image_job.LOAD_SIZES.get(image_encoder) or 64
    fp = image_job.fingerprint(dataset, image_encoder, size)
    folder, base = _stage_folder(workdir, feature_cache, "image_features", fp)
    path = os.path.join(folder, "image_features.npy")

    def encode_images(path=path):
      image_job.encode_images(path, dataset, encoder=image_encoder, progress=progress)
      return [path, item_job.sidecar_path(path)]
    stages.append(_run_stage(feature_cache, base, "image_features", folder, fp, {
        "dataset": canonical(dataset), "encoder": image_encoder}, encode_images,
        keep_old=False, progress=progress, index=index()))
    features["image"] = path

  if "collab" in used:
    # Steps and validation cadence are not part of the folder's identity: raising
    # COLLAB_STEPS resumes the trained model (the job's checkpoints) in the same folder.
    config = stage_config(collaborative, passed, drop=_RESUMABLE_FIELDS)
    fp = _hash({"collaborative": config})
    trainer_config = {**configs.bound_arguments(collaborative), **passed}.get("trainer_config")
    resumable = ({k: getattr(trainer_config, k) for k in trainer_lib.RESUMABLE_FIELDS}
                 if isinstance(trainer_config, trainer_lib.TrainerConfig) else {})
    folder, base = _stage_folder(workdir, feature_cache, "collaborative", fp)
    path = os.path.join(folder, COLLAB_FILE)

    def train_collaborative(folder=folder, path=path):
      collaborative(workdir=folder, progress=progress, **passed)
      if not os.path.isfile(path):
        raise DataError("the collaborative job wrote no item embeddings", path=path,
                        fix="bind a job that exports <workdir>/item_embeddings.npy "
                            "(run_sasrec / run_lightgcn with export=True).")
      return [path, item_job.sidecar_path(path)]
    stages.append(_run_stage(feature_cache, base, "collaborative", folder, fp, config,
                             train_collaborative, settings=resumable, progress=progress,
                             index=index()))
    features["collab"] = path

  ids_passed = {"dataset": dataset, "modalities": used}
  ids_config = stage_config(semantic_ids_job, ids_passed)
  ids_fp = _hash({"features": {k: sha256_file(p) for k, p in sorted(features.items())},
                  "config": ids_config})
  # Cached too: ablations that change only the generator share their system's IDs.
  ids_dir, ids_base = _stage_folder(workdir, feature_cache, "semantic_ids", ids_fp)
  ids_path, ids_stats_path = tokenizer_job.artifact_paths(ids_dir)

  def build_ids():
    semantic_ids_job(workdir=ids_dir, features=dict(features), progress=progress,
                     **ids_passed)
    out = [ids_path, ids_stats_path]
    sidecar = os.path.join(ids_dir, "modalities.json")
    return out + ([sidecar] if os.path.isfile(sidecar) else [])
  stages.append(_run_stage(feature_cache, ids_base, "semantic_ids", ids_dir, ids_fp, ids_config,
                           build_ids, progress=progress, index=index()))

  more, train_summary = generator_stages(workdir, dataset, ids_path, train_job, eval_job,
                                         progress, numbering=(len(stages) + 1, total))
  stages += more
  return finish(workdir, dataset, stages, train_summary, started, progress, extra={
      "system": system, "modalities": list(used), "absent_modalities": absent,
      "features": features, "training_seconds": _training_seconds(stages)})


def _training_seconds(stages: Sequence[StageResult]) -> dict:
  """Wall time of each stage when it was built (a skipped stage keeps its build time)."""
  return {s.name: s.build_seconds for s in stages}
