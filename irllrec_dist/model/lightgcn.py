"""LightGCN over a bipartite graph, with a hand-written backward for propagation.

torch's autograd through a sparse product builds the transpose on every
backward (design.md §3 measured 764 ms vs 209 ms per step); for A = [[0, R],
[Rᵀ, 0]] the gradient of one layer is A applied to the incoming gradient, which
we already hold as (R, Rᵀ).
"""

from __future__ import annotations

import torch


class BipartitePropagate(torch.autograd.Function):
    """(x_u, x_i) -> (R x_i, Rᵀ x_u); backward: (R g_i, Rᵀ g_u)."""

    @staticmethod
    def forward(ctx, r, rt, x_u, x_i):
        ctx.save_for_backward(r, rt)
        return r @ x_i, rt @ x_u

    @staticmethod
    def backward(ctx, g_u, g_i):
        r, rt = ctx.saved_tensors
        return None, None, r @ g_i.contiguous(), rt @ g_u.contiguous()


def propagate(r: torch.Tensor, rt: torch.Tensor, x_u: torch.Tensor, x_i: torch.Tensor, layers: int):
    """Sum of layer outputs 0..L (the reference LightGCN sums rather than averages)."""
    out_u, out_i = x_u, x_i
    for _ in range(layers):
        x_u, x_i = BipartitePropagate.apply(r, rt, x_u, x_i)
        out_u = out_u + x_u
        out_i = out_i + x_i
    return out_u, out_i
