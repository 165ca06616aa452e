"""The CEMG / MusicRec tokenizer job: artifacts and learning on clustered features, what each
ablation fuses, a rerun resuming to the same IDs, bad input, and the gin files."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxrec import configs
from jaxrec.data.errors import DataError
from jaxrec.quantizers import fused_rqvae
from jaxrec.quantizers import fusion
from jaxrec.quantizers import rqvae
from jaxrec.quantizers import training as qtraining
from jaxrec.jobs import fused_tokenizer_job as fj
from jaxrec.jobs import tokenizer_job

N, CLUSTERS = 48, 6
MISSING_IMAGE = np.arange(0, N, 7)                        # items without an image
# beta = 1 as in rqvae_test: with beta 0.25 the encoder outruns its codes in a short run.
MODEL = rqvae.RqVaeConfig(hidden_dims=(16,), latent_dim=4, num_levels=2, codebook_size=8,
                          beta=1.0, diversity_weight=0.01)
TRAIN = qtraining.TokenizerTrainConfig(num_steps=20, batch_size=64, learning_rate=1e-2,
                                       warmup_steps=2, kmeans_iters=5, log_every=1)
JOB = tokenizer_job.TokenizerJobConfig(checkpoint_every=10)
CEMG = fusion.CemgFusionConfig(pca_dim=6, attn_dim=8)
MUSIC = fusion.MusicRecFusionConfig(proj_dim=8, encoder_hidden=(8,), hidden_dim=6,
                                    decoder_hidden=(8,), fused_dim=8)
ARGS = dict(cemg_config=CEMG, musicrec_config=MUSIC, model_config=MODEL, train_config=TRAIN,
            job=JOB)


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
  """Compile time dominates these tiny runs."""
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", False)


def _clustered(rng, clusters, width, noise=0.1):
  centers = rng.normal(size=(CLUSTERS, width))
  return (centers[clusters] + noise * rng.normal(size=(N, width))).astype(np.float32)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
  """{"text": 16-d, "image": 12-d with zero rows, "collab": 8-d} .npy paths, 48 items."""
  rng = np.random.default_rng(0)
  clusters = rng.integers(0, CLUSTERS, N)
  arrays = {"text": _clustered(rng, clusters, 16), "image": _clustered(rng, clusters, 12),
            "collab": _clustered(rng, clusters, 8)}
  arrays["image"][MISSING_IMAGE] = 0.0
  folder = tmp_path_factory.mktemp("features")
  paths = {}
  for name, x in arrays.items():
    paths[name] = str(folder / f"{name}.npy")
    np.save(paths[name], x)
  return paths


def _build(workdir, features, **kw):
  return fj.build_fused_semantic_ids(str(workdir), features, **{**ARGS, "progress": False,
                                                                **kw})


def _check_artifacts(workdir, stats):
  ids = np.load(workdir / "semantic_ids.npy")
  assert ids.dtype == np.int32 and ids.shape == (N, 3) and stats["id_length"] == 3
  assert len(np.unique(ids, axis=0)) == N and stats["after"]["collision_rate"] == 0.0
  assert json.loads((workdir / "tokenizer_stats.json").read_text()) == stats
  assert (workdir / "codebook_usage.png").stat().st_size > 1000
  assert stats["codebook_usage"][0] > 1                   # level 1 uses more than one code
  curve = stats["training_curve"]
  assert [e["step"] for e in curve] == list(range(1, 21))
  assert curve[-1]["loss"] < 0.9 * curve[0]["loss"], curve
  assert curve[-1]["recon"] < curve[0]["recon"], curve
  assert stats["items_missing"].get("image") == len(MISSING_IMAGE)


def test_cemg_job_writes_unique_ids_and_a_rerun_resumes_to_the_same_ids(tmp_path, features):
  stats = _build(tmp_path, features, method="cemg")
  _check_artifacts(tmp_path, stats)
  assert stats["modalities"] == ["text", "image"] and stats["use_collab"]
  assert stats["input_dims"] == {"text": 16, "image": 12, "collab": 8}
  assert stats["model_input_dims"] == {"text": 6, "image": 6, "collab": 8}  # PCA to 6
  assert stats["fused_dim"] == 8 + 8 and stats["decoder_target_dims"] == [6, 6, 8]
  assert set(stats["attention_weight_mean"]) == {"text", "image"}
  assert {"recon", "quantization", "commitment", "diversity"} <= set(stats["loss_terms"])
  assert sorted(os.listdir(tmp_path / "tokenizer_checkpoints")) == ["10", "20"]

  # Jobs never skip themselves: a rerun resumes from the final checkpoint (no step left)
  # and writes the same IDs; the pipeline's stage is what skips a finished job.
  ids = np.load(tmp_path / "semantic_ids.npy")
  again = _build(tmp_path, features, method="cemg")
  np.testing.assert_array_equal(np.load(tmp_path / "semantic_ids.npy"), ids)
  assert again["fingerprint"] == stats["fingerprint"]
  assert sorted(os.listdir(tmp_path / "tokenizer_checkpoints")) == ["10", "20"]


def test_musicrec_job_writes_unique_ids_and_logs_every_loss(tmp_path, features):
  stats = _build(tmp_path, features, method="musicrec")
  _check_artifacts(tmp_path, stats)
  assert stats["model_input_dims"] == {"text": 16, "image": 12, "collab": 8}
  assert stats["fused_dim"] == 8 and stats["decoder_target_dims"] == [16, 12]
  assert stats["collab_guidance"] and not stats["collab_in_fused"]
  assert {"recon", "quantization", "fusion_reconstruction", "alignment", "orthogonality",
          "guidance"} <= set(stats["loss_terms"])
  assert stats["training_curve"][-1]["guidance"] > 0


@pytest.mark.slow  # the structure is also checked, traced only, below
def test_cemg_without_collab_runs_with_a_learned_query(tmp_path, features):
  quick = dataclasses.replace(TRAIN, num_steps=3)
  stats = _build(tmp_path, {k: v for k, v in features.items() if k != "collab"},
                 method="cemg", use_collab=False, train_config=quick)
  ids = np.load(tmp_path / "semantic_ids.npy")
  assert len(np.unique(ids, axis=0)) == N
  assert stats["fused_dim"] == 8 and "collab" not in stats["input_dims"]
  assert not stats["collab_in_fused"]


def _params(job_inputs):
  """The joint model's parameter shapes (traced, nothing compiled)."""
  data, _, _ = fj.model_inputs(job_inputs)
  first = jax.tree.map(lambda a: jnp.asarray(a[:2]), data)
  model = fused_rqvae.FusedRqVae(job_inputs.config)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), first["content"],
                                                first["mask"], first.get("collab")))
  out = jax.eval_shape(lambda v: model.apply(v, first["content"], first["mask"],
                                             first.get("collab")), variables)
  assert out.fused.shape == (2, job_inputs.config.fused_dim)
  assert out.codes.shape == (2, MODEL.num_levels)
  return nn.meta.unbox(variables)["params"], data


