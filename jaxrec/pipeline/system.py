"""The system job (a gin job): the stages every generative configuration shares, each switched
on by the modalities the configuration uses, run by `stage.run_pipeline`.

  text       -> embeddings/item_embeddings.npy          [num_items, d]   jobs.item_job
  image      -> image_features/image_features.npy       [num_items, d']  jobs.image_job
  collab     -> collaborative/item_embeddings.npy       [num_items, d''] SASRec or LightGCN job
  features   -> semantic_ids/semantic_ids.npy (+ modalities.json)        the configured IDs job
  IDs        -> generator/ (checkpoints, train_summary.json)             jobs.generator_job
  generator  -> generator/eval/<split>_metrics.json, results.md, pipeline_summary.json

TIGER, LETTER, CEMG, MusicRec and MSCGRec are this job with different modalities and IDs
jobs (gin_configs/papers/*.gin). Each stage is skipped when its folder holds the result for
the same inputs and configuration (docs/pipeline.md); with `feature_cache`, the feature and
ID stages live in `<feature_cache>/<stage>-<fingerprint>` and are shared by every run that
needs the same ones (an ablation sweep trains SASRec once), built under a lock, so parallel
sweeps (`--max_parallel=2`) may share one cache.

Missing modalities: a dataset without images (Beauty, Sports, Yelp: `HAS_IMAGES = False` in
their data gin files) drops "image" from the modalities; the summary and results.md say so
(`absent_modalities`). Nothing is faked: a configuration left without any modality fails.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, Optional, Sequence

from jaxrec import configs
from jaxrec import fingerprints
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.encoders import text
from jaxrec.jobs import baselines_job as baselines_lib
from jaxrec.jobs import generator_job
from jaxrec.jobs import image_job
from jaxrec.jobs import item_job
from jaxrec.jobs import lightgcn_job
from jaxrec.jobs import tokenizer_job
from jaxrec.pipeline import report as report_lib
from jaxrec.pipeline.stage import Stage, StageResult, canonical, run_pipeline, sha256_file
from jaxrec.training import trainer as trainer_lib

MODALITIES = ("text", "image", "collab")
COLLAB_FILE = "item_embeddings.npy"
# Each feature stage: (the modality it serves, the feature file it writes).
FEATURE_STAGES = {"embeddings": ("text", "item_embeddings.npy"),
                  "image_features": ("image", "image_features.npy"),
                  "collaborative": ("collab", COLLAB_FILE)}
# Arguments the pipeline passes that name places or verbosity, not results.
_NOT_CONFIG = frozenset({"workdir", "embeddings_path", "semantic_ids_path", "progress",
                         "operative_config", "output_path", "features"})
# Train-config fields a run may change and resume (not part of a stage's identity).
# The arguments of a collaborative job that define its model (SASRec's, LightGCN's), which a
# shared model's evaluation job receives from it.
_MODEL_ARGUMENTS = ("model_config", "trainer_config", "config", "train_config")
RESUMABLE_FIELDS = {"TrainerConfig": trainer_lib.RESUMABLE_FIELDS + ("mesh",),
                    "LightGcnTrainConfig": lightgcn_job.RESUMABLE_FIELDS}


def job_config(job: Callable, passed: Mapping, drop: Optional[Mapping] = None) -> dict:
  """What determines a job's result: the arguments `job` carries (a `fingerprints.Bound`
  from `configs.bound`, or a functools.partial) overridden by `passed`, minus paths and
  verbosity (hashed by `fingerprints.canonical`)."""
  arguments = {**fingerprints.arguments(job), **passed}
  return canonical({k: v for k, v in arguments.items() if k not in _NOT_CONFIG}, drop)


def resumable_settings(job: Callable, passed: Mapping) -> dict:
  """The train-config fields of a training job that may change on resume (steps, ...):
  {argument: {field: value}} for each argument whose class is in RESUMABLE_FIELDS."""
  out = {}
  for name, value in sorted({**fingerprints.arguments(job), **passed}.items()):
    fields = RESUMABLE_FIELDS.get(type(value).__name__)
    if fields and dataclasses.is_dataclass(value):
      out[name] = {k: getattr(value, k) for k in fields if k != "mesh"}
  return out


def baselines_stage(dataset: DatasetConfig, job: Callable[..., dict], progress: bool) -> Stage:
  """The "baselines" stage (<workdir>/baselines): `job(workdir=, dataset=, progress=)` writes
  <baseline>/<split>_metrics.json (default most-popular and co-occurrence on the test split,
  the rows results.md shows beside the model; gin_configs/runs/baselines.gin binds
  `baselines_job.evaluate_baselines` with its own list)."""
  passed = {"dataset": dataset}
  name = fingerprints.function_name(job)

  def evaluate(folder, inputs):
    del inputs
    results = job(workdir=folder, progress=progress, **passed)
    return _with_ranks([os.path.join(folder, baseline, f"{which}_metrics.json")
                        for baseline, splits in results.items() for which in splits])
  return Stage("baselines", evaluate, {"job": name, **job_config(job, passed)})


def _with_ranks(metric_paths: Sequence[str]) -> list:
  """The metrics files and the per-user ranks saved beside them (`evaluation.save_ranks`;
  what paired comparisons read), where there are any."""
  ranks = [p[:-len("_metrics.json")] + "_ranks.npz" for p in metric_paths]
  return list(metric_paths) + [p for p in ranks if os.path.isfile(p)]


def effective_modalities(modalities: Sequence[str], has_images: bool) -> tuple:
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


def feature_stages(dataset: DatasetConfig, used: Sequence[str], text_encoder: str,
                   encoder_model_dir: Optional[str], encoder_batch_size: int,
                   encoder_max_length: int, image_features: bool, image_encoder: str,
                   collaborative: Optional[Callable[..., dict]],
                   progress: bool) -> list:
  """The text / image / collaborative feature stages the used modalities need (shared)."""
  stages = []
  if "text" in used:
    stages.append(text_stage(dataset, text_encoder, encoder_model_dir, encoder_batch_size,
                             encoder_max_length, progress))
  if "image" in used and image_features:
    stages.append(image_stage(dataset, image_encoder, progress))

  if "collab" in used:
    stages.append(collaborative_stage(dataset, collaborative, progress))
  return stages


def collaborative_stage(dataset: DatasetConfig, collaborative: Callable[..., dict],
                        progress: bool) -> Stage:
  """The "collaborative" stage (shared): `collaborative(workdir=, dataset=, progress=)`
  trains SASRec / LightGCN in its folder and exports <folder>/item_embeddings.npy."""
  passed = {"dataset": dataset}

  def train_collaborative(folder, inputs):
    del inputs
    collaborative(workdir=folder, progress=progress, **passed)
    path = os.path.join(folder, COLLAB_FILE)
    if not os.path.isfile(path):
      raise DataError("the collaborative job wrote no item embeddings", path=path,
                      fix="bind a job that exports <workdir>/item_embeddings.npy "
                          "(run_sasrec / run_lightgcn with export=True).")
    return [path, item_job.sidecar_path(path)]
  # Steps and validation cadence are not part of the identity: raising COLLAB_STEPS
  # resumes the trained model (the job's checkpoints) in the same folder.
  return Stage("collaborative", train_collaborative,
               {"collaborative": job_config(collaborative, passed, RESUMABLE_FIELDS)},
               resumable=resumable_settings(collaborative, passed), shared=True)


def shared_model_stages(dataset: DatasetConfig, collaborative: Optional[Callable[..., dict]],
                        eval_job: Optional[Callable[..., dict]], progress: bool,
                        name: str) -> list:
  """A collaborative baseline (SASRec, LightGCN) trained as the systems' "collaborative"
  stage, so the baseline run and every system with the same collaborative job share one
  model through the feature cache, and its "evaluation" stage (`<name>/eval` in the run):
  `eval_job(workdir=<collaborative folder>, output_dir=, dataset=, progress=)` with the
  collaborative job's model and train configs (so it restores the model that was trained)."""
  if collaborative is None or eval_job is None:
    raise DataError("shared_model needs the collaborative job and an evaluation job",
                    path="system_pipeline.run_system.collaborative",
                    fix="bind collaborative = @sasrec_job.run_sasrec (or "
                        "@lightgcn_job.run_lightgcn) and eval_job (gin_configs/papers/"
                        "sasrec.gin and lightgcn.gin do), or set shared_model = False.")
  model = {k: v for k, v in fingerprints.arguments(collaborative).items()
           if k in _MODEL_ARGUMENTS}
  passed = {"dataset": dataset, **model}

  def evaluate(folder, inputs):
    results = eval_job(workdir=inputs["collaborative"].folder, output_dir=folder,
                       progress=progress, **passed)
    return _metric_files(folder, results)
  return [collaborative_stage(dataset, collaborative, progress),
          Stage("evaluation", evaluate, job_config(eval_job, passed), needs=("collaborative",),
                keep_old=False, folder=os.path.join(name, "eval"))]


