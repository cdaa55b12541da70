"""Full-ranking Recall@K / NDCG@K with batched top-k.

Protocol (RLMRec/IRLLRec): rank every item for a user, excluding the user's
training items; Recall@K = hits in top-K / |truth of u|; NDCG@K uses binary
gains, a log2(rank + 1) discount and the ideal DCG over min(K, |truth of u|)
positions; both averaged over users with at least one truth item.
"""

from __future__ import annotations

from typing import Iterator

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
def top_k(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray, exclude: sp.csr_matrix | None,
          k: int, max_scores: int = 1 << 25) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items (and scores) per user by dot product, never holding more than
    ``max_scores`` scores at once; items in ``exclude[user]`` are ranked out."""
    n_items = item_emb.shape[0]
    k = min(k, n_items)
    items_out = np.empty((len(users), k), dtype=np.int64)
    scores_out = np.empty((len(users), k), dtype=np.float32)
    for sl in user_batches(len(users), n_items, max_scores):
        ub = users[sl]
        scores = user_emb[torch.from_numpy(ub)] @ item_emb.T
        if exclude is not None:
            sub = exclude[ub]
            rows = np.repeat(np.arange(len(ub)), np.diff(sub.indptr))
            scores[torch.from_numpy(rows), torch.from_numpy(sub.indices.astype(np.int64))] = -torch.inf
        s, idx = torch.topk(scores, k, dim=1)
        items_out[sl], scores_out[sl] = idx.numpy(), s.numpy()
    return items_out, scores_out


def evaluate_ranking(user_emb: torch.Tensor, item_emb: torch.Tensor, truth: sp.csr_matrix,
                     exclude: sp.csr_matrix | None, ks: tuple[int, ...], max_scores: int = 1 << 25,
                     users: np.ndarray | None = None) -> dict[str, float]:
    """Mean Recall/NDCG over users (default: all with >= 1 truth item), plus the user count."""
    n_truth_all = np.diff(truth.indptr)
    if users is None:
        users = np.flatnonzero(n_truth_all > 0)
    else:
        users = users[n_truth_all[users] > 0]
    top, _ = top_k(user_emb, item_emb, users, exclude, max(ks), max_scores)
    per_user = recall_ndcg(hit_matrix(top, truth, users), n_truth_all[users], ks)
    n = len(users)
    result = {name: (float(vals.sum()) / n if n else 0.0) for name, vals in per_user.items()}
    result["users"] = n
    return result
