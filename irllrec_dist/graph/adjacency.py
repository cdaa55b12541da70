"""Normalised bipartite adjacency for LightGCN propagation.

The full graph adjacency is A = [[0, R], [Rᵀ, 0]] with R the user×item
interaction matrix normalised by D^-1/2 on both sides. We keep R and Rᵀ as two
CSR tensors (and the permutation between their value orders) instead of one
(U+I)² matrix: propagation is then two half-size products, and edge dropout is
a mask on the edge values applied to both with one gather.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@dataclass
class BipartiteAdjacency:
    n_users: int
    n_items: int
    crow: torch.Tensor  # CSR of R (users x items); edges in (user, item) order
    col: torch.Tensor
    t_crow: torch.Tensor  # CSR of Rᵀ (items x users)
    t_col: torch.Tensor
    to_t: torch.Tensor  # value k of Rᵀ is value to_t[k] of R
    values: torch.Tensor  # 1/sqrt(deg_u deg_i) per edge, R order

    def matrices(self, edge_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, Rᵀ) as sparse CSR tensors, with dropped edges zeroed (no rescaling)."""
        vals = self.values if edge_mask is None else self.values * edge_mask
        r = torch.sparse_csr_tensor(self.crow, self.col, vals, (self.n_users, self.n_items), check_invariants=False)
        rt = torch.sparse_csr_tensor(
            self.t_crow, self.t_col, vals[self.to_t], (self.n_items, self.n_users), check_invariants=False
        )
        return r, rt

    def neighbors(self, side: str, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edges of ``nodes`` (users if side == "user", else items) as (row, neighbour, value index):
        row k of the output belongs to nodes[row[k]]; value index points into ``values``."""
        crow, col = (self.crow, self.col) if side == "user" else (self.t_crow, self.t_col)
        start, lens = crow[nodes], crow[nodes + 1] - crow[nodes]
        row = torch.repeat_interleave(torch.arange(len(nodes), device=crow.device), lens)
        offsets = torch.cumsum(lens, 0) - lens
        pos = start[row] + torch.arange(int(lens.sum()), device=crow.device) - offsets[row]
        vidx = pos if side == "user" else self.to_t[pos]
        return row, col[pos], vidx


def build_adjacency(edges: np.ndarray, n_users: int, n_items: int) -> BipartiteAdjacency:
    """edges: (n, 2) int64 (user, item) training pairs, no duplicates."""
    u = edges[:, 0].astype(np.int64)
    i = edges[:, 1].astype(np.int64)
    order = np.lexsort((i, u))
    u, i = u[order], i[order]
    du = np.bincount(u, minlength=n_users).astype(np.float64)
    di = np.bincount(i, minlength=n_items).astype(np.float64)
    vals = 1.0 / np.sqrt(du[u] * di[i])
    crow = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=n_users), out=crow[1:])
    t_order = np.lexsort((u, i))
    t_crow = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(i, minlength=n_items), out=t_crow[1:])
    return BipartiteAdjacency(
        n_users,
        n_items,
        torch.from_numpy(crow),
        torch.from_numpy(i.copy()),
        torch.from_numpy(t_crow),
        torch.from_numpy(u[t_order].copy()),
        torch.from_numpy(t_order.astype(np.int64)),
        torch.from_numpy(vals.astype(np.float32)),
    )
