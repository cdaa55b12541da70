"""Optional DGL backend for the neighbour sampler (same interface and Block output).

Used only where ``import dgl`` works. On PyPI the only Linux DGL wheel is
2.1.0, which needs torch <= 2.2.1 and numpy < 2 (design.md §3), so the
project's main environment normally does NOT have it; ``python -m
irllrec_dist.bench sampler --dgl-python PATH`` compares against DGL in a
separate interpreter instead. This module is for environments that do have
DGL (e.g. one built with ``--make-dgl-env``).

Differences from the pure-torch sampler: DGL draws from its own global RNG, so
a ``torch.Generator`` passed to ``sample`` only reseeds DGL (``dgl.seed``,
process-wide) from one draw of that generator, and a counter ``key`` reseeds it from
the key; results are reproducible for a fixed thread count but not identical to
the torch backend's, and with a key a node's sample still depends on the rest of
the batch (so ranks do not reproduce one process's blocks as they do with torch). Edge weights and
``dst_scale`` are computed exactly as in the torch backend, from full-graph
degrees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from irllrec_dist.graph import hash_rng
from irllrec_dist.graph.blocks import BipartiteCSR, Block, inverse_sqrt_degree, key_tuple, make_block


def dgl_available() -> bool:
    try:
        import dgl  # noqa: F401
    except Exception:  # ImportError, or a native-library mismatch with the installed torch
        return False
    return True


class DGLNeighborSampler:
    """``dgl.dataloading.NeighborSampler`` on the homogeneous bipartite graph, returning ``Block``s."""

    def __init__(self, graph: BipartiteCSR, fanouts: Sequence[int], weight_dtype: torch.dtype = torch.float32):
        import dgl

        self._dgl = dgl
        self.graph = graph
        self.fanouts = [int(f) for f in fanouts]
        if not self.fanouts or any(f == 0 or f < -1 for f in self.fanouts):
            raise ValueError(f"fanouts must be a non-empty list of positive ints or -1, got {self.fanouts}")
        self.deg = graph.degrees()
        self._inv_sqrt_deg = inverse_sqrt_degree(self.deg, weight_dtype)
        n = graph.n_nodes
        rows = torch.repeat_interleave(torch.arange(n, dtype=torch.int64), self.deg)
        # edge v -> u for every neighbour v of u: the in-edges of u are its neighbours (graph is symmetric)
        self.g = dgl.graph((graph.indices, rows), num_nodes=n)
        self.g.create_formats_()
        self._sampler = dgl.dataloading.NeighborSampler(self.fanouts)  # same fanout order as ours

    def sample(self, seeds, generator: torch.Generator | None = None, key=None) -> list[Block]:
        dgl = self._dgl
        seeds = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1)
        if torch.unique(seeds).numel() != seeds.numel():
            raise ValueError("seeds must be unique")
        if key is not None:
            dgl.seed(int(hash_rng.uniform(*key_tuple(key)) * (2**31 - 1)))
        elif generator is not None:
            dgl.seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        _, _, dgl_blocks = self._sampler.sample(self.g, seeds)
        out = []
        for b in dgl_blocks:
            src_ids = b.srcdata[dgl.NID].to(torch.int64)
            es, ed = b.edges()
            out.append(
                make_block(
                    src_ids,
                    int(b.num_dst_nodes()),
                    es.to(torch.int64),
                    ed.to(torch.int64),
                    self.deg,
                    self._inv_sqrt_deg,
                )
            )
        return out
