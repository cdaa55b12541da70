"""``bench sampler``: neighbour-sampler throughput, ours against DGL's in another interpreter."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import tempfile
import time

import numpy as np

from irllrec_dist.bench.graphs import SIZES, load_graph
from irllrec_dist.bench.report import print_table, save_report
from irllrec_dist.memory import rss

DGL_ENV_PACKAGES = [
    "torch==2.2.1",
    "dgl==2.1.0",
    "numpy<2",
    "torchdata==0.7.1",
    "packaging",
    "pandas",
    "pyyaml",
    "pydantic",
]
DGL_WORKER = pathlib.Path(__file__).resolve().with_name("dgl_worker.py")


def seed_batches(n_users: int, batch_size: int, n_batches: int, seed: int) -> np.ndarray:
    """(n_batches, batch_size) user seeds: consecutive random permutations of the users (epochs).

    A batch never straddles two permutations, so the seeds within a batch are unique."""
    per_epoch = n_users // batch_size
    if per_epoch == 0:
        raise SystemExit(f"--batch-size {batch_size} exceeds the {n_users} users")
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < n_batches:
        perm = rng.permutation(n_users)
        out.extend(perm[k * batch_size : (k + 1) * batch_size] for k in range(per_epoch))
    return np.stack(out[:n_batches]).astype(np.int64)


def measure_torch_sampler(csr, fanouts, batches: np.ndarray, warmup: int, max_seconds: float,
                          seed: int, progress: bool = True, keyed: bool = False) -> dict:  # fmt: skip
    """``keyed``: counter-based draws keyed by (seed, batch), as the trainer samples; else one
    torch.Generator stream (what DGL's sampler is compared with)."""
    import torch
    from tqdm import tqdm

    from irllrec_dist.graph.neighbor_sampler import NeighborSampler

    sampler = NeighborSampler(csr, fanouts)
    gen = torch.Generator().manual_seed(seed)
    seeds_t = torch.from_numpy(batches)

    def sample(k):
        return sampler.sample(seeds_t[k], key=(seed, k)) if keyed else sampler.sample(seeds_t[k], gen)

    for k in range(min(warmup, len(batches))):
        sample(k)
    before = rss(reset_peak=True)
    n = n_edges = n_seeds = n_input = 0
    t0 = time.perf_counter()
    for k in tqdm(
        range(warmup, len(batches)), desc="torch sampler", unit="batch", disable=not progress, dynamic_ncols=True
    ):
        blocks = sample(k)
        n += 1
        n_seeds += blocks[-1].n_dst
        n_edges += sum(b.n_edges for b in blocks)
        n_input += blocks[0].n_src
        if time.perf_counter() - t0 > max_seconds:
            break
    dt = time.perf_counter() - t0
    return {
        "backend": "torch (ours, counter-based)" if keyed else "torch (ours)",
        "batches": n,
        "seconds": dt,
        "batches_per_s": n / dt,
        "seeds_per_s": n_seeds / dt,
        "edges_per_s": n_edges / dt,
        "edges_per_batch": n_edges / n,
        "input_nodes_per_batch": n_input / n,
        "rss_before_mib": before.current_mib,
        "peak_rss_mib": rss().peak_mib,
        "peak_rss_scope": "sampling loop" if before.peak_reset else "whole process",
    }


def measure_dgl_sampler(python: str, csr, fanouts, batches: np.ndarray, warmup: int, max_seconds: float,
                        seed: int, threads: int, timeout: float) -> dict:  # fmt: skip
    """The same measurement with DGL's sampler: ``dgl_worker.py`` run by ``python``."""
    with tempfile.TemporaryDirectory(prefix="bench_dgl_") as tmp:
        graph = pathlib.Path(tmp) / "graph.npz"
        np.savez(graph, indptr=csr.indptr.numpy(), indices=csr.indices.numpy(), batches=batches)
        params = {
            "fanouts": list(fanouts),
            "warmup": warmup,
            "max_seconds": max_seconds,
            "seed": seed,
            "threads": threads,
        }
        env = dict(
            os.environ,
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            DGLBACKEND="pytorch",
            PYTHONWARNINGS="ignore",
        )
        env.pop("PYTHONPATH", None)
        print(f"running DGL sampler in {python} ...", flush=True)
        proc = subprocess.run(
            [python, str(DGL_WORKER), str(graph), json.dumps(params)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"DGL benchmark failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_dgl_env(path: str) -> str:
    """Create (once) a venv with DGL 2.1.0 and its working dependency set; returns its python."""
    env = pathlib.Path(path)
    python = env / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import dgl"], capture_output=True).returncode == 0:
        print(f"DGL environment already present: {env}")
        return str(python)
    base = "python3.11"
    print(f"creating DGL environment in {env} (~5 GB download: torch 2.2.1 from PyPI is a CUDA build) ...", flush=True)
    subprocess.run([base, "-m", "venv", str(env)], check=True)
    subprocess.run([str(env / "bin" / "pip"), "install", *DGL_ENV_PACKAGES], check=True)
    subprocess.run([str(python), "-c", "import dgl; print('dgl', dgl.__version__)"], check=True)
    return str(python)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size",
        choices=sorted(SIZES, key=lambda k: SIZES[k][0]),
        default="small",
        help="graph preset: "
        + ", ".join(f"{k}={u}x{i} users x items, mean degree {d:g}" for k, (u, i, d) in SIZES.items()),
    )
    p.add_argument("--n-users", type=int, help="override the preset's users")
    p.add_argument("--n-items", type=int, help="override the preset's items")
    p.add_argument("--mean-degree", type=float, help="override the preset's mean user degree (all splits)")
    p.add_argument("--graph-seed", type=int, default=0)
    p.add_argument(
        "--graph-cache", default="bench_out/graphs", help="folder caching generated graphs as .npz ('' disables)"
    )
    p.add_argument("--fanouts", default="10,10,10", help='comma list per layer (DGL order), -1 or "full[:L]" = all')
    p.add_argument("--batch-size", type=int, default=1024, help="seed users per batch")
    p.add_argument("--batches", type=int, default=200, help="timed batches (at most)")
    p.add_argument("--max-seconds", type=float, default=15.0, help="stop each timed loop after this long")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads for both samplers")
    p.add_argument("--seed", type=int, default=0, help="seed batches and sampling RNG")
    p.add_argument("--dgl-python", help="python of an environment with dgl 2.1.0 to compare against")
    p.add_argument(
        "--make-dgl-env", metavar="DIR", help="create that environment in DIR first (python3.11 venv, ~5 GB) and use it"
    )
    p.add_argument("--dgl-timeout", type=float, default=1800.0)
    p.add_argument("--out", default="bench_out/sampler.json")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> dict:
    import torch

    from irllrec_dist.graph.neighbor_sampler import parse_fanouts

    torch.set_num_threads(args.threads)
    fanouts = parse_fanouts(args.fanouts)
    dgl_python = args.dgl_python
    if args.make_dgl_env:
        made = make_dgl_env(args.make_dgl_env)
        dgl_python = dgl_python or made

    csr, graph_info = load_graph(args)
    print(
        f"graph: {graph_info['n_users']} users, {graph_info['n_items']} items, {graph_info['n_edges']} edges "
        f"({graph_info['source']}, {graph_info['load_s']:.1f} s)",
        flush=True,
    )
    batches = seed_batches(csr.n_users, args.batch_size, args.batches + args.warmup, args.seed)

    results = [
        measure_torch_sampler(
            csr, fanouts, batches, args.warmup, args.max_seconds, args.seed, progress=not args.no_progress, keyed=keyed
        )
        for keyed in (False, True)
    ]
    ratio = keyed_ratio = None
    if dgl_python:
        dgl = measure_dgl_sampler(
            dgl_python, csr, fanouts, batches, args.warmup, args.max_seconds, args.seed, args.threads, args.dgl_timeout
        )
        results.append(dgl)
        ratio = {k: results[0][k] / dgl[k] for k in ("batches_per_s", "edges_per_s")}
        keyed_ratio = {k: results[1][k] / dgl[k] for k in ("batches_per_s", "edges_per_s")}

    graph_label = f"{csr.n_users // 1000}k x {csr.n_items // 1000}k, {csr.n_edges / 1e6:.2f}M edges"
    rows = [dict(r, graph=graph_label) for r in results]
    cols = [("backend", "sampler", "s"), "graph", "batches_per_s", "seeds_per_s", "edges_per_s", "edges_per_batch",
            "input_nodes_per_batch", "peak_rss_mib"]  # fmt: skip
    print_table(f"fanouts {fanouts}, batch {args.batch_size} seed users, {args.threads} thread(s)", rows, cols)
    if ratio:
        print(
            f"ours / DGL: {ratio['batches_per_s']:.2f}x batches/s, {ratio['edges_per_s']:.2f}x sampled edges/s "
            "(same run, same seeds)"
        )
        print(f"ours counter-based (the trainer's mode) / DGL: {keyed_ratio['batches_per_s']:.2f}x batches/s")
    return save_report(
        {
            "benchmark": "sampler",
            "graph": graph_info,
            "fanouts": fanouts,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "results": results,
            "ratio_ours_over_dgl": ratio,
            "ratio_counter_based_over_dgl": keyed_ratio,
        },
        args.out,
    )
