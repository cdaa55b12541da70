import math

import numpy as np
import scipy.sparse as sp
import torch
from conftest import random_ranking_problem

from irllrec_dist.metrics import evaluate_ranking, hit_matrix, recall_ndcg, top_k


def test_recall_ndcg_hand_computed():
    # user 0: truth {a, b}, hits at ranks 1 and 3; user 1: truth of 5 items, one hit at rank 2.
    hits = np.array([[1, 0, 1], [0, 1, 0]], dtype=bool)
    out = recall_ndcg(hits, np.array([2, 5]), (1, 3))
    assert np.allclose(out["recall@1"], [0.5, 0.0])
    assert np.allclose(out["recall@3"], [1.0, 0.2])
    assert np.allclose(out["ndcg@1"], [1.0, 0.0])
    idcg0 = 1 + 1 / math.log2(3)
    idcg1 = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # min(K=3, 5) ideal positions
    assert np.allclose(out["ndcg@3"], [(1 + 1 / math.log2(4)) / idcg0, (1 / math.log2(3)) / idcg1])


def test_hit_matrix():
    truth = sp.csr_matrix(np.array([[0, 1, 0, 1], [1, 0, 0, 0]], dtype=np.float32))
    top = np.array([[3, 0, 1], [2, 1, 0]])
    assert hit_matrix(top, truth, np.array([0, 1])).tolist() == [[True, False, True], [False, False, True]]


def test_top_k_masks_excluded_items():
    u = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[5.0, 0], [4.0, 0], [3.0, 0], [2.0, 0]])
    excl = sp.csr_matrix(np.array([[1, 0, 1, 0]], dtype=np.float32))
    idx, scores = top_k(u, items, np.array([0]), excl, 2)
    assert idx.tolist() == [[1, 3]] and scores.tolist() == [[4.0, 2.0]]


def test_evaluate_hand_computed_and_batch_invariant():
    # 3 users, 5 items, 1-d embeddings: item scores for a positive user are 5,4,3,2,1.
    item = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    user = torch.tensor([[1.0], [1.0], [1.0]])
    train = sp.csr_matrix((np.ones(2), ([0, 1], [0, 1])), shape=(3, 5))
    test = sp.csr_matrix((np.ones(3), ([0, 0, 1], [1, 4, 0])), shape=(3, 5))  # user 2 has no test items
    # user 0 ranking (item 0 masked): 1,2,3,4 -> hits at ranks 1 and 4
    # user 1 ranking (item 1 masked): 0,2,3,4 -> hit at rank 1
    res = evaluate_ranking(user, item, test, train, (1, 2, 4))
    assert res["users"] == 2
    assert math.isclose(res["recall@1"], (0.5 + 1.0) / 2)
    assert math.isclose(res["recall@4"], 1.0)
    ndcg4_u0 = (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert math.isclose(res["ndcg@4"], (ndcg4_u0 + 1.0) / 2)
    small = evaluate_ranking(user, item, test, train, (1, 2, 4), max_scores=5)  # one user per batch
    assert small == res


def test_evaluate_large_random_matches_bruteforce():
    nu, ni = 50, 80
    u, i, test, train = random_ranking_problem(nu, ni, 0.05)
    res = evaluate_ranking(u, i, test, train, (10,), max_scores=ni * 7)
    scores = (u @ i.T).numpy()
    scores[train.toarray() > 0] = -np.inf
    recalls = []
    for x in range(nu):
        truth = set(test[x].indices)
        if truth:
            top = np.argsort(-scores[x])[:10]
            recalls.append(len(truth & set(top)) / len(truth))
    assert math.isclose(res["recall@10"], float(np.mean(recalls)), rel_tol=1e-12)