def _metric_files(folder: str, results: Mapping) -> list:
  """The `<split>_metrics.json` of an evaluation job's results in `folder` (and the ranks
  beside them); a clear error when the job did not write one."""
  paths = [os.path.join(folder, f"{which}_metrics.json") for which in results]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise DataError("the evaluation job did not write its metrics", path=missing[0],
                    fix="check eval_job: it must write <workdir>/eval/<split>_metrics.json.")
  return _with_ranks(paths)


def text_stage(dataset: DatasetConfig, encoder: str = "minilm",
               model_dir: Optional[str] = None, batch_size: int = 128,
               max_length: int = text.DEFAULT_MAX_LENGTH, progress: bool = True) -> Stage:
  """The "embeddings" stage: `item_job.encode_items` into <folder>/item_embeddings.npy
  (shared: in the feature cache when there is one). Also tools/encode_items.py's stage."""
  def encode(folder, inputs):
    del inputs
    path = os.path.join(folder, FEATURE_STAGES["embeddings"][1])
    item_job.encode_items(path, dataset, encoder=encoder, model_dir=model_dir,
                          batch_size=batch_size, max_length=max_length, progress=progress)
    return [path, item_job.sidecar_path(path)]
  return Stage("embeddings", encode, {"dataset": dataset, "encoder": encoder,
                                      "model_dir": model_dir, "max_length": max_length},
               keep_old=False, shared=True)


