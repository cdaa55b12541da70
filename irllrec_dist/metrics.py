"""Full-ranking Recall@K / NDCG@K with batched top-k.

Protocol (RLMRec/IRLLRec): rank every item for a user, excluding the user's
training items; Recall@K = hits in top-K / |truth of u|; NDCG@K uses binary
gains, a log2(rank + 1) discount and the ideal DCG over min(K, |truth of u|)
positions; both averaged over users with at least one truth item.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch


def hit_matrix(top_items: np.ndarray, truth: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
    """hits[b, r] = True when top_items[b, r] is a truth item of users[b]."""
    sub = truth[users]
    n_items = truth.shape[1]
    rows = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(sub.indptr))
    truth_keys = rows * n_items + sub.indices.astype(np.int64)
    top_keys = np.arange(len(users), dtype=np.int64)[:, None] * n_items + top_items
    return np.isin(top_keys, truth_keys)


def recall_ndcg(hits: np.ndarray, n_truth: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per-user Recall@K and NDCG@K from a (B, Kmax) hit matrix ranked best first."""
    n_truth = np.asarray(n_truth, dtype=np.float64)
    discount = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    out = {}
    for k in ks:
        h = hits[:, :k]
        out[f"recall@{k}"] = h.sum(1) / n_truth
        dcg = (h * discount[:k]).sum(1)
        ideal_len = np.minimum(n_truth, k).astype(np.int64)
        idcg = np.cumsum(discount[:k])[ideal_len - 1]
        out[f"ndcg@{k}"] = dcg / idcg
    return out


def user_batches(n_eval: int, n_items: int, max_scores: int) -> Iterator[slice]:
    step = max(1, max_scores // max(n_items, 1))
    for start in range(0, n_eval, step):
        yield slice(start, min(start + step, n_eval))


@torch.no_grad()
def top_k(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    users: np.ndarray,
    exclude: sp.csr_matrix | None,
    k: int,
    max_scores: int = 1 << 25,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items (and scores) per user by dot product, never holding more than
    ``max_scores`` scores at once; items in ``exclude[user]`` are ranked out."""
    n_items = item_emb.shape[0]
    k = min(k, n_items)
    items_out = np.empty((len(users), k), dtype=np.int64)
    scores_out = np.empty((len(users), k), dtype=np.float32)
    dev = user_emb.device  # scores are computed where the vectors are (a GPU during training)
    for sl in user_batches(len(users), n_items, max_scores):
        ub = users[sl]
        scores = user_emb[torch.from_numpy(ub).to(dev)] @ item_emb.T
        if exclude is not None:
            sub = exclude[ub]
            rows = np.repeat(np.arange(len(ub)), np.diff(sub.indptr))
            scores[torch.from_numpy(rows).to(dev), torch.from_numpy(sub.indices.astype(np.int64)).to(dev)] = -torch.inf
        s, idx = torch.topk(scores, k, dim=1)
        items_out[sl], scores_out[sl] = idx.cpu().numpy(), s.cpu().numpy()
    return items_out, scores_out


def per_user_metrics(user_emb: torch.Tensor, item_emb: torch.Tensor, truth: sp.csr_matrix,
                     exclude: sp.csr_matrix | None, ks: tuple[int, ...], max_scores: int,
                     users: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """Recall/NDCG of each of ``users`` (all must have >= 1 truth item)."""
    top, _ = top_k(user_emb, item_emb, users, exclude, max(ks), max_scores)
    return recall_ndcg(hit_matrix(top, truth, users), np.diff(truth.indptr)[users], ks)


def eval_users(truth: sp.csr_matrix, users: np.ndarray | None = None) -> np.ndarray:
    """The users a split is evaluated on: those (of ``users``) with at least one truth item."""
    n_truth = np.diff(truth.indptr)
    return np.flatnonzero(n_truth > 0) if users is None else users[n_truth[users] > 0]


def mean_metrics(per_user: dict[str, np.ndarray], n: int) -> dict[str, float]:
    result = {name: (float(vals.sum()) / n if n else 0.0) for name, vals in per_user.items()}
    result["users"] = n
    return result


def evaluate_ranking(user_emb: torch.Tensor, item_emb: torch.Tensor, truth: sp.csr_matrix,
                     exclude: sp.csr_matrix | None, ks: tuple[int, ...], max_scores: int = 1 << 25,
                     users: np.ndarray | None = None) -> dict[str, float]:  # fmt: skip
    """Mean Recall/NDCG over users (default: all with >= 1 truth item), plus the user count."""
    users = eval_users(truth, users)
    return mean_metrics(per_user_metrics(user_emb, item_emb, truth, exclude, ks, max_scores, users), len(users))


def evaluate_ranking_sharded(user_emb: torch.Tensor, item_emb: torch.Tensor, truth: sp.csr_matrix,
                             exclude: sp.csr_matrix | None, ks: tuple[int, ...], max_scores: int,
                             rank: int, world: int, users: np.ndarray | None = None) -> dict[str, float]:  # fmt: skip
    """The same result as ``evaluate_ranking`` on every rank of an initialised process group,
    each rank ranking only every world-th user: per-user values are gathered and averaged
    in the single-process order, so the means are bit-identical."""
    import torch.distributed as dist

    users = eval_users(truth, users)
    mine = per_user_metrics(user_emb, item_emb, truth, exclude, ks, max_scores, users[rank::world])
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    full = {}
    for name in mine:
        vals = np.empty(len(users))
        for r, part in enumerate(gathered):
            vals[r::world] = part[name]
        full[name] = vals
    return mean_metrics(full, len(users))
