"""The benchmarks' graphs: the project's synthetic generator at preset sizes, cached as .npz
(the symmetric CSR), and that cache read back as the CSR or as the graph a trainer trains on."""

from __future__ import annotations

import os
import pathlib
import time

import numpy as np

# graph presets: (n_users, n_items, mean_degree); train edges ~ 0.8 * n_users * mean_degree
SIZES: dict[str, tuple[int, int, float]] = {
    "tiny": (2_000, 1_000, 19.0),  # ~30k edges, for smoke tests
    "1m": (70_000, 30_000, 19.0),  # ~1M edges
    "small": (20_000, 10_000, 19.0),  # ~300k edges (design.md §3's DGL measurement)
    "medium": (200_000, 50_000, 19.0),  # ~3M edges
    "large": (1_000_000, 250_000, 19.0),  # ~15M edges
    "xl": (2_500_000, 500_000, 25.0),  # ~50M edges (several GB of RAM to generate)
}


def synthetic_edges(n_users: int, n_items: int, mean_degree: float, seed: int) -> np.ndarray:
    """(n, 2) int64 (user, item) train edges of the project's synthetic generator."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from irllrec_dist.config import SyntheticConfig
    from irllrec_dist.data import synthetic

    cfg = SyntheticConfig(seed=seed, n_users=n_users, n_items=n_items, mean_degree=mean_degree, with_text=False)
    cfg.validate()
    train = synthetic.generate(cfg)["train"]
    # ids are dense already: "u0000012" -> 12, "i0000345" -> 345
    cols = [pc.cast(pc.utf8_slice_codeunits(train[c], 1), pa.int64()).to_numpy() for c in ("user", "item")]
    return np.stack(cols, axis=1)


def _csr(z):
    """The BipartiteCSR of a cached graph (an opened .npz)."""
    import torch

    from irllrec_dist.graph.blocks import BipartiteCSR

    return BipartiteCSR(
        int(z["n_users"]), int(z["n_items"]), torch.from_numpy(z["indptr"]), torch.from_numpy(z["indices"])
    )


def load_graph(args) -> tuple[object, dict]:
    """The CSR of the graph ``args`` names (--size, overridden by --n-users/--n-items/--mean-degree,
    --graph-seed), from --graph-cache when there, else generated (and then cached) -> (csr, info)."""
    from irllrec_dist.graph.blocks import build_csr

    n_users, n_items, mean_degree = SIZES[args.size]
    n_users = args.n_users or n_users
    n_items = args.n_items or n_items
    mean_degree = args.mean_degree or mean_degree
    key = f"synthetic_u{n_users}_i{n_items}_d{mean_degree:g}_s{args.graph_seed}.npz"
    cache = pathlib.Path(args.graph_cache) / key if args.graph_cache else None
    t0 = time.perf_counter()
    if cache is not None and cache.exists():
        csr = _csr(np.load(cache))
        source = f"cache {cache}"
    else:
        print(
            f"generating synthetic graph: {n_users} users, {n_items} items, mean degree {mean_degree:g} ...", flush=True
        )
        edges = synthetic_edges(n_users, n_items, mean_degree, args.graph_seed)
        csr = build_csr(edges, n_users, n_items)
        del edges
        source = "synthetic.generate"
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(
                tmp, n_users=csr.n_users, n_items=csr.n_items, indptr=csr.indptr.numpy(), indices=csr.indices.numpy()
            )
            os.replace(tmp, cache)
    info = {
        "n_users": csr.n_users,
        "n_items": csr.n_items,
        "n_edges": csr.n_edges,
        "mean_user_degree": csr.n_edges / max(csr.n_users, 1),
        "max_item_degree": int(csr.degrees()[csr.n_users :].max()),
        "source": source,
        "load_s": time.perf_counter() - t0,
        "cache_path": str(cache) if cache is not None else None,
    }
    return csr, info


def training_graph(path: str, sampled: bool):
    """A cached graph as ``training.setup.TrainingGraph``: its edges are the dataset's training
    split (no validation or test edges, no text); with ``sampled`` the CSR for the neighbour
    sampler, else the normalised adjacency for full-graph steps."""
    from irllrec_dist.data.dataset import Dataset
    from irllrec_dist.graph.adjacency import build_adjacency
    from irllrec_dist.training.setup import TrainingGraph

    z = np.load(path)
    csr = _csr(z)
    # the users' rows of the symmetric CSR hold each training edge once, its item offset by n_users
    users = np.repeat(np.arange(csr.n_users), np.diff(z["indptr"][: csr.n_users + 1]))
    train = np.stack([users, z["indices"][: csr.n_edges] - csr.n_users], axis=1)
    none = np.zeros((0, 2), dtype=np.int64)
    data = Dataset(csr.n_users, csr.n_items, train, none, none, user_raw=[], item_raw=[], user_text=[], item_text=[])
    if sampled:
        return TrainingGraph(data, None, csr)
    return TrainingGraph(data, build_adjacency(train, csr.n_users, csr.n_items), None)
