"""Neighbour sampler against brute force on small random bipartite graphs."""

import numpy as np
import pytest
import torch

from irllrec_dist.graph.blocks import build_csr, propagate_blocks
from irllrec_dist.graph.dgl_backend import dgl_available
from irllrec_dist.graph.neighbor_sampler import NeighborSampler, full_fanouts, make_sampler, parse_fanouts

SEEDS = [0, 1, 2, 3, 4]
# the DGL backend runs the same checks where `import dgl` works (not in the project's own venv)
BACKENDS = ["torch", pytest.param("dgl", marks=pytest.mark.skipif(not dgl_available(), reason="dgl not importable"))]


def random_graph(seed: int, n_users: int = 40, n_items: int = 30, p: float = 0.15):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < p
    # a few hubs so that some nodes have degree well above the fanouts
    dense[rng.integers(n_users), :] = True
    dense[:, rng.integers(n_items)] = True
    edges = np.argwhere(dense).astype(np.int64)
    return edges, n_users, n_items


def dense_adjacency(edges, n_users, n_items) -> torch.Tensor:
    n = n_users + n_items
    a = torch.zeros((n, n), dtype=torch.float64)
    a[edges[:, 0], n_users + edges[:, 1]] = 1.0
    a[n_users + edges[:, 1], edges[:, 0]] = 1.0
    return a


