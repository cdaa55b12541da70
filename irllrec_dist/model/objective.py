"""The training objective: every loss term of design.md §2, each switched by its weight.

``loss_terms`` returns the unweighted terms that are switched on; the trainer
weights and sums them (the intent terms scaled by ``warmup_scale`` while they
are phased in), and logs each one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from irllrec_dist.config import LossConfig
from irllrec_dist.model.dual_tower import DualTower, TextInputs
from irllrec_dist.model.losses import bpr_loss, info_nce, l2_reg, matching_loss, soft_target_nce, translation_alignment


def _cos_logits(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    return (F.normalize(a, dim=-1) / tau) @ F.normalize(b, dim=-1).T  # 1/tau on the n x d side, not n x n


def loss_terms(
    model: DualTower,
    views,
    bu: torch.Tensor,
    bp: torch.Tensor,
    bn: torch.Tensor,
    lc: LossConfig,
    text: TextInputs | None = None,
    teacher_views=None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """``views`` / ``teacher_views`` give h_v and r_v of the student / EMA teacher
    (model/views.py: full-graph or sampled-block propagation)."""
    terms = {"bpr": bpr_loss(views.h("user", bu), views.h("item", bp), views.h("item", bn))}
    if lc.reg:
        if lc.reg_scope == "full":
            terms["reg"] = l2_reg(model.user_emb, model.item_emb)
        else:
            terms["reg"] = l2_reg(views.ego("user", bu), views.ego("item", bp), views.ego("item", bn)) / len(bu)
    if text is None or not (lc.prf or lc.ia or lc.ta or lc.itm):
        return terms

    for side, batch_nodes in (("user", bu), ("item", bp)):
        nodes = torch.unique(batch_nodes)
        nodes = nodes[text.side(side)[2][nodes]]  # only nodes that have text
        if len(nodes) > lc.max_align_nodes:  # bounds the n x n in-batch logits
            nodes = nodes[torch.randperm(len(nodes), generator=generator)[: lc.max_align_nodes].to(nodes.device)]
        if len(nodes) < 2:
            continue
        t, z = model.text_views(text, side, nodes)
        if lc.prf:
            terms["prf"] = terms.get("prf", 0) + info_nce(views.h(side, nodes), t, lc.tau)
        if not (lc.ia or lc.ta or lc.itm):
            continue
        r = views.intent(side, nodes)
        if lc.ia:
            terms["ia"] = terms.get("ia", 0) + info_nce(r, z, lc.tau)
        if lc.ta:
            terms["ta"] = terms.get("ta", 0) + translation_alignment(r, z, lc.tau, lc.ta_noise, generator)
        if lc.itm:
            keep = torch.randperm(len(nodes), generator=generator)[: lc.itm_max_nodes].to(nodes.device)
            sub, r_s, z_s = nodes[keep], r.index_select(0, keep), z.index_select(0, keep)
            # Both directions of the pairs as row-major products (z . r is r . z transposed):
            # row-wise softmaxes over transposed views run several times slower on the CPU.
            with torch.no_grad():
                r_t = teacher_views.intent(side, sub)
                z_t = teacher_views.model.intent_text(text, side, sub)
                sim_t, sim_t_rev = _cos_logits(r_t, z_t, lc.tau), _cos_logits(z_t, r_t, lc.tau)
            sim, sim_rev = _cos_logits(r_s, z_s, lc.tau), _cos_logits(z_s, r_s, lc.tau)
            itc = (soft_target_nce(sim, sim_t, lc.itm_alpha) + soft_target_nce(sim_rev, sim_t_rev, lc.itm_alpha)) / 2
            match = matching_loss(model.match_head, r_s, z_s, sim, generator, sim_transposed=sim_rev)
            terms["itm"] = terms.get("itm", 0) + itc + match
    return terms


INTENT_TERMS = frozenset({"ia", "ta", "itm"})


def warmup_scale(step: int, warmup_steps: int) -> float:
    """Multiplier of the intent terms' weights at optimiser step ``step`` (0-based): linear from 0
    to 1 over the first ``warmup_steps`` steps, then 1."""
    return 1.0 if step >= warmup_steps else step / warmup_steps


def weighted_sum(terms: dict[str, torch.Tensor], lc: LossConfig, intent_scale: float = 1.0) -> torch.Tensor:
    return sum(
        getattr(lc, name) * (intent_scale if name in INTENT_TERMS else 1.0) * value for name, value in terms.items()
    )
