"""The graph structures training propagates over: the symmetric CSR of the bipartite graph
(``BipartiteCSR``) and sampled message-flow blocks (``Block``), with the helpers that build,
thin out and propagate through them. The samplers (neighbor_sampler.py, dgl_backend.py) produce
blocks; the model's views (model/views.py) consume them.

Node ids: the bipartite graph is one homogeneous graph of ``n_users + n_items`` nodes, user ``u``
is node ``u`` and item ``i`` is node ``n_users + i``. Block edge weights are the LightGCN
normalisation ``1 / sqrt(deg(u) deg(v))`` of the FULL graph's degrees (neighbor_sampler.py says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from irllrec_dist.data.arrays import sorted_unique
from irllrec_dist.graph import hash_rng

# hash_rng stream ids: neighbour choice and edge dropout draw independent numbers from one key
SAMPLE_STREAM, DROP_STREAM = 1, 2


@dataclass
class BipartiteCSR:
    """Symmetric CSR of the bipartite graph as one homogeneous graph (items offset by n_users)."""

    n_users: int
    n_items: int
    indptr: torch.Tensor  # (N + 1,) int64
    indices: torch.Tensor  # (2E,) int64, neighbours of each row sorted ascending

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def n_edges(self) -> int:
        """Number of (user, item) interactions (each stored twice)."""
        return int(self.indices.numel()) // 2

    def degrees(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def neighbors(self, node: int) -> torch.Tensor:
        return self.indices[self.indptr[node] : self.indptr[node + 1]]


def build_csr(edges: np.ndarray, n_users: int, n_items: int) -> BipartiteCSR:
    """Symmetric CSR from an (n, 2) int array of (user, item) pairs.

    Duplicate pairs are counted once. Ids must lie in [0, n_users) / [0, n_items).
    """
    edges = np.asarray(edges)
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"edges must have shape (n, 2), got {edges.shape}")
    u = edges[:, 0].astype(np.int64, copy=False)
    i = edges[:, 1].astype(np.int64, copy=False)
    if len(u) and (u.min() < 0 or u.max() >= n_users or i.min() < 0 or i.max() >= n_items):
        raise ValueError("edge ids out of range [0, n_users) x [0, n_items)")
    keys = sorted_unique(u * n_items + i)  # sorted by (user, item), deduplicated
    u, i = keys // n_items, keys % n_items
    del keys
    n = n_users + n_items
    indptr = np.zeros(n + 1, dtype=np.int64)
    deg = np.concatenate([np.bincount(u, minlength=n_users), np.bincount(i, minlength=n_items)])
    np.cumsum(deg, out=indptr[1:])
    indices = np.empty(2 * len(u), dtype=np.int64)
    indices[: len(u)] = i + n_users  # user rows come first and are already (user, item)-sorted
    order = np.argsort(i, kind="stable")  # item rows: users ascending within each item
    indices[len(u) :] = u[order]
    return BipartiteCSR(n_users, n_items, torch.from_numpy(indptr), torch.from_numpy(indices))


@dataclass
class Block:
    """One message-flow graph: edges from ``src_ids`` to ``dst_ids`` (DGL's block)."""

    src_ids: torch.Tensor  # (n_src,) global node ids; src_ids[:n_dst] == dst_ids
    n_dst: int
    edge_src: torch.Tensor  # (n_edges,) local index into src_ids
    edge_dst: torch.Tensor  # (n_edges,) local index into dst_ids
    weight: torch.Tensor  # (n_edges,) weight_dtype (float32 default), 1/sqrt(deg_full(src) deg_full(dst))
    dst_scale: torch.Tensor  # (n_dst,) weight_dtype, deg_full(dst) / n_sampled(dst) (1 where nothing sampled)

    @property
    def dst_ids(self) -> torch.Tensor:
        return self.src_ids[: self.n_dst]

    @property
    def n_src(self) -> int:
        return int(self.src_ids.numel())

    @property
    def n_edges(self) -> int:
        return int(self.edge_src.numel())


def inverse_sqrt_degree(deg: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1/sqrt(deg) per node, 0 for isolated nodes (computed in float64, then cast)."""
    d = deg.to(torch.float64)
    return torch.where(d > 0, d.clamp(min=1).rsqrt(), torch.zeros((), dtype=torch.float64)).to(dtype)


def make_block(
    src_ids: torch.Tensor,
    n_dst: int,
    edge_src: torch.Tensor,
    edge_dst: torch.Tensor,
    deg: torch.Tensor,
    inv_sqrt_deg: torch.Tensor,
    src_global: torch.Tensor | None = None,
    dst_global: torch.Tensor | None = None,
) -> Block:
    """A Block with LightGCN weights from full-graph degrees ``deg`` / ``inv_sqrt_deg`` (shared by backends)."""
    if src_global is None:
        src_global = src_ids.index_select(0, edge_src)
    if dst_global is None:
        dst_global = src_ids.index_select(0, edge_dst)
    weight = inv_sqrt_deg.index_select(0, src_global) * inv_sqrt_deg.index_select(0, dst_global)
    n_sampled = torch.bincount(edge_dst, minlength=n_dst)
    dtype = inv_sqrt_deg.dtype
    dst_scale = torch.where(
        n_sampled > 0,
        deg.index_select(0, src_ids[:n_dst]).to(dtype) / n_sampled.clamp(min=1),
        torch.ones((), dtype=dtype),
    )
    return Block(src_ids, n_dst, edge_src, edge_dst, weight, dst_scale)


def key_tuple(key) -> tuple[int, ...] | None:
    """A counter key as a tuple of ints: (seed, step), a list, or one int."""
    if key is None:
        return None
    return tuple(int(k) for k in (key if isinstance(key, (tuple, list)) else (key,)))


def drop_edges(blocks: Sequence[Block], keep: float, key) -> None:
    """Edge dropout in place: zero the weight of each block edge unless
    uniform(key, hop, dst, src) < ``keep`` (global ids), so that, like the sample itself, whether
    an edge survives does not depend on the rest of the batch."""
    key = key_tuple(key)
    for hop, b in enumerate(reversed(blocks)):
        src = b.src_ids.index_select(0, b.edge_src)
        dst = b.src_ids.index_select(0, b.edge_dst)
        b.weight = b.weight * (hash_rng.uniform(*key, DROP_STREAM, hop, dst, src) < keep).to(b.weight.dtype)


def propagate_blocks(blocks: Sequence[Block], x: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """LightGCN propagation through ``blocks`` for the seed nodes.

    ``x``: (blocks[0].n_src, d) layer-0 features of the outermost src nodes, in
    ``blocks[0].src_ids`` order. Each block computes, for its dst nodes,
    h'_u = sum over sampled edges (v -> u) of w_uv h_v (w = 1/sqrt(deg deg));
    the result is the sum of layer outputs 0..L at the seeds (the seeds are the
    first ``blocks[-1].n_dst`` rows of every layer), as in the project's
    ``model.lightgcn.propagate``. With full fanouts this equals full-graph
    propagation exactly. ``unbiased`` rescales each dst row by
    deg/n_sampled. Differentiable w.r.t. ``x``.
    """
    return block_layers(blocks, x, unbiased)[0]


def block_layers(
    blocks: Sequence[Block], x: torch.Tensor, unbiased: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``propagate_blocks`` that also returns, for every layer l < L, layer l at the last block's
    src nodes (the seeds and their sampled neighbours), which the intent view needs."""
    if x.shape[0] != blocks[0].n_src:
        raise ValueError(f"x has {x.shape[0]} rows, blocks[0] has {blocks[0].n_src} src nodes")
    n_seed, n_near = blocks[-1].n_dst, blocks[-1].n_src
    h, out, near = x, x[:n_seed], [x[:n_near]]
    for depth, b in enumerate(blocks):
        msg = h.index_select(0, b.edge_src) * b.weight.to(h.dtype).unsqueeze(1)
        h = torch.zeros((b.n_dst, h.shape[1]), dtype=h.dtype, device=h.device).index_add(0, b.edge_dst, msg)
        if unbiased:
            h = h * b.dst_scale.to(h.dtype).unsqueeze(1)
        out = out + h[:n_seed]
        if depth < len(blocks) - 1:
            near.append(h[:n_near])
    return out, near