@pytest.mark.parametrize("method", ["cemg", "musicrec"])
def test_each_ablation_changes_what_is_fused(features, method):
  def prepare(**kw):
    return fj.prepare(features, **{"method": method, **ARGS,
                                   **kw})
  full = prepare()
  variants = {"w/o image": prepare(modalities=("text", "collab")),
              "w/o text": prepare(modalities=("image",)),
              "w/o collab": prepare(use_collab=False)}
  fingerprints = {full.fingerprint} | {v.fingerprint for v in variants.values()}
  assert len(fingerprints) == 4
  assert variants["w/o image"].content == ("text",)
  assert variants["w/o text"].content == ("image",)
  full_params, full_data = _params(full)
  assert full.config.content_dims == ((6, 6) if method == "cemg" else (16, 12))
  for name, v in variants.items():
    params, data = _params(v)
    assert len(data["content"]) == len(v.content), name
    if name == "w/o collab":
      assert "collab" not in data and not v.config.use_collab
  if method == "cemg":
    no_collab = variants["w/o collab"]
    assert full.config.fused_dim == 16 and no_collab.config.fused_dim == 8
    assert "query" in _params(no_collab)[0] and "query" not in full_params
    assert full.config.target_dims == (6, 6, 8) and no_collab.config.target_dims == (6, 6)
    assert variants["w/o text"].config.target_dims == (6, 8)
    # The w/o-text attention has one modality: its key projection has M = 1.
    assert _params(variants["w/o text"])[0]["attention"]["key"].shape[0] == 1
    assert full_params["attention"]["key"].shape[0] == 2
  else:
    assert "guidance_head" in full_params
    assert "guidance_head" not in _params(variants["w/o collab"])[0]
    no_guidance = prepare(musicrec_config=dataclasses.replace(MUSIC, guidance_weight=0.0))
    assert not no_guidance.config.guidance and "guidance_head" not in _params(no_guidance)[0]
    shared_only = prepare(musicrec_config=dataclasses.replace(MUSIC, use_specific=False))
    specific_only = prepare(musicrec_config=dataclasses.replace(MUSIC, use_shared=False))
    fusion_params = {name: _params(v)[0]["fusion"] for name, v in (
        ("full", full), ("shared", shared_only), ("specific", specific_only))}
    assert {"shared_encoder", "specific_encoders_0"} <= set(fusion_params["full"])
    assert "specific_encoders_0" not in fusion_params["shared"]
    assert "shared_encoder" not in fusion_params["specific"]
    # The fused layer reads [shared mean (6) ; specific per modality (2 x 6)].
    widths = {k: p["fuse"]["dense_0"]["kernel"].shape[0] for k, p in fusion_params.items()}
    assert widths == {"full": 18, "shared": 6, "specific": 12}
    assert len({full.fingerprint, shared_only.fingerprint, specific_only.fingerprint}) == 3


