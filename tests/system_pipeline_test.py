"""Every paper configuration end to end on the tiny synthetic catalog (with images), as
`tools/run.py --gin_file=gin_configs/papers/<system>.gin` runs it, at test size."""

import json
import pathlib
import threading

import numpy as np
import pytest

from jaxrec import configs
from jaxrec.pipeline import stage as stage_lib
from jaxrec.pipeline import system as system_pipeline
from jaxrec.data.errors import DataError

# Test-sized everything: the tiny catalog (60 items with 16 px images), small tokenizers,
# T5Config.tiny, a few steps of every trained model, greedy-free beam search of width 4.
TINY = [
    "NUM_STEPS = 3",
    "MODEL_CONFIG = @t5_config.T5Config.tiny",
    "batching.BatchingConfig.batch_size = 16",
    "batching.BatchingConfig.bucket_boundaries = ()",
    "rqvae.RqVaeConfig.hidden_dims = (32,)",
    "rqvae.RqVaeConfig.latent_dim = 8",
    "rqvae.RqVaeConfig.codebook_size = 8",
    "qtraining.TokenizerTrainConfig.num_steps = 10",
    "qtraining.TokenizerTrainConfig.batch_size = 64",
    "qtraining.TokenizerTrainConfig.warmup_steps = 2",
    "qtraining.TokenizerTrainConfig.kmeans_iters = 5",
    "evaluation.EvalConfig.num_bootstrap = 20",
    "evaluation.EvalConfig.splits = ('test',)",
    "beam_search.DecodingConfig.beam_size = 10",
    "beam_search.DecodingConfig.top_k = 10",
    "evaluation.EvalConfig.ks = (1, 5, 10)",
]
SASREC = [
    "COLLAB_STEPS = 4", "COLLAB_EVAL_EVERY = 4",
    "collab/batching.BatchingConfig.batch_size = 16",
    "collab/batching.BatchingConfig.bucket_boundaries = ()",
    "collab/sasrec.SasRecConfig.hidden = 16",
    "collab/sasrec.SasRecConfig.max_len = 10",
    "collab/trainer.TrainerConfig.max_history = 10",
    "collab/evaluation.EvalConfig.num_bootstrap = 10",
]
LIGHTGCN = [
    "COLLAB_EPOCHS = 2", "COLLAB_EVAL_EVERY = 1",
    "collab/lightgcn.LightGcnConfig.embed_dim = 16",
    "collab/lightgcn_job.LightGcnTrainConfig.batch_size = 256",
    "collab/evaluation.EvalConfig.num_bootstrap = 10",
]
DATA = "gin_configs/data/synthetic_tiny.gin"


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  configs.clear()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """One feature cache for the module: text, image and collaborative features are built once."""
  return tmp_path_factory.mktemp("features")


def _run(files, workdir, cache, extra=()):
  configs.parse(files, TINY + list(extra) + [f"WORKDIR = {str(workdir)!r}",
                                             f"FEATURE_CACHE = {str(cache)!r}"])
  summary = configs.run_job()
  configs.save_config(str(workdir))
  return summary


def _ids_dir(summary):
  """The semantic-ID stage folder (in the feature cache)."""
  return pathlib.Path(summary["stages"]["semantic_ids"]["artifacts"]["semantic_ids.npy"]).parent


def _check_metrics(workdir, summary):
  metrics = json.loads((workdir / "generator" / "eval" / "test_metrics.json").read_text())
  assert metrics["num_examples"] == 80 and metrics["found_rate"] == 1.0
  overall = metrics["metrics"]["overall"]
  assert 0.0 <= overall["recall@10"]["mean"] <= 1.0
  assert summary["metrics"]["test"]["overall"]["recall@10"]["mean"] == overall["recall@10"]["mean"]
  assert (workdir / "results.md").read_text().count("| generator | 0.") == 1


