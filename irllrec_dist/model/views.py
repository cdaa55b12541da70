"""What the loss terms read from the interaction tower, for a full-graph or a sampled step.

The objective needs two things per node: the final representation h_v and the
interaction intent r_v. ``FullGraphViews`` takes them from a full-graph
propagation; ``SampledViews`` from the DGL-style blocks of a neighbour-sampled
minibatch (graph/neighbor_sampler.py), so the same ``loss_terms`` serves both
and only the rows a batch touches carry gradient in the sampled case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from irllrec_dist.graph.adjacency import BipartiteAdjacency
from irllrec_dist.graph.blocks import Block, block_layers
from irllrec_dist.model.dual_tower import DualTower


class FullGraphViews:
    """h_v from all of ``layer_out`` (0..L), r_v from layers 0..L-1: a view used only for
    intents (the EMA teacher's) can be given layers 0..L-1 alone."""

    def __init__(self, model: DualTower, layer_out, adj: BipartiteAdjacency, edge_mask: torch.Tensor | None = None):
        self.model, self.layer_out, self.adj, self.edge_mask = model, layer_out, adj, edge_mask
        self._h = None

    def h(self, side: str, nodes: torch.Tensor) -> torch.Tensor:
        if self._h is None:
            if len(self.layer_out) <= self.model.layers:
                raise ValueError(f"h needs layers 0..{self.model.layers}, this view has {len(self.layer_out)} of them")
            self._h = self.model.final(self.layer_out)
        return self._h[0 if side == "user" else 1][nodes]

    def ego(self, side: str, nodes: torch.Tensor) -> torch.Tensor:
        """Layer-0 (ID embedding) rows, what the batch-scoped L2 penalises."""
        return (self.model.user_emb if side == "user" else self.model.item_emb)[nodes]

    def intent(self, side: str, nodes: torch.Tensor) -> torch.Tensor:
        return self.model.intent_view(self.layer_out, self.adj, side, nodes, self.edge_mask)


def gather_inputs(model: DualTower, src_ids: torch.Tensor, sparse: bool = False) -> torch.Tensor:
    """Layer-0 rows of ``src_ids`` (users as u, items as n_users + i) from the two tables;
    differentiable, and the tables' gradient is non-zero only on these rows (``sparse``: the
    gradient is a sparse COO tensor holding just these rows)."""
    n_users = model.user_emb.shape[0]
    is_user = src_ids < n_users
    pos_u, pos_i = is_user.nonzero().squeeze(1), (~is_user).nonzero().squeeze(1)
    ids_u, ids_i = src_ids.index_select(0, pos_u), src_ids.index_select(0, pos_i) - n_users
    if sparse:
        rows_u, rows_i = (
            F.embedding(ids_u, model.user_emb, sparse=True),
            F.embedding(ids_i, model.item_emb, sparse=True),
        )
    else:
        rows_u, rows_i = model.user_emb.index_select(0, ids_u), model.item_emb.index_select(0, ids_i)
    x = torch.zeros(len(src_ids), model.user_emb.shape[1], dtype=model.user_emb.dtype, device=model.user_emb.device)
    return x.index_copy(0, pos_u, rows_u).index_copy(0, pos_i, rows_i)


class SampledViews:
    """Views of the seeds of one sampled minibatch. ``seeds`` are global node ids (sorted, unique);
    a (side, node) is looked up by binary search, so callers pass ids of that side."""

    def __init__(self, model: DualTower, blocks: list[Block], seeds: torch.Tensor, sparse: bool = False):
        self.model, self.blocks, self.seeds = model, blocks, seeds
        self.n_users = model.user_emb.shape[0]
        # deg/n_sampled rescaling: an unbiased estimate of each full-graph layer (exact with full fanouts)
        self.h_seeds, self.near = block_layers(blocks, gather_inputs(model, blocks[0].src_ids, sparse), unbiased=True)

    def _pos(self, side: str, nodes: torch.Tensor) -> torch.Tensor:
        gid = nodes if side == "user" else nodes + self.n_users
        pos = torch.searchsorted(self.seeds, gid)
        if not bool((self.seeds[pos.clamp(max=len(self.seeds) - 1)] == gid).all()):
            raise ValueError(f"{side} nodes outside the sampled batch's seeds")
        return pos

    def h(self, side: str, nodes: torch.Tensor) -> torch.Tensor:
        return self.h_seeds[self._pos(side, nodes)]

    def ego(self, side: str, nodes: torch.Tensor) -> torch.Tensor:
        """Layer-0 rows (the seeds are the first rows of every layer), through the same gather."""
        return self.near[0][self._pos(side, nodes)]

    def intent(self, side: str, nodes: torch.Tensor) -> torch.Tensor:
        """r_v over the node's *sampled* neighbours (the last block's edges), with the
        last block's edge dropout; equal to the full-graph view with full fanouts."""
        pos = self._pos(side, nodes)
        last = self.blocks[-1]
        want = torch.full((last.n_dst,), -1, dtype=torch.int64, device=pos.device)
        want[pos] = torch.arange(len(pos), device=pos.device)
        row = want.index_select(0, last.edge_dst)
        keep = row >= 0
        row, nbr = row[keep], last.edge_src[keep]
        edge_w = (last.weight[keep] > 0).to(self.near[0].dtype)  # dropped edges have weight 0
        self_layers = [layer.index_select(0, pos) for layer in self.near]
        return self.model.aggregate_intents(side, self_layers, self.near, nbr, row, edge_w)
