"""Sharded evaluation over a real gloo process group equals single-process evaluation exactly."""

import os

import numpy as np
import torch.multiprocessing as mp
from conftest import random_ranking_problem

from irllrec_dist.gloo_group import free_port, loopback_gloo_group
from irllrec_dist.metrics import evaluate_ranking, evaluate_ranking_sharded

KS = (5, 10, 20)


def _problem():
    return random_ranking_problem(97, 60, 0.06)


def _worker(rank, world, port, out_dir):
    with loopback_gloo_group(rank, world, port):
        u, i, test, train = _problem()
        res = evaluate_ranking_sharded(u, i, test, train, KS, 7 * 60, rank, world)
        np.save(os.path.join(out_dir, f"r{rank}.npy"), np.array([res[k] for k in sorted(res)]))


def test_sharded_equals_single_process(tmp_path):
    world = 3
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    u, i, test, train = _problem()
    single = evaluate_ranking(u, i, test, train, KS, 7 * 60)
    expected = np.array([single[k] for k in sorted(single)])
    for r in range(world):
        got = np.load(tmp_path / f"r{r}.npy")
        assert np.array_equal(got, expected), (r, got, expected)  # bit-identical, on every rank
