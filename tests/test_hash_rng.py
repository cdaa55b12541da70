"""Counter-based uniforms (graph/hash_rng.py) and the keyed sampler they drive."""

import numpy as np
import torch
from test_neighbor_sampler import random_graph

from irllrec_dist.graph import hash_rng
from irllrec_dist.graph.blocks import build_csr, drop_edges, propagate_blocks
from irllrec_dist.graph.neighbor_sampler import NeighborSampler


def test_pure_function_of_keys_and_broadcasts():
    nodes = torch.arange(6).unsqueeze(1)
    slots = torch.arange(4).unsqueeze(0)
    a = hash_rng.uniform(7, 3, nodes, slots)
    assert a.shape == (6, 4) and a.dtype == torch.float64
    assert torch.equal(a, hash_rng.uniform(7, 3, nodes, slots))
    # one element computed alone equals its entry in the broadcast array
    assert a[4, 2].item() == hash_rng.uniform(7, 3, 4, 2).item()
    assert len(torch.unique(a)) == 24
    # any key changing gives other numbers; key order matters
    for other in (hash_rng.uniform(8, 3, nodes, slots), hash_rng.uniform(3, 7, nodes, slots)):
        assert not torch.isclose(a, other).any()
    assert hash_rng.uniform(-1).item() != hash_rng.uniform(1).item()


def test_uniform_and_uncorrelated():
    x = hash_rng.uniform(2023, 5, torch.arange(200_000)).numpy()
    assert ((x >= 0) & (x < 1)).all()
    counts = np.bincount((x * 20).astype(int), minlength=20)
    chi2 = ((counts - 10_000) ** 2 / 10_000).sum()
    assert chi2 < 45  # 19 dof: p < 0.001 above 43.8
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.01  # consecutive counters
    y = hash_rng.uniform(2023, 6, torch.arange(200_000)).numpy()
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.01  # neighbouring keys


def _neighbours_by_hop(blocks):
    """{(hop, dst global id): sorted sampled neighbour ids} (hop 0 = the seeds' hop)."""
    out = {}
    for hop, b in enumerate(reversed(blocks)):
        src, dst = b.src_ids[b.edge_src], b.src_ids[b.edge_dst]
        for u in b.dst_ids.tolist():
            out[(hop, u)] = sorted(src[dst == u].tolist())
    return out


def test_a_nodes_sample_does_not_depend_on_the_rest_of_the_batch():
    """Two ranks sampling halves of a batch build what one process builds for the whole."""
    edges, nu, ni = random_graph(1)
    sampler = NeighborSampler(build_csr(edges, nu, ni), [3, 2, 2])
    seeds = torch.randperm(nu + ni, generator=torch.Generator().manual_seed(0))[:20]
    whole = sampler.sample(torch.sort(seeds).values, key=(7, 11))
    halves = [sampler.sample(seeds[r::2], key=(7, 11)) for r in range(2)]
    for blocks in (whole, *halves):
        drop_edges(blocks, 0.7, (7, 11))
    whole_n = _neighbours_by_hop(whole)
    x = torch.randn(nu + ni, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h_whole = propagate_blocks(whole, x[whole[0].src_ids], unbiased=True)
    for r, blocks in enumerate(halves):
        for k, nbrs in _neighbours_by_hop(blocks).items():
            assert whole_n[k] == nbrs
        h = propagate_blocks(blocks, x[blocks[0].src_ids], unbiased=True)
        pos = torch.searchsorted(torch.sort(seeds).values, seeds[r::2])
        assert torch.equal(h, h_whole[pos])  # same edges in the same order per node: bit for bit
        # and the dropout agrees edge by edge
        for bw, bh in zip(whole, blocks):
            kept_w = {
                (int(bw.src_ids[s]), int(bw.src_ids[d]))
                for s, d, w in zip(bw.edge_src, bw.edge_dst, bw.weight)
                if w > 0
            }
            for s, d, w in zip(bh.edge_src, bh.edge_dst, bh.weight):
                assert ((int(bh.src_ids[s]), int(bh.src_ids[d])) in kept_w) == bool(w > 0)
    # another step samples differently
    assert _neighbours_by_hop(sampler.sample(torch.sort(seeds).values, key=(7, 12))) != whole_n


def test_keyed_sampling_is_uniform_over_neighbours_and_drop_rate_is_keep():
    edges = np.array([[0, i] for i in range(12)], dtype=np.int64)  # user 0 has degree 12
    sampler = NeighborSampler(build_csr(edges, 1, 12), [4])
    hits, kept, total = torch.zeros(13), 0, 0
    for step in range(1500):
        b = sampler.sample(torch.tensor([0]), key=(5, step))[0]
        assert len(set(b.src_ids[b.edge_src].tolist())) == 4  # without replacement
        hits[b.src_ids[b.edge_src]] += 1
        drop_edges([b], 0.75, (5, step))
        kept, total = kept + int((b.weight > 0).sum()), total + b.n_edges
    torch.testing.assert_close(hits[1:] / 1500, torch.full((12,), 4 / 12), rtol=0, atol=0.05)
    assert abs(kept / total - 0.75) < 0.02
