"""IRLLRec's dual towers (design.md §2).

Interaction tower: LightGCN embeddings h_v (sum of layers 0..L) plus K intent
prototypes per side; the interaction intent r_v aggregates a node's
neighbours at every layer with weights alpha_uv = (cos(intent_u, intent_v) + 1) / 2,
normalised over the node's edges, where intent(x) = softmax(x W) Wᵀ; r_v is
the mean over layers. r_v is computed only for the nodes a batch needs, from
the full-graph layer outputs, so its cost scales with the batch, not the graph.

Text tower: two MLPs (D -> (D+d)/2 -> d, LeakyReLU) map the profile vector p_v
and the intent vector q_v to t_v and z_v. A small head scores whether an
(r, z) pair matches (for L_ITM).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from irllrec_dist.graph.adjacency import BipartiteAdjacency
from irllrec_dist.graph.edge_ops import EdgeIndex, edge_dot, edge_sum
from irllrec_dist.model.kernels import intent_directions
from irllrec_dist.model.lightgcn import BipartitePropagate


@dataclass
class TextInputs:
    """Per-node text vectors from the embedding stage (zeros where has_* is False)."""

    user_profile: torch.Tensor
    user_intent: torch.Tensor
    item_profile: torch.Tensor
    item_intent: torch.Tensor
    user_has: torch.Tensor  # bool
    item_has: torch.Tensor

    @property
    def dim(self) -> int:
        return self.item_profile.shape[1]

    def side(self, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if side == "user":
            return self.user_profile, self.user_intent, self.user_has
        return self.item_profile, self.item_intent, self.item_has


def text_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    hidden = (in_dim + out_dim) // 2
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, out_dim))


class MatchHead(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * dim, dim), nn.ReLU(), nn.Linear(dim, 2))

    def forward(self, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r, z = F.normalize(r, dim=-1), F.normalize(z, dim=-1)
        return self.net(torch.cat([r, z, r * z], dim=-1))


class DualTower(nn.Module):
    def __init__(
        self, n_users: int, n_items: int, dim: int, layers: int, n_intents: int = 0, text_dim: int | None = None
    ):
        super().__init__()
        self.layers = layers
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, dim)))
        self.n_intents = n_intents
        if n_intents:
            self.user_protos = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, n_intents)))
            self.item_protos = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, n_intents)))
        self.text_dim = text_dim
        if text_dim:
            self.profile_mlp = text_mlp(text_dim, dim)
            self.intent_mlp = text_mlp(text_dim, dim)
            self.match_head = MatchHead(dim)

    def propagate(
        self, r: torch.Tensor, rt: torch.Tensor, layers: int | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Layer outputs [(x_u, x_i) for l in 0..layers] (``layers`` defaults to the model's L)."""
        out = [(self.user_emb, self.item_emb)]
        for _ in range(self.layers if layers is None else layers):
            out.append(BipartitePropagate.apply(r, rt, *out[-1]))
        return out

    @staticmethod
    def final(layer_out: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return sum(x for x, _ in layer_out), sum(x for _, x in layer_out)

    def forward(self, r: torch.Tensor, rt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item representations h (what scores use)."""
        return self.final(self.propagate(r, rt))

    def intent_view(
        self, layer_out, adj: BipartiteAdjacency, side: str, nodes: torch.Tensor, edge_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Interaction intents r_v of ``nodes`` over their full-graph neighbourhoods, from layers
        0..L-1 of ``layer_out`` (layer L is not used: a caller that needs only intents can stop
        propagating one layer early)."""
        row, nbr, vidx = adj.neighbors(side, nodes)
        s_idx, n_idx = (0, 1) if side == "user" else (1, 0)
        edge_w = None if edge_mask is None else edge_mask[vidx]
        return self.aggregate_intents(
            side,
            [layer[s_idx].index_select(0, nodes) for layer in layer_out[: self.layers]],
            [layer[n_idx] for layer in layer_out[: self.layers]],
            nbr,
            row,
            edge_w,
        )

    def aggregate_intents(
        self,
        side: str,
        self_layers: list[torch.Tensor],
        nbr_tables: list[torch.Tensor],
        nbr: torch.Tensor,
        row: torch.Tensor,
        edge_w: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Intent-aware aggregation, mean over layers. ``self_layers[l]``: layer-l rows of the n
        nodes; edge k joins node ``row[k]`` to row ``nbr[k]`` of ``nbr_tables[l]``."""
        w_self, w_nbr = (self.user_protos, self.item_protos) if side == "user" else (self.item_protos, self.user_protos)
        # Intent views are computed once per distinct neighbour, not once per edge, and all
        # layers go through each op together (layer-major: each layer's rows are contiguous for
        # the sparse kernels); per-edge sums run as CSR kernels (graph/edge_ops.py says why).
        uniq, inv = torch.unique(nbr, return_inverse=True)
        edges = EdgeIndex(row, inv, len(self_layers[0]), len(uniq))
        xs = torch.stack(self_layers)  # (L, n, d)
        xu = torch.stack([table.index_select(0, uniq) for table in nbr_tables])  # (L, m, d)
        alpha = (edge_dot(intent_directions(xs, w_self), intent_directions(xu, w_nbr), edges) + 1) / 2  # (L, E)
        if edge_w is not None:
            alpha = alpha * edge_w
        denom = xs.new_zeros(len(xs), len(self_layers[0])).index_add(1, row, alpha).clamp_min(1e-12)
        return edge_sum(alpha / denom.index_select(1, row), xu, edges).mean(0)

    def text_directions(self, text: TextInputs, side: str) -> torch.Tensor:
        """normalise(MLP_prf(p_v)) of every node of a side, zero without text: where the profile
        alignment says each node's text points in the interaction space."""
        prof, _, has = text.side(side)
        return F.normalize(self.profile_mlp(prof), dim=1) * has[:, None]

    def text_views(self, text: TextInputs, side: str, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_v, z_v) = (MLP_prf(p_v), MLP_int(q_v)) for ``nodes``."""
        prof, _, _ = text.side(side)
        return self.profile_mlp(prof[nodes]), self.intent_text(text, side, nodes)

    def intent_text(self, text: TextInputs, side: str, nodes: torch.Tensor) -> torch.Tensor:
        """z_v = MLP_int(q_v) for ``nodes`` alone (the EMA teacher's matching needs no t_v)."""
        _, intent, _ = text.side(side)
        return self.intent_mlp(intent[nodes])


def fused_item_vectors(h_i: torch.Tensor, text_dir: torch.Tensor, weight: float) -> torch.Tensor:
    """h_i + weight * |h_i| * text_dir: the item's direction moves towards its text's by
    ``weight`` at its own scale, so s(u, i) = h_u.h_i + weight |h_i| h_u.text_dir_i."""
    return h_i + weight * h_i.norm(dim=1, keepdim=True) * text_dir


def cold_vectors(h: torch.Tensor, text_dir: torch.Tensor, warm: torch.Tensor) -> torch.Tensor:
    """Users or items without interactions: their text direction at the mean norm of the
    ``warm`` nodes' vectors (their own h never got a positive gradient)."""
    return text_dir * h[warm].norm(dim=1).mean()


def build_model(cfg, n_users: int, n_items: int, text_dim: int | None) -> DualTower:
    """The model a config describes: prototypes only when an intent loss is on, text MLPs only with text."""
    return DualTower(
        n_users,
        n_items,
        cfg.model.dim,
        cfg.model.layers,
        cfg.model.intents if cfg.loss.uses_intents() else 0,
        text_dim if cfg.loss.uses_text() else None,
    )
