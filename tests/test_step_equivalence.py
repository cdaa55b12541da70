"""The fast IRLLRec step computes the same loss terms as the plain formulas it replaced.

The reference below is the objective as it was written before them, in plain tensor ops
(per-edge gathers and index_add for the intent aggregation, n x n logits for InfoNCE, one-hot
targets and transposed copies for the soft-target NCE, the EMA teacher propagated through every
layer and both its text MLPs run): patched in, it
drives the same optimiser steps from the same seed, and every logged term of every step and the
parameters at the end must agree with the trainer's own step to float rounding. Small chunk sizes
make the chunked kernels (model/kernels.py) split every matrix.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from irllrec_dist.config import Config
from irllrec_dist.graph.adjacency import build_adjacency
from irllrec_dist.model import dual_tower, ema, kernels, losses, objective
from irllrec_dist.model.dual_tower import TextInputs, build_model
from irllrec_dist.model.ema import EMATeacher
from irllrec_dist.training import step as step_module
from irllrec_dist.training.step import StepForward, TrainStep

N_USERS, N_ITEMS, TEXT_DIM = 120, 90, 12


def ref_info_nce(a, b, tau):
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    return F.cross_entropy(logits, torch.arange(len(a)))


def ref_cos_logits(a, b, tau):
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau


def ref_soft_target_nce(student_logits, teacher_logits, alpha):
    n = student_logits.shape[0]
    targets = alpha * F.softmax(teacher_logits, dim=1) + (1 - alpha) * torch.eye(n)
    return -(targets * F.log_softmax(student_logits, dim=1)).sum(1).mean()


def ref_matching_loss(head, r, z, sim, generator):
    neg_z = losses.hard_negative_indices(sim, generator)
    neg_r = losses.hard_negative_indices(sim.T, generator)
    rr, zz = torch.cat([r, r, r[neg_r]]), torch.cat([z, z[neg_z], z])
    labels = torch.cat([torch.ones(len(r)), torch.zeros(2 * len(r))]).long()
    return F.cross_entropy(head(rr, zz), labels)


def ref_loss_terms(model, views, bu, bp, bn, lc, text=None, teacher_views=None, generator=None):
    """objective.loss_terms as it was before the fast kernels (full-graph views)."""
    terms = {"bpr": losses.bpr_loss(views.h("user", bu), views.h("item", bp), views.h("item", bn))}
    terms["reg"] = losses.l2_reg(model.user_emb, model.item_emb)
    for side, batch_nodes in (("user", bu), ("item", bp)):
        nodes = torch.unique(batch_nodes)
        nodes = nodes[text.side(side)[2][nodes]]
        if len(nodes) > lc.max_align_nodes:
            nodes = nodes[torch.randperm(len(nodes), generator=generator)[: lc.max_align_nodes]]
        if len(nodes) < 2:
            continue
        t, z = model.text_views(text, side, nodes)
        terms["prf"] = terms.get("prf", 0) + ref_info_nce(views.h(side, nodes), t, lc.tau)
        r = views.intent(side, nodes)
        terms["ia"] = terms.get("ia", 0) + ref_info_nce(r, z, lc.tau)
        noisy_r, noisy_z = losses.perturb(r, lc.ta_noise, generator), losses.perturb(z, lc.ta_noise, generator)
        terms["ta"] = terms.get("ta", 0) + ref_info_nce(noisy_r, noisy_z, lc.tau)
        keep = torch.randperm(len(nodes), generator=generator)[: lc.itm_max_nodes]
        sub, r_s, z_s = nodes[keep], r.index_select(0, keep), z.index_select(0, keep)
        with torch.no_grad():
            r_t = teacher_views.intent(side, sub)
            _, z_t = teacher_views.model.text_views(text, side, sub)
            sim_t = ref_cos_logits(r_t, z_t, lc.tau)
        sim = ref_cos_logits(r_s, z_s, lc.tau)
        a = lc.itm_alpha
        itc = (ref_soft_target_nce(sim, sim_t, a) + ref_soft_target_nce(sim.T, sim_t.T, a)) / 2
        terms["itm"] = terms.get("itm", 0) + itc + ref_matching_loss(model.match_head, r_s, z_s, sim, generator)
    return terms


def ref_aggregate_intents(self, side, self_layers, nbr_tables, nbr, row, edge_w=None):
    w_self, w_nbr = (self.user_protos, self.item_protos) if side == "user" else (self.item_protos, self.user_protos)
    n, n_layers, dim = len(self_layers[0]), len(self_layers), self_layers[0].shape[1]
    xs = torch.stack(self_layers, dim=1)  # (n, L, d)
    xn = torch.stack([table.index_select(0, nbr) for table in nbr_tables], dim=1)  # (E, L, d), one row per edge
    is_ = F.normalize(F.softmax(xs @ w_self, dim=-1) @ w_self.T, dim=-1)
    in_ = F.normalize(F.softmax(xn @ w_nbr, dim=-1) @ w_nbr.T, dim=-1)
    alpha = ((is_.index_select(0, row) * in_).sum(-1) + 1) / 2
    if edge_w is not None:
        alpha = alpha * edge_w[:, None]
    denom = xs.new_zeros(n, n_layers).index_add(0, row, alpha).clamp_min(1e-12)
    weight = (alpha / denom.index_select(0, row)).unsqueeze(-1)
    return xs.new_zeros(n, n_layers, dim).index_add(0, row, weight * xn).mean(1)


def ref_teacher_propagate(self, *mats, layers=None):
    with torch.no_grad():
        return self.module.propagate(*mats)  # every layer, whatever the caller asked for


def _problem():
    rng = np.random.default_rng(5)
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, N_USERS, 1500), rng.zipf(1.6, 1500) % N_ITEMS)}
    edges = np.array(sorted(pairs))
    g = torch.Generator().manual_seed(3)
    text = TextInputs(
        *(torch.randn(n, TEXT_DIM, generator=g) for n in (N_USERS, N_USERS, N_ITEMS, N_ITEMS)),
        torch.rand(N_USERS, generator=g) < 0.9,
        torch.rand(N_ITEMS, generator=g) < 0.9,
    )
    cfg = Config()
    cfg.model.intents, cfg.model.dim, cfg.model.layers = 16, 8, 3
    for k, v in dict(prf=0.1, ia=0.1, ta=0.1, itm=0.1, max_align_nodes=80, itm_max_nodes=50).items():
        setattr(cfg.loss, k, v)
    cfg.validate()
    return edges, text, cfg


def _run(edges, text, cfg, steps=6):
    torch.manual_seed(0)
    model = build_model(cfg, N_USERS, N_ITEMS, TEXT_DIM)
    teacher = EMATeacher(model, 0.9)
    adj = build_adjacency(edges, N_USERS, N_ITEMS)
    step = TrainStep(StepForward(model, adj, None, text, cfg, teacher), lr=0.01, world=1)
    gen, draws = torch.Generator().manual_seed(1), np.random.default_rng(2)
    logged = []
    for k in range(steps):
        batch = draws.integers(0, len(edges), 200)
        mask = torch.from_numpy(draws.random(len(edges)) < 0.8).float()
        bu, bp = torch.from_numpy(edges[batch, 0]), torch.from_numpy(edges[batch, 1])
        bn = torch.from_numpy(draws.integers(0, N_ITEMS, 200))
        _, terms, _, _ = step(mask, bu, bp, bn, gen, (0, k), intent_scale=0.5)
        logged.append({name: value.item() for name, value in terms.items()})
    return logged, {name: p.detach().clone() for name, p in model.named_parameters()}


def test_trainer_step_equals_the_plain_formulas(monkeypatch):
    edges, text, cfg = _problem()
    monkeypatch.setattr(kernels, "LOGIT_ROWS", 16)  # 80 nodes -> 5 chunks
    monkeypatch.setattr(kernels, "INTENT_ROWS", 50)  # L x neighbours -> several chunks
    fast_terms, fast_params = _run(edges, text, cfg)

    monkeypatch.setattr(step_module, "loss_terms", ref_loss_terms)
    monkeypatch.setattr(dual_tower.DualTower, "aggregate_intents", ref_aggregate_intents)
    monkeypatch.setattr(ema.EMATeacher, "propagate", ref_teacher_propagate)
    ref_terms, ref_params = _run(edges, text, cfg)

    assert [set(t) for t in fast_terms] == [{"bpr", "reg", "prf", "ia", "ta", "itm"}] * len(ref_terms)
    for k, (fast, ref) in enumerate(zip(fast_terms, ref_terms)):
        for name in ref:
            assert fast[name] == pytest.approx(ref[name], rel=1e-5, abs=1e-7), (k, name)
    for name, p in ref_params.items():
        assert torch.allclose(fast_params[name], p, rtol=1e-4, atol=1e-6), name


def test_reference_differs_when_the_math_does(monkeypatch):
    """The comparison above can fail: a reference with another temperature is told apart."""
    edges, text, cfg = _problem()
    fast_terms, _ = _run(edges, text, cfg, steps=1)
    monkeypatch.setattr(objective, "info_nce", lambda a, b, tau: ref_info_nce(a, b, tau * 1.01))  # prf only
    ref_terms, _ = _run(edges, text, cfg, steps=1)
    assert fast_terms[0]["prf"] != pytest.approx(ref_terms[0]["prf"], rel=1e-5)
