"""Uniform negative items per positive edge, rejecting the user's training items."""

from __future__ import annotations

import numpy as np


def edge_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return users.astype(np.int64) * n_items + items.astype(np.int64)


def sample_negatives(
    users: np.ndarray, sorted_train_keys: np.ndarray, n_items: int, rng: np.random.Generator, max_rounds: int = 100
) -> np.ndarray:
    """One item per entry of ``users``, uniform over items the user has not trained on.

    Vectorised rejection sampling: redraw only the rejected entries each round.
    """
    neg = rng.integers(0, n_items, size=len(users))
    todo = np.arange(len(users))
    for _ in range(max_rounds):
        keys = edge_keys(users[todo], neg[todo], n_items)
        pos = np.searchsorted(sorted_train_keys, keys).clip(0, max(len(sorted_train_keys) - 1, 0))
        bad = sorted_train_keys[pos] == keys if len(sorted_train_keys) else np.zeros(len(keys), bool)
        todo = todo[bad]
        if todo.size == 0:
            return neg
        neg[todo] = rng.integers(0, n_items, size=todo.size)
    raise RuntimeError(f"negative sampling: {todo.size} users have (almost) every item as a positive")