def image_stage(dataset: DatasetConfig, encoder: str = "efficientnet_lite0",
                progress: bool = True, image_size: Optional[int] = None,
                features_path: Optional[str] = None, image_dir: Optional[str] = None,
                batch_size: int = 64) -> Stage:
  """The "image_features" stage: `image_job.encode_images` into
  <folder>/image_features.npy (shared). Precomputed features (encoder "features") are
  hashed by content, an image folder by its path. Also tools/encode_items.py's stage."""
  size = int(image_size or image_job.LOAD_SIZES.get(encoder) or 64)

  def encode_images(folder, inputs):
    del inputs
    path = os.path.join(folder, FEATURE_STAGES["image_features"][1])
    image_job.encode_images(path, dataset, encoder=encoder, image_size=image_size,
                            features_path=features_path, batch_size=batch_size,
                            image_dir=image_dir, progress=progress)
    return [path, item_job.sidecar_path(path)]
  config = {"dataset": dataset, "encoder": encoder, "size": size}
  if features_path:
    config["features_sha256"] = (sha256_file(features_path) if os.path.isfile(features_path)
                                 else features_path)  # the job names a missing file.
  if image_dir:
    config["image_dir"] = os.path.abspath(image_dir)
  return Stage("image_features", encode_images, config, keep_old=False, shared=True)