def test_letter_aligns_the_text_ids_with_sasrec(tmp_path, cache):
  summary = _run(["gin_configs/papers/letter.gin", DATA], tmp_path, cache, SASREC)
  assert summary["system"] == "LETTER" and summary["modalities"] == ["text", "collab"]
  assert set(summary["stages"]) == {"baselines", "embeddings", "collaborative", "semantic_ids",
                                    "generator", "evaluation"}
  stats = json.loads((_ids_dir(summary) / "tokenizer_stats.json").read_text())
  assert stats["align_targets"].endswith("item_embeddings.npy")
  assert stats["collision_strategy"] == "sinkhorn" and stats["after"]["collision_rate"] == 0
  assert np.load(summary["features"]["collab"]).shape == (60, 16)
  _check_metrics(tmp_path, summary)
  # The same configuration again: every stage is skipped (the features and IDs from the cache).
  again = _run(["gin_configs/papers/letter.gin", DATA], tmp_path, cache, SASREC)
  assert {s["status"] for s in again["stages"].values()} == {"skipped"}
  assert again["metrics"] == summary["metrics"]



@pytest.mark.parametrize("paper,baseline,bindings,model", [
    ("letter", "sasrec", SASREC, "sasrec"), ("cemg", "lightgcn", None, "lightgcn")])
def test_a_shared_baseline_reuses_the_systems_collaborative_model(tmp_path, paper, baseline,
                                                                   bindings, model):
  """SHARED_MODEL = True: the SASRec / LightGCN baseline run evaluates the collaborative
  model a system trained into the feature cache (that stage is skipped, not retrained);
  its metrics and ranks go into the run's own folder, none into the cache."""
  bindings = bindings or CEMG
  cache = tmp_path / "cache"
  system = _run([f"gin_configs/papers/{paper}.gin", DATA], tmp_path / paper, cache, bindings)
  trained = pathlib.Path(system["stages"]["collaborative"]["artifacts"][
      "item_embeddings.npy"]).parent
  cache_files = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file())
  run = tmp_path / baseline
  summary = _run([f"gin_configs/papers/{baseline}.gin", DATA], run, cache,
                 bindings + ["SHARED_MODEL = True"])
  assert set(summary["stages"]) == {"baselines", "collaborative", "evaluation"}
  assert summary["stages"]["collaborative"]["status"] == "skipped"
  assert pathlib.Path(summary["stages"]["collaborative"]["folder"]) == trained
  metrics = json.loads((run / model / "eval" / "test_metrics.json").read_text())
  assert metrics["model"] == model and metrics["num_examples"] == 80
  assert (run / model / "eval" / "test_ranks.npz").is_file()
  assert summary["metrics"]["test"]["overall"]["recall@10"] == (
      metrics["metrics"]["overall"]["recall@10"])
  assert f"| {model} | 0." in (run / "results.md").read_text()
  assert sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file()) == cache_files
  # Without SHARED_MODEL the baseline trains its own model in the run folder.
  own = _run([f"gin_configs/papers/{baseline}.gin", DATA], tmp_path / "own", cache, bindings)
  assert "collaborative" not in own["stages"] and model in own["stages"]


def test_shared_model_without_a_collaborative_job_is_refused(tmp_path):
  with pytest.raises(DataError, match="shared_model needs the collaborative job"):
    system_pipeline.run_system(str(tmp_path), modalities=(), semantic_ids_job=None,
                               shared_model=True, collaborative=None, progress=False)

def _fused_tiny(scope):
  return [f"{scope}/qtraining.TokenizerTrainConfig.num_steps = 10",
          f"{scope}/qtraining.TokenizerTrainConfig.batch_size = 64",
          f"{scope}/qtraining.TokenizerTrainConfig.warmup_steps = 2",
          f"{scope}/qtraining.TokenizerTrainConfig.kmeans_iters = 5",
          f"{scope}/rqvae.RqVaeConfig.codebook_size = 8",
          f"{scope}/rqvae.RqVaeConfig.hidden_dims = (32,)",
          f"{scope}/rqvae.RqVaeConfig.latent_dim = 8"]


CEMG = LIGHTGCN + _fused_tiny("cemg") + ["cemg/fusion.CemgFusionConfig.pca_dim = 8",
                                         "cemg/fusion.CemgFusionConfig.attn_dim = 8"]
