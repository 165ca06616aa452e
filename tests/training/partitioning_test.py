"""Logical-axis rules -> partition specs (golden), mesh shapes, sharded init and batch sharding."""

import importlib.util
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxrec.training import partitioning as pt


def _standin():
  path = pathlib.Path(__file__).with_name("multihost_worker.py")
  spec = importlib.util.spec_from_file_location("multihost_worker", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_rules_golden():
  assert pt.logical_to_mesh_spec(("batch", "length", "embed")) == P("data", None, None)
  assert pt.logical_to_mesh_spec(("embed", "mlp")) == P(None, "model")
  assert pt.logical_to_mesh_spec(("vocab", "embed")) == P("model", None)
  assert pt.logical_to_mesh_spec(("embed", "joined_kv")) == P(None, "model")
  assert pt.logical_to_mesh_spec(("relpos_buckets", "heads")) == P(None, "model")
  assert pt.logical_to_mesh_spec(("abspos_buckets", "embed")) == P(None, None)
  assert pt.logical_to_mesh_spec(("codebook", "items", "layers", "kv")) == P(None, None, None, None)
  names = {name for name, _ in pt.LOGICAL_AXIS_RULES}
  assert names == {pt.BATCH, pt.LENGTH, pt.EMBED, pt.MLP, pt.HEADS, pt.KV, pt.JOINED_KV,
                   pt.VOCAB, pt.CODEBOOK, pt.ITEMS, pt.LAYERS, pt.RELPOS_BUCKETS,
                   pt.ABSPOS_BUCKETS}


def test_mesh_shapes():
  assert pt.mesh_shape(pt.MeshConfig(), 8) == (8, 1)
  assert pt.mesh_shape(pt.MeshConfig(model=2), 8) == (4, 2)
  assert pt.mesh_shape(pt.MeshConfig(data=2, model=4), 8) == (2, 4)
  with pytest.raises(pt.MeshError, match="MeshConfig.model=3"):
    pt.mesh_shape(pt.MeshConfig(model=3), 8)
  with pytest.raises(pt.MeshError, match="needs 4 devices but 8"):
    pt.mesh_shape(pt.MeshConfig(data=2, model=2), 8)
  mesh = pt.make_mesh(pt.MeshConfig(model=2))
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert pt.make_mesh(pt.MeshConfig(), jax.devices()[:1]).size == 1


def test_state_shardings_golden_for_a_known_tree():
  mesh = pt.make_mesh(pt.MeshConfig(model=2))
  box = lambda shape, names: nn.LogicallyPartitioned(  # noqa: E731
      jax.ShapeDtypeStruct(shape, np.float32), names)
  tree = {"embedding": box((64, 16), ("vocab", "embed")),
          "wi": box((16, 32), ("embed", "mlp")),
          "odd_vocab": box((63, 16), ("vocab", "embed")),    # 63 % 2 != 0 -> replicated.
          "factored": box((16,), ("embed", "mlp")),          # rank mismatch -> replicated.
          "scale": box((16,), ("embed",)),
          "step": jax.ShapeDtypeStruct((), np.int32)}
  specs = jax.tree.map(lambda s: s.spec, pt.state_shardings(tree, mesh))
  assert specs == {"embedding": P("model"), "wi": P(None, "model"), "odd_vocab": P(),
                   "factored": P(), "scale": P(), "step": P()}


def test_sharded_init_matches_single_device_and_shards_params():
  w = _standin()
  model = w.StandInModel()
  init = lambda rng: model.get_initial_variables(rng, {"encoder_input_tokens": (2, 5)})  # noqa
  rng = jax.random.PRNGKey(0)
  mesh = pt.make_mesh(pt.MeshConfig(model=2))
  sharded, shardings = pt.sharded_init(init, mesh, rng)
  single, _ = pt.sharded_init(init, pt.make_mesh(pt.MeshConfig(), jax.devices()[:1]), rng)
  params = sharded["params"]
  assert params["embedding"].sharding.spec == P("model")
  assert params["wi"]["kernel"].sharding.spec == P(None, "model")
  assert params["wo"]["kernel"].sharding.spec == P("model")
  assert params["embedding"].addressable_shards[0].data.shape == (32, 16)
  assert shardings["params"]["logits"]["kernel"].spec == P(None, "model")
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(sharded), jax.device_get(single))


def test_shard_batch_and_put_global():
  mesh = pt.make_mesh(pt.MeshConfig(model=2))
  host = {"history": np.arange(24, dtype=np.int32).reshape(8, 3),
          "weight": np.ones(8, np.float32)}
  batch = pt.shard_batch(host, mesh)
  assert batch["history"].shape == (8, 3)
  assert batch["history"].sharding.spec == P("data")
  assert batch["history"].addressable_shards[0].data.shape == (2, 3)
  np.testing.assert_array_equal(np.asarray(batch["history"]), host["history"])
  full = pt.put_global(host, pt.replicated(mesh))
  assert full["weight"].sharding.is_fully_replicated
