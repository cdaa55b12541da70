import numpy as np
import pytest
import torch
import torch.nn.functional as F

from irllrec_dist.config import Config
from irllrec_dist.graph.adjacency import build_adjacency
from irllrec_dist.model.dual_tower import DualTower, TextInputs, build_model
from irllrec_dist.model.objective import loss_terms, warmup_scale, weighted_sum
from irllrec_dist.model.views import FullGraphViews

EDGES = np.array([[0, 0], [0, 2], [1, 1], [2, 0], [2, 1], [2, 3], [3, 3]])
NU, NI = 4, 4


def _model(text_dim=None):
    torch.manual_seed(0)
    return DualTower(NU, NI, dim=6, layers=2, n_intents=3, text_dim=text_dim)


def test_neighbors_match_edge_list():
    adj = build_adjacency(EDGES, NU, NI)
    row, nbr, vidx = adj.neighbors("item", torch.tensor([3, 0]))
    assert sorted(zip(row.tolist(), nbr.tolist())) == [(0, 2), (0, 3), (1, 0), (1, 2)]
    # value index points at the same edge in R's order
    r, _ = adj.matrices()
    for k in range(len(row)):
        item = [3, 0][row[k]]
        assert adj.values[vidx[k]] == r.to_dense()[nbr[k], item]


def test_intent_view_matches_brute_force():
    model = _model()
    adj = build_adjacency(EDGES, NU, NI)
    mask = torch.tensor([1.0, 1, 0, 1, 1, 1, 1])  # drop edge (1, 1)
    layers = model.propagate(*adj.matrices(mask))
    nodes = torch.tensor([2, 0, 1])
    got = model.intent_view(layers, adj, "user", nodes, mask)

    def intent(x, w):
        return F.softmax(x @ w, dim=1) @ w.T

    expected = torch.zeros(3, 6)
    for k, u in enumerate(nodes.tolist()):
        per_layer = []
        for xu, xi in layers[:-1]:
            nbrs = [(i, m) for (uu, i), m in zip(EDGES.tolist(), mask.tolist()) if uu == u]
            iu = intent(xu[u : u + 1], model.user_protos)[0]
            alphas = torch.stack(
                [
                    (F.cosine_similarity(iu, intent(xi[i : i + 1], model.item_protos)[0], dim=0) + 1) / 2 * m
                    for i, m in nbrs
                ]
            )
            w = alphas / alphas.sum().clamp_min(1e-12)
            per_layer.append(sum(w[j] * xi[i] for j, (i, _) in enumerate(nbrs)))
        expected[k] = torch.stack(per_layer).mean(0)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(got[2], torch.zeros(6))  # user 1's only edge was dropped


def _text(dim=5):
    g = torch.Generator().manual_seed(1)
    return TextInputs(
        torch.randn(NU, dim, generator=g),
        torch.randn(NU, dim, generator=g),
        torch.randn(NI, dim, generator=g),
        torch.randn(NI, dim, generator=g),
        torch.tensor([True, True, True, False]),
        torch.ones(NI, dtype=torch.bool),
    )


def test_every_loss_term_is_finite_and_has_gradients():
    cfg = Config()
    cfg.model.intents = 3
    cfg.model.dim, cfg.model.layers = 6, 2
    for k, v in dict(prf=0.1, ia=0.1, ta=0.1, itm=0.1, reg=1e-3, reg_scope="batch").items():
        setattr(cfg.loss, k, v)
    cfg.validate()
    text = _text()
    model = build_model(cfg, NU, NI, text.dim)
    from irllrec_dist.model.ema import EMATeacher

    teacher = EMATeacher(model, 0.9)
    adj = build_adjacency(EDGES, NU, NI)
    mats = adj.matrices()
    bu, bp, bn = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 3, 3]), torch.tensor([1, 2, 0, 1])
    terms = loss_terms(
        model,
        FullGraphViews(model, model.propagate(*mats), adj),
        bu,
        bp,
        bn,
        cfg.loss,
        text,
        FullGraphViews(teacher.module, teacher.propagate(*mats), adj),
        torch.Generator().manual_seed(0),
    )
    assert set(terms) == {"bpr", "reg", "prf", "ia", "ta", "itm"}
    loss = weighted_sum(terms, cfg.loss)
    assert torch.isfinite(loss)
    loss.backward()
    for name in ("user_emb", "item_emb", "user_protos", "item_protos"):
        assert getattr(model, name).grad is not None and getattr(model, name).grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in model.intent_mlp.parameters())
    assert all(p.grad is not None for p in model.match_head.parameters())
    # the teacher never gets gradients
    assert all(p.grad is None for p in teacher.parameters())


def test_weights_switch_terms_off():
    cfg = Config()
    text = _text()
    model = build_model(cfg, NU, NI, text.dim)  # plain LightGCN: no text modules
    assert not hasattr(model, "profile_mlp") and model.n_intents == 0
    adj = build_adjacency(EDGES, NU, NI)
    terms = loss_terms(
        model,
        FullGraphViews(model, model.propagate(*adj.matrices()), adj),
        torch.tensor([0, 1]),
        torch.tensor([0, 1]),
        torch.tensor([3, 3]),
        cfg.loss,
        text,
    )
    assert set(terms) == {"bpr", "reg"}


def test_intent_warmup_scales_only_the_intent_terms():
    assert [warmup_scale(s, 4) for s in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert warmup_scale(0, 0) == 1.0  # no warm-up
    cfg = Config()
    for k, v in dict(bpr=1.0, reg=0.5, prf=0.1, ia=0.2, ta=0.3, itm=0.4).items():
        setattr(cfg.loss, k, v)
    terms = {k: torch.tensor(v) for k, v in dict(bpr=1.0, reg=2.0, prf=2.0, ia=3.0, ta=4.0, itm=5.0).items()}
    # 1 + 0.5*2 + 0.1*2 + 0.5 * (0.2*3 + 0.3*4 + 0.4*5) = 2.2 + 0.5 * 3.8
    assert weighted_sum(terms, cfg.loss, 0.5).item() == pytest.approx(4.1)
    assert weighted_sum(terms, cfg.loss).item() == pytest.approx(6.0)
