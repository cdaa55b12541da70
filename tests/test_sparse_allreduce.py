"""Touched-row gradient exchange over a real gloo group equals a dense all-reduce of the table."""

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from irllrec_dist.gloo_group import free_port, loopback_gloo_group
from irllrec_dist.sparse_allreduce import allreduce_rows, allreduce_sparse_rows, dense_allreduce_bytes

N, D = 50, 4


def _rank_grad(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A table gradient non-zero only on this rank's rows, plus a term every rank shares
    (like a full-table L2 gradient from identical parameters)."""
    g = torch.Generator().manual_seed(100 + rank)
    rows = torch.randperm(N, generator=g)[: 7 + 3 * rank]
    grad = torch.arange(N * D, dtype=torch.float32).reshape(N, D) * 1e-3  # shared part
    grad[rows] += torch.randn(len(rows), D, generator=g)
    return grad, torch.cat([rows, rows[:2]])  # duplicates in `rows` are allowed


def _worker(rank, world, port, out_dir):
    with loopback_gloo_group(rank, world, port):
        grad, rows = _rank_grad(rank)
        dense = grad.clone()
        dist.all_reduce(dense)
        dense /= world
        sent = allreduce_rows(grad, rows, world)
        np.save(os.path.join(out_dir, f"r{rank}.npy"), np.stack([grad.numpy(), dense.numpy()]))
        np.save(os.path.join(out_dir, f"b{rank}.npy"), np.array([sent]))


def test_touched_rows_equal_dense_allreduce(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    union = torch.unique(torch.cat([_rank_grad(r)[1] for r in range(world)]))
    widest = max(len(torch.unique(_rank_grad(r)[1])) for r in range(world))
    results = [np.load(tmp_path / f"r{r}.npy") for r in range(world)]
    for got, dense in results:
        assert np.array_equal(got, dense)  # two ranks: a + b is exact in any order
        assert np.array_equal(got, results[0][0])  # and identical on every rank
    # hand count: sizes (8) + padded ids (8 * widest) + the union's rows (4 bytes * D each)
    for r in range(world):
        assert np.load(tmp_path / f"b{r}.npy")[0] == 8 + 8 * widest + len(union) * D * 4
    assert len(union) < N  # the exchange really was partial


def _sparse_worker(rank, world, port, out_dir):
    with loopback_gloo_group(rank, world, port):
        g = torch.Generator().manual_seed(200 + rank)
        rows = torch.randint(0, N, (9 + 4 * rank,), generator=g)  # duplicates: an uncoalesced gradient
        grad = torch.sparse_coo_tensor(rows.unsqueeze(0), torch.randn(len(rows), D, generator=g), (N, D))
        dense = grad.to_dense()
        dist.all_reduce(dense)
        dense /= world
        table = torch.zeros(N, D, requires_grad=True)
        table.grad = grad
        sent = allreduce_sparse_rows(table, world)
        mean = table.grad
        np.save(os.path.join(out_dir, f"s{rank}.npy"), np.stack([mean.to_dense().numpy(), dense.numpy()]))
        np.save(os.path.join(out_dir, f"i{rank}.npy"), mean.indices()[0].numpy())
        np.save(os.path.join(out_dir, f"b{rank}.npy"), np.array([sent]))
        # a rank whose batch did not read the table (grad None) still takes part: the mean is
        # rank 0's rows over the world
        other = torch.zeros(N, D, requires_grad=True)
        other.grad = grad if rank == 0 else None
        allreduce_sparse_rows(other, world)
        np.save(os.path.join(out_dir, f"n{rank}.npy"), other.grad.to_dense().numpy())


def test_sparse_gradients_average_over_the_union_of_rows(tmp_path):
    world = 2
    mp.spawn(_sparse_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    rows = [
        torch.unique(torch.randint(0, N, (9 + 4 * r,), generator=torch.Generator().manual_seed(200 + r)))
        for r in range(world)
    ]
    union = torch.unique(torch.cat(rows)).numpy()
    for r in range(world):
        got, dense = np.load(tmp_path / f"s{r}.npy")
        np.testing.assert_allclose(got, dense, rtol=0, atol=1e-6)  # a coalesced sum per rank, then the mean
        assert np.array_equal(np.load(tmp_path / f"i{r}.npy"), union)  # rows of either rank, once
        assert np.load(tmp_path / f"b{r}.npy")[0] == 8 + 8 * max(len(x) for x in rows) + len(union) * D * 4
    g = torch.Generator().manual_seed(200)
    r0 = torch.randint(0, N, (9,), generator=g)
    rank0 = torch.sparse_coo_tensor(r0.unsqueeze(0), torch.randn(9, D, generator=g), (N, D)).to_dense().numpy()
    for r in range(world):
        np.testing.assert_allclose(np.load(tmp_path / f"n{r}.npy"), rank0 / world, rtol=0, atol=1e-6)


def test_dense_bytes_count_trainable_parameters_only():
    a, b = torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5), requires_grad=False)
    assert dense_allreduce_bytes([a, b]) == 3 * 4 * 4
