"""Loss functions as small pure functions (tested against hand-computed values)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """mean over the batch of softplus(s(u, i-) - s(u, i+)) = -log sigmoid(s+ - s-)."""
    return F.softplus((u * neg).sum(-1) - (u * pos).sum(-1)).mean()


def l2_reg(*tensors: torch.Tensor) -> torch.Tensor:
    """Sum of squared entries (the reference's squared Frobenius norms)."""
    return sum(t.pow(2).sum() for t in tensors)
