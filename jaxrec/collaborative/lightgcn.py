"""LightGCN (He et al., SIGIR 2020): user and item embeddings smoothed over the user-item graph.

The graph is the bipartite user-item graph of the TRAINING part of a leave-one-out
split (never a validation or test item), with U + N nodes: users 0..U-1, then item
id i at node U + i - 1 (there is no node for the padding item 0). An edge joins a
user and each distinct item of their training sequence (repeats count once, as in
the paper's binary interaction matrix R); it carries the symmetric normalization
1 / sqrt(|N_u| |N_i|) of D^-1/2 A D^-1/2.

Propagation (the paper's eq. 3 and 4): E^(k+1) = D^-1/2 A D^-1/2 E^(k), the final
embedding is the layer mean (1 / (K + 1)) sum_{k=0..K} E^(k). It runs as
`jax.ops.segment_sum` over directed edge arrays (both directions of every edge)
padded to a static length with zero-weight edges, so it jits for one shape per
graph and the edge arrays can be split over a mesh's "data" axis (each device
sums its edges, XLA adds the partial sums).

Training is BPR with one negative per (user, positive) pair, drawn uniformly from
the items 1..N on device (item 0 is never drawn) and redrawn up to
`negative_tries - 1` times while it is one of the user's training items (a
binary search in the user's sorted positives); plus the paper's L2 on the batch's
ego (layer-0) embeddings: l2_weight * 0.5 * (|e_u|^2 + |e_i|^2 + |e_j|^2) summed
over the batch / batch size (the official implementation's `reg_loss`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.dataset import PAD_ITEM
from jaxrec.data.splits import LeaveOneOutSplit


@dataclasses.dataclass(frozen=True)
class LightGcnConfig:
  """The model and its loss.

  Attributes:
    embed_dim: embedding size d (the paper: 64).
    num_layers: propagation layers K (the paper: 3).
    l2_weight: weight of the L2 term on the batch's ego embeddings (the paper: 1e-4).
    init_std: embeddings start as N(0, init_std^2) (the official code: 0.1).
    negative_tries: uniform negative draws per pair; a draw that is a training item
      of the user is redrawn, up to this many draws in all (1 = plain uniform).
    edge_pad_multiple: the directed edge arrays are padded with zero-weight edges
      to a multiple of this (and of the mesh's data size).
  """
  embed_dim: int = 64
  num_layers: int = 3
  l2_weight: float = 1e-4
  init_std: float = 0.1
  negative_tries: int = 4
  edge_pad_multiple: int = 1024

  def __post_init__(self):
    if self.embed_dim < 1 or self.num_layers < 0 or self.l2_weight < 0 or self.init_std <= 0:
      raise ValueError(f"LightGcnConfig needs embed_dim >= 1, num_layers >= 0, l2_weight >= 0 "
                       f"and init_std > 0; got {self}.")
    if self.negative_tries < 1 or self.edge_pad_multiple < 1:
      raise ValueError(f"LightGcnConfig needs negative_tries >= 1 and edge_pad_multiple >= 1; "
                       f"got {self}.")


@dataclasses.dataclass(frozen=True, eq=False)
class BipartiteGraph:
  """The normalized training graph as padded, static-shape edge arrays (NumPy).

  Attributes:
    num_users: U.
    num_items: N (items 1..N are nodes U..U+N-1).
    src: [E] int32 source node of each directed edge.
    dst: [E] int32 destination node (sorted ascending; padding edges point at the
      last node with weight 0).
    weight: [E] float32 1 / sqrt(deg(src) deg(dst)); 0 for padding edges.
    num_edges: directed real edges (2 x distinct training pairs); the rest is padding.
    pair_users: [P] int32 user of each distinct training pair, sorted by (user, item).
    pair_items: [P] int32 item id (1..N) of each pair.
    pair_offsets: [U + 1] int32: user u's positives are pair_items[pair_offsets[u]:
      pair_offsets[u + 1]] (sorted).
    degrees: [U + N] int64 distinct neighbours of every node.
  """
  num_users: int
  num_items: int
  src: np.ndarray
  dst: np.ndarray
  weight: np.ndarray
  num_edges: int
  pair_users: np.ndarray
  pair_items: np.ndarray
  pair_offsets: np.ndarray
  degrees: np.ndarray

  @property
  def num_nodes(self) -> int:
    return self.num_users + self.num_items

  @property
  def num_pairs(self) -> int:
    return len(self.pair_items)

  @property
  def max_user_degree(self) -> int:
    return int(np.diff(self.pair_offsets).max(initial=0))

  @classmethod
  def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
                 pad_multiple: int = 1024) -> "BipartiteGraph":
    """From (user row, item id 1..N) interactions; duplicates collapse to one edge.

    Args:
      users: [n] int user rows in 0..num_users-1.
      items: [n] int item ids in 1..num_items (0, padding, is not allowed).
      num_users: U.
      num_items: N.
      pad_multiple: the directed edge count is padded up to a multiple of this
        (at least one multiple, so an empty graph still has static arrays).
    """
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    if len(users) != len(items):
      raise ValueError(f"users and items differ in length: {len(users)} vs {len(items)}")
    if len(items) and (items.min() < 1 or items.max() > num_items):
      raise ValueError(f"item ids must lie in 1..{num_items}; got {items.min()}..{items.max()}")
    if len(users) and (users.min() < 0 or users.max() >= num_users):
      raise ValueError(f"user rows must lie in 0..{num_users - 1}; got "
                       f"{users.min()}..{users.max()}")
    keys = np.unique(users * (num_items + 1) + items)
    pu, pi = keys // (num_items + 1), keys % (num_items + 1)
    num_nodes = num_users + num_items
    item_node = num_users + pi - 1
    degrees = np.bincount(np.concatenate([pu, item_node]), minlength=num_nodes)
    src = np.concatenate([pu, item_node])
    dst = np.concatenate([item_node, pu])
    weight = 1.0 / np.sqrt(degrees[src].astype(np.float64) * degrees[dst])
    order = np.argsort(dst, kind="stable")
    src, dst, weight = src[order], dst[order], weight[order]
    num_edges = len(src)
    padded = max(1, math.ceil(num_edges / pad_multiple)) * pad_multiple
    pad = padded - num_edges
    last = num_nodes - 1
    src = np.concatenate([src, np.full(pad, last)]).astype(np.int32)
    dst = np.concatenate([dst, np.full(pad, last)]).astype(np.int32)
    weight = np.concatenate([weight, np.zeros(pad)]).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(pu, minlength=num_users))])
    return cls(num_users=int(num_users), num_items=int(num_items), src=src, dst=dst,
               weight=weight, num_edges=int(num_edges), pair_users=pu.astype(np.int32),
               pair_items=pi.astype(np.int32), pair_offsets=offsets.astype(np.int32),
               degrees=degrees.astype(np.int64))

  @classmethod
  def from_split(cls, split: LeaveOneOutSplit, pad_multiple: int = 1024) -> "BipartiteGraph":
    """The graph of split.train_items only (no validation or test interactions)."""
    lengths = np.diff(split.train_offsets)
    users = np.repeat(np.arange(len(lengths)), lengths)
    items = split.train_items.astype(np.int64)
    keep = items != PAD_ITEM
    return cls.from_pairs(users[keep], items[keep], len(lengths), split.num_items,
                          pad_multiple)

  def device_arrays(self) -> dict:
    """What the jitted functions read: {"src", "dst", "weight", "pair_items", "pair_offsets"}."""
    return {"src": self.src, "dst": self.dst, "weight": self.weight,
            "pair_items": self.pair_items, "pair_offsets": self.pair_offsets}

  def dense_normalized_adjacency(self) -> np.ndarray:
    """[U + N, U + N] float64 D^-1/2 A D^-1/2 (tests and tiny graphs only)."""
    a = np.zeros((self.num_nodes, self.num_nodes))
    np.add.at(a, (self.dst, self.src), self.weight.astype(np.float64))
    return a


def propagate(ego: jax.Array, src: jax.Array, dst: jax.Array, weight: jax.Array,
              num_layers: int) -> jax.Array:
  """[num_nodes, d] ego embeddings -> [num_nodes, d] layer mean (1/(K+1)) sum_k E^(k).

  Args:
    ego: E^(0).
    src, dst, weight: [E] directed edges, dst sorted ascending (zero-weight padding
      edges allowed anywhere that keeps dst sorted).
    num_layers: K (static).
  """
  num_nodes = ego.shape[0]
  layer, total = ego, ego
  for _ in range(num_layers):
    messages = layer[src] * weight[:, None].astype(layer.dtype)
    layer = jax.ops.segment_sum(messages, dst, num_segments=num_nodes, indices_are_sorted=True)
    total = total + layer
  return total / (num_layers + 1)


class LightGCN(nn.Module):
  """The parameters ("user_embedding" [U, d], "item_embedding" [N, d], row r = item r + 1)
  and the propagation; `__call__(graph)` returns the final (users [U, d], items [N, d])."""
  num_users: int
  num_items: int
  embed_dim: int = 64
  num_layers: int = 3
  init_std: float = 0.1

  @classmethod
  def from_config(cls, config: LightGcnConfig, num_users: int, num_items: int) -> "LightGCN":
    return cls(num_users=num_users, num_items=num_items, embed_dim=config.embed_dim,
               num_layers=config.num_layers, init_std=config.init_std)

  def setup(self):
    init = nn.initializers.normal(self.init_std)
    self.user_embedding = self.param("user_embedding", init, (self.num_users, self.embed_dim))
    self.item_embedding = self.param("item_embedding", init, (self.num_items, self.embed_dim))

  def ego(self) -> jax.Array:
    """[U + N, d] the layer-0 node embeddings."""
    return jnp.concatenate([self.user_embedding, self.item_embedding], axis=0)

  def __call__(self, graph: dict) -> tuple:
    final = propagate(self.ego(), graph["src"], graph["dst"], graph["weight"], self.num_layers)
    return final[:self.num_users], final[self.num_users:]


def contains_sorted(sorted_items: jax.Array, offsets: jax.Array, users: jax.Array,
                    items: jax.Array, num_steps: int) -> jax.Array:
  """[B] bool: is items[b] in sorted_items[offsets[users[b]]:offsets[users[b] + 1]]?

  A vectorized binary search; num_steps >= ceil(log2(longest row + 1)) steps make it exact.
  """
  lo, hi = offsets[users], offsets[users + 1]
  end = hi
  last = max(sorted_items.shape[0] - 1, 0)

  def body(_, carry):
    lo, hi = carry
    mid = (lo + hi) // 2
    right = sorted_items[jnp.minimum(mid, last)] < items
    active = lo < hi
    return jnp.where(active & right, mid + 1, lo), jnp.where(active & ~right, mid, hi)

  lo, _ = jax.lax.fori_loop(0, num_steps, body, (lo, hi))
  return (lo < end) & (sorted_items[jnp.minimum(lo, last)] == items)


def search_steps(max_row: int) -> int:
  """Binary-search steps that decide membership in a sorted row of max_row entries."""
  return max(1, int(math.ceil(math.log2(max_row + 1))) + 1)


def sample_negatives(rng: jax.Array, users: jax.Array, graph: dict, num_items: int,
                     tries: int, num_steps: int) -> jax.Array:
  """[B] int32 item ids in 1..N (never the padding id 0), uniform; a draw that is one of
  the user's training items is redrawn, up to `tries` draws in all (then kept)."""
  keys = jax.random.split(rng, tries)
  draw = lambda t: jax.random.randint(keys[t], users.shape, 1, num_items + 1,  # noqa: E731
                                      dtype=jnp.int32)

  def body(t, neg):
    hit = contains_sorted(graph["pair_items"], graph["pair_offsets"], users, neg, num_steps)
    return jnp.where(hit, draw(t), neg)

  return jax.lax.fori_loop(1, tries, body, draw(0))


