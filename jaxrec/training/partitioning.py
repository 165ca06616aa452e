"""Logical axis names, the one rules table mapping them to the ("data", "model") mesh,
and the mesh / sharded-init / batch-sharding helpers every trainer uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

# Logical axis names that modules annotate parameters and activations with.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
JOINED_KV = "joined_kv"
VOCAB = "vocab"
CODEBOOK = "codebook"
ITEMS = "items"
LAYERS = "layers"
RELPOS_BUCKETS = "relpos_buckets"
ABSPOS_BUCKETS = "abspos_buckets"  # MSCGRec's learned item / code position embeddings.

# Mesh axis names.
DATA = "data"
MODEL = "model"
MESH_AXES = (DATA, MODEL)

# The one rules table: logical axis -> mesh axis (None = replicated).
LOGICAL_AXIS_RULES = (
    (BATCH, DATA),
    (LENGTH, None),
    (EMBED, None),
    (MLP, MODEL),
    (HEADS, MODEL),
    (KV, None),
    (JOINED_KV, MODEL),
    (VOCAB, MODEL),
    (CODEBOOK, None),
    (ITEMS, None),
    (LAYERS, None),
    (RELPOS_BUCKETS, None),
    (ABSPOS_BUCKETS, None),
)


class MeshError(ValueError):
  """A mesh shape that does not fit the devices; the message says what to bind."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Shape of the ("data", "model") device mesh.

  Attributes:
    data: data-parallel size; -1 = all devices not used by `model`.
    model: model-parallel size (shards mlp / heads / vocab).
  """
  data: int = -1
  model: int = 1


def mesh_shape(config: MeshConfig, num_devices: int) -> tuple:
  """(data, model) sizes for `num_devices` devices; raises MeshError if they do not fit."""
  model = config.model
  if model < 1 or num_devices % model:
    raise MeshError(f"MeshConfig.model={model} does not divide the {num_devices} devices. "
                    f"Fix: bind MeshConfig.model to a divisor of {num_devices}.")
  data = num_devices // model if config.data == -1 else config.data
  if data < 1 or data * model != num_devices:
    raise MeshError(f"MeshConfig(data={config.data}, model={model}) needs {data * model} "
                    f"devices but {num_devices} are available. Fix: bind MeshConfig.data "
                    f"= -1 (use them all) or to {num_devices // model}.")
  return data, model


def make_mesh(config: MeshConfig = MeshConfig(),
              devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """A ("data", "model") mesh with Auto axis types (the GSPMD logical-rules pattern).

  Args:
    config: the mesh shape.
    devices: default all devices of all processes (`jax.devices()`).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def unbox(tree: Any) -> Any:
  """Strips logical boxes without sharding constraints (shardings come from out_shardings;
  a box whose names do not fit its value, e.g. Adafactor's factored moments, stays legal)."""
  is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def rules_context(mesh: jax.sharding.Mesh):
  """Context activating the mesh and the logical rules (needed while tracing)."""
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(nn.logical_axis_rules(LOGICAL_AXIS_RULES))
  return stack


def logical_to_mesh_spec(logical: Sequence[Optional[str]]) -> P:
  """E.g. ("batch", "embed", "mlp") -> P("data", None, "model")."""
  return nn.logical_to_mesh_axes(tuple(logical), LOGICAL_AXIS_RULES)


def _fit_spec(spec: P, shape: Sequence[int], mesh: jax.sharding.Mesh) -> P:
  """Replicates dimensions the mesh does not divide (and specs of another rank)."""
  if len(spec) > len(shape):
    return P()
  fitted = []
  for dim, axes in zip(shape, spec):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    fitted.append(axes if names and dim % size == 0 else None)
  while fitted and fitted[-1] is None:
    fitted.pop()
  return P(*fitted)


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh) -> Any:
  """NamedShardings for a (possibly boxed) abstract state, from the logical rules.

  Leaves boxed with `nn.with_logical_partitioning` (params, and optimizer
  moments built by tree-mapping over them) get their mapped spec; other leaves
  are replicated. A dimension the mesh axis does not divide, or a box whose
  names do not match the leaf's rank (e.g. Adafactor's factored moments), is
  replicated instead of failing.

  Args:
    abstract_state: from `jax.eval_shape(init_fn, ...)`; boxes allowed.

  Returns:
    A pytree of NamedSharding with the structure of the unboxed state.
  """
  logical = nn.get_partition_spec(abstract_state)
  shapes = unbox(abstract_state)

  def one(spec, leaf):
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), LOGICAL_AXIS_RULES)
    return NamedSharding(mesh, _fit_spec(mesh_spec, np.shape(leaf), mesh))

  return jax.tree.map(one, logical, shapes, is_leaf=lambda x: isinstance(x, P))


def abstract_state(init_fn: Callable, mesh: jax.sharding.Mesh, *args) -> tuple:
  """Shapes and shardings of `init_fn(*args)` without computing it.

  Returns:
    (abstract, shardings): unboxed jax.ShapeDtypeStruct leaves carrying their
    shardings (an Orbax restore target), and the NamedSharding tree.
  """
  boxed = jax.eval_shape(init_fn, *args)
  shardings = state_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          unbox(boxed), shardings)
  return abstract, shardings


def sharded_init(init_fn: Callable, mesh: jax.sharding.Mesh, *args) -> tuple:
  """eval_shape -> partition specs -> jit with out_shardings: each device makes its shard.

  Args:
    init_fn: `init_fn(*args)` returns a pytree, possibly with logical boxes.
    mesh: the device mesh.
    *args: passed to init_fn (e.g. an rng key); replicated.

  Returns:
    (state, shardings): the unboxed state, laid out on the mesh, and its shardings.
  """
  _, shardings = abstract_state(init_fn, mesh, *args)
  with rules_context(mesh):
    state = jax.jit(lambda *a: unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return state, shardings


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dimension split over "data", the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(host_batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """This process's rows -> global arrays split over "data" (single- or multi-process).

  Args:
    host_batch: pytree of NumPy arrays [local_batch, ...]; process p holds rows
      [p * local_batch, (p + 1) * local_batch) of the global batch (what
      `batching.train_iterator` yields).

  Returns:
    The same pytree of jax.Arrays [global_batch, ...] sharded by `data_sharding`.
  """
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      host_batch)


def put_global(host_tree: Any, sharding: Any) -> Any:
  """A pytree every process holds in full -> global arrays with `sharding` (a prefix tree)."""
  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda x: put(x, sharding), host_tree)
  return jax.tree.map(put, host_tree, sharding)
