"""The CEMG and MusicRec item tokenizers as a job: fuse text / image features (and the
collaborative embedding), train the fusion jointly with an RQ-VAE, write semantic IDs.

method "cemg": each content modality is reduced by PCA to `CemgFusionConfig.pca_dim`
(fitted on all items that have the modality), the collaborative (LightGCN) embedding is the
attention query over the projected text / image features, fused = [attended ; collab], and
an RQ-VAE over the fused vector is trained with reconstruction + commitment + CEMG's
diversity loss (`RqVaeConfig.diversity_weight`, lambda_div).
method "musicrec": shared-specific fusion of the content modalities with its losses (shared
alignment InfoNCE, orthogonality, per-modality reconstruction), the residual quantizer on
the fused vector, and collaborative guidance (InfoNCE between a projection of the quantized
latent and the CF embedding, `MusicRecFusionConfig.guidance_weight`).

Training design (our choice, both methods): the fusion layer and the RQ-VAE are trained
jointly, end to end, and the RQ-VAE decoder reconstructs the fusion's *inputs* (CEMG: the
PCA-reduced text / image features and the collaborative embedding; MusicRec: the content
features), not the fused vector. Reconstructing the fused vector alone lets the fusion
collapse (the cheapest way to lower reconstruction + commitment is a small or constant
fused vector); with the inputs as targets the fused vector has to carry what the codes must
reproduce (on clustered toy data, 1,500 joint Adam steps shrank the attended part's spread
across items from 0.80 to 0.29 with the fused vector as the target, while with the inputs as
the target it stayed at 0.69). Fitting the fusion first and freezing it would need a
separate objective for CEMG's attention, which the paper does not give. Also ours: every
input is centred and scaled to unit mean square per entry (over the items having it), so
that 384-d MiniLM and 1280-d EfficientNet features weigh alike in the loss; missing
entries are zeros and masked.

Missing modalities: an all-zero row (e.g. an item without an image) marks the modality
missing for that item; the fusion layers mask it and the reconstruction loss skips it.
Ablations: `use_collab=False` (CEMG: a learned query replaces the collaborative embedding
and nothing is concatenated; MusicRec: no guidance loss), `modalities=("text",)` /
`("image",)` (w/o image / w/o text), `MusicRecFusionConfig.use_shared` / `use_specific`.

Artifacts in the workdir, as `tokenizer_job`: `semantic_ids.npy` ([num_items, L'] int32,
row r = item id r + 1), `tokenizer_stats.json` (fingerprint, method, modalities, dims,
collision and usage stats before / after, the training curve of every loss term, timings),
`codebook_usage.png` and `tokenizer_checkpoints/` (resumable; their fingerprint covers the
feature files' content, every config, method, modalities and use_collab). The job always
computes: the pipeline's "semantic_ids" stage skips it when up to date.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from jaxrec import fingerprints
from jaxrec.data.errors import DataError
from jaxrec.quantizers import fused_rqvae
from jaxrec.quantizers import fusion
from jaxrec.quantizers import rqvae
from jaxrec.quantizers import semantic_ids
from jaxrec.quantizers import training as qtraining
from jaxrec.quantizers import vq
from jaxrec.jobs import tokenizer_job

METHODS = fused_rqvae.METHODS
CONTENT_MODALITIES = ("text", "image")
COLLAB = "collab"
_BINDING = "fused_tokenizer_job.build_fused_semantic_ids"

# Our default RQ-VAE for a fused vector of ~128 entries (TIGER's 3 x 256 codes, beta 0.25).
DEFAULT_MODEL = rqvae.RqVaeConfig(hidden_dims=(256, 128), latent_dim=32, num_levels=3,
                                  codebook_size=256, beta=0.25)


def build_fused_semantic_ids(
    workdir: str, features: Mapping[str, str], method: str = "cemg",
    modalities: Sequence[str] = CONTENT_MODALITIES, use_collab: bool = True,
    cemg_config: fusion.CemgFusionConfig = fusion.CemgFusionConfig(),
    musicrec_config: fusion.MusicRecFusionConfig = fusion.MusicRecFusionConfig(),
    model_config: rqvae.RqVaeConfig = DEFAULT_MODEL,
    train_config: qtraining.TokenizerTrainConfig = qtraining.TokenizerTrainConfig(),
    job: tokenizer_job.TokenizerJobConfig = tokenizer_job.TokenizerJobConfig(),
    progress: bool = True, dataset: Any = None) -> dict:
  """Fuses the item features, trains fusion + RQ-VAE, writes semantic IDs (module docstring).

  Args:
    workdir: output folder.
    features: {modality: [num_items, d] float32 .npy} (row r = item id r + 1; a JSON
      sidecar with the same stem may give num_items): "text" (e.g. 384-d MiniLM),
      "image" (e.g. 1280-d EfficientNet; all-zero rows = items without an image),
      "collab" (CF item embeddings, e.g. 64-d LightGCN / SASRec).
    method: "cemg" or "musicrec".
    modalities: the content modalities to fuse, in any order, from "text" and "image"
      ("collab" may be listed, as the pipeline passes every modality it built; whether
      the collaborative embedding is used is `use_collab`).
    use_collab: use features["collab"] (CEMG: attention query and concatenated;
      MusicRec: the guidance loss).
    cemg_config: CEMG's attention (modality_dims / collab_dim are set from the files).
    musicrec_config: MusicRec's fusion (modality_dims is set from the files).
    model_config: the RQ-VAE (input_dim is set to the fused width; alignment_weight
      must be 0: MusicRec's guidance weight is in musicrec_config).
    train_config: optimization of the joint model (TokenizerTrainConfig).
    job: collision strategy, checkpointing, expected_num_items (method must be "rqvae").
    progress: progress bars and prints.
    dataset: unused (the pipeline passes it to every IDs job).

  Returns:
    The stats dict written to tokenizer_stats.json.

  Raises:
    DataError: unknown method / modality / collision strategy, a modality or the collab
      embedding missing from `features`, feature files of different row counts, NaN rows,
      a PCA width larger than a modality allows, bad config combinations.
  """
  del dataset
  started = time.perf_counter()
  job_inputs = prepare(features, method, modalities, use_collab, cemg_config,
                       musicrec_config, model_config, train_config, job)
  config, content, used, fp = (job_inputs.config, job_inputs.content, job_inputs.used,
                               job_inputs.fingerprint)
  paths, raw, present = job_inputs.paths, job_inputs.raw, job_inputs.present
  n = len(raw[used[0]])

  os.makedirs(workdir, exist_ok=True)
  data, inputs, scales = model_inputs(job_inputs)
  prepared = time.perf_counter()
  state, history = tokenizer_job.fit_resumably(
      os.path.join(workdir, "tokenizer_checkpoints"), fp, job.checkpoint_every,
      lambda: fused_rqvae.init_state(data, config, train_config),
      lambda start, on_step: fused_rqvae.fit(data, config, train_config, start_state=start,
                                             on_step=on_step, progress=progress),
      f"{method} fusion + RQ-VAE", progress)
  fitted = time.perf_counter()
  tokens, _, weights = fused_rqvae.fused_tokens(data, config, state.params)
  ids = semantic_ids.assemble(tokens.codes, job.collision, last_residuals=tokens.last_residuals,
                              last_codebook=tokens.last_codebook)
  rq = config.rqvae
  before = semantic_ids.collision_stats(tokens.codes, rq.codebook_size)
  stats = {
      "fingerprint": fp,
      "method": method,
      "modalities": list(content),
      "use_collab": bool(use_collab),
      "collision_strategy": job.collision,
      "features": {m: os.path.abspath(p) for m, p in paths.items()},
      "num_items": int(n),
      "input_dims": {m: int(raw[m].shape[1]) for m in used},
      "model_input_dims": {m: int(inputs[m].shape[1]) for m in used},
      "items_missing": {m: int((~present[m]).sum()) for m in content},
      "input_scales": scales,
      "fused_dim": config.fused_dim,
      "decoder_target_dims": list(config.target_dims),
      "collab_in_fused": bool(method == "cemg" and config.use_collab),
      "collab_guidance": bool(config.guidance),
      "fusion_config": dataclasses.asdict(config.cemg if method == "cemg"
                                          else config.musicrec),
      "num_levels": rq.num_levels,
      "codebook_size": rq.codebook_size,
      "id_length": int(ids.shape[1]),
      "before": before,
      "after": semantic_ids.collision_stats(ids),
      "codebook_usage": [level["used_codes"] for level in before["levels"]],
      "loss_terms": sorted(k for k in (history.metrics[-1] if history.metrics else {})
                           if k not in ("step", "used_fraction", "perplexity")),
      "training_curve": history.metrics,
      "timings": {"prepare_seconds": round(prepared - started, 2),
                  "fit_seconds": round(fitted - prepared, 2),
                  "codes_seconds": round(time.perf_counter() - fitted, 2)},
      "fit_seconds": round(fitted - prepared, 2),
      "total_seconds": round(time.perf_counter() - started, 2),
      "jax_backend": jax.default_backend(),
  }
  if weights is not None:
    mean = weights.mean(axis=1)                                         # [n, M]
    stats["attention_weight_mean"] = {
        m: float(mean[present[m], i].mean()) for i, m in enumerate(content)}
  stats = json.loads(json.dumps(stats))  # tuples -> lists: as tokenizer_stats.json reads back
  tokenizer_job.save_artifacts(workdir, ids, tokens.codes, rq.codebook_size, stats,
                               f"{method} ({'+'.join(used)})", job.collision, progress)
  return stats


# ---------------------------------------------------------------- checks and inputs

@dataclasses.dataclass(frozen=True)
class FusedJobInputs:
  """The checked request (what `prepare` returns).

  Attributes:
    config: the joint model, every width taken from the feature files.
    content: the content modalities fused, in CONTENT_MODALITIES order.
    used: content plus "collab" when use_collab.
    paths: {modality: .npy path} of the used modalities.
    raw: {modality: [n, d_m] float32} as loaded.
    present: {content modality: [n] bool}, False for an all-zero row (missing).
    fingerprint: identifies the artifacts (feature files' content, every config,
      method, modalities, use_collab).
  """
  config: fused_rqvae.FusedRqVaeConfig
  content: tuple
  used: tuple
  paths: dict
  raw: dict
  present: dict
  fingerprint: str


def prepare(features: Mapping[str, str], method: str = "cemg",
            modalities: Sequence[str] = CONTENT_MODALITIES, use_collab: bool = True,
            cemg_config: fusion.CemgFusionConfig = fusion.CemgFusionConfig(),
            musicrec_config: fusion.MusicRecFusionConfig = fusion.MusicRecFusionConfig(),
            model_config: rqvae.RqVaeConfig = DEFAULT_MODEL,
            train_config: qtraining.TokenizerTrainConfig = qtraining.TokenizerTrainConfig(),
            job: tokenizer_job.TokenizerJobConfig = tokenizer_job.TokenizerJobConfig()
            ) -> FusedJobInputs:
  """Checks the request, loads the feature files and derives the model config (no
  training; arguments as `build_fused_semantic_ids`).

  Raises:
    DataError: see `build_fused_semantic_ids`.
  """
  content = _check_request(features, method, modalities, use_collab, model_config, job)
  used = content + ((COLLAB,) if use_collab else ())
  paths = {m: features[m] for m in used}
  raw = _load(paths, job.expected_num_items)
  vq.check_embeddings(raw[used[0]], codebook_size=model_config.codebook_size,
                      source=paths[used[0]], binding="RqVaeConfig.codebook_size")
  present = {m: np.any(raw[m] != 0, axis=1) for m in content}
  for m in content:
    if not present[m].any():
      raise DataError(f"every row of the {m!r} features is zero, so no item has this "
                      f"modality", path=paths[m],
                      fix=f"recompute the {m} features, or drop {m!r} from modalities.")
  config = _model_config(method, content, raw, present, use_collab, cemg_config,
                         musicrec_config, model_config)
  fp = _fingerprint(paths, method, content, use_collab, config, train_config, job)
  return FusedJobInputs(config=config, content=content, used=used, paths=paths, raw=raw,
                        present=present, fingerprint=fp)


def model_inputs(job_inputs: FusedJobInputs) -> tuple[dict, dict, dict]:
  """The joint model's inputs for all items.

  Returns:
    (data: `fused_rqvae.data_dict`, inputs: {modality: [n, d'_m] float32 model input
    (CEMG content: PCA'd)}, scales: {modality: the standardization scale}).
  """
  config, content = job_inputs.config, job_inputs.content
  inputs, scales = _inputs(config.method, content, job_inputs.raw, job_inputs.present,
                           COLLAB in job_inputs.used, config)
  data = fused_rqvae.data_dict([inputs[m] for m in content],
                               np.stack([job_inputs.present[m] for m in content], axis=1),
                               inputs.get(COLLAB) if config.use_collab else None)
  return data, inputs, scales


def _check_request(features, method, modalities, use_collab, model_config, job) -> tuple:
  """Validates the arguments; returns the content modalities in CONTENT_MODALITIES order."""
  if method not in METHODS:
    raise DataError(f"unknown fused tokenizer method {method!r}", path=f"{_BINDING}.method",
                    fix=f"use one of {METHODS}.")
  if job.collision not in semantic_ids.STRATEGIES:
    raise DataError(f"unknown collision strategy {job.collision!r}",
                    path="TokenizerJobConfig.collision",
                    fix=f"use one of {semantic_ids.STRATEGIES}.")
  if job.method != "rqvae":
    raise DataError(f"the fused tokenizers train an RQ-VAE, but TokenizerJobConfig.method "
                    f"is {job.method!r}", path="TokenizerJobConfig.method",
                    fix='set it to "rqvae" (or leave it unbound).')
  if model_config.alignment_weight > 0:
    raise DataError("RqVaeConfig.alignment_weight is not used by the fused tokenizers",
                    path="RqVaeConfig.alignment_weight",
                    fix="set it to 0; MusicRec's collaborative guidance weight is "
                        "MusicRecFusionConfig.guidance_weight.")
  unknown = [m for m in modalities if m not in CONTENT_MODALITIES + (COLLAB,)]
  content = tuple(m for m in CONTENT_MODALITIES if m in modalities)
  if unknown or not content:
    raise DataError(f"modalities {list(modalities)}: "
                    + (f"unknown {unknown}" if unknown else "no content modality"),
                    path=f"{_BINDING}.modalities",
                    fix=f"list one or both of {CONTENT_MODALITIES}.")
  for m in content:
    if m not in features:
      why = (" (this dataset has no item images: HAS_IMAGES = False in its data gin file, "
             "e.g. Beauty, Sports, Yelp)" if m == "image" else "")
      raise DataError(f"the {m!r} features are not available: the pipeline built "
                      f"{sorted(features)}{why}", path=f"{_BINDING}.modalities",
                      fix=f"drop {m!r} from the modalities (the w/o-{m} ablation), or run "
                          f"on a dataset that has them" +
                          (" (ml100k, hm)." if m == "image" else "."))
  if use_collab and COLLAB not in features:
    raise DataError(f"use_collab is True but there are no collaborative embeddings (the "
                    f"pipeline built {sorted(features)})", path=f"{_BINDING}.use_collab",
                    fix="add 'collab' to system_pipeline.run_system.modalities with a "
                        "collaborative job (LightGCN for CEMG, SASRec or LightGCN for "
                        "MusicRec), or set use_collab = False (the w/o-collab ablation).")
  return content


def _load(paths: Mapping[str, str], expected_num_items: Optional[int]) -> dict:
  """{modality: [n, d] float32}, NaN-free, all with the same n."""
  raw = {m: tokenizer_job.load_embeddings(p, expected_num_items) for m, p in paths.items()}
  first = next(iter(paths))
  for m, x in raw.items():
    if len(x) != len(raw[first]):
      raise DataError(f"the {m!r} features have {len(x)} rows but the {first!r} features "
                      f"({paths[first]}) have {len(raw[first])}", path=paths[m],
                      fix="every feature file needs one row per item id 1..N of the same "
                          "catalog: rebuild the stale one for this dataset.")
  return raw


def _model_config(method, content, raw, present, use_collab, cemg_config, musicrec_config,
                  model_config) -> fused_rqvae.FusedRqVaeConfig:
  """The joint model's config with every width taken from the feature files."""
  raw_dims = tuple(int(raw[m].shape[1]) for m in content)
  collab_dim = int(raw[COLLAB].shape[1]) if use_collab else 0
  if method == "cemg":
    for m in content:
      limit = min(int(present[m].sum()), raw[m].shape[1])
      if cemg_config.pca_dim > limit:
        raise DataError(f"CemgFusionConfig.pca_dim={cemg_config.pca_dim} but the {m!r} "
                        f"features allow at most {limit} components ({int(present[m].sum())} "
                        f"items have them, width {raw[m].shape[1]})",
                        path="CemgFusionConfig.pca_dim", fix=f"set pca_dim <= {limit}.")
    cemg = dataclasses.replace(cemg_config, modality_dims=raw_dims, collab_dim=collab_dim)
    config = fused_rqvae.FusedRqVaeConfig(method=method,
                                          content_dims=(cemg.pca_dim,) * len(content),
                                          collab_dim=collab_dim, cemg=cemg)
  else:
    musicrec = dataclasses.replace(musicrec_config, modality_dims=raw_dims, cf_dim=0)
    guided = use_collab and musicrec.guidance_weight > 0
    config = fused_rqvae.FusedRqVaeConfig(method=method, content_dims=raw_dims,
                                          collab_dim=collab_dim if guided else 0,
                                          musicrec=musicrec)
  return dataclasses.replace(config, rqvae=dataclasses.replace(model_config,
                                                               input_dim=config.fused_dim))


def _standardize(x: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, float]:
  """Centres x on its present rows and scales them to unit mean square per entry; other
  rows become 0. Returns (x' [n, d] float32, the scale divided by)."""
  x = np.asarray(x, np.float64)
  mean = x[present].mean(axis=0)
  centred = x - mean
  scale = float(np.sqrt(np.mean(np.square(centred[present]))))
  scale = scale if scale > 1e-12 else 1.0
  return np.where(present[:, None], centred / scale, 0.0).astype(np.float32), scale


def _inputs(method, content, raw, present, use_collab, config) -> tuple[dict, dict]:
  """({modality: model input [n, d_m]}, {modality: scale}); CEMG inputs are PCA'd first."""
  n = len(present[content[0]])
  if method == "cemg":
    stacked, _ = fusion.pca_modalities([raw[m] for m in content], config.cemg.pca_dim,
                                       [present[m] for m in content])
    reduced = {m: stacked[:, i] for i, m in enumerate(content)}
  else:
    reduced = {m: raw[m] for m in content}
  inputs, scales = {}, {}
  for m in content:
    inputs[m], scales[m] = _standardize(reduced[m], present[m])
  if use_collab:
    inputs[COLLAB], scales[COLLAB] = _standardize(raw[COLLAB], np.ones(n, bool))
  return inputs, scales


def _fingerprint(paths, method, content, use_collab, config, train_config, job) -> str:
  """`fingerprints.fingerprint` of the feature files' content, every config, method,
  modalities and use_collab (identifies the checkpoints of a fit)."""
  return fingerprints.fingerprint({
      "features": {m: fingerprints.sha256_file(p) for m, p in sorted(paths.items())},
      "method": method, "modalities": list(content), "use_collab": bool(use_collab),
      "configs": [config, train_config, job]})