def bpr_loss(user_final: jax.Array, pos_final: jax.Array, neg_final: jax.Array,
             user_ego: jax.Array, pos_ego: jax.Array, neg_ego: jax.Array,
             l2_weight: float) -> tuple:
  """BPR + L2 for a batch; all inputs [B, d].

  Returns:
    (loss, {"bpr": mean -log sigmoid(x_ui - x_uj), "l2": l2_weight * 0.5 *
    (|e_u|^2 + |e_i|^2 + |e_j|^2) summed / B, "accuracy": fraction with x_ui > x_uj}).
  """
  diff = jnp.sum(user_final * pos_final, -1) - jnp.sum(user_final * neg_final, -1)
  bpr = jnp.mean(jax.nn.softplus(-diff))
  sq = jnp.sum(user_ego ** 2) + jnp.sum(pos_ego ** 2) + jnp.sum(neg_ego ** 2)
  l2 = l2_weight * 0.5 * sq / user_ego.shape[0]
  return bpr + l2, {"bpr": bpr, "l2": l2, "accuracy": jnp.mean(diff > 0)}


def loss_fn(model: LightGCN, params: dict, graph: dict, users: jax.Array, pos: jax.Array,
            neg: jax.Array, l2_weight: float) -> tuple:
  """LightGCN's BPR loss of a batch (users [B] rows, pos / neg [B] item ids 1..N)."""
  user_final, item_final = model.apply({"params": params}, graph)
  user_ego, item_ego = params["user_embedding"], params["item_embedding"]
  return bpr_loss(user_final[users], item_final[pos - 1], item_final[neg - 1],
                  user_ego[users], item_ego[pos - 1], item_ego[neg - 1], l2_weight)