MUSICREC = SASREC + _fused_tiny("musicrec") + [
    "musicrec/fusion.MusicRecFusionConfig.proj_dim = 16",
    "musicrec/fusion.MusicRecFusionConfig.encoder_hidden = (16,)",
    "musicrec/fusion.MusicRecFusionConfig.hidden_dim = 8",
    "musicrec/fusion.MusicRecFusionConfig.decoder_hidden = (16,)",
    "musicrec/fusion.MusicRecFusionConfig.fused_dim = 8"]


def test_cemg_fuses_text_image_and_lightgcn(tmp_path, cache):
  summary = _run(["gin_configs/papers/cemg.gin", DATA], tmp_path, cache, CEMG)
  assert summary["system"] == "CEMG" and summary["modalities"] == ["text", "image", "collab"]
  assert list(summary["stages"]) == ["baselines", "embeddings", "image_features", "collaborative",
                                     "semantic_ids", "generator", "evaluation"]
  image = np.load(summary["features"]["image"])
  assert image.shape == (60, 1280) and np.abs(image).sum(1).min() > 0  # Every item has one.
  stats = json.loads((_ids_dir(summary) / "tokenizer_stats.json").read_text())
  assert stats["method"] == "cemg" and stats["use_collab"] is True
  assert stats["after"]["collision_rate"] == 0
  _check_metrics(tmp_path, summary)


def test_musicrec_shared_specific_with_guidance(tmp_path, cache):
  summary = _run(["gin_configs/papers/musicrec.gin", DATA], tmp_path, cache, MUSICREC)
  assert summary["system"] == "MusicRec" and summary["modalities"] == ["text", "image", "collab"]
  stats = json.loads((_ids_dir(summary) / "tokenizer_stats.json").read_text())
  assert stats["method"] == "musicrec" and stats["use_collab"] is True
  _check_metrics(tmp_path, summary)


@pytest.mark.slow
def test_cemg_without_collab_trains_no_collaborative_model(tmp_path, cache):
  summary = _run(["gin_configs/ablations/cemg/without_collab.gin", DATA], tmp_path, cache,
                 CEMG)
  assert summary["system"] == "CEMG w/o collab" and "collaborative" not in summary["stages"]
  stats = json.loads((_ids_dir(summary) / "tokenizer_stats.json").read_text())
  assert stats["use_collab"] is False
  _check_metrics(tmp_path, summary)


def test_a_dataset_without_images_drops_the_image_modality_and_says_so(tmp_path, cache):
  summary = _run(["gin_configs/papers/cemg.gin", DATA], tmp_path, cache,
                 CEMG + ["HAS_IMAGES = False"])
  assert summary["modalities"] == ["text", "collab"]
  assert "no item images" in summary["absent_modalities"]["image"]
  assert "image_features" not in summary["stages"]
  assert "image absent (the dataset has no item images" in (tmp_path / "results.md").read_text()


def test_an_image_only_configuration_on_a_text_only_dataset_is_refused(tmp_path, cache):
  with pytest.raises(DataError, match="needs item images"):
    _run(["gin_configs/papers/cemg.gin", DATA], tmp_path, cache,
         CEMG + ["HAS_IMAGES = False", "system_pipeline.run_system.modalities = ('image',)"])


MSCGREC = SASREC + [
    "collab/rqvae.RqVaeConfig.hidden_dims = (32,)",
    "IMAGE_SIZE = 16", "augment.MultiCropConfig.local_size = 8",
    "vit.VitConfig.hidden = 16", "vit.VitConfig.mlp_dim = 32", "vit.VitConfig.num_layers = 1",
    "dino_rq.DinoRqConfig.codebook_size = 8", "dino_rq.DinoRqConfig.code_dim = 8",
    "dino_rq.DinoRqConfig.head_hidden = 32", "dino_rq.DinoRqConfig.head_bottleneck = 8",
    "dino_rq.DinoRqConfig.out_dim = 16",
    "dino_rq.DinoRqTrainConfig.num_steps = 4", "dino_rq.DinoRqTrainConfig.batch_size = 16",
    "dino_rq.DinoRqTrainConfig.warmup_steps = 1",
]


