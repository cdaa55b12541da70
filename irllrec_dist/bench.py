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

Timings on a shared machine are noisy; compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
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

# graph presets: (n_users, n_items, mean_degree); train edges ~ 0.8 * n_users * mean_degree
SIZES: dict[str, tuple[int, int, float]] = {
    "tiny": (2_000, 1_000, 19.0),  # ~30k edges, for smoke tests
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
            "load_s": time.perf_counter() - t0}
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
                          seed: int, progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    from irllrec_dist.graph.neighbor_sampler import NeighborSampler

    sampler = NeighborSampler(csr, fanouts)
    gen = torch.Generator().manual_seed(seed)
    seeds_t = torch.from_numpy(batches)
    for k in range(min(warmup, len(batches))):
        sampler.sample(seeds_t[k], gen)
    reset = _reset_peak_rss()
    rss0, _ = _rss_mib()
    n = n_edges = n_seeds = n_input = 0
    t0 = time.perf_counter()
    for k in tqdm(range(warmup, len(batches)), desc="torch sampler", unit="batch", disable=not progress,
                  dynamic_ncols=True):
        blocks = sampler.sample(seeds_t[k], gen)
        n += 1
        n_seeds += blocks[-1].n_dst
        n_edges += sum(b.n_edges for b in blocks)
        n_input += blocks[0].n_src
        if time.perf_counter() - t0 > max_seconds:
            break
    dt = time.perf_counter() - t0
    _, peak = _rss_mib()
    return {"backend": "torch (ours)", "batches": n, "seconds": dt, "batches_per_s": n / dt,
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
                                     progress=not args.no_progress)]
    ratio = None
    if dgl_python:
        dgl = measure_dgl_sampler(dgl_python, csr, fanouts, all_batches, args.warmup, args.max_seconds,
                                  args.seed, args.threads, args.dgl_timeout)
        results.append(dgl)
        ratio = {k: results[0][k] / dgl[k] for k in ("batches_per_s", "edges_per_s")}

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
    report = {"benchmark": "sampler", "graph": graph_info, "fanouts": fanouts, "batch_size": args.batch_size,
              "threads": args.threads, "results": results, "ratio_ours_over_dgl": ratio,
              "host": {"python": platform.python_version(), "torch": torch.__version__,
                       "cpus": os.cpu_count(), "machine": platform.machine()},
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")
    return report


# ----------------------------------------------------------------------------- entry point
SUBCOMMANDS = {
    # name: (help, add_args, run)
    "sampler": ("neighbour-sampler throughput (optionally against DGL)", _add_sampler_args, run_sampler),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m irllrec_dist.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (help_, add_args, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args._run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
