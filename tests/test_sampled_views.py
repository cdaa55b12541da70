"""Sampled-block views against full-graph propagation (model/views.py)."""

import numpy as np
import pytest
import torch

from irllrec_dist.graph.adjacency import build_adjacency
from irllrec_dist.graph.blocks import build_csr
from irllrec_dist.graph.neighbor_sampler import NeighborSampler
from irllrec_dist.model.dual_tower import DualTower
from irllrec_dist.model.views import FullGraphViews, SampledViews

NU, NI = 30, 20


def _graph():
    rng = np.random.default_rng(0)
    edges = np.unique(np.stack([rng.integers(0, NU, 150), rng.integers(0, NI, 150)], 1), axis=0)
    return edges, build_adjacency(edges, NU, NI), build_csr(edges, NU, NI)


def _model(layers=3):
    torch.manual_seed(0)
    return DualTower(NU, NI, 8, layers, n_intents=4)


BU, BI = torch.tensor([0, 3, 5]), torch.tensor([1, 2])
SEEDS = torch.unique(torch.cat([BU, BI + NU]))


def test_full_fanouts_equal_full_graph_views():
    _, adj, csr = _graph()
    model = _model()
    full = FullGraphViews(model, model.propagate(*adj.matrices()), adj)
    sampled = SampledViews(model, NeighborSampler(csr, [-1, -1, -1]).sample(SEEDS), SEEDS)
    for side, nodes in (("user", BU), ("item", BI)):
        torch.testing.assert_close(sampled.h(side, nodes), full.h(side, nodes), rtol=0, atol=1e-6)
        torch.testing.assert_close(sampled.intent(side, nodes), full.intent(side, nodes), rtol=0, atol=1e-6)


def test_gradient_only_on_the_blocks_input_rows():
    _, _, csr = _graph()
    model = _model()
    blocks = NeighborSampler(csr, [2, 2, 2]).sample(SEEDS, torch.Generator().manual_seed(0))
    views = SampledViews(model, blocks, SEEDS)
    (views.h("user", BU).sum() + views.intent("item", BI).sum()).backward()
    src = blocks[0].src_ids
    touched_u = model.user_emb.grad.abs().sum(1).nonzero().squeeze(1)
    touched_i = model.item_emb.grad.abs().sum(1).nonzero().squeeze(1)
    assert set(touched_u.tolist()) <= set(src[src < NU].tolist())
    assert set(touched_i.tolist()) <= set((src[src >= NU] - NU).tolist())
    assert len(touched_u) + len(touched_i) < NU + NI  # the batch did not touch the whole graph


def test_sampled_layer_is_unbiased():
    """One layer, fanout 2: deg/n_sampled rescaling makes the mean over draws the full-graph layer."""
    _, adj, csr = _graph()
    model = _model(layers=1)
    with torch.no_grad():
        full = FullGraphViews(model, model.propagate(*adj.matrices()), adj).h("user", BU)
        sampler, gen = NeighborSampler(csr, [2]), torch.Generator().manual_seed(1)
        mean = sum(SampledViews(model, sampler.sample(SEEDS, gen), SEEDS).h("user", BU) for _ in range(4000)) / 4000
    assert (mean - full).abs().max() < 0.02 * full.abs().max()


def test_nodes_outside_the_seeds_are_rejected():
    _, _, csr = _graph()
    views = SampledViews(_model(), NeighborSampler(csr, [2, 2, 2]).sample(SEEDS), SEEDS)
    with pytest.raises(ValueError, match="outside the sampled batch"):
        views.h("user", torch.tensor([1]))
