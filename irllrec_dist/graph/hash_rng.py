"""Counter-based random numbers: a uniform draw that is a pure function of integer keys.

A sampled training step draws each node's neighbours from ``uniform(seed, step,
stream, hop, node, slot)`` instead of from a generator's stream, so a node's
sample does not depend on which other nodes are in the batch, on the order they
are drawn in, or on which rank draws them. Two ranks that each sample half a
batch then build exactly the blocks one process builds for the whole batch
(restricted to their seeds), and a resumed run needs no generator state.
torch and numpy only offer stateful generators, hence this module: keys are
folded together with the SplitMix64 finaliser (Steele et al., 2014), whose
outputs pass BigCrush, in numpy uint64 where overflow wraps by definition.
"""

from __future__ import annotations

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def _as_u64(key) -> np.ndarray:
    if isinstance(key, torch.Tensor):
        key = key.numpy()
    return np.asarray(key).astype(np.int64, copy=False).astype(np.uint64)  # negatives wrap mod 2^64


def uniform(*keys) -> torch.Tensor:
    """float64 in [0, 1) for every element of the broadcast ``keys`` (python ints, numpy arrays or
    int64 tensors); the same keys always give the same number, and changing any key gives an
    independent one."""
    if not keys:
        raise ValueError("uniform needs at least one key")
    with np.errstate(over="ignore"):
        h = np.asarray(_GOLDEN)
        for key in keys:
            h = _mix(h ^ _mix(_as_u64(key) + _GOLDEN))
        return torch.from_numpy(np.asarray((h >> _S11).astype(np.float64) * 2.0**-53))  # broadcast shape