def model_stages(dataset: DatasetConfig, train_job: Callable[..., dict],
                 eval_job: Callable[..., dict], progress: bool,
                 name: str = "generator", with_ids: bool = True) -> list:
  """The model stage (<workdir>/<name>: "generator", or e.g. "sasrec") and the "evaluation"
  stage (<name>/eval) over the "semantic_ids" stage's IDs (and their modality sidecar, when
  there is one) when `with_ids`, else over the dataset alone (SASRec, LightGCN)."""
  passed = {"dataset": dataset}
  needs = ("semantic_ids",) if with_ids else ()

  def ids(inputs) -> dict:
    return ({"semantic_ids_path": inputs["semantic_ids"].path(tokenizer_job.IDS_FILE)}
            if with_ids else {})

  def train(folder, inputs):
    train_job(workdir=folder, progress=progress, **ids(inputs), **passed)
    return [os.path.join(folder, "train_summary.json")]

  def evaluate(folder, inputs):
    results = eval_job(workdir=inputs[name].folder, progress=progress, **ids(inputs),
                       **passed)
    return _metric_files(folder, results)

  return [Stage(name, train, job_config(train_job, passed, RESUMABLE_FIELDS), needs=needs,
                resumable=resumable_settings(train_job, passed)),
          Stage("evaluation", evaluate, job_config(eval_job, passed),
                needs=needs + (name,), keep_old=False, folder=os.path.join(name, "eval"))]


def run_system(workdir: str, dataset: DatasetConfig = DatasetConfig(),
               modalities: Sequence[str] = ("text",), has_images: bool = True,
               system: str = "generative retrieval",
               text_encoder: str = "minilm", encoder_model_dir: Optional[str] = None,
               encoder_batch_size: int = 128,
               encoder_max_length: int = text.DEFAULT_MAX_LENGTH,
               image_features: bool = False, image_encoder: str = "efficientnet_lite0",
               collaborative: Optional[Callable[..., dict]] = None,
               semantic_ids_job: Optional[Callable[..., dict]] = None,
               train_job: Optional[Callable[..., dict]] = generator_job.train_generator,
               eval_job: Optional[Callable[..., dict]] = generator_job.evaluate_generator,
               model_stage: str = "generator", feature_cache: Optional[str] = None,
               baselines_job: Callable[..., dict] = baselines_lib.evaluate_reference_baselines,
               shared_model: bool = False, progress: bool = True) -> dict:
  """Features -> semantic IDs -> generator -> test metrics, in `workdir`; or, with no
  modalities and no IDs job, a collaborative model (SASRec, LightGCN) -> test metrics.

  Args:
    workdir: the pipeline folder (layout in the module docstring).
    dataset: the catalog; the same config goes to every stage.
    modalities: which of "text", "image", "collab" the system uses; () for a model
      trained on the interactions alone (then `semantic_ids_job` is None).
    has_images: whether the dataset has item images (the data gin file's HAS_IMAGES);
      False drops "image" from `modalities` and records why.
    system: the configuration's name, for results.md and the summary.
    text_encoder: "minilm" or "mpnet" (`encoders.text.ENCODERS`).
    encoder_model_dir: a sentence-transformers folder to load the text encoder from.
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
      feature file to it (TIGER: `tokenizer_job.build_semantic_ids_from_features`).
    train_job: `train_job(workdir=, semantic_ids_path=, dataset=, progress=)`, e.g. the
      configurable `generator_job.train_generator` (model, trainer and any other
      arguments come from its gin bindings).
    eval_job: `eval_job(workdir=, semantic_ids_path=, dataset=, progress=)` ->
      {split: metrics}; writes `<workdir>/eval/<split>_metrics.json` (without
      `semantic_ids_path` when there are no IDs: e.g. `sasrec_job.evaluate_sasrec`).
    model_stage: the model stage's name and folder ("generator"; "sasrec", "lightgcn").
    feature_cache: a folder to share the feature and ID stages between runs.
    baselines_job: `baselines_job(workdir=, dataset=, progress=)`, the "baselines" stage
      (`baselines_stage`): the reference rows of results.md; with no modalities, no IDs
      job and no train_job the run is this stage alone (gin_configs/runs/baselines.gin).
    shared_model: with no modalities (SASRec, LightGCN), train the model as the
      `collaborative` job, the systems' "collaborative" stage (in the feature cache: one
      model for the baseline run and every system with the same collaborative job), and
      evaluate it with `eval_job` (`shared_model_stages`); `train_job` is then unused.
    progress: progress bars and one status line per stage.

  Returns:
    The pipeline summary (also `<workdir>/pipeline_summary.json`): per stage its status,
    wall time, fingerprint and artifacts, plus the test metrics.

  Raises:
    DataError: bad modalities, a missing job for a used modality, bad input files.
  """
  # Each job with the arguments gin gives it, read once here: the stages hash those values.
  collaborative, semantic_ids_job, train_job, eval_job, baselines_job = (
      configs.bound(j) for j in (collaborative, semantic_ids_job, train_job, eval_job,
                                 baselines_job))
  if not modalities and semantic_ids_job is None:  # SASRec, LightGCN: no features, no IDs.
    if shared_model:
      stages = shared_model_stages(dataset, collaborative, eval_job, progress, model_stage)
    else:
      stages = [] if train_job is None else model_stages(dataset, train_job, eval_job,
                                                         progress, model_stage, with_ids=False)
    used, absent = (), {}
  else:
    used, absent = effective_modalities(modalities, has_images)
    stages = _generative_stages(dataset, used, text_encoder, encoder_model_dir,
                                encoder_batch_size, encoder_max_length, image_features,
                                image_encoder, collaborative, semantic_ids_job, progress)
    if train_job is None or eval_job is None:
      raise DataError("a generative configuration needs a training and an evaluation job",
                      path="system_pipeline.run_system.train_job",
                      fix="bind train_job / eval_job (gin_configs/runs/system.gin does).")
    stages += model_stages(dataset, train_job, eval_job, progress, model_stage)

  stages.insert(0, baselines_stage(dataset, baselines_job, progress))

  def report(results: Sequence[StageResult], seconds: float) -> dict:
    features = _features({r.name: r for r in results if r.name in FEATURE_STAGES})
    return report_lib.report(workdir, dataset, results, progress,
                             model_stage if train_job is not None or shared_model else None,
                             seconds, trained_stage="collaborative" if shared_model else None,
                             extra={
        "system": system, "modalities": list(used), "absent_modalities": absent,
        "features": features, "training_seconds": {r.name: r.build_seconds for r in results}})
  return run_pipeline(workdir, stages, feature_cache, progress, report)