def test_missing_image_rows_are_masked_and_pca_fits_present_rows(features):
  job_inputs = fj.prepare(features, method="cemg", **ARGS)
  data, inputs, _ = fj.model_inputs(job_inputs)
  assert not data["mask"][MISSING_IMAGE, 1].any() and data["mask"][:, 0].all()
  np.testing.assert_array_equal(inputs["image"][MISSING_IMAGE], 0.0)
  present = data["mask"][:, 1]
  # Centred and unit mean square per entry over the items that have the modality.
  np.testing.assert_allclose(inputs["image"][present].mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.mean(np.square(inputs["image"][present])), 1.0, rtol=1e-5)


def test_bad_requests_name_the_binding_or_file(tmp_path, features):
  text_only = {"text": features["text"], "collab": features["collab"]}
  cases = [
      (dict(method="tiger"), features, "method"),
      (dict(method="cemg"), text_only, "HAS_IMAGES"),
      (dict(modalities=("text", "audio")), features, "audio"),
      (dict(use_collab=True), {k: features[k] for k in ("text", "image")}, "use_collab"),
      (dict(cemg_config=dataclasses.replace(CEMG, pca_dim=13)), features, "pca_dim"),
  ]
  for kwargs, feats, match in cases:
    with pytest.raises(DataError, match=match) as e:
      _build(tmp_path / "w", feats, **kwargs)
    assert e.value.fix
  short = tmp_path / "short.npy"
  np.save(short, np.load(features["image"])[:40])
  with pytest.raises(DataError, match="40 rows") as e:
    _build(tmp_path / "w", {**features, "image": str(short)})
  assert e.value.path == str(short)
  nan = tmp_path / "nan.npy"
  x = np.load(features["collab"])
  x[3, 1] = np.nan
  np.save(nan, x)
  with pytest.raises(DataError, match="NaN") as e:
    _build(tmp_path / "w", {**features, "collab": str(nan)}, method="musicrec")
  assert e.value.path == str(nan)
  assert not (tmp_path / "w" / "semantic_ids.npy").exists()


@pytest.mark.parametrize("name,method", [("cemg", "cemg"), ("musicrec", "musicrec")])
def test_gin_file_binds_the_job(name, method):
  try:
    # With TIGER's and LETTER's generic tokenizer bindings in the same run: scoped values win.
    configs.parse(["gin_configs/tokenizers/rqvae_tiger.gin",
                   "gin_configs/tokenizers/letter_sinkhorn.gin",
                   f"gin_configs/tokenizers/{name}.gin"])
    bound = configs.bound_arguments(fj.build_fused_semantic_ids)
  finally:
    configs.clear()
  assert bound["method"] == method and bound["use_collab"]
  assert "features" not in bound and "workdir" not in bound
  model = bound["model_config"]
  assert (model.num_levels, model.codebook_size, model.hidden_dims) == (3, 256, (256, 128))
  assert bound["job"].collision == "extra_level" and model.alignment_weight == 0.0
  assert bound["train_config"].num_steps == 3000
  fusion_config = bound[f"{method}_config"]
  assert isinstance(fusion_config, (fusion.CemgFusionConfig, fusion.MusicRecFusionConfig))
  assert model.diversity_weight == (0.01 if method == "cemg" else 0.0)