def top_items(user_final: jax.Array, item_final: jax.Array, users: jax.Array,
              k: int) -> jax.Array:
  """[B, k] int32 item ids (1..N), best first, by e_u . e_i over all items (top-k on device)."""
  scores = user_final[users] @ item_final.T
  return (jax.lax.top_k(scores, k)[1] + 1).astype(jnp.int32)


_top_items = jax.jit(top_items, static_argnums=3)


class LightGcnRecommender:
  """`recommend(histories, k, users=users) -> [B, k]` for `evaluation.evaluate`.

  LightGCN scores by user, not by history: `takes_users` tells the harness to pass
  the examples' dataset user rows; the histories are ignored (the harness still
  uses them for exclude_history).

  Args:
    user_final: [U, d] final user embeddings (device or host array).
    item_final: [N, d] final item embeddings, row r = item r + 1.
  """
  takes_users = True

  def __init__(self, user_final, item_final):
    self.user_final = jnp.asarray(user_final)
    self.item_final = jnp.asarray(item_final)
    self.num_users, self.num_items = self.user_final.shape[0], self.item_final.shape[0]

  def __call__(self, histories: np.ndarray, k: int,
               users: Optional[np.ndarray] = None) -> np.ndarray:
    if users is None:
      raise ValueError("LightGCN scores by user: pass users= [batch] dataset user rows "
                       "(evaluation.evaluate does, since this recommender sets takes_users).")
    users = np.asarray(users, np.int64)
    if len(users) != len(histories):
      raise ValueError(f"{len(users)} users for {len(histories)} histories")
    if users.size and (users.min() < 0 or users.max() >= self.num_users):
      raise ValueError(f"user rows must lie in 0..{self.num_users - 1}; got "
                       f"{users.min()}..{users.max()}")
    if not 1 <= k <= self.num_items:
      raise ValueError(f"k must lie in 1..{self.num_items} (the catalogue size), got {k}")
    return np.asarray(_top_items(self.user_final, self.item_final,
                                 jnp.asarray(users, jnp.int32), int(k))).astype(np.int64)
