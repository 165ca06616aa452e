"""On the synthetic catalog, a trained generator's beam-search top-10 agrees with the exact
top-10 (every item scored): >= 99 % of the items at beam 40, >= 95 % at beam 20 (the
synthetic next-item distributions are flat: the exact top-1 log-probability is about -3,
so beam 20 prunes some prefixes of the tail of the top 10); evaluation runs through the
beam-search recommender and returns real items only.

The IDs are 3 levels of 32 codes made unique by `nearest_unused` (no extra level). With
TIGER's extra collision level, groups of up to 9 items share a 3-code prefix and split its
probability, so a prefix's score overstates its items and beam 20 keeps prefixes whose
leaves rank low: agreement then needs a wider beam (measured with a tiny model trained
300 steps: 73 % at beam 20, 86 % at 40, 98.7 % at 80; with these IDs 98.4 % at beam 20 and
100 % at 40; after 600 steps 97.0 % at beam 20).
"""

import functools
import os

import numpy as np
import pytest

from jaxrec.data.config import DatasetConfig
from jaxrec.data import batching
from jaxrec.decoding import exact_top_k, make_beam_search
from jaxrec.generator import T5Config, make_token_batch
from jaxrec.quantizers import semantic_ids as sid_lib
from jaxrec.quantizers import training as qtraining
from jaxrec.jobs import generator_job
from jaxrec.training import optimizers, partitioning
from jaxrec.training import trainer as trainer_lib
from jaxrec.evaluation import EvalConfig

pytestmark = pytest.mark.slow


def attribute_features(table, rng):
  """One-hot latent attributes + noise: [num_items, d] (stand-in for text embeddings)."""
  parts = []
  for values in table.attributes.values():
    v = np.asarray(values)[1:]
    parts.append(np.eye(v.max() + 1)[v])
  x = np.concatenate(parts, 1).astype(np.float32)
  return x + 0.1 * rng.normal(size=x.shape).astype(np.float32)


def test_beam_agrees_with_exact_scorer_on_trained_synthetic_model(tmp_path):
  dataset = DatasetConfig(name="synthetic")
  data = dataset.load()
  features = attribute_features(data.item_table, np.random.default_rng(0))
  codes = qtraining.fit_rqkmeans(features, num_levels=3, codebook_size=32, iters=20)
  ids = sid_lib.assemble(codes.codes, "nearest_unused", last_residuals=codes.last_residuals,
                         last_codebook=codes.last_codebook)
  path = os.path.join(tmp_path, "semantic_ids.npy")
  np.save(path, ids)
  config = trainer_lib.TrainerConfig(
      num_steps=600, eval_every=0, checkpoint_every=600, log_every=100, max_history=20,
      batching=batching.BatchingConfig(batch_size=64, num_threads=0, prefetch=0,
                                       bucket_boundaries=(5, 10, 20)),
      mesh=partitioning.MeshConfig(),
      optimizer=optimizers.OptimizerConfig(name="adamw", schedule="constant",
                                           learning_rate=3e-3))
  generator = generator_job.GeneratorConfig(
      functools.partial(T5Config.tiny, emb_dim=32, head_dim=16, mlp_dim=64))
  workdir = os.path.join(tmp_path, "run")
  generator_job.train_generator(workdir, path, dataset, generator, config, progress=False)
  s = generator_job.setup(path, dataset, config, generator)
  tr = trainer_lib.Trainer(s.model, config, trainer_lib.input_shapes(s.split, s.batch_fn, config))
  state, _ = trainer_lib.restore_state(
      tr, workdir, trainer_lib.trajectory_fingerprint(config, s.fingerprint), "latest")
  history = s.split.test.padded_histories(np.arange(256), 20)
  length = (history > 0).sum(1).astype(np.int32)
  tokens = make_token_batch({"history": history, "length": length}, s.semantic_ids, s.layout,
                            20)["encoder_input_tokens"]
  exact, _ = exact_top_k(s.model, state.params, tokens, s.semantic_ids, 10)
  exact_items = np.asarray(exact)
  agreement = {}
  for width in (20, 40):
    beam = make_beam_search(s.model, width, 10)(state.params, tokens, s.model.trie)
    beam_items = np.asarray(beam.items)
    assert (beam_items > 0).all()
    assert (s.semantic_ids[beam_items] == np.asarray(beam.codes)).all()
    assert (beam_items[:, 0] == exact_items[:, 0]).mean() >= 0.99  # the best item
    agreement[width] = np.mean([len(set(a) & set(b)) / 10
                                for a, b in zip(beam_items, exact_items)])
  # Beam 20 misses some of the exact top 10 where the next-item distribution is flat
  # (measured 96-98 %); beam 40 finds them.
  assert agreement[20] >= 0.95, agreement
  assert agreement[40] >= 0.99, agreement
  # The evaluation path: metrics over real items, beyond most-popular on this catalog.
  results = generator_job.evaluate_generator(
      workdir, path, dataset, generator, config,
      EvalConfig(splits=("test",), num_bootstrap=10), checkpoint="latest", progress=False)
  test = results["test"]
  assert test["found_rate"] == 1.0
  assert test["metrics"]["overall"]["recall@10"]["mean"] > 0.05
