"""The generator job on a 3-modality semantic-ID table (MSCGRec): collab target, dual
position embeddings, modality masking, constrained loss, beam-search evaluation; the
default arguments keep today's fingerprint; bad modality names are named bindings."""

import dataclasses
import hashlib
import json
import os

import jax
import numpy as np
import pytest

from jaxrec.data import batching
from jaxrec.data.config import DatasetConfig
from jaxrec.data.errors import DataError
from jaxrec.generator import T5Config
from jaxrec.evaluation import EvalConfig
from jaxrec.quantizers import modalities
from jaxrec.jobs import generator_job as job
from jaxrec.training import optimizers
from jaxrec.training import partitioning
from jaxrec.training import trainer as trainer_lib

NUM_ITEMS = 60
DATASET = DatasetConfig(name="synthetic", options={"num_items": NUM_ITEMS, "num_users": 80,
                                                   "image_size": 16})
CONFIG = trainer_lib.TrainerConfig(
    num_steps=2, eval_every=0, checkpoint_every=2, log_every=1, max_history=6, seed=0,
    batching=batching.BatchingConfig(batch_size=16, seed=1, num_threads=0, prefetch=0),
    mesh=partitioning.MeshConfig(model=2),
    optimizer=optimizers.OptimizerConfig(name="adamw", schedule="constant", learning_rate=0.01))
# text [0, 2), image [2, 4), collab [4, 7): each segment names one item.
SEGMENTS = (modalities.Segment("text", 0, 2), modalities.Segment("image", 2, 4),
            modalities.Segment("collab", 4, 7))


