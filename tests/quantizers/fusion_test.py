"""Fusion layers: PCA known answers, CEMG attention vs NumPy, masking, MusicRec shapes and
losses (known values), loss falls under optax, fused vectors feed the RQ-VAE."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from jaxrec.quantizers import fusion
from jaxrec.quantizers import rqvae

TINY_MUSIC = fusion.MusicRecFusionConfig(
    modality_dims=(6, 10), proj_dim=8, encoder_hidden=(8,), hidden_dim=4,
    decoder_hidden=(8,), fused_dim=6, cf_dim=5)


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------- PCA

def test_pca_rank_one_recovers_direction_and_sign():
  u = np.array([0.36, -0.48, 0.0, -0.8])                 # unit, largest |entry| negative
  a = np.array([1.0, -2.0, 3.0, 0.5, 4.0])
  x = a[:, None] * u[None, :] + np.array([1.0, 2.0, 3.0, 4.0])
  projected, components, mean = fusion.pca(x, 1)
  chex.assert_shape((projected, components, mean), ((5, 1), (1, 4), (4,)))
  assert projected.dtype == np.float32
  np.testing.assert_allclose(components[0], -u, atol=1e-6)  # flipped: -0.8 -> +0.8
  np.testing.assert_allclose(projected[:, 0], -(a - a.mean()), atol=1e-5)
  np.testing.assert_allclose(projected @ components + mean, x, atol=1e-5)
  np.testing.assert_allclose(fusion.pca_apply(x, components, mean), projected, atol=1e-5)


def test_pca_reconstructs_at_full_rank_and_sign_is_deterministic():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 2)) @ rng.normal(size=(2, 5)) + 3.0     # rank 2 after centring
  projected, components, mean = fusion.pca(x, 2)
  np.testing.assert_allclose(components @ components.T, np.eye(2), atol=1e-6)
  np.testing.assert_allclose(projected @ components + mean, x, atol=1e-4)
  assert np.var(projected[:, 0]) >= np.var(projected[:, 1])
  pivot = np.argmax(np.abs(components), axis=1)
  assert np.all(components[np.arange(2), pivot] > 0)
  # Negating the data flips every SVD sign; the convention keeps the components.
  proj_neg, comp_neg, _ = fusion.pca(-x, 2)
  np.testing.assert_allclose(comp_neg, components, atol=1e-6)
  np.testing.assert_allclose(proj_neg, -projected, atol=1e-4)
  with pytest.raises(ValueError, match="pca dim"):
    fusion.pca(x, 6)


def test_pca_modalities_fits_present_rows_only():
  rng = np.random.default_rng(1)
  text, image = rng.normal(size=(6, 7)), rng.normal(size=(6, 9))
  present_image = np.array([1, 1, 0, 1, 1, 1], bool)
  image[2] = 1e6                                              # garbage in a missing row
  stacked, mask = fusion.pca_modalities([text, image], 3, [np.ones(6, bool), present_image])
  chex.assert_shape(stacked, (6, 2, 3))
  np.testing.assert_array_equal(mask[:, 1], present_image)
  np.testing.assert_array_equal(stacked[2, 1], 0.0)
  np.testing.assert_allclose(stacked[present_image, 1], fusion.pca(image[present_image], 3)[0])


# ---------------------------------------------------------------- CEMG

CEMG = fusion.CemgFusionConfig(modality_dims=(5, 7), pca_dim=4, collab_dim=3, attn_dim=2)


def cemg_params(config, seed=0):
  rng = np.random.default_rng(seed)
  m, heads = config.num_modalities, config.num_heads
  head_dim = config.attn_dim // heads
  return {"query": rng.normal(size=(config.collab_dim, heads, head_dim)).astype(np.float32),
          "key": rng.normal(size=(m, config.pca_dim, heads, head_dim)).astype(np.float32),
          "value": rng.normal(size=(m, config.pca_dim, heads, head_dim)).astype(np.float32)}


def cemg_apply(config, params, collab, feats, mask=None):
  model = fusion.CollaborativeGuidedAttention(config)
  return jax.jit(lambda p, c, f, m: model.apply({"params": p}, c, f, m))(
      params, collab, feats, mask)


def cemg_batch(batch=3, seed=1):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(batch, CEMG.collab_dim)).astype(np.float32),
          rng.normal(size=(batch, 2, CEMG.pca_dim)).astype(np.float32))


def test_cemg_attention_matches_numpy():
  params = cemg_params(CEMG)
  collab, feats = cemg_batch()
  fused, weights = cemg_apply(CEMG, params, collab, feats)
  chex.assert_shape(fused, (3, CEMG.fused_dim))
  chex.assert_shape(weights, (3, 1, 2))
  wq, wk, wv = params["query"][:, 0], params["key"][:, :, 0], params["value"][:, :, 0]
  for b in range(3):
    q = collab[b] @ wq                                                 # [2]
    keys = np.stack([feats[b, m] @ wk[m] for m in range(2)])           # [M, 2]
    values = np.stack([feats[b, m] @ wv[m] for m in range(2)])
    a = softmax(keys @ q / np.sqrt(2.0))
    np.testing.assert_allclose(weights[b, 0], a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused[b, :2], a @ values, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(fused[:, 2:], collab)                  # collab part exact


def test_cemg_masking_and_all_masked():
  params = cemg_params(CEMG)
  collab, feats = cemg_batch()
  mask = np.array([[True, False], [False, True], [False, False]])
  fused, weights = cemg_apply(CEMG, params, collab, feats, mask)
  np.testing.assert_allclose(weights[:, 0], [[1, 0], [0, 1], [0, 0]], atol=1e-7)
  value0 = feats[0, 0] @ params["value"][0, :, 0]
  np.testing.assert_allclose(fused[0, :2], value0, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(fused[2, :2], 0.0)
  np.testing.assert_array_equal(fused[:, 2:], collab)
  model = fusion.CollaborativeGuidedAttention(CEMG)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(
      model.apply({"params": p}, collab, feats, mask)[0] ** 2)))(params)
  chex.assert_tree_all_finite(grads)


def test_cemg_multi_head_shapes_axes_and_fuse_fn():
  config = fusion.CemgFusionConfig(modality_dims=(5, 7, 3), pca_dim=4, collab_dim=3,
                                   attn_dim=6, num_heads=2, use_bias=True)
  model = fusion.CollaborativeGuidedAttention(config)
  collab, feats = jnp.ones((2, 3)), jnp.ones((2, 3, 4))
  variables = model.init(jax.random.PRNGKey(0), collab, feats)
  specs = nn.get_partition_spec(variables)["params"]
  assert specs["query"] == P("embed", "heads", "kv")
  assert specs["key"] == P(None, "embed", "heads", "kv")
  params = nn.meta.unbox(variables)["params"]
  fused, weights = cemg_apply(config, params, collab, feats)
  chex.assert_shape((fused, weights), ((2, 9), (2, 2, 3)))
  np.testing.assert_allclose(jnp.sum(weights, -1), 1.0, rtol=1e-6)
  fuse = fusion.make_cemg_fuse_fn(config)
  np.testing.assert_allclose(fuse(params, collab, feats, jnp.ones((2, 3), bool)), fused,
                             rtol=1e-6)
  with pytest.raises(ValueError, match="divisible"):
    fusion.CemgFusionConfig(attn_dim=6, num_heads=4)


# ---------------------------------------------------------------- MusicRec

def music_batch(batch=4, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=(batch, d)).astype(np.float32)
               for d in TINY_MUSIC.modality_dims)


def music_params(config=TINY_MUSIC, seed=0):
  model = fusion.SharedSpecificFusion(config)
  xs = tuple(jnp.zeros((1, d)) for d in config.modality_dims)
  return nn.meta.unbox(model.init(jax.random.PRNGKey(seed), xs))["params"]


def test_musicrec_shapes():
  params, xs = music_params(), music_batch()
  mask = np.array([[1, 1], [1, 0], [0, 1], [1, 1]], bool)
  model = fusion.SharedSpecificFusion(TINY_MUSIC)
  apply = jax.jit(lambda p, x, m: model.apply({"params": p}, x, m))
  out = apply(params, xs, mask)
  chex.assert_shape((out.shared, out.specific), (4, 2, 4))
  chex.assert_shape(out.fused, (4, 6))
  chex.assert_shape(out.cf_proj, (4, 5))
  chex.assert_shape(out.recon, ((4, 6), (4, 10)))
  # A missing modality's input does not reach the fused vector.
  garbage = (xs[0], jnp.asarray(xs[1]).at[1].set(100.0))
  out2 = apply(params, garbage, mask)
  np.testing.assert_allclose(out2.fused, out.fused, rtol=1e-6)
  with pytest.raises(ValueError, match="modality_dims"):
    model.apply({"params": params}, (xs[0], xs[0]))


def test_orthogonality_loss_known_values():
  # Three items, h = 2. Shared varies along u = (1, -1, 0) in feature 0; specific along
  # w = (1, 1, -2) in feature 1; u . w = 0 (also after row normalisation: (1, 1, -1)).
  u, w = np.array([1.0, -1.0, 0.0]), np.array([1.0, 1.0, -2.0])
  shared = np.stack([u, np.zeros(3)], -1)[:, None, :]                  # [3, M=1, 2]
  specific = np.stack([np.zeros(3), w], -1)[:, None, :]
  loss = jax.jit(fusion.orthogonality_loss)
  np.testing.assert_allclose(loss(shared, specific), 0.0, atol=1e-7)
  # specific = shared: S^T P = [[2, 0], [0, 0]] -> mean of squares 4 / 4 = 1.
  np.testing.assert_allclose(loss(shared, shared), 1.0, rtol=1e-6)
  # Scale-free, and a masked fourth item changes nothing.
  np.testing.assert_allclose(loss(10 * shared, 0.1 * shared), 1.0, rtol=1e-6)
  pad = lambda x: np.concatenate([x, np.full((1, 1, 2), 5.0)])
  mask = np.array([[True], [True], [True], [False]])
  np.testing.assert_allclose(loss(pad(shared), pad(shared) * [1, -3], mask), 1.0, rtol=1e-6)
  # Two modalities average: 0 and 1 -> 0.5.
  two_s = np.concatenate([shared, shared], 1)
  two_p = np.concatenate([specific, shared], 1)
  np.testing.assert_allclose(loss(two_s, two_p), 0.5, rtol=1e-6)
  rng = np.random.default_rng(0)
  assert float(loss(rng.normal(size=(4, 2, 3)), rng.normal(size=(4, 2, 3)))) > 0


def test_shared_alignment_lower_when_aligned():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(8, 4)).astype(np.float32)
  aligned = jnp.stack([base, base], axis=1)
  shuffled = jnp.stack([base, base[np.roll(np.arange(8), 1)]], axis=1)
  loss = jax.jit(fusion.shared_alignment_loss)
  assert float(loss(aligned)) < float(loss(shuffled))
  # Hand value for M = 2, no mask: mean of the two directions' InfoNCE.
  unit = base / np.linalg.norm(base, axis=1, keepdims=True)
  logits = unit @ unit.T / 0.1
  expected = -np.mean(np.diag(np.log(softmax(logits))))
  np.testing.assert_allclose(loss(aligned), expected, rtol=1e-5)
  # Masked entries neither count as rows nor as negatives: an item with no modality
  # leaves the loss of the other 7 items.
  mask = np.ones((8, 2), bool)
  mask[0] = False
  np.testing.assert_allclose(loss(aligned, jnp.asarray(mask)),
                             loss(aligned[1:]), rtol=1e-5)
  assert np.isfinite(float(loss(aligned, jnp.zeros((8, 2), bool))))


def test_reconstruction_loss_masks_missing():
  inputs = (jnp.zeros((2, 3)), jnp.zeros((2, 2)))
  recon = (jnp.ones((2, 3)), jnp.full((2, 2), 2.0).at[1].set(100.0))
  mask = jnp.array([[True, True], [True, False]])
  # present pairs: (0,0) 1, (1,0) 1, (0,1) 4 -> 2.
  np.testing.assert_allclose(jax.jit(fusion.reconstruction_loss)(recon, inputs, mask), 2.0)


def test_collaborative_guidance_matches_hand():
  rng = np.random.default_rng(3)
  z, cf = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)
  cn = cf / np.linalg.norm(cf, axis=1, keepdims=True)
  expected = -np.mean(np.diag(np.log(softmax(zn @ cn.T / 0.2))))
  got = jax.jit(fusion.collaborative_guidance_loss, static_argnums=2)(z, cf, 0.2)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="cf_dim"):
    fusion.collaborative_guidance_loss(z, cf[:, :3])


def test_musicrec_losses_fall_under_adam():
  rng = np.random.default_rng(0)
  xs = music_batch(batch=16, seed=1)
  cf = rng.normal(size=(16, 5)).astype(np.float32)
  mask = np.ones((16, 2), bool)
  mask[::5, 1] = False
  loss_fn = fusion.make_musicrec_loss_fn(TINY_MUSIC)
  params = music_params()
  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state):
    (total, (losses, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, xs, mask, cf)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, losses

  opt_state = optimizer.init(params)
  params, opt_state, first = step(params, opt_state)
  assert set(first) == {"reconstruction", "alignment", "orthogonality", "guidance", "total"}
  for _ in range(40):
    params, opt_state, last = step(params, opt_state)
  chex.assert_tree_all_finite(last)
  assert float(last["total"]) < 0.8 * float(first["total"])
  with pytest.raises(ValueError, match="guidance_weight"):
    loss_fn(params, xs, mask, None)


def test_fused_vectors_feed_the_rqvae_jointly():
  """The fused vector is the RQ-VAE input; one gradient reaches both modules."""
  rq_config = rqvae.RqVaeConfig(input_dim=TINY_MUSIC.fused_dim, hidden_dims=(8,),
                                latent_dim=4, num_levels=2, codebook_size=4,
                                alignment_weight=0.1)
  rq = rqvae.RqVae(rq_config)
  xs = music_batch(batch=8)
  cf = np.random.default_rng(2).normal(size=(8, 5)).astype(np.float32)
  fparams = music_params()
  fused = fusion.make_musicrec_fuse_fn(TINY_MUSIC)(fparams, xs, jnp.ones((8, 2), bool))
  chex.assert_shape(fused, (8, TINY_MUSIC.fused_dim))
  rparams = nn.meta.unbox(rq.init(jax.random.PRNGKey(0), fused, cf))["params"]
  loss_fn = fusion.make_musicrec_loss_fn(TINY_MUSIC)

  def joint(params):
    total, (_, out) = loss_fn(params["fusion"], xs, None, cf)
    return total + rq.apply({"params": params["rq"]}, out.fused, cf).losses["total"]

  grads = jax.jit(jax.grad(joint))({"fusion": fparams, "rq": rparams})
  chex.assert_tree_all_finite(grads)
  assert float(jnp.abs(grads["fusion"]["fuse"]["dense_0"]["kernel"]).sum()) > 0
