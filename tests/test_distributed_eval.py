"""Sharded evaluation over a real gloo process group equals single-process evaluation exactly."""

import os
import socket

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from irllrec_dist.metrics import evaluate_ranking, evaluate_ranking_sharded

KS = (5, 10, 20)


def _problem():
    g = torch.Generator().manual_seed(0)
    nu, ni = 97, 60
    u, i = torch.randn(nu, 8, generator=g), torch.randn(ni, 8, generator=g)
    train = sp.random(nu, ni, density=0.1, format="csr", random_state=1)
    train.data[:] = 1
    test = sp.random(nu, ni, density=0.06, format="csr", random_state=2)
    test = sp.csr_matrix((test - train.multiply(1e9)) > 0, dtype=np.float32)
    return u, i, test, train


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        u, i, test, train = _problem()
        res = evaluate_ranking_sharded(u, i, test, train, KS, 7 * 60, rank, world)
        np.save(os.path.join(out_dir, f"r{rank}.npy"), np.array([res[k] for k in sorted(res)]))
    finally:
        dist.destroy_process_group()


def test_sharded_equals_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world = 3
    mp.spawn(_worker, args=(world, port, str(tmp_path)), nprocs=world, join=True)
    u, i, test, train = _problem()
    single = evaluate_ranking(u, i, test, train, KS, 7 * 60)
    expected = np.array([single[k] for k in sorted(single)])
    for r in range(world):
        got = np.load(tmp_path / f"r{r}.npy")
        assert np.array_equal(got, expected), (r, got, expected)  # bit-identical, on every rank