def _write_ids(folder, sidecar=True):
  rng = np.random.default_rng(0)
  text, image, collab = (rng.permutation(64)[:NUM_ITEMS] for _ in range(3))
  ids = np.stack([text // 8, text % 8, image // 8, image % 8,
                  collab // 16, (collab // 4) % 4, collab % 4], 1).astype(np.int32)
  path = os.path.join(folder, "semantic_ids.npy")
  np.save(path, ids)
  if sidecar:
    modalities.write(path, SEGMENTS, ids.shape[1])
  return path


@pytest.mark.slow
def test_mscgrec_generator_trains_recommends_real_items_and_restores(tmp_path):
  path = _write_ids(str(tmp_path))
  kw = dict(semantic_ids_path=path, dataset=DATASET, trainer_config=CONFIG,
            generator=job.GeneratorConfig(
                model_config=T5Config.tiny, num_user_buckets=4, constrained_loss=True,
                target_modality="collab", position_embeddings=True, modality_mask_rate=0.3))
  eval_config = EvalConfig(batch_size=32, num_bootstrap=10)
  workdir = str(tmp_path / "run")
  summary = job.train_generator(workdir, eval_config=eval_config, progress=False, **kw)
  assert summary["step"] == 2

  s = job.setup(**kw)
  assert s.target_levels == (4, 5, 6) and s.encoder_levels == tuple(range(7))
  assert s.model.target_length == 3 and s.model.layout.levels == (4, 5, 6)
  assert s.model.encoder_token_modalities == (0, 0, 1, 1, 2, 2, 2)
  assert (s.model.config.item_position_embeddings, s.model.config.code_position_embeddings,
          s.model.config.encoder_prefix_tokens) == (6, 7, 1)
  examples = trainer_lib.example_batch(s.split.train_examples(6), 4)
  host = s.batch_fn(examples)
  assert host["decoder_target_tokens"].shape == (4, 3)            # the collab width
  assert host["encoder_input_tokens"].shape[1] == 1 + 6 * 7       # user + 6 items x 7
  np.testing.assert_array_equal(s.model.layout.token_to_code(host["decoder_target_tokens"]),
                                s.semantic_ids[examples["target"]][:, 4:7])

  # The restored model recommends real items only.
  tr = trainer_lib.Trainer(s.model, CONFIG, trainer_lib.input_shapes(s.split, s.batch_fn,
                                                                     CONFIG))
  fp = trainer_lib.trajectory_fingerprint(CONFIG, s.fingerprint)
  state, _ = trainer_lib.restore_state(tr, workdir, fp, "latest")
  params = jax.device_get(state.params)
  assert params["encoder"]["item_position_embedder"]["embedding"].shape == (6, 16)
  assert params["encoder"]["code_position_embedder"]["embedding"].shape == (7, 16)
  recommend = tr.recommender(state, s.make_recommender)
  histories = np.zeros((32, 6), np.int32)
  histories[:, :3] = np.arange(1, 97).reshape(32, 3) % NUM_ITEMS + 1
  items = recommend(histories, 20)
  assert items.shape == (32, 20) and ((items >= 1) & (items <= NUM_ITEMS)).all()
  assert (np.sort(items, 1)[:, 1:] != np.sort(items, 1)[:, :-1]).all()   # distinct items
  assert recommend.stats["found"] == recommend.stats["total"] == 32 * 20

  results = job.evaluate_generator(workdir, eval_config=dataclasses.replace(
      eval_config, splits=("test",)), checkpoint="latest", progress=False, **kw)
  saved = json.load(open(os.path.join(workdir, "eval", "test_metrics.json")))
  assert set(results) == {"test"} and saved["found_rate"] == 1.0
  assert saved["target_modality"] == "collab" and saved["target_levels"] == [4, 5, 6]
  assert saved["checkpoint_step"] == 2


def test_fingerprint_is_unchanged_by_default_and_changes_with_each_option(tmp_path):
  path = _write_ids(str(tmp_path))
  base = dict(semantic_ids_path=path, dataset=DATASET, trainer_config=CONFIG)
  generator = job.GeneratorConfig(model_config=T5Config.tiny, decoding=None)
  default = job.setup(**base, generator=generator)
  # Without a sidecar (a table as before the modalities existed): the same fingerprint.
  other = tmp_path / "plain"
  other.mkdir()
  assert job.setup(**dict(base, semantic_ids_path=_write_ids(str(other), sidecar=False)),
                   generator=generator).fingerprint == default.fingerprint
  # The fingerprint of the code before the MSCGRec options: the same blob.
  t5 = default.model.config
  old_fields = ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                "num_encoder_layers", "num_decoder_layers", "dropout_rate", "mlp_activations",
                "relative_attention_num_buckets", "relative_attention_max_distance", "dtype",
                "logits_via_embedding", "z_loss", "label_smoothing")
  blob = json.dumps([dataclasses.asdict(DATASET), {f: getattr(t5, f) for f in old_fields},
                     str(default.layout), hashlib.sha256(default.semantic_ids.tobytes()
                                                         ).hexdigest()],
                    sort_keys=True, default=str)
  assert default.fingerprint == hashlib.sha256(blob.encode()).hexdigest()[:16]
  assert default.model.layout.is_all_levels and default.encoder_levels == tuple(range(7))
  seen = {default.fingerprint}
  for option in [dict(target_modality="collab"), dict(encoder_modalities=("text", "collab")),
                 dict(modality_mask_rate=0.2), dict(position_embeddings=True)]:
    fp = job.setup(**base, generator=dataclasses.replace(generator, **option)).fingerprint
    assert fp not in seen, option
    seen.add(fp)
  # Encoder segments are read in column order; the masking indices follow them.
  s = job.setup(**base, generator=dataclasses.replace(
      generator, encoder_modalities=("collab", "text"), target_modality="image"))
  assert s.encoder_levels == (0, 1, 4, 5, 6) and s.target_levels == (2, 3)
  assert s.model.encoder_token_modalities == (0, 0, 1, 1, 1)
  batch = s.batch_fn({"history": np.array([[3, 4, 0]]), "length": np.array([2]),
                      "target": np.array([5])})
  tokens = s.layout.code_to_token(s.semantic_ids)
  np.testing.assert_array_equal(batch["encoder_input_tokens"][0],
                                np.concatenate([tokens[3][[0, 1, 4, 5, 6]],
                                                tokens[4][[0, 1, 4, 5, 6]], np.zeros(5)]))
  np.testing.assert_array_equal(batch["decoder_target_tokens"][0], tokens[5][[2, 3]])


@pytest.mark.parametrize("option, binding", [
    (dict(target_modality="audio"), "generator_job.GeneratorConfig.target_modality"),
    (dict(encoder_modalities=("text", "audio")),
     "generator_job.GeneratorConfig.encoder_modalities"),
    (dict(encoder_modalities=("text", "text")),
     "generator_job.GeneratorConfig.encoder_modalities"),
    (dict(modality_mask_rate=1.5), "generator_job.GeneratorConfig.modality_mask_rate"),
])
def test_bad_modality_bindings_are_named(tmp_path, option, binding):
  path = _write_ids(str(tmp_path))
  with pytest.raises(DataError, match=binding.replace(".", r"\.")):
    job.train_generator(str(tmp_path / "run"), path, DATASET,
                        job.GeneratorConfig(T5Config.tiny, **option), CONFIG, progress=False)
  assert not (tmp_path / "run").exists()
