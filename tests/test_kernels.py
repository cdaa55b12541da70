"""The chunked and sparse kernels against their plain formulas: values and gradients (float64
gradcheck), with chunks smaller than the inputs so that every chunk boundary is crossed."""

import torch
import torch.nn.functional as F

from irllrec_dist.graph.edge_ops import EdgeIndex, edge_dot, edge_sum
from irllrec_dist.model.kernels import cosine_info_nce, intent_directions


def _double(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def test_info_nce_matches_cross_entropy_and_gradcheck():
    a, b = _double(7, 4, seed=0), _double(7, 4, seed=1)
    plain = F.cross_entropy(F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / 0.3, torch.arange(7))
    assert torch.allclose(cosine_info_nce(a, b, 0.3, rows=3), plain, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, y: cosine_info_nce(x, y, 0.3, rows=3), (a, b))


def test_info_nce_hand_computed():
    # two rows, orthogonal unit vectors: logits/tau are [[1, 0], [0, 1]] / tau
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    loss = cosine_info_nce(a, a.clone(), 0.5, rows=1)
    expected = -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1))
    assert torch.isclose(loss, expected)


def test_info_nce_far_negative_positive_falls_back_to_log_space():
    # tau tiny: the positive pair's softmax underflows; the loss must stay finite and exact
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    got = cosine_info_nce(a, b, 0.005, rows=1)
    plain = F.cross_entropy(F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / 0.005, torch.arange(2))
    assert torch.isfinite(got) and torch.allclose(got, plain)


def test_intent_directions_match_plain_formula_and_gradcheck():
    x, w = _double(2, 5, 3, seed=2), _double(3, 4, seed=3)
    plain = F.normalize(F.softmax(x @ w, dim=-1) @ w.T, dim=-1)
    assert torch.allclose(intent_directions(x, w, rows=3), plain, atol=1e-12)
    assert torch.autograd.gradcheck(lambda p, q: intent_directions(p, q, rows=3), (x, w))


def test_edge_ops_match_gathers_on_unsorted_edges_and_gradcheck():
    row = torch.tensor([2, 0, 1, 2, 0, 3, 1])
    col = torch.tensor([1, 4, 0, 0, 2, 3, 4])
    edges = EdgeIndex(row, col, 4, 5)
    a, b = _double(2, 4, 3, seed=4), _double(2, 5, 3, seed=5)
    w = _double(2, 7, seed=6)
    dot = (a[:, row] * b[:, col]).sum(-1)
    assert torch.allclose(edge_dot(a, b, edges), dot)
    summed = torch.zeros(2, 4, 3, dtype=torch.float64).index_add(1, row, w[..., None] * b[:, col])
    assert torch.allclose(edge_sum(w, b, edges), summed)
    assert torch.autograd.gradcheck(lambda p, q: edge_dot(p, q, edges), (a, b))
    assert torch.autograd.gradcheck(lambda p, q: edge_sum(p, q, edges), (w, b))


def test_edge_sum_hand_computed():
    # node 0 <- 2 * x[1] + 3 * x[0]; node 1 has no edges
    edges = EdgeIndex(torch.tensor([0, 0]), torch.tensor([1, 0]), 2, 2)
    x = torch.tensor([[[1.0], [10.0]]])
    assert edge_sum(torch.tensor([[2.0, 3.0]]), x, edges).flatten().tolist() == [23.0, 0.0]
