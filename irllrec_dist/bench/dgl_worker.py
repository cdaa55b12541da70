"""DGL's ``NeighborSampler`` timed on a cached graph; ``bench sampler --dgl-python PATH`` runs this file.

    PATH dgl_worker.py GRAPH.npz '{"fanouts": [10, 10], "warmup": 3, "max_seconds": 15, "seed": 0, "threads": 1}'

Runs in the DGL interpreter (torch 2.2.1, dgl 2.1.0), which does not have this project's
dependencies: it imports only the standard library, numpy, torch and dgl, never irllrec_dist.
GRAPH.npz holds the symmetric CSR (indptr, indices) and the seed batches (batches); the result
is one JSON line on stdout, with the keys of ``bench.sampler.measure_torch_sampler``'s result.
"""

import json
import os
import sys
import time

# The interpreter put this file's folder first on sys.path; its modules (train.py, step.py, ...)
# must not shadow anything numpy, torch or dgl import.
if sys.path and os.path.realpath(sys.path[0] or ".") == os.path.dirname(os.path.realpath(__file__)):
    del sys.path[0]


def rss_mib():
    # Own reader (this interpreter cannot import irllrec_dist.memory.rss): (current, peak) RSS in MiB.
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def main():
    import dgl
    import numpy as np
    import torch

    z = np.load(sys.argv[1])
    p = json.loads(sys.argv[2])
    torch.set_num_threads(p["threads"])
    dgl.seed(p["seed"])
    t0 = time.perf_counter()
    indptr, indices = torch.from_numpy(z["indptr"]), torch.from_numpy(z["indices"])
    n = indptr.numel() - 1
    rows = torch.repeat_interleave(torch.arange(n), indptr[1:] - indptr[:-1])
    g = dgl.graph((indices, rows), num_nodes=n)  # in-edges of u = neighbours of u
    g.create_formats_()
    build_s = time.perf_counter() - t0
    sampler = dgl.dataloading.NeighborSampler(p["fanouts"])
    batches = torch.from_numpy(z["batches"])
    for k in range(min(p["warmup"], len(batches))):
        sampler.sample(g, batches[k])
    try:  # reset the peak RSS to the current one (Linux >= 4.0), as the torch sampler's measurement does
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        scope = "sampling loop"
    except OSError:
        scope = "whole process"
    rss0, _ = rss_mib()
    nb = ne = ns = ni = 0
    t0 = time.perf_counter()
    for k in range(p["warmup"], len(batches)):
        input_nodes, output_nodes, blocks = sampler.sample(g, batches[k])
        nb += 1
        ns += len(output_nodes)
        ne += sum(b.num_edges() for b in blocks)
        ni += len(input_nodes)
        if time.perf_counter() - t0 > p["max_seconds"]:
            break
    dt = time.perf_counter() - t0
    _, peak = rss_mib()
    print(
        json.dumps(
            {
                "backend": "dgl " + dgl.__version__ + " (torch " + torch.__version__ + ")",
                "batches": nb,
                "seconds": dt,
                "batches_per_s": nb / dt,
                "seeds_per_s": ns / dt,
                "edges_per_s": ne / dt,
                "edges_per_batch": ne / nb,
                "input_nodes_per_batch": ni / nb,
                "rss_before_mib": rss0,
                "peak_rss_mib": peak,
                "peak_rss_scope": scope,
                "graph_build_s": build_s,
            }
        )
    )


if __name__ == "__main__":
    main()