def _features(results: Mapping[str, StageResult]) -> dict:
  """{modality: feature file} of the feature stages' results."""
  return {FEATURE_STAGES[name][0]: r.path(FEATURE_STAGES[name][1])
          for name, r in results.items()}


def _generative_stages(dataset, used, text_encoder, encoder_model_dir, encoder_batch_size,
                       encoder_max_length, image_features, image_encoder, collaborative,
                       semantic_ids_job, progress) -> list:
  """The feature stages and the (shared) "semantic_ids" stage over them."""
  if semantic_ids_job is None:
    raise DataError("no semantic-ID job is bound", path="system_pipeline.run_system."
                    "semantic_ids_job", fix="bind it, e.g. @tokenizer_job."
                    "build_semantic_ids_from_features (see gin_configs/papers/).")
  if "collab" in used and collaborative is None:
    raise DataError("the collab modality needs a collaborative model",
                    path="system_pipeline.run_system.collaborative",
                    fix="bind @sasrec_job.run_sasrec or @lightgcn_job.run_lightgcn "
                        "(gin_configs/collaborative/*.gin), or drop 'collab'.")
  stages = feature_stages(dataset, used, text_encoder, encoder_model_dir, encoder_batch_size,
                          encoder_max_length, image_features, image_encoder, collaborative,
                          progress)
  ids_passed = {"dataset": dataset, "modalities": used}

  def build_ids(folder, inputs: Mapping[str, StageResult]):
    features = _features(inputs)
    semantic_ids_job(workdir=folder, features=features, progress=progress, **ids_passed)
    out = list(tokenizer_job.artifact_paths(folder))
    sidecar = os.path.join(folder, "modalities.json")
    return out + ([sidecar] if os.path.isfile(sidecar) else [])
  # Cached too: ablations that change only the generator share their system's IDs.
  # The generator depends on the IDs (and their modality sidecar), not on their statistics.
  stages.append(Stage("semantic_ids", build_ids, job_config(semantic_ids_job, ids_passed),
                      needs=tuple(s.name for s in stages), shared=True,
                      provides=(tokenizer_job.IDS_FILE, "modalities.json")))
  return stages

