"""``bench train``: training throughput of the real step for 1 and more workers in a gloo group."""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import tempfile
import time

from irllrec_dist.bench.graphs import SIZES, load_graph, training_graph
from irllrec_dist.bench.report import print_table, save_report
from irllrec_dist.memory import rss


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="1m", help=f"comma list of graph presets ({', '.join(SIZES)})")
    p.add_argument("--workers", default="1,2", help="comma list of worker counts (gloo process groups)")
    p.add_argument("--fanouts", default="10,10,10", help='per-layer fanouts, or "full" for full-graph steps')
    p.add_argument("--batch-size", type=int, default=4096, help="training edges per global step")
    p.add_argument(
        "--tables",
        default="dense,sparse",
        help="comma list: dense (Adam on whole tables, full-table L2: the reference recipe) and/or "
        "sparse (train.sparse_tables: row-sparse gradients, lazy Adam, batch L2; sampled only)",
    )
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--graph-seed", type=int, default=0)
    p.add_argument(
        "--graph-cache",
        default="bench_out/graphs",
        help="folder caching generated graphs as .npz (needed: the workers load from it)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0, help="per configuration")
    p.add_argument("--out", default="bench_out/train.json")


def _worker(rank: int, world: int, port: int, graph_path: str, opts: dict, out_dir: str) -> None:
    """One rank of a real training run on the cached graph, timed: the trainer of
    ``training.setup.build_trainer`` (LightGCN, BPR + L2, edge dropout, Adam), its negatives, and
    random global batches of the training edges (the same on every rank), each rank taking its slice."""
    import torch
    import torch.distributed as dist

    from irllrec_dist.config import Config
    from irllrec_dist.gloo_group import loopback_gloo_group
    from irllrec_dist.training.setup import build_trainer

    torch.set_num_threads(opts["threads"])
    with loopback_gloo_group(rank, world, port) if world > 1 else contextlib.nullcontext():
        cfg = Config()
        cfg.model.dim, cfg.train.fanouts = opts["dim"], opts["fanouts"]
        cfg.model.layers = len(cfg.train.fanout_list() or [0] * cfg.model.layers)
        cfg.train.seed, cfg.train.batch_size = opts["seed"], opts["batch_size"]
        if opts["tables"] == "sparse":
            cfg.train.sparse_tables, cfg.loss.reg_scope = True, "batch"
        cfg.validate()
        graph = training_graph(graph_path, sampled=cfg.train.fanout_list() is not None)
        trainer = build_trainer(cfg, rank, world, graph, torch.device("cpu"))
        negatives = trainer.negatives()
        edges = dense = rows = 0
        for s in range(opts["warmup"] + opts["steps"]):
            if s == opts["warmup"]:
                if world > 1:
                    dist.barrier()
                t0, edges, dense, rows = time.perf_counter(), 0, 0, 0
            batch = trainer.rng.integers(0, trainer.n_edges, cfg.train.batch_size)[rank::world]
            _, _, d, r = trainer.batch_step(batch, negatives, s)
            edges, dense, rows = edges + len(batch), dense + d, rows + r
        elapsed = time.perf_counter() - t0
        steps = opts["steps"]
        result = {
            "rank": rank,
            "edges_per_s": edges / elapsed,
            "step_s": elapsed / steps,
            "allreduce_bytes_per_step": (dense + rows) / steps,
            "table_rows_bytes_per_step": rows / steps,
            "dense_tables_bytes_per_step": sum(t.numel() * t.element_size() for t in trainer.step.tables)
            if world > 1
            else 0,
            "peak_rss_mib": rss().peak_mib,
        }
        pathlib.Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def run(args) -> dict:
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
        graph_args = argparse.Namespace(
            size=size,
            n_users=None,
            n_items=None,
            mean_degree=None,
            graph_seed=args.graph_seed,
            graph_cache=args.graph_cache,
        )
        csr, info = load_graph(graph_args)
        path = info["cache_path"]  # the workers load the graph from the cache file
        del csr
        print(
            f"graph {size}: {info['n_users']} users, {info['n_items']} items, {info['n_edges']:,} edges "
            f"({info['source']}, {info['load_s']:.1f} s)",
            flush=True,
        )
        for world, table_kind in ((int(w), t) for w in args.workers.split(",") for t in tables):
            opts = {k: getattr(args, k) for k in ("fanouts", "batch_size", "steps", "warmup", "dim", "threads", "seed")}
            opts["tables"] = table_kind
            with tempfile.TemporaryDirectory() as out_dir:
                t0 = time.perf_counter()
                ctx = mp.spawn(_worker, args=(world, free_port(), str(path), opts, out_dir), nprocs=world, join=False)
                while not ctx.join(timeout=5):
                    if time.perf_counter() - t0 > args.timeout:
                        for p in ctx.processes:
                            p.kill()
                        raise TimeoutError(f"bench train: {size} x {world} workers ran past {args.timeout} s")
                ranks = [json.loads(pathlib.Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]
            row = {
                "graph": size,
                "n_edges": info["n_edges"],
                "workers": world,
                "fanouts": args.fanouts,
                "tables": table_kind,
                "edges_per_s_per_worker": sum(r["edges_per_s"] for r in ranks) / world,
                "edges_per_s_total": sum(r["edges_per_s"] for r in ranks),
                "step_s": max(r["step_s"] for r in ranks),
                "allreduce_bytes_per_step": max(r["allreduce_bytes_per_step"] for r in ranks),
                "table_rows_bytes_per_step": max(r["table_rows_bytes_per_step"] for r in ranks),
                "dense_tables_bytes_per_step": ranks[0]["dense_tables_bytes_per_step"],
                "peak_rss_mib_per_worker": max(r["peak_rss_mib"] for r in ranks),
                "ranks": ranks,
            }
            row["allreduced_over_dense_tables"] = (
                row["allreduce_bytes_per_step"] / row["dense_tables_bytes_per_step"]
                if row["dense_tables_bytes_per_step"]
                else None
            )
            rows.append(row)
            print(
                f"  {world} worker(s), {table_kind} tables: {row['edges_per_s_per_worker']:,.0f} edges/s per worker, "
                f"{row['allreduce_bytes_per_step'] / 2**20:.2f} MiB all-reduced/step, "
                f"peak {row['peak_rss_mib_per_worker']:,.0f} MiB/worker",
                flush=True,
            )
    for row in rows:  # the baseline of the same run: dense tables, same graph and workers
        base = next(
            (
                b
                for b in rows
                if b["graph"] == row["graph"] and b["workers"] == row["workers"] and b["tables"] == "dense"
            ),
            None,
        )
        row["speed_vs_dense_tables"] = row["edges_per_s_per_worker"] / base["edges_per_s_per_worker"] if base else None
    cols = ["graph", "n_edges", "workers", "tables", "edges_per_s_per_worker", "speed_vs_dense_tables",
            "edges_per_s_total", "allreduce_bytes_per_step", "dense_tables_bytes_per_step",
            "allreduced_over_dense_tables", "peak_rss_mib_per_worker"]  # fmt: skip
    title = (f"fanouts {args.fanouts}, {args.batch_size} edges per global step, dim {args.dim}, "
             f"{args.threads} thread(s) per worker, {args.steps} timed steps")  # fmt: skip
    print_table(title, rows, cols)
    return save_report(
        {
            "benchmark": "train",
            "fanouts": args.fanouts,
            "batch_size": args.batch_size,
            "tables": tables,
            "dim": args.dim,
            "threads": args.threads,
            "steps": args.steps,
            "results": rows,
        },
        args.out,
    )
