"""The trie: hand-enumerated masks of a three-item trie, CSR == dense, walks, restriction,
bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.errors import DataError
from jaxrec.decoding import build_trie, trie_stats

# Items 1..3 with IDs (0,1,0), (0,2,0), (1,1,3); codebook sizes (2, 3, 4).
IDS = np.array([[0, 0, 0], [0, 1, 0], [0, 2, 0], [1, 1, 3]])
SIZES = (2, 3, 4)


@pytest.fixture(params=["dense", "csr"])
def trie(request):
  return build_trie(IDS, codebook_sizes=SIZES,
                    dense_limit=1 << 20 if request.param == "dense" else 0)


def test_three_item_trie_masks(trie):
  # Level 0: the root allows codes 0 and 1.
  np.testing.assert_array_equal(trie.mask(0, jnp.array([0])), [[True, True]])
  # Level 1 nodes: prefix (0,) -> node 0 allows {1, 2}; prefix (1,) -> node 1 allows {1}.
  np.testing.assert_array_equal(trie.mask(1, jnp.array([0, 1])),
                                [[False, True, True], [False, True, False]])
  # Level 2 nodes: (0,1) -> 0 allows {0}; (0,2) -> 1 allows {0}; (1,1) -> 2 allows {3}.
  np.testing.assert_array_equal(trie.mask(2, jnp.array([0, 1, 2, -1])),
                                [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
  assert trie.max_branch == (2, 2, 1)
  assert trie.num_items == 3


def test_candidates_and_steps(trie):
  codes, children, valid = trie.candidates(1, jnp.array([0, 1, -1]))
  np.testing.assert_array_equal(valid, [[True, True], [True, False], [False, False]])
  np.testing.assert_array_equal(np.where(valid, codes, -9), [[1, 2], [1, -9], [-9, -9]])
  np.testing.assert_array_equal(children, [[0, 1], [2, -1], [-1, -1]])
  # Leaves are item ids.
  np.testing.assert_array_equal(trie.step(2, jnp.array([0, 1, 2, 2]), jnp.array([0, 0, 3, 0])),
                                [1, 2, 3, -1])
  # Out-of-range codes and dead states are not allowed.
  np.testing.assert_array_equal(trie.step(0, jnp.array([0, 0, -1]), jnp.array([5, -1, 0])),
                                [-1, -1, -1])


def test_walk_and_token_mask(trie):
  nodes, items = trie.walk(jnp.array([[0, 2, 0], [1, 1, 3], [1, 2, 0]]))
  np.testing.assert_array_equal(nodes, [[0, 0, 1], [0, 1, 2], [0, 1, -1]])
  np.testing.assert_array_equal(items, [2, 3, -1])
  offsets = (2, 4, 7)  # 2 specials, then 2 + 3 + 4 code tokens: vocab 11
  mask = trie.token_mask(jnp.array([[1, 1, 3]]), offsets, 11)
  expected = np.zeros((3, 11), bool)
  expected[0, [2, 3]] = True           # level 0: codes 0, 1
  expected[1, 4 + 1] = True            # after (1,): code 1
  expected[2, 7 + 3] = True            # after (1, 1): code 3
  np.testing.assert_array_equal(mask[0], expected)


def test_jit_and_vmap():
  trie = build_trie(IDS, codebook_sizes=SIZES, dense_limit=0)
  f = jax.jit(lambda t, n: t.mask(1, n))
  np.testing.assert_array_equal(f(trie, jnp.array([[0], [1]]))[:, 0],
                                [[0, 1, 1], [0, 1, 0]])


def test_csr_equals_dense_on_random_ids():
  rng = np.random.default_rng(0)
  rows = np.unique(rng.integers(0, 6, (200, 3)), axis=0)
  ids = np.concatenate([np.zeros((1, 3), int), rng.permutation(rows)])
  dense, csr = build_trie(ids), build_trie(ids, dense_limit=0)
  assert all(t.dense is not None for t in dense.levels)
  assert all(t.dense is None for t in csr.levels)
  nodes_d, items_d = dense.walk(jnp.asarray(ids[1:]))
  nodes_c, items_c = csr.walk(jnp.asarray(ids[1:]))
  np.testing.assert_array_equal(items_d, np.arange(1, len(ids)))
  np.testing.assert_array_equal(items_c, items_d)
  for level in range(3):
    np.testing.assert_array_equal(dense.mask(level, nodes_d[:, level]),
                                  csr.mask(level, nodes_c[:, level]))


def test_restriction_keeps_widths_and_only_chosen_items():
  full = build_trie(IDS)
  only = build_trie(IDS, items=[1, 3])
  assert only.codebook_sizes == full.codebook_sizes
  _, items = only.walk(jnp.asarray(IDS[1:]))
  np.testing.assert_array_equal(items, [1, -1, 3])
  _, items = build_trie(IDS, exclude=[3]).walk(jnp.asarray(IDS[1:]))
  np.testing.assert_array_equal(items, [1, 2, -1])
  assert trie_stats(only)["num_items"] == 2


def test_bad_input():
  with pytest.raises(DataError, match="share the semantic ID"):
    build_trie(np.array([[0, 0], [1, 2], [1, 2]]))
  with pytest.raises(DataError, match="no items"):
    build_trie(IDS, items=[1], exclude=[1])
  with pytest.raises(DataError, match=r"\[1, 3\]"):
    build_trie(IDS, items=[4])
  with pytest.raises(DataError, match="codebook_sizes"):
    build_trie(IDS, codebook_sizes=(2, 2, 4))
  with pytest.raises(DataError, match="integer"):
    build_trie(np.zeros((3,)))
