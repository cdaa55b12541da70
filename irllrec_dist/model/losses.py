"""Loss functions as small pure functions (tested against hand-computed values)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from irllrec_dist.model.kernels import cosine_info_nce


def bpr_loss(u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """mean over the batch of softplus(s(u, i-) - s(u, i+)) = -log sigmoid(s+ - s-)."""
    return F.softplus((u * neg).sum(-1) - (u * pos).sum(-1)).mean()


def l2_reg(*tensors: torch.Tensor) -> torch.Tensor:
    """Sum of squared entries (the reference's squared Frobenius norms)."""
    return sum(t.pow(2).sum() for t in tensors)


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of a[k] against b[k] among all rows of b (in-batch negatives), on cosine similarity.

    mean_k -log( exp(cos(a_k, b_k)/tau) / sum_j exp(cos(a_k, b_j)/tau) )

    (Row-chunked, without the n x n logits in memory: model/kernels.py.)
    """
    return cosine_info_nce(a, b, tau)


def perturb(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + x * eps, eps ~ N(0, sigma^2): a multiplicative shift of every coordinate."""
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * sigma  # CPU generator
    return x + x * eps


def translation_alignment(
    r: torch.Tensor, z: torch.Tensor, tau: float, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """L_TA: the pairwise alignment must also hold between noise-perturbed copies."""
    return info_nce(perturb(r, sigma, generator), perturb(z, sigma, generator), tau)


def soft_target_nce(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Contrastive matching with momentum-distilled targets (ALBEF):
    targets = alpha * softmax(teacher) + (1 - alpha) * one-hot(diagonal);
    loss = mean_k -sum_j targets[k, j] * log_softmax(student)[k, j], computed as
    -alpha * mean_k sum_j softmax(teacher) log_softmax(student) - (1 - alpha) * mean_k log_softmax(student)[k, k]
    (no n x n one-hot or targets in memory)."""
    log_p = F.log_softmax(student_logits, dim=1)
    soft = (F.softmax(teacher_logits, dim=1) * log_p).sum(1).mean()
    return -alpha * soft - (1 - alpha) * log_p.diagonal().mean()


def hard_negative_indices(sim: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row k, one column j != k drawn with probability softmax(sim[k]) over j != k.

    One uniform per row inverted through the row's cumulative weights (torch.multinomial
    draws an exponential per entry of the n x n matrix: ~2x the cost of the whole draw)."""
    n = len(sim)
    if n < 2:
        raise ValueError(f"hard negatives need at least 2 rows, got {n}")
    weights = F.softmax(sim.detach().float(), dim=1)
    weights.fill_diagonal_(0.0)
    empty = weights.sum(1) == 0  # every other column underflowed: draw uniformly among them
    if bool(empty.any()):
        weights[empty] = 1.0
        weights[empty, empty.nonzero().squeeze(1)] = 0.0
    cdf = weights.cumsum(1)
    u = torch.rand(n, 1, generator=generator).to(sim.device)  # CPU generator
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1).clamp_(max=n - 1)
    # u * total can round up to total: the draw is then the last column with weight
    off = weights.gather(1, idx[:, None]).squeeze(1) == 0
    if bool(off.any()):
        idx[off] = n - 1 - (weights[off] > 0).flip(1).float().argmax(1)
    return idx


def matching_loss(
    head,
    r: torch.Tensor,
    z: torch.Tensor,
    sim: torch.Tensor,
    generator: torch.Generator | None = None,
    sim_transposed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary interaction-text matching: (r_k, z_k) match; (r_k, z_j) and (r_j', z_k) with
    hard negatives j, j' drawn by similarity do not. Cross-entropy over the 3n pairs.
    ``sim_transposed``: sim.T, where the caller holds it row-major already."""
    neg_z = hard_negative_indices(sim, generator)
    neg_r = hard_negative_indices(sim.T if sim_transposed is None else sim_transposed, generator)
    rr = torch.cat([r, r, r[neg_r]])
    zz = torch.cat([z, z[neg_z], z])
    labels = torch.cat([torch.ones(len(r)), torch.zeros(2 * len(r))]).long().to(r.device)
    return F.cross_entropy(head(rr, zz), labels)
