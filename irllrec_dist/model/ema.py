"""Exponential-moving-average teacher of a module (momentum distillation)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMATeacher(nn.Module):
    """A frozen copy of ``student`` updated as t <- m t + (1 - m) s after every optimiser step.

    Buffers are copied, not averaged. Saved and restored through ``state_dict``
    like any module, so checkpoints carry the teacher.
    """

    def __init__(self, student: nn.Module, momentum: float):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.module = copy.deepcopy(student)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        m = self.momentum
        teacher = list(self.module.parameters())
        mine = [s.detach() for s in student.parameters()]
        if len(teacher) != len(mine):
            raise ValueError(f"teacher has {len(teacher)} parameters, student {len(mine)}")
        # One multi-tensor launch per op instead of two per parameter (same arithmetic).
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, mine, alpha=1.0 - m)
        for t, s in zip(self.module.buffers(), student.buffers(), strict=True):
            t.copy_(s)

    def propagate(self, *args, **kwargs):
        """The teacher's layer outputs (for modules that have ``propagate``), without gradients."""
        with torch.no_grad():
            return self.module.propagate(*args, **kwargs)
