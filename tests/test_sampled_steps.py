"""Sampled training steps (training.step.TrainStep): 2 gloo ranks against one process, and the
row-sparse tables with lazy Adam (train.sparse_tables)."""

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from irllrec_dist.config import Config
from irllrec_dist.gloo_group import free_port, loopback_gloo_group
from irllrec_dist.graph.blocks import build_csr
from irllrec_dist.graph.neighbor_sampler import make_sampler
from irllrec_dist.model.dual_tower import build_model
from irllrec_dist.training.step import StepForward, TrainStep

NU, NI, STEPS, BATCH = 120, 80, 6, 64


def _edges():
    rng = np.random.default_rng(0)
    return np.unique(np.stack([rng.integers(0, NU, 900), rng.integers(0, NI, 900)], 1), axis=0)


def _config(sparse: bool) -> Config:
    cfg = Config()
    cfg.model.dim, cfg.model.layers, cfg.train.fanouts, cfg.train.edge_keep = 8, 2, "3,3", 0.8
    if sparse:
        cfg.loss.reg_scope, cfg.train.sparse_tables = "batch", True
    cfg.validate()
    return cfg


def _train(rank: int, world: int, sparse: bool = False, key_offset: int = 0) -> dict[str, np.ndarray]:
    edges = _edges()
    cfg = _config(sparse)
    torch.manual_seed(0)
    model = build_model(cfg, NU, NI, None)
    runner = TrainStep(
        StepForward(model, None, make_sampler(build_csr(edges, NU, NI), [3, 3]), None, cfg, None), 0.01, world
    )
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(2)
    for step in range(STEPS):
        pick = rng.choice(len(edges), BATCH, replace=False)[rank::world]
        neg = rng.integers(0, NI, BATCH)[rank::world]
        runner(
            None,
            torch.from_numpy(edges[pick, 0]),
            torch.from_numpy(edges[pick, 1]),
            torch.from_numpy(neg),
            gen,
            (5, step + key_offset),
        )
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _worker(rank, world, port, out_dir, sparse):
    torch.set_num_threads(1)
    with loopback_gloo_group(rank, world, port):
        np.savez(os.path.join(out_dir, f"r{rank}.npz"), **_train(rank, world, sparse))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-tables", "sparse-tables"])
def test_two_ranks_reproduce_one_process(tmp_path, sparse):
    """Counter-based sampling: each rank builds exactly the one process's blocks for its half of
    the batch (and, with sparse tables, the union of the ranks' rows is the one process's rows),
    so the runs differ only by float rounding of the gradient sums."""
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), sparse), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks
    try:
        one = _train(0, 1, sparse)
        other_steps = _train(0, 1, sparse, key_offset=1000)
    finally:
        torch.set_num_threads(threads)
    ranks = [np.load(tmp_path / f"r{r}.npz") for r in range(2)]
    for name, want in one.items():
        assert np.array_equal(ranks[0][name], ranks[1][name])  # replicas identical
        np.testing.assert_allclose(ranks[0][name], want, rtol=0, atol=2e-6)
        # the comparison can fail: other samples move the parameters far more than rounding does
        assert np.abs(other_steps[name] - want).max() > 1e-4


def test_sparse_tables_move_only_the_rows_a_step_touched():
    """Lazy Adam: step 1 moves what dense Adam moves (zero moments before; SparseAdam adds eps
    before the bias correction, so values differ slightly where gradients are tiny); at step 2
    dense Adam still moves step 1's rows by momentum, the sparse tables only rows step 2
    gathered."""
    edges = _edges()
    sampler = make_sampler(build_csr(edges, NU, NI), [3, 3])
    runs = {}
    for sparse in (False, True):
        cfg = _config(sparse)
        cfg.loss.reg_scope, cfg.train.edge_keep = "batch", 1.0  # no dropped edge: every gathered row has gradient
        torch.manual_seed(0)
        model = build_model(cfg, NU, NI, None)
        runner = TrainStep(StepForward(model, None, sampler, None, cfg, None), 0.01, 1)
        snaps = [model.user_emb.detach().clone()]
        for step, pick in enumerate((np.arange(0, 40), np.arange(500, 540))):
            runner(
                None,
                torch.from_numpy(edges[pick, 0]),
                torch.from_numpy(edges[pick, 1]),
                torch.from_numpy(edges[pick[::-1], 1]),
                None,
                (9, step),
            )
            snaps.append(model.user_emb.detach().clone())
        runs[sparse] = snaps
    assert torch.equal((runs[True][1] != runs[True][0]).any(1), (runs[False][1] != runs[False][0]).any(1))
    np.testing.assert_allclose(
        runs[True][1].numpy(), runs[False][1].numpy(), rtol=0, atol=0.1 * 0.01
    )  # lr 0.01: a wrong-signed update is off by 0.02
    seeds = torch.unique(torch.cat([torch.from_numpy(edges[500:540, 0]), NU + torch.from_numpy(edges[500:540, 1])]))
    gathered = sampler.sample(seeds, key=(9, 1))[0].src_ids
    gathered_users = torch.zeros(NU, dtype=torch.bool)
    gathered_users[gathered[gathered < NU]] = True
    moved_sparse = (runs[True][2] != runs[True][1]).any(1)
    moved_dense = (runs[False][2] != runs[False][1]).any(1)
    assert int(gathered_users.sum()) < NU and bool(moved_sparse.any())
    assert not bool((moved_sparse & ~gathered_users).any())
    assert bool((moved_dense & ~gathered_users).any())  # momentum moves rows the step never read


def test_sparse_tables_need_sampled_steps_and_batch_l2():
    from irllrec_dist.config import ConfigError

    cfg = Config()
    cfg.model.layers, cfg.train.fanouts, cfg.train.sparse_tables = 2, "3,3", True
    with pytest.raises(ConfigError, match="reg_scope"):
        cfg.validate()
    cfg.loss.reg_scope, cfg.train.fanouts = "batch", "full"
    with pytest.raises(ConfigError, match="sampled steps"):
        cfg.validate()
