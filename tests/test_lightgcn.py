import numpy as np
import torch

from irllrec_dist.graph.adjacency import build_adjacency
from irllrec_dist.model.dual_tower import DualTower
from irllrec_dist.model.lightgcn import propagate
from irllrec_dist.model.losses import bpr_loss, l2_reg


def _graph():
    edges = np.array([[0, 0], [0, 2], [1, 1], [2, 0], [2, 1], [2, 3]])
    return edges, 3, 4


def _dense_norm_adj(edges, nu, ni, mask=None):
    r = np.zeros((nu, ni))
    r[edges[:, 0], edges[:, 1]] = 1
    du, di = r.sum(1), r.sum(0)
    rn = r / np.sqrt(np.outer(du, di).clip(min=1e-12))
    if mask is not None:
        rn = rn * mask
    a = np.zeros((nu + ni, nu + ni))
    a[:nu, nu:], a[nu:, :nu] = rn, rn.T
    return a


def test_adjacency_matches_dense_normalisation():
    edges, nu, ni = _graph()
    r, rt = build_adjacency(edges, nu, ni).matrices()
    a = _dense_norm_adj(edges, nu, ni)
    assert np.allclose(r.to_dense().numpy(), a[:nu, nu:])
    assert np.allclose(rt.to_dense().numpy(), a[nu:, :nu])
    # hand value: user 2 (degree 3) - item 0 (degree 2)
    assert np.isclose(r.to_dense()[2, 0].item(), 1 / np.sqrt(6))


def test_edge_mask_drops_both_directions():
    edges, nu, ni = _graph()
    adj = build_adjacency(edges, nu, ni)
    mask = torch.ones(len(edges))
    mask[1] = 0  # adjacency order is (user, item) sorted: edge (0, 2)
    r, rt = adj.matrices(mask)
    assert r.to_dense()[0, 2] == 0 and rt.to_dense()[2, 0] == 0
    assert r.to_dense()[0, 0] > 0 and rt.to_dense()[0, 0] > 0


def test_propagation_and_custom_backward_match_dense_autograd():
    edges, nu, ni = _graph()
    adj = build_adjacency(edges, nu, ni)
    mask = torch.tensor([1.0, 0, 1, 1, 0, 1])
    r, rt = adj.matrices(mask)
    torch.manual_seed(0)
    xu = torch.randn(nu, 5, dtype=torch.float32, requires_grad=True)
    xi = torch.randn(ni, 5, dtype=torch.float32, requires_grad=True)
    out_u, out_i = propagate(r, rt, xu, xi, 3)
    w = torch.randn(nu + ni, 5)
    (torch.cat([out_u, out_i]) * w).sum().backward()

    m = np.zeros((nu, ni))
    m[edges[:, 0], edges[:, 1]] = mask.numpy()
    a = torch.tensor(_dense_norm_adj(edges, nu, ni, mask=m), dtype=torch.float32)
    x = torch.cat([xu, xi]).detach().requires_grad_(True)
    layers, cur = [x], x
    for _ in range(3):
        cur = a @ cur
        layers.append(cur)
    ref = sum(layers)
    (ref * w).sum().backward()
    assert torch.allclose(torch.cat([out_u, out_i]), ref, atol=1e-6)
    assert torch.allclose(torch.cat([xu.grad, xi.grad]), x.grad, atol=1e-5)


def test_model_forward_shapes():
    edges, nu, ni = _graph()
    model = DualTower(nu, ni, 8, 2)
    u, i = model(*build_adjacency(edges, nu, ni).matrices())
    assert u.shape == (nu, 8) and i.shape == (ni, 8)


def test_bpr_and_reg_hand_computed():
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    pos = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # scores 2, 2
    neg = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # scores 1, 0
    expected = (np.log1p(np.exp(1 - 2)) + np.log1p(np.exp(0 - 2))) / 2
    assert np.isclose(bpr_loss(u, pos, neg).item(), expected)
    assert l2_reg(u, pos).item() == 1 + 4 + 4 + 1
