"""The semantic-ID job: fit a tokenizer on item embeddings, resolve collisions, write the artifacts.

Artifacts in the workdir: `semantic_ids.npy` ([num_items, L'] int32, row r = item
id r + 1), `tokenizer_stats.json` (collision rate before/after, per-level usage,
timing, the fingerprint of its checkpoints), `codebook_usage.png`, and
`tokenizer_checkpoints/` (RQ-VAE training resumes from the latest one of the same
fingerprint). The job always computes: the pipeline's "semantic_ids" stage (and
tools/build_semantic_ids.py's one-stage pipeline) skips it when up to date.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from jaxrec import files
from jaxrec import fingerprints
from jaxrec import plots
from jaxrec.data.errors import DataError
from jaxrec.quantizers import rqvae
from jaxrec.quantizers import semantic_ids
from jaxrec.quantizers import training as qtraining
from jaxrec.quantizers import vq
from jaxrec.training import checkpoints

METHODS = ("rqvae", "rqkmeans")
# The artifacts every semantic-ID job writes in its workdir (text, image, fused, multimodal).
IDS_FILE = "semantic_ids.npy"
STATS_FILE = "tokenizer_stats.json"


def artifact_paths(workdir: str) -> tuple[str, str]:
  """`<workdir>/semantic_ids.npy` ([num_items, L'] int32) and `<workdir>/tokenizer_stats.json`."""
  return os.path.join(workdir, IDS_FILE), os.path.join(workdir, STATS_FILE)


@dataclasses.dataclass(frozen=True)
class TokenizerJobConfig:
  """What the semantic-ID job does besides the model and training configs.

  Attributes:
    method: "rqvae" (trained, resumable) or "rqkmeans" (no network).
    collision: "extra_level" (TIGER), "sinkhorn" (LETTER) or "nearest_unused".
    rqkmeans_iters: Lloyd iterations per level for method "rqkmeans".
    checkpoint_every: RQ-VAE steps between checkpoints.
    expected_num_items: if set, the embeddings must have this many rows (the
      catalog size); otherwise the count in the encoder's JSON sidecar is used
      when present.
  """
  method: str = "rqvae"
  collision: str = "extra_level"
  rqkmeans_iters: int = 50
  checkpoint_every: int = 500
  expected_num_items: Optional[int] = None


def load_embeddings(path: str, expected_num_items: Optional[int] = None) -> np.ndarray:
  """Reads `[num_items, d]` embeddings (.npy) and checks them against the catalog.

  Raises:
    DataError: missing file, NaN/Inf rows, or a row count that disagrees with
      `expected_num_items` or with the `<path>.json` sidecar of tools/encode_items.py.
  """
  if not os.path.isfile(path):
    raise DataError("embeddings file not found", path=path,
                    fix="run tools/encode_items.py first or bind embeddings_path.")
  x = np.load(path, allow_pickle=False)
  sidecar = os.path.splitext(path)[0] + ".json"
  if expected_num_items is None and os.path.isfile(sidecar):
    with open(sidecar) as f:
      expected_num_items = json.load(f).get("num_items")
  if expected_num_items is not None and (x.ndim != 2 or x.shape[0] != expected_num_items):
    raise DataError(f"embeddings have shape {x.shape} but the catalog has "
                    f"{expected_num_items} items (one row per item id 1..N expected)",
                    path=path, fix="re-encode the items of this dataset, or point "
                    "embeddings_path at the file made for it.")
  return vq.check_embeddings(x, source=path)


def fingerprint(embeddings_path: str, *configs) -> str:
  """`fingerprints.fingerprint` of the embeddings' content and the configs: identifies
  the checkpoints of a fit."""
  return fingerprints.fingerprint({"embeddings": fingerprints.sha256_file(embeddings_path),
                                   "configs": list(configs)})


def fit_resumably(ckpt_dir: str, fp: str, checkpoint_every: int, restore_target, fit,
                  name: str, progress: bool):
  """Runs `fit(start_state, on_step) -> (state, history)` with Orbax checkpoints.

  A checkpoint every `checkpoint_every` steps (and at the end) in `ckpt_dir`; when one
  exists the fit resumes from the latest (restored into `restore_target()`, a state or
  its shapes). A checkpoint of another fingerprint is refused (checkpoints.Checkpointer); a
  damaged newest one is moved aside and the fit resumes from an older one; a second
  process fitting in the same folder is refused (checkpoints.workdir_lock).
  """
  with checkpoints.workdir_lock(os.path.dirname(os.path.abspath(ckpt_dir)), f"{name} fit"), \
       checkpoints.Checkpointer(ckpt_dir, fp, max_to_keep=2,
                                save_interval_steps=checkpoint_every) as ckpt:
    start_state = None
    if ckpt.latest_step() is not None:
      start_state, _ = ckpt.restore(restore_target())
      if progress:
        print(f"resuming {name} training from step {int(start_state.step)} ({ckpt_dir})")

    def on_step(step, state, metrics):
      del metrics
      ckpt.save(step, state)

    state, history = fit(start_state, on_step)
    if ckpt.latest_step() != int(state.step):
      ckpt.save(int(state.step), state, force=True)
  return state, history


def _fit_rqvae(x, model_config, train_config, job, workdir, fp, progress, targets=None):
  """Trains with Orbax checkpoints every job.checkpoint_every steps; resumes from the latest."""
  _, history = fit_resumably(
      os.path.join(workdir, "tokenizer_checkpoints"), fp, job.checkpoint_every,
      lambda: qtraining.init_rqvae_state(x, model_config, train_config, align_targets=targets),
      lambda start, on_step: qtraining.fit_rqvae(x, model_config, train_config,
                                                 align_targets=targets, start_state=start,
                                                 on_step=on_step, progress=progress),
      "RQ-VAE", progress)
  return history.tokens, history.metrics


def build_semantic_ids(workdir: str, embeddings_path: str,
                       model_config: rqvae.RqVaeConfig = rqvae.RqVaeConfig(),
                       train_config: qtraining.TokenizerTrainConfig = qtraining.TokenizerTrainConfig(),
                       job: TokenizerJobConfig = TokenizerJobConfig(),
                       reference_ids_path: Optional[str] = None,
                       align_targets_path: Optional[str] = None,
                       progress: bool = True) -> dict:
  """Fits the tokenizer and writes semantic IDs, stats and a usage plot.

  Args:
    workdir: output folder.
    embeddings_path: `[num_items, d]` float32 .npy (row r = item id r + 1).
    model_config: the RQ-VAE (its num_levels / codebook_size also drive rqkmeans).
    train_config: RQ-VAE optimization.
    job: method, collision strategy, checkpointing.
    reference_ids_path: optional published IDs to report the same statistics for
      (LETTER's `letter_semantic_ids.json`: {"item_id": ["<a_1>", ...]}).
    align_targets_path: `[num_items, t]` .npy the alignment loss pulls the quantized
      latent towards (LETTER: SASRec item embeddings); needs
      `RqVaeConfig.alignment_weight > 0`, and that needs it.
    progress: progress bars and prints.

  Returns:
    The stats dict written to tokenizer_stats.json.
  """
  if job.method not in METHODS:
    raise DataError(f"unknown tokenizer method {job.method!r}", path="TokenizerJobConfig.method",
                    fix=f"use one of {METHODS}.")
  if job.collision not in semantic_ids.STRATEGIES:
    raise DataError(f"unknown collision strategy {job.collision!r}",
                    path="TokenizerJobConfig.collision",
                    fix=f"use one of {semantic_ids.STRATEGIES}.")
  os.makedirs(workdir, exist_ok=True)
  x = load_embeddings(embeddings_path, job.expected_num_items)
  vq.check_embeddings(x, codebook_size=model_config.codebook_size, source=embeddings_path,
                      binding="RqVaeConfig.codebook_size")
  if job.method == "rqvae":
    model_config = dataclasses.replace(model_config, input_dim=x.shape[1])
  targets = None
  if (model_config.alignment_weight > 0) != (align_targets_path is not None):
    raise DataError("RqVaeConfig.alignment_weight > 0 and align_targets_path go together "
                    f"(weight {model_config.alignment_weight}, targets {align_targets_path})",
                    path="RqVaeConfig.alignment_weight",
                    fix="bind both (LETTER: the collab modality's embeddings) or neither.")
  if align_targets_path is not None:
    if job.method != "rqvae":
      raise DataError("the alignment loss needs method 'rqvae'",
                      path="TokenizerJobConfig.method", fix="use method 'rqvae'.")
    targets = load_embeddings(align_targets_path, len(x))
  fp = fingerprint(embeddings_path, model_config, train_config, job)
  if targets is not None:
    fp = fingerprints.fingerprint([fp, fingerprints.sha256_file(align_targets_path)])
  started = time.perf_counter()
  if job.method == "rqvae":
    tokens, curve = _fit_rqvae(x, model_config, train_config, job, workdir, fp, progress,
                               targets)
  else:
    tokens = qtraining.fit_rqkmeans(x, model_config.num_levels, model_config.codebook_size,
                                    iters=job.rqkmeans_iters, seed=train_config.seed)
    curve = []
  fit_seconds = time.perf_counter() - started
  ids = semantic_ids.assemble(tokens.codes, job.collision, last_residuals=tokens.last_residuals,
                              last_codebook=tokens.last_codebook)
  stats = {
      "fingerprint": fp,
      "method": job.method,
      "collision_strategy": job.collision,
      "embeddings": os.path.abspath(embeddings_path),
      "num_items": int(len(x)),
      "embedding_dim": int(x.shape[1]),
      "align_targets": os.path.abspath(align_targets_path) if align_targets_path else None,
      "num_levels": model_config.num_levels,
      "codebook_size": model_config.codebook_size,
      "id_length": int(ids.shape[1]),
      "fit_seconds": round(fit_seconds, 2),
      "total_seconds": round(time.perf_counter() - started, 2),
      "before": semantic_ids.collision_stats(tokens.codes, model_config.codebook_size),
      "after": semantic_ids.collision_stats(ids),
      "training_curve": curve,
      "jax_backend": jax.default_backend(),
  }
  if reference_ids_path:
    stats["reference"] = {"path": os.path.abspath(reference_ids_path),
                          **semantic_ids.collision_stats(read_reference_ids(reference_ids_path),
                                                         model_config.codebook_size)}
  save_artifacts(workdir, ids, tokens.codes, model_config.codebook_size, stats, job.method,
                 job.collision, progress)
  return stats


def save_artifacts(workdir: str, ids: np.ndarray, codes: np.ndarray, codebook_size: int,
                   stats: dict, label: str, collision: str, progress: bool = True) -> None:
  """Writes a tokenizer's semantic_ids.npy, codebook_usage.png and tokenizer_stats.json (last).

  Args:
    workdir: the job folder.
    ids: [num_items, L'] int32 IDs after collision resolution.
    codes: [num_items, L] int32 codes before it (for the usage plot).
    codebook_size: K.
    stats: the stats dict (needs "before" and "after" collision stats, "total_seconds").
    label: the method, for the plot title.
    collision: the collision strategy, for the plot title.
    progress: print a summary line.
  """
  ids_path, stats_path = artifact_paths(workdir)
  files.save_npy(ids_path, ids)
  plot_usage(codes, codebook_size, os.path.join(workdir, "codebook_usage.png"),
             title=f"{label}: {len(ids):,} items, collision rate "
                   f"{stats['before']['collision_rate']:.3f} before {collision}")
  files.write_json(stats_path, stats, default=None)
  if progress:
    print(f"{len(ids):,} items -> IDs of length {ids.shape[1]} in "
          f"{stats['total_seconds']:.1f}s; {collision_summary(stats)}")


def build_semantic_ids_from_features(
    workdir: str, features: Mapping[str, str], dataset: Any = None,
    modalities: Sequence[str] = ("text",), input_modality: str = "text",
    align_modality: Optional[str] = None,
    model_config: rqvae.RqVaeConfig = rqvae.RqVaeConfig(),
    train_config: qtraining.TokenizerTrainConfig = qtraining.TokenizerTrainConfig(),
    job: TokenizerJobConfig = TokenizerJobConfig(), progress: bool = True) -> dict:
  """`build_semantic_ids` as a `system_pipeline` IDs job: the IDs of one modality's features.

  TIGER: input_modality "text". LETTER: input "text", align_modality "collab" (the
  alignment loss pulls the quantized latent towards the SASRec embedding; needs
  `RqVaeConfig.alignment_weight > 0`).

  Args:
    workdir: output folder (the artifacts of `build_semantic_ids`).
    features: {modality: [num_items, d] .npy} from the pipeline.
    dataset: unused (the pipeline passes it to every IDs job).
    modalities: the modalities the pipeline uses (for the error message).
    input_modality: whose features are tokenized.
    align_modality: whose features are the alignment targets, or None.
    model_config, train_config, job, progress: as `build_semantic_ids`.

  Raises:
    DataError: a modality the pipeline did not build.
  """
  del dataset
  for name, binding in ((input_modality, "input_modality"), (align_modality, "align_modality")):
    if name is not None and name not in features:
      raise DataError(f"the {name!r} features are not available (the pipeline built "
                      f"{sorted(features)} for modalities {list(modalities)})",
                      path=f"tokenizer_job.build_semantic_ids_from_features.{binding}",
                      fix=f"add {name!r} to system_pipeline.run_system.modalities, or bind "
                          f"one of {sorted(features)}.")
  return build_semantic_ids(workdir, features[input_modality], model_config, train_config, job,
                            align_targets_path=features.get(align_modality) if align_modality
                            else None, progress=progress)


def collision_summary(stats: dict) -> str:
  """'collision rate a -> b (largest group g); codes used per level: ...' of a stats dict."""
  b, a = stats["before"], stats["after"]
  used = ", ".join(str(level["used_codes"]) for level in b["levels"])
  return (f"collision rate {b['collision_rate']:.4f} -> {a['collision_rate']:.4f} "
          f"(largest group {b['largest_collision_group']}); codes used per level: {used}")


def read_reference_ids(path: str) -> np.ndarray:
  """Published IDs `{"1": ["<a_12>", "<b_3>", ...], ...}` -> [n, L] int32 (by item id)."""
  with open(path) as f:
    raw = json.load(f)
  try:
    keys = sorted(raw, key=int)
    rows = [[int(tok.strip("<>").split("_")[-1]) for tok in raw[k]] for k in keys]
  except (ValueError, AttributeError) as e:
    raise DataError(f"cannot read semantic IDs ({e})", path=path,
                    fix='expected {"item_id": ["<a_1>", "<b_2>", ...]}.') from e
  return np.asarray(rows, np.int32)


def plot_usage(codes: np.ndarray, codebook_size: int, path: str, title: str = "") -> None:
  """Per level: how many items each code holds, codes sorted by count (a PNG)."""
  levels = codes.shape[1]
  fig = plots.figure(figsize=(4 * levels, 3))
  axes = fig.subplots(1, levels, squeeze=False)
  for level, ax in enumerate(axes[0]):
    counts = np.sort(np.bincount(codes[:, level], minlength=codebook_size))[::-1]
    ax.bar(np.arange(codebook_size), counts, width=1.0)
    ax.set_title(f"level {level + 1}: {(counts > 0).sum()}/{codebook_size} codes used")
    ax.set_xlabel("code (sorted by count)")
    ax.set_ylabel("items")
  fig.suptitle(title)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=80)
