"""ViT: shapes at global and local sizes, position interpolation, single trace, logical axes."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.encoders import vit

TINY = vit.VitConfig(patch_size=4, hidden=16, num_layers=2, num_heads=2, mlp_dim=32,
                     image_size=16)


@jax.jit
def init():
  return vit.Vit(TINY).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))


def test_cls_output_shapes_for_global_and_local_sizes():
  model, variables = vit.Vit(TINY), init()
  apply = jax.jit(model.apply)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 3))
  chex.assert_shape(apply(variables, x), (3, 16))
  chex.assert_shape(apply(variables, x[:, :8, :8]), (3, 16))
  chex.assert_shape(apply(variables, jnp.zeros((2, 24, 24, 3))), (2, 16))
  pos = nn.meta.unbox(variables)["params"]["pos_embed"]
  chex.assert_shape(pos, (1 + 16, 16))
  with pytest.raises(ValueError, match="patch_size"):
    model.apply(variables, jnp.zeros((1, 10, 10, 3)))


def test_position_interpolation_is_the_identity_at_the_native_size():
  pos = jax.random.normal(jax.random.PRNGKey(0), (1 + 16, 8))
  assert vit.interpolate_pos_embed(pos, 4) is pos
  # The resize itself also reproduces the table at the same size.
  same = jax.image.resize(pos[1:].reshape(4, 4, 8), (4, 4, 8), "bicubic", antialias=False)
  np.testing.assert_allclose(same.reshape(16, 8), pos[1:], atol=1e-6)
  small = vit.interpolate_pos_embed(pos, 2)
  chex.assert_shape(small, (1 + 4, 8))
  np.testing.assert_array_equal(small[0], pos[0])


def test_jit_traces_once_per_shape():
  model, variables = vit.Vit(TINY), init()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(variables, x):
    return model.apply(variables, x)

  x = jnp.ones((2, 16, 16, 3))
  forward(variables, x)
  forward(variables, x + 1.0)


def test_params_have_logical_axes():
  abstract = jax.eval_shape(init)
  specs = jax.tree_util.tree_leaves(nn.get_partition_spec(abstract)["params"],
                                    is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
  names = {name for spec in specs for name in spec if name is not None}
  assert {"embed", "mlp", "heads", "kv"} <= names
  attention = nn.get_partition_spec(abstract)["params"]["block_0"]["attention"]
  assert tuple(attention["query"]["kernel"]) == ("embed", "heads", "kv")


def test_bad_config_raises():
  with pytest.raises(ValueError, match="num_heads"):
    vit.VitConfig(hidden=10, num_heads=3)
  with pytest.raises(ValueError, match="patch_size"):
    vit.VitConfig(image_size=30, patch_size=4)
