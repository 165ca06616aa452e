"""The semantic-ID trie: built once in NumPy, queried on the device with gathers only.

Level l of the trie holds one node per distinct ID prefix of length l (level 0: the
root, node 0). Its edges, one per distinct prefix of length l + 1, are stored in CSR
form (STATIC-style): the children of node n are edges `offsets[n]:offsets[n + 1]`,
with their codes sorted and `children` naming the node of level l + 1 they lead to;
on the last level the child is the item id (the collision level included, so every
leaf is exactly one item). `max_branch[l]`, the largest number of children of a
level-l node, is a static shape: `candidates` returns [..., max_branch] arrays.
Levels small enough (nodes x codebook size <= `dense_limit`) also keep a dense
[num_nodes, codebook_size] table of children (-1 = not allowed), which makes `mask`
and `step` a single gather.

Everything on the device is a pure function of the (pytree) `Trie` and int32 node
arrays of any shape, so it is jittable, vmappable and shardable with the batch.
A dead state (node -1) allows nothing.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.errors import DataError

Array = jax.Array
DEFAULT_DENSE_LIMIT = 1 << 20  # table entries (4 MiB of int32) per dense level


@flax.struct.dataclass
class TrieLevel:
  """The edges out of one level's nodes.

  Attributes:
    offsets: [num_nodes + 1] int32; node n's edges are offsets[n]:offsets[n + 1].
    codes: [num_edges] int32 level-local codes, sorted within each node.
    children: [num_edges] int32 child node ids at the next level (item ids on the
      last level).
    dense: [num_nodes, codebook_size] int32 child per code (-1 = not allowed), or None.
    max_branch: static, the most children of any node of this level.
    codebook_size: static, K of this level (the width of `mask`).
  """
  offsets: Array
  codes: Array
  children: Array
  dense: Optional[Array]
  max_branch: int = flax.struct.field(pytree_node=False)
  codebook_size: int = flax.struct.field(pytree_node=False)

  @property
  def num_nodes(self) -> int:
    return int(self.offsets.shape[0]) - 1


@flax.struct.dataclass
class Trie:
  """A prefix tree over the semantic IDs of a set of items.

  Attributes:
    levels: one `TrieLevel` per code level (L of them).
    num_items: static, the number of items it holds (its leaves).
  """
  levels: Tuple[TrieLevel, ...]
  num_items: int = flax.struct.field(pytree_node=False)

  @property
  def num_levels(self) -> int:
    return len(self.levels)

  @property
  def max_branch(self) -> Tuple[int, ...]:
    return tuple(level.max_branch for level in self.levels)

  @property
  def codebook_sizes(self) -> Tuple[int, ...]:
    return tuple(level.codebook_size for level in self.levels)

  # ------------------------------------------------------------ device queries
  def candidates(self, level: int, nodes: Array) -> Tuple[Array, Array, Array]:
    """The codes allowed after each state, padded to the level's max branching.

    Args:
      level: static level index l.
      nodes: [...] int32 level-l node ids (-1 = dead).

    Returns:
      codes: [..., max_branch] int32 (0 where invalid);
      children: [..., max_branch] int32 next states (item ids on the last level;
        -1 where invalid);
      valid: [..., max_branch] bool.
    """
    t = self.levels[level]
    nodes = jnp.asarray(nodes, jnp.int32)
    alive = nodes >= 0
    node = jnp.where(alive, nodes, 0)
    start = jnp.take(t.offsets, node)
    end = jnp.take(t.offsets, node + 1)
    edge = start[..., None] + jnp.arange(t.max_branch, dtype=jnp.int32)
    valid = (edge < end[..., None]) & alive[..., None]
    edge = jnp.minimum(edge, max(int(t.codes.shape[0]) - 1, 0))
    codes = jnp.where(valid, jnp.take(t.codes, edge), 0)
    children = jnp.where(valid, jnp.take(t.children, edge), -1)
    return codes, children, valid

  def mask(self, level: int, nodes: Array) -> Array:
    """[...] int32 level-l nodes -> [..., codebook_size] bool: the allowed next codes."""
    t = self.levels[level]
    nodes = jnp.asarray(nodes, jnp.int32)
    if t.dense is not None:
      rows = jnp.take(t.dense, jnp.maximum(nodes, 0), axis=0)
      return (rows >= 0) & (nodes >= 0)[..., None]
    codes, _, valid = self.candidates(level, nodes)
    flat_codes = codes.reshape(-1, t.max_branch)
    flat_valid = valid.reshape(-1, t.max_branch)
    scatter = jax.vmap(lambda c, v: jnp.zeros(t.codebook_size, bool).at[c].max(v))
    return scatter(flat_codes, flat_valid).reshape(nodes.shape + (t.codebook_size,))

  def step(self, level: int, nodes: Array, codes: Array) -> Array:
    """The next state after `codes`: [...] nodes, [...] codes -> [...] int32 (-1 = not
    allowed; on the last level, the item id)."""
    t = self.levels[level]
    nodes = jnp.asarray(nodes, jnp.int32)
    codes = jnp.asarray(codes, jnp.int32)
    in_range = (codes >= 0) & (codes < t.codebook_size) & (nodes >= 0)
    if t.dense is not None:
      nxt = t.dense[jnp.maximum(nodes, 0), jnp.clip(codes, 0, t.codebook_size - 1)]
      return jnp.where(in_range, nxt, -1)
    cand, children, valid = self.candidates(level, nodes)
    hit = valid & (cand == codes[..., None])
    nxt = jnp.sum(jnp.where(hit, children, 0), axis=-1)
    return jnp.where(jnp.any(hit, axis=-1) & in_range, nxt, -1)

  def walk(self, codes: Array) -> Tuple[Array, Array]:
    """Teacher-forced states along given code sequences.

    Args:
      codes: [..., L] int32 level-local codes.

    Returns:
      nodes: [..., L] int32, the state before each level (column 0 is the root; -1
        once a prefix left the trie); items: [...] int32 item id, -1 if no item has
        these codes.
    """
    codes = jnp.asarray(codes, jnp.int32)
    node = jnp.zeros(codes.shape[:-1], jnp.int32)
    states = []
    for level in range(self.num_levels):
      states.append(node)
      node = self.step(level, node, codes[..., level])
    return jnp.stack(states, axis=-1), node

  def token_mask(self, codes: Array, level_offsets: Sequence[int], vocab_size: int) -> Array:
    """Per teacher-forced position, the vocabulary tokens the trie allows.

    Args:
      codes: [..., L] int32 target codes.
      level_offsets: token of code 0 of each level (`TokenLayout.level_offsets`).
      vocab_size: V.

    Returns:
      [..., L, V] bool: position l allows the level-l tokens of the codes that may
      follow the target's first l codes.
    """
    nodes, _ = self.walk(codes)
    rows = []
    for level in range(self.num_levels):
      allowed = self.mask(level, nodes[..., level])
      start = int(level_offsets[level])
      pad = [(0, 0)] * (allowed.ndim - 1) + [(start, vocab_size - start - allowed.shape[-1])]
      rows.append(jnp.pad(allowed, pad))
    return jnp.stack(rows, axis=-2)


# ------------------------------------------------------------------ building
def build_trie(semantic_ids: np.ndarray, items: Optional[Sequence[int]] = None,
               exclude: Optional[Sequence[int]] = None,
               codebook_sizes: Optional[Sequence[int]] = None,
               dense_limit: int = DEFAULT_DENSE_LIMIT) -> Trie:
  """Builds the trie of a set of items (NumPy, O(n log n); a restriction is a rebuild).

  Args:
    semantic_ids: [num_items + 1, L] int codes; row i is item i, row 0 is padding.
    items: item ids (1..num_items) to include; None = all.
    exclude: item ids to leave out (applied after `items`), e.g. a user's history.
    codebook_sizes: K per level; default 1 + the largest code per level of the whole
      table (so a restricted trie keeps the layout's widths).
    dense_limit: a level gets a dense table when num_nodes * K <= this (0: none).

  Returns:
    A `Trie` of device arrays.

  Raises:
    DataError: bad table, unknown item ids, an empty item set, or two included items
      with the same IDs (resolve collisions first: `quantizers.semantic_ids.assemble`).
  """
  ids = np.asarray(semantic_ids)
  if ids.ndim != 2 or ids.shape[0] < 2 or not np.issubdtype(ids.dtype, np.integer):
    raise DataError(f"semantic_ids must be an integer [num_items + 1, L] table (row 0 = "
                    f"padding), got shape {ids.shape} ({ids.dtype}).",
                    fix="pass generator_job.load_semantic_ids(...) output.")
  num_items, num_levels = ids.shape[0] - 1, ids.shape[1]
  if ids[1:].min() < 0:
    raise DataError("semantic_ids hold negative codes.", fix="rebuild the semantic IDs.")
  sizes = (ids[1:].max(0) + 1) if codebook_sizes is None else np.asarray(codebook_sizes)
  if len(sizes) != num_levels or (ids[1:] >= sizes).any():
    raise DataError(f"codebook_sizes {list(map(int, sizes))} do not fit the semantic IDs "
                    f"(L = {num_levels}, largest codes {ids[1:].max(0).tolist()}).",
                    fix="pass TokenLayout.codebook_sizes of the same IDs.")
  chosen = np.arange(1, num_items + 1) if items is None else np.unique(np.asarray(items))
  if exclude is not None:
    chosen = np.setdiff1d(chosen, np.asarray(exclude))
  if chosen.size == 0:
    raise DataError("the trie would hold no items (empty item set after exclusions).",
                    fix="pass at least one item id.")
  if chosen.min() < 1 or chosen.max() > num_items:
    raise DataError(f"item ids must be in [1, {num_items}], got "
                    f"{int(chosen.min())}..{int(chosen.max())}.")
  rows = ids[chosen].astype(np.int64)
  order = np.lexsort(rows.T[::-1])
  rows, chosen = rows[order], chosen[order]
  same = np.all(rows[1:] == rows[:-1], axis=1)
  if same.any():
    i = int(np.argmax(same))
    raise DataError(f"items {int(chosen[i])} and {int(chosen[i + 1])} share the semantic ID "
                    f"{rows[i].tolist()}: a trie leaf must name one item.",
                    fix="build the IDs with a collision strategy (extra_level, sinkhorn or "
                        "nearest_unused in tokenizer_job).")
  n = len(rows)
  parent = np.zeros(n, np.int64)  # node id of each row's prefix at the current level.
  levels = []
  for level in range(num_levels):
    new = np.ones(n, bool)
    new[1:] = np.any(rows[1:, :level + 1] != rows[:-1, :level + 1], axis=1)
    child = np.cumsum(new) - 1  # node id of each row at level + 1
    edge_parent = parent[new]
    edge_codes = rows[new, level]
    num_nodes = int(parent.max()) + 1
    last = level == num_levels - 1
    edge_children = chosen[new] if last else child[new]
    counts = np.bincount(edge_parent, minlength=num_nodes)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    size = int(sizes[level])
    dense = None
    if num_nodes * size <= dense_limit:
      dense = np.full((num_nodes, size), -1, np.int64)
      dense[edge_parent, edge_codes] = edge_children
      dense = jnp.asarray(dense, jnp.int32)
    levels.append(TrieLevel(
        offsets=jnp.asarray(offsets, jnp.int32), codes=jnp.asarray(edge_codes, jnp.int32),
        children=jnp.asarray(edge_children, jnp.int32), dense=dense,
        max_branch=int(counts.max()), codebook_size=size))
    parent = child
  return Trie(levels=tuple(levels), num_items=n)


def trie_stats(trie: Trie) -> dict:
  """Per-level node counts, max branching and whether the level is dense."""
  return {"num_items": trie.num_items,
          "levels": [{"nodes": t.num_nodes, "edges": int(t.codes.shape[0]),
                      "max_branch": t.max_branch, "codebook_size": t.codebook_size,
                      "dense": t.dense is not None} for t in trie.levels]}
