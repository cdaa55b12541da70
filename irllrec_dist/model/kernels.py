"""Two memory-bound pieces of the IRLLRec objective as row-chunked autograd functions.

Both take a few narrow matrices (d = 32 columns) to a wide intermediate and back: the
in-batch InfoNCE logits (n x n, n = 2,048 nodes per side) and the intent views'
softmax over K = 128 prototypes (rows = layers x neighbours, ~45k per side on Yelp). Written
as plain tensor ops, autograd keeps every wide intermediate for backward and streams each one
through memory several times; on the CPU that traffic, not the arithmetic, sets the time.
Here rows go through in chunks that stay in cache, the backward recomputes the chunk's wide
part (one more small matrix product) instead of storing it, and the arithmetic is the same up
to float rounding (tests/test_kernels.py checks values and gradients against the plain
formulas). Measured on this machine, one thread, Yelp's shapes, median of interleaved runs,
forward + backward: one InfoNCE 31.6 -> 25.2 ms, one side's neighbour intent views
85.6 -> 47.8 ms (``python -m irllrec_dist.bench step --profile`` for the whole step). On a GPU
the chunk is the whole matrix: there the number of kernel launches, not memory, bounds the step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# rows per chunk on the CPU: a chunk's wide part (256 x 2,048 logits, 1,024 x 128 intent
# weights) is ~2 MB / 0.5 MB, within a core's L2
LOGIT_ROWS, INTENT_ROWS = 256, 1024
_TINY = 1e-30  # a softmax entry below this is recomputed in log space


def _rows(x: torch.Tensor, cpu_rows: int) -> int:
    return cpu_rows if x.device.type == "cpu" else max(len(x), 1)


class _InfoNCE(torch.autograd.Function):
    """mean_i -log softmax(q_i . kᵀ)_i = mean_i [log sum_j exp(q_i . k_j) - q_i . k_i] and, in the
    same pass over each chunk of logits, its gradients (softmax - identity) k / n and
    (softmax - identity)ᵀ q / n: the loss is a scalar, so backward only scales them, and the
    n x n logits are made once, never stored."""

    @staticmethod
    def forward(ctx, q, k, rows):
        n = len(q)
        want_q, want_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_q = torch.empty_like(q) if want_q else None
        grad_k_t = k.new_zeros(k.shape[1], n) if want_k else None  # summed transposed: ~1.6x faster here
        loss_sum = q.new_zeros(())
        for s in range(0, n, rows):
            logits = q[s : s + rows] @ k.T
            weights = torch.softmax(logits, 1)
            positive = weights.diagonal(offset=s)  # softmax at each row's own pair
            if bool((positive < _TINY).any()):  # -log would lose precision or overflow: the long way
                loss_sum += (torch.logsumexp(logits, 1) - logits.diagonal(offset=s)).sum()
            else:  # -log softmax_ii = log sum_j exp(logits_ij) - logits_ii
                loss_sum -= positive.log().sum()
            if want_q or want_k:
                weights.diagonal(offset=s).sub_(1.0)
                if want_q:
                    torch.mm(weights, k, out=grad_q[s : s + rows])
                if want_k:
                    grad_k_t.addmm_(q[s : s + rows].T, weights)
        ctx.save_for_backward(grad_q / n if want_q else None, grad_k_t.T / n if want_k else None)
        return loss_sum / n

    @staticmethod
    def backward(ctx, grad):
        grad_q, grad_k = ctx.saved_tensors
        return (grad * grad_q if grad_q is not None else None), (grad * grad_k if grad_k is not None else None), None


def cosine_info_nce(a: torch.Tensor, b: torch.Tensor, tau: float, rows: int | None = None) -> torch.Tensor:
    """mean_k -log( exp(cos(a_k, b_k)/tau) / sum_j exp(cos(a_k, b_j)/tau) ), the in-batch
    InfoNCE of ``losses.info_nce``; ``rows`` per chunk (default: ``LOGIT_ROWS`` on the CPU)."""
    q, k = F.normalize(a, dim=-1) / tau, F.normalize(b, dim=-1)
    return _InfoNCE.apply(q, k, rows or _rows(q, LOGIT_ROWS))


class _IntentDirections(torch.autograd.Function):
    """Rows of normalise(softmax(x W) Wᵀ)."""

    @staticmethod
    def forward(ctx, x, w, rows):
        flat = x.reshape(-1, x.shape[-1])
        out = torch.empty_like(flat)
        w_t = w.T.contiguous()
        for s in range(0, len(flat), rows):
            torch.mm(torch.softmax(flat[s : s + rows] @ w, -1), w_t, out=out[s : s + rows])
        norm = out.norm(dim=-1, keepdim=True).clamp_min_(1e-12)  # F.normalize's eps
        out.div_(norm)
        ctx.save_for_backward(flat, w, out, norm)
        ctx.rows, ctx.shape = rows, x.shape
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        flat, w, out, norm = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])
        grad_q = (grad - out * (grad * out).sum(-1, keepdim=True)).div_(norm)  # through the normalisation
        grad_x, grad_w = torch.empty_like(flat), torch.zeros_like(w)
        w_t = w.T.contiguous()
        for s in range(0, len(flat), ctx.rows):
            x_c, grad_q_c = flat[s : s + ctx.rows], grad_q[s : s + ctx.rows]
            p = torch.softmax(x_c @ w, -1)
            grad_p = grad_q_c @ w
            grad_logits = p * (grad_p - (grad_p * p).sum(-1, keepdim=True))
            torch.mm(grad_logits, w_t, out=grad_x[s : s + ctx.rows])
            grad_w.addmm_(x_c.T, grad_logits).addmm_(grad_q_c.T, p)
        return grad_x.view(ctx.shape), grad_w, None


def intent_directions(x: torch.Tensor, w: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """normalise(softmax(x W) Wᵀ) over the last dimension, for x (..., d) and prototypes W (d, K):
    where a node's mixture of the K intents points. ``rows`` per chunk (default: ``INTENT_ROWS``
    on the CPU)."""
    return _IntentDirections.apply(x, w, rows or _rows(x, INTENT_ROWS))
