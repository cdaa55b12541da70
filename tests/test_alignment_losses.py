import math

import pytest
import torch

from irllrec_dist.model.ema import EMATeacher
from irllrec_dist.model.losses import (
    hard_negative_indices,
    info_nce,
    matching_loss,
    perturb,
    soft_target_nce,
    translation_alignment,
)


def test_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # cos(a_k, a_k) = 1, cos(a_0, a_1) = 0; tau = 1: -log(e / (e + 1)) per row
    assert math.isclose(info_nce(a, a, 1.0).item(), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    # scale does not matter (cosine), temperature does: tau = 0.5 -> -log(e^2 / (e^2 + 1))
    assert math.isclose(info_nce(3 * a, a, 0.5).item(), math.log(1 + math.exp(-2)), rel_tol=1e-6)


def test_perturb_and_translation_alignment():
    x = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    assert torch.equal(perturb(x, 0.0), x)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    eps = torch.randn(x.shape, generator=g2) * 0.1
    assert torch.allclose(perturb(x, 0.1, g1), x + x * eps)
    z = torch.tensor([[2.0, -1.0], [1.0, 3.0]])
    assert math.isclose(translation_alignment(x, z, 0.2, 0.0).item(), info_nce(x, z, 0.2).item(), rel_tol=1e-6)


def test_soft_target_nce_hand_computed():
    student = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    teacher = torch.zeros(2, 2)  # uniform teacher
    # targets per row: 0.5 * [.5, .5] + 0.5 * one-hot = [.75, .25]; loss = log(e^2 + 1) - 1.5
    expected = math.log(math.exp(2) + 1) - 1.5
    assert math.isclose(soft_target_nce(student, teacher, 0.5).item(), expected, rel_tol=1e-6)
    # alpha = 0 is plain cross-entropy on the diagonal
    ce = torch.nn.functional.cross_entropy(student, torch.arange(2)).item()
    assert math.isclose(soft_target_nce(student, teacher, 0.0).item(), ce, rel_tol=1e-6)


def test_hard_negatives_follow_similarity_and_skip_self():
    sim = torch.tensor([[9.0, 0.0, 50.0], [50.0, 9.0, 0.0], [0.0, 50.0, 9.0]])
    idx = hard_negative_indices(sim, torch.Generator().manual_seed(0))
    assert idx.tolist() == [2, 0, 1]
    many = torch.stack([hard_negative_indices(torch.zeros(4, 4), torch.Generator().manual_seed(s)) for s in range(50)])
    assert not (many == torch.arange(4)).any()
    # rows whose other columns all underflow: uniform over the other columns, never the row itself
    flat = torch.tensor([[0.0, -1e5, -1e5], [-1e5, 0.0, -1e5], [1.0, 2.0, 3.0]])
    draws = torch.stack([hard_negative_indices(flat, torch.Generator().manual_seed(s)) for s in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 2} and set(draws[:, 1].tolist()) == {0, 2}


def test_hard_negatives_match_the_softmax_distribution():
    """Frequencies of 4,000 draws per row against softmax(sim[k]) renormalised over j != k
    (hand-computed for row 0: exp(1), exp(2), exp(0.5) over their sum)."""
    sim = torch.tensor([[0.0, 1.0, 2.0, 0.5], [3.0, 0.0, 0.0, 1.0], [0.0, 0.0, 5.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    draws, g = 4000, torch.Generator().manual_seed(0)
    counts = torch.zeros(4, 4)
    for _ in range(draws):
        counts[torch.arange(4), hard_negative_indices(sim, g)] += 1
    e = math.exp
    row0 = torch.tensor([0.0, e(1), e(2), e(0.5)]) / (e(1) + e(2) + e(0.5))
    expected = torch.stack(
        [
            row0,
            torch.tensor([e(3), 0.0, 1, e(1)]) / (e(3) + 1 + e(1)),
            torch.tensor([1.0, 1, 0, 1]) / 3,
            torch.tensor([1.0, 1, 1, 0]) / 3,
        ]
    )
    assert counts.diagonal().sum() == 0
    sigma = (expected * (1 - expected) / draws).sqrt()
    assert ((counts / draws - expected).abs() <= 4 * sigma + 1e-9).all(), counts / draws


def test_matching_loss_with_uninformative_head_is_log2():
    class Zero(torch.nn.Module):
        def forward(self, r, z):
            return torch.zeros(len(r), 2) + 0 * (r.sum() + z.sum())

    r, z = torch.randn(5, 3), torch.randn(5, 3)
    loss = matching_loss(Zero(), r, z, torch.randn(5, 5), torch.Generator().manual_seed(0))
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)


def test_ema_teacher_update_and_state_roundtrip():
    student = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        student.weight.fill_(1.0)
    teacher = EMATeacher(student, momentum=0.9)
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.weight.fill_(3.0)
    teacher.update(student)
    assert torch.allclose(teacher.module.weight, torch.full((1, 2), 0.9 * 1 + 0.1 * 3))
    teacher.update(student)
    assert torch.allclose(teacher.module.weight, torch.full((1, 2), 0.9 * 1.2 + 0.1 * 3))
    restored = EMATeacher(torch.nn.Linear(2, 1, bias=False), momentum=0.9)
    restored.load_state_dict(teacher.state_dict())
    assert torch.equal(restored.module.weight, teacher.module.weight)
    with pytest.raises(ValueError):
        EMATeacher(student, momentum=1.5)