def test_mscgrec_generates_collaborative_codes_from_all_modalities(tmp_path, cache):
  summary = _run(["gin_configs/papers/mscgrec.gin", DATA], tmp_path, cache, MSCGREC)
  assert summary["system"] == "MSCGRec" and summary["modalities"] == ["text", "image", "collab"]
  assert "image_features" not in summary["stages"]  # DINO-RQ reads the images itself.
  ids = np.load(_ids_dir(summary) / "semantic_ids.npy")
  sidecar = json.loads((_ids_dir(summary) / "modalities.json").read_text())
  segments = {m["name"]: (m["start"], m["end"]) for m in sidecar["modalities"]}
  assert list(segments) == ["text", "image", "collab"] and segments["collab"][1] == ids.shape[1]
  for start, end in segments.values():  # Each modality alone names every item.
    assert len({tuple(r) for r in ids[:, start:end]}) == len(ids)
  operative = (tmp_path / "config.gin").read_text()
  assert "TARGET_MODALITY = 'collab'" in operative and "CONSTRAINED_LOSS = True" in operative
  # Per-sequence (item encoder) with the dual position embeddings and modality masking.
  assert "TRAINING_LAYOUT = 'item_encoder'" in operative
  assert "POSITION_EMBEDDINGS = True" in operative and "MODALITY_MASK_RATE = 0.15" in operative
  metrics = json.loads((tmp_path / "generator" / "eval" / "test_metrics.json").read_text())
  width = segments["collab"][1] - segments["collab"][0]
  assert metrics["decoding"]["method"] == "trie beam search"
  assert len(metrics["trie"]["levels"]) == width
  _check_metrics(tmp_path, summary)


ABLATIONS = sorted(str(p) for p in pathlib.Path(configs.REPO_ROOT, "gin_configs", "ablations")
                   .rglob("*.gin"))


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: "/".join(pathlib.Path(p).parts[-2:]))
def test_every_ablation_changes_its_paper_config_and_says_why(path):
  system = pathlib.Path(path).parent.name
  text = pathlib.Path(path).read_text()
  assert text.startswith("# ") and f"include 'gin_configs/papers/{system}.gin'" in text

  def resolved(files):
    configs.parse(files, ["WORKDIR = '/tmp/w'"])
    bound = configs.bound(system_pipeline.run_system).arguments  # every job's arguments
    return stage_lib.canonical({"run": bound, "generator": bound["train_job"],
                                "ids": bound["semantic_ids_job"]})

  paper = resolved([f"gin_configs/papers/{system}.gin"])
  ablation = resolved([path])
  assert ablation["run"]["system"] != paper["run"]["system"]
  changed = {k for k in ("run", "generator", "ids") if ablation[k] != paper[k]}
  paper["run"]["system"] = ablation["run"]["system"]
  assert {k for k in ("run", "generator", "ids") if ablation[k] != paper[k]}, (
      f"{path} changes nothing but the name ({changed})")


def test_a_cached_stage_another_run_is_building_is_waited_for(tmp_path, capsys):
  """Two runs sharing a FEATURE_CACHE: the second waits on the stage lock, then goes on."""
  folder = str(tmp_path / "collaborative-abc")
  order = []
  with stage_lib.stage_lock(folder, progress=False):
    waiter = threading.Thread(target=lambda: _enter(folder, order))
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and order == []  # blocked while the first run builds
    order.append("first done")
  waiter.join(timeout=10)
  assert not waiter.is_alive()
  assert order == ["first done", "second entered"]
  assert f"waiting for another run building {folder}" in capsys.readouterr().out
  with stage_lib.stage_lock(folder, progress=False):  # released again
    pass


def _enter(folder, order):
  with stage_lib.stage_lock(folder, label="[2/5] collaborative: ", poll_seconds=0.05):
    order.append("second entered")
