"""One optimiser step: ``StepForward`` computes the loss terms, ``TrainStep`` takes the step."""

from __future__ import annotations

from dataclasses import fields, replace

import torch
from torch import nn

from irllrec_dist.cli import CheckpointError
from irllrec_dist.config import Config
from irllrec_dist.graph.blocks import drop_edges
from irllrec_dist.model.dual_tower import TextInputs
from irllrec_dist.model.ema import EMATeacher
from irllrec_dist.model.objective import loss_terms, weighted_sum
from irllrec_dist.model.views import FullGraphViews, SampledViews
from irllrec_dist.sparse_allreduce import allreduce_rows, allreduce_sparse_rows, dense_allreduce_bytes


def to_device(obj, device):
    """A copy of a dataclass of tensors (adjacency, block, text inputs) with its tensors on ``device``."""
    if obj is None:
        return None
    return replace(
        obj,
        **{
            f.name: getattr(obj, f.name).to(device)
            for f in fields(obj)
            if isinstance(getattr(obj, f.name), torch.Tensor)
        },
    )


class StepForward(nn.Module):
    """One step's forward: propagation and every loss term (unweighted; ``TrainStep`` weighs
    them), so that DistributedDataParallel sees the whole computation behind ``loss.backward()``
    as one forward call.

    Full graph (``sampler`` None): propagate over the whole graph with the edge-dropout
    ``mask``. Sampled: blocks for the batch's users and items, edges dropped per block, both
    drawn from counter-based uniforms of ``sample_key`` = (seed, global step), so that a node's
    sample is the same on whichever rank draws it; the second output is then the global node
    ids whose embedding rows got gradient."""

    EMBEDDING_TABLES = ("model.user_emb", "model.item_emb")

    def __init__(
        self, model: nn.Module, adj, sampler, text: TextInputs | None, cfg: Config, teacher: EMATeacher | None
    ):
        super().__init__()
        self.model, self.adj, self.sampler, self.text, self.loss_cfg = model, adj, sampler, text, cfg.loss
        self.edge_keep = cfg.train.edge_keep
        self.sparse_tables = cfg.train.sparse_tables and sampler is not None
        self.teacher = teacher  # frozen: DDP ignores parameters without requires_grad

    def forward(self, mask, bu, bp, bn, gen, sample_key):
        if self.sampler is None:
            mats = self.adj.matrices(mask)
            views = FullGraphViews(self.model, self.model.propagate(*mats), self.adj, mask)
            teacher_views = None
            if self.teacher is not None:  # it gives intents only, from layers 0..L-1: layer L is never read
                teacher_layers = self.teacher.propagate(*mats, layers=self.teacher.module.layers - 1)
                teacher_views = FullGraphViews(self.teacher.module, teacher_layers, self.adj, mask)
            touched = None
        else:
            n_users = self.model.user_emb.shape[0]
            seeds = torch.unique(torch.cat([bu, bp + n_users, bn + n_users])).cpu()  # the sampler walks a CPU CSR
            blocks = self.sampler.sample(seeds, key=sample_key)
            if self.edge_keep < 1.0:
                drop_edges(blocks, self.edge_keep, sample_key)
            device = self.model.user_emb.device
            blocks, seeds = [to_device(b, device) for b in blocks], seeds.to(device)
            views = SampledViews(self.model, blocks, seeds, self.sparse_tables)
            teacher_views = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_views = SampledViews(self.teacher.module, blocks, seeds)
            touched = blocks[0].src_ids
        return loss_terms(self.model, views, bu, bp, bn, self.loss_cfg, self.text, teacher_views, gen), touched


class TrainStep:
    """One optimiser step of a ``StepForward`` on this rank: forward, backward, gradient exchange,
    Adam, EMA-teacher update. With world > 1 the step runs under DDP; when it is sampled, the
    embedding tables stay out of DDP and only the rows the ranks' batches touched are
    exchanged (full-graph steps touch every row, so there DDP reduces the tables too). With
    ``train.sparse_tables`` the tables' gradients are row-sparse and SparseAdam moves only
    those rows; the other parameters keep Adam."""

    def __init__(self, forward: StepForward, lr: float, world: int, compiled: bool = False):
        self.model, self.teacher, self.world, self.loss_cfg = forward.model, forward.teacher, world, forward.loss_cfg
        device = forward.model.user_emb.device
        self.tables = [forward.model.user_emb, forward.model.item_emb]
        distributed = world > 1
        self.row_exchange = distributed and forward.sampler is not None
        if self.row_exchange:
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                forward, list(StepForward.EMBEDDING_TABLES)
            )
        ddp_params = [
            p
            for n, p in forward.named_parameters()
            if p.requires_grad and not (self.row_exchange and n in StepForward.EMBEDDING_TABLES)
        ]
        self.forward_module = forward
        if distributed and ddp_params:
            # Unused parameters happen legitimately (e.g. the intent MLP when only the profile
            # loss is on), so DDP must look for them.
            self.forward_module = nn.parallel.DistributedDataParallel(
                forward, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True
            )
        if compiled:
            self.forward_module = torch.compile(self.forward_module, dynamic=True)
        self.ddp_bytes = dense_allreduce_bytes(ddp_params) if distributed else 0
        self.sparse_tables = forward.sparse_tables
        if self.sparse_tables:
            others = [p for p in forward.model.parameters() if all(p is not t for t in self.tables)]
            self.optimizers = [torch.optim.SparseAdam(self.tables, lr=lr)]
            if others:
                self.optimizers.insert(0, torch.optim.Adam(others, lr=lr))
        else:
            self.optimizers = [torch.optim.Adam(forward.model.parameters(), lr=lr)]

    def optimizer_state(self) -> list[dict]:
        return [o.state_dict() for o in self.optimizers]

    def load_optimizer_state(self, states: list[dict] | dict) -> None:
        if isinstance(states, dict):  # checkpoints written before optimizers became a list
            states = [states]
        if len(states) != len(self.optimizers):
            raise CheckpointError(
                f"checkpoint holds {len(states)} optimizer state(s), this run has "
                f"{len(self.optimizers)} (train.sparse_tables changed since it was written?)"
            )
        for o, s in zip(self.optimizers, states):
            o.load_state_dict(s)

    def __call__(self, mask, bu, bp, bn, gen, sample_key, intent_scale: float = 1.0):
        """-> (loss, terms, bytes DDP all-reduced, bytes of table rows exchanged) of this rank."""
        terms, touched = self.forward_module(mask, bu, bp, bn, gen, sample_key)
        # Weighted outside the (possibly compiled) step: a float that changes every step would recompile it.
        loss = weighted_sum(terms, self.loss_cfg, intent_scale)
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        table_rows_bytes = 0
        if self.row_exchange and self.sparse_tables:
            for table in self.tables:
                table_rows_bytes += allreduce_sparse_rows(table, self.world)
        elif self.row_exchange:
            n_users = self.tables[0].shape[0]
            rows = (touched[touched < n_users], touched[touched >= n_users] - n_users)
            for table, r in zip(self.tables, rows):
                if table.grad is None:
                    table.grad = torch.zeros_like(table)
                table_rows_bytes += allreduce_rows(table.grad, r, self.world)
        for o in self.optimizers:
            o.step()
        if self.teacher is not None:
            self.teacher.update(self.model)
        return loss, terms, self.ddp_bytes, table_rows_bytes