def pick_seeds(seed: int, n: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randperm(n, generator=g)[:k]


@pytest.mark.parametrize("seed", SEEDS)
def test_csr_matches_dense(seed):
    edges, nu, ni = random_graph(seed)
    csr = build_csr(np.concatenate([edges, edges[:5]]), nu, ni)  # duplicates counted once
    a = dense_adjacency(edges, nu, ni)
    assert csr.n_edges == len(edges)
    for v in range(nu + ni):
        assert csr.neighbors(v).tolist() == torch.nonzero(a[v]).squeeze(1).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fanouts", [[2, 3, 4], [5], [1, -1], [3, 3]])
def test_blocks_against_brute_force(seed, fanouts, backend):
    edges, nu, ni = random_graph(seed)
    a = dense_adjacency(edges, nu, ni)
    deg = a.sum(1)
    csr = build_csr(edges, nu, ni)
    sampler = make_sampler(csr, fanouts, backend=backend)
    # mixed users and items as seeds
    seeds = torch.cat([pick_seeds(seed, nu, 7), nu + pick_seeds(seed + 50, ni, 5)])
    blocks = sampler.sample(seeds, torch.Generator().manual_seed(seed))
    assert len(blocks) == len(fanouts)
    assert torch.equal(blocks[-1].dst_ids, seeds)
    for layer, (b, fanout) in enumerate(zip(blocks, fanouts)):
        src, dst = b.src_ids, b.dst_ids
        if layer > 0:
            assert torch.equal(blocks[layer - 1].dst_ids, src), "consecutive blocks must chain"
        # relabelling: dst prefix, unique src ids, local indices in range
        assert torch.equal(src[: b.n_dst], dst)
        assert torch.unique(src).numel() == src.numel()
        assert int(b.edge_src.max()) < b.n_src and int(b.edge_dst.max()) < b.n_dst
        gs, gd = src[b.edge_src], dst[b.edge_dst]
        # every sampled edge exists, and none is sampled twice
        assert bool((a[gd, gs] == 1).all())
        keys = gd * (nu + ni) + gs
        assert torch.unique(keys).numel() == keys.numel()
        # every src node beyond the dst prefix is used by some edge
        used = torch.zeros(b.n_src, dtype=torch.bool)
        used[b.edge_src] = True
        assert bool(used[b.n_dst :].all())
        # fanout: min(deg, fanout) neighbours per dst, all of them when deg <= fanout
        counts = torch.bincount(b.edge_dst, minlength=b.n_dst)
        d = deg[dst].to(torch.int64)
        want = d if fanout < 0 else d.clamp(max=fanout)
        assert torch.equal(counts, want)
        for r in range(b.n_dst):
            if fanout < 0 or d[r] <= fanout:
                got = sorted(gs[b.edge_dst == r].tolist())
                assert got == torch.nonzero(a[dst[r]]).squeeze(1).tolist()
        # weights: full-graph symmetric normalisation
        expect = 1.0 / torch.sqrt(deg[gs] * deg[gd])
        torch.testing.assert_close(b.weight.to(torch.float64), expect, rtol=1e-6, atol=0)
        torch.testing.assert_close(
            b.dst_scale.to(torch.float64),
            (d / counts.clamp(min=1)).to(torch.float64).where(counts > 0, torch.ones((), dtype=torch.float64)),
            rtol=1e-6,
            atol=0,
        )


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_deterministic_with_generator(seed):
    edges, nu, ni = random_graph(seed)
    sampler = NeighborSampler(build_csr(edges, nu, ni), [3, 2, 2])
    seeds = pick_seeds(seed, nu, 10)

    def run(s):
        return sampler.sample(seeds, torch.Generator().manual_seed(s))

    x, y, z = run(7), run(7), run(8)
    for bx, by in zip(x, y):
        assert torch.equal(bx.src_ids, by.src_ids)
        assert torch.equal(bx.edge_src, by.edge_src) and torch.equal(bx.edge_dst, by.edge_dst)
        assert torch.equal(bx.weight, by.weight)
    assert any(
        not torch.equal(bx.src_ids, bz.src_ids) or not torch.equal(bx.edge_src, bz.edge_src) for bx, bz in zip(x, z)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_is_uniform_over_neighbours(backend):
    """Each neighbour of a hub is drawn with probability fanout/deg (loose statistical check)."""
    edges = np.array([[0, i] for i in range(12)], dtype=np.int64)  # user 0 has degree 12
    sampler = make_sampler(build_csr(edges, 1, 12), [4], backend=backend)
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(13)
    trials = 800
    for _ in range(trials):
        b = sampler.sample(torch.tensor([0]), g)[0]
        hits[b.src_ids[b.edge_src]] += 1
    freq = hits[1:] / trials
    assert torch.allclose(freq, torch.full((12,), 4 / 12), atol=0.06)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_full_fanout_propagation_equals_full_graph(seed, layers, backend):
    edges, nu, ni = random_graph(seed)
    # an isolated user and item must not break anything
    nu, ni = nu + 1, ni + 1
    a = dense_adjacency(edges, nu, ni)
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.clamp(min=1).rsqrt(), torch.zeros(()))
    a_hat = inv[:, None] * a * inv[None, :]
    x_all = torch.randn((nu + ni, 6), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    want, h = x_all.clone(), x_all
    for _ in range(layers):
        h = a_hat @ h
        want = want + h

    sampler = make_sampler(build_csr(edges, nu, ni), full_fanouts(layers), backend=backend, weight_dtype=torch.float64)
    seeds = torch.cat(
        [pick_seeds(seed, nu - 1, 9), nu + pick_seeds(seed, ni - 1, 4), torch.tensor([nu - 1, nu + ni - 1])]
    )
    blocks = sampler.sample(seeds, torch.Generator().manual_seed(0))
    got = propagate_blocks(blocks, x_all[blocks[0].src_ids])
    torch.testing.assert_close(got, want[seeds], rtol=1e-12, atol=1e-12)


def test_propagation_is_differentiable():
    edges, nu, ni = random_graph(0)
    sampler = NeighborSampler(build_csr(edges, nu, ni), [3, 3])
    blocks = sampler.sample(torch.arange(5), torch.Generator().manual_seed(0))
    x = torch.randn(blocks[0].n_src, 4, requires_grad=True)
    propagate_blocks(blocks, x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_input_validation_and_fanout_parsing():
    edges, nu, ni = random_graph(0)
    csr = build_csr(edges, nu, ni)
    with pytest.raises(ValueError):
        NeighborSampler(csr, [0])
    with pytest.raises(ValueError):
        NeighborSampler(csr, [2]).sample(torch.tensor([1, 1]))
    with pytest.raises(ValueError):
        NeighborSampler(csr, [2]).sample(torch.tensor([nu + ni]))
    with pytest.raises(ValueError):
        build_csr(np.array([[0, ni]]), nu, ni)
    assert parse_fanouts("10,10,10") == [10, 10, 10]
    assert parse_fanouts("full") == [-1, -1, -1]
    assert parse_fanouts("full:2") == [-1, -1]
    assert NeighborSampler(csr, "full:2").fanouts == [-1, -1]
    with pytest.raises(ValueError):
        make_sampler(csr, [2], backend="pyg")
