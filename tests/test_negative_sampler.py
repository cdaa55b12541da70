import numpy as np

from irllrec_dist.graph.negative_sampler import edge_keys, sample_negatives


def test_negatives_never_positive_and_cover_the_rest():
    rng = np.random.default_rng(0)
    n_items = 6
    users = np.array([0, 0, 0, 0, 1] * 2000)
    pos_items = np.array([0, 1, 2, 3, 5] * 2000)
    train_keys = np.sort(np.unique(edge_keys(users, pos_items, n_items)))
    neg = sample_negatives(users, train_keys, n_items, rng)
    assert not np.isin(edge_keys(users, neg, n_items), train_keys).any()
    # user 0 may only get items 4 and 5, both about equally often (uniform)
    u0 = neg[users == 0]
    assert set(np.unique(u0)) == {4, 5}
    assert abs((u0 == 4).mean() - 0.5) < 0.03
    assert set(np.unique(neg[users == 1])) == {0, 1, 2, 3, 4}


def test_deterministic_given_seed():
    users = np.arange(100) % 10
    keys = np.sort(edge_keys(users, users % 7, 50))
    a = sample_negatives(users, keys, 50, np.random.default_rng(5))
    b = sample_negatives(users, keys, 50, np.random.default_rng(5))
    assert (a == b).all()
