"""Average embedding-table gradients across ranks by exchanging only the rows a step touched.

A sampled minibatch reads a few thousand rows of tables with millions; DDP
would all-reduce every row of every table every step. Here each rank
all-gathers the ids of the rows it touched, and the ranks all-reduce only the
union of those rows. Rows outside the union carry the same gradient on every
rank already (zero, or a full-table L2 term computed from identical
parameters), so their average is their local value and the result equals a
dense all-reduce of the whole table. torch.distributed has no such collective
(its sparse all-reduce is gloo-only and still sums COO tensors of every rank
into every rank), hence these few lines.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def union_of_rows(rows: torch.Tensor, world: int) -> tuple[torch.Tensor, int]:
    """Sorted union of every rank's ``rows`` and the bytes this rank sent to learn it."""
    rows = torch.unique(rows)
    dev = rows.device  # gloo takes CPU tensors, NCCL CUDA ones: stay on the gradient's device
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(rows)], dtype=torch.int64, device=dev))
    width = int(max(s.item() for s in sizes))
    padded = torch.full((width,), -1, dtype=torch.int64, device=dev)
    padded[: len(rows)] = rows
    gathered = [torch.empty(width, dtype=torch.int64, device=dev) for _ in range(world)]
    dist.all_gather(gathered, padded)
    union = torch.unique(torch.cat(gathered))
    return union[union >= 0], 8 + 8 * width


def allreduce_rows(grad: torch.Tensor, rows: torch.Tensor | None, world: int) -> int:
    """In place: ``grad`` becomes the mean over ranks, exchanging only the union of ``rows``
    (every row when ``rows`` is None). Collective: every rank calls it with its own rows.
    Returns the payload bytes this rank all-gathered and all-reduced."""
    row_bytes = grad[0].numel() * grad.element_size() if grad.dim() else grad.element_size()
    if rows is None:
        dist.all_reduce(grad)
        grad.div_(world)
        return grad.numel() * grad.element_size()
    union, index_bytes = union_of_rows(rows, world)
    buf = grad.index_select(0, union)
    dist.all_reduce(buf)
    grad.index_copy_(0, union, buf.div_(world))
    return index_bytes + len(union) * row_bytes


def allreduce_sparse_rows(table: torch.Tensor, world: int) -> int:
    """In place: ``table.grad``, a row-sparse COO gradient (``F.embedding(..., sparse=True)``; None
    when this rank's batch did not read the table), becomes the mean over ranks as a coalesced
    sparse tensor over the union of every rank's rows. Collective: every rank calls it. Returns
    the payload bytes this rank all-gathered and all-reduced (counted as in ``allreduce_rows``)."""
    grad = table.grad
    if grad is None:  # still takes part in the exchange, with no rows
        grad = torch.sparse_coo_tensor(
            torch.zeros((1, 0), dtype=torch.int64, device=table.device),
            torch.zeros((0, *table.shape[1:]), dtype=table.dtype, device=table.device),
            table.shape,
        )
    g = grad.coalesce()
    rows, values = g.indices()[0], g.values()
    union, index_bytes = union_of_rows(rows, world)
    buf = torch.zeros((len(union), *values.shape[1:]), dtype=values.dtype, device=values.device)
    buf.index_copy_(0, torch.searchsorted(union, rows), values)
    dist.all_reduce(buf)
    buf.div_(world)
    table.grad = torch.sparse_coo_tensor(
        union.unsqueeze(0), buf, grad.shape, is_coalesced=True, check_invariants=False
    )  # union is sorted and unique by construction
    return index_bytes + buf.numel() * buf.element_size()


def dense_allreduce_bytes(params) -> int:
    """What an all-reduce of these parameters' gradients moves per rank (DDP's buckets)."""
    return sum(p.numel() * p.element_size() for p in params if p.requires_grad)
