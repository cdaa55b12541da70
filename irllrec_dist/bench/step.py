"""``bench step``: ms per full training step of model presets on an ingested dataset, eager and compiled."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time

from irllrec_dist.bench.report import print_table, save_report
from irllrec_dist.memory import rss

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/yelp.yaml", help="dataset preset, ingested (and embedded for text)")
    p.add_argument("--presets", default="lightgcn,rlmrec_con,irllrec", help="names in configs/ or YAML paths")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--compile", default="off,on", help="off, on, or off,on (eager is then the baseline)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--profile", action="store_true", help="print the ops that take the most time per step")
    p.add_argument("--out", default="bench_out/step.json")
    p.add_argument("overrides", nargs="*", help="config overrides for every preset, key=value")


def time_step(cfg, device, compiled: bool, steps: int, warmup: int, profile: bool) -> dict:
    """The trainer's step (``training.setup.build_trainer`` on ``device``, ``train.compile`` =
    ``compiled``) on random batches of the training edges: ``warmup`` untimed steps, then
    ``steps`` timed ones -> ms per step, s per epoch, warm-up s, peak memory (and, with
    ``profile``, the ops taking the most time in 5 more steps)."""
    import torch

    from irllrec_dist.training.setup import build_trainer

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=compiled))
    trainer = build_trainer(cfg, device=device)
    negatives = trainer.negatives()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def one_step(k: int) -> None:  # a random batch of training edges, step k
        trainer.batch_step(trainer.rng.integers(0, trainer.n_edges, cfg.train.batch_size), negatives, k)

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
    row = {
        "ms_per_step": ms,
        "s_per_epoch": ms / 1e3 * trainer.batches_per_epoch,
        "warmup_s": t1 - t0,
        "peak_device_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "peak_rss_mib": rss().peak_mib,
    }
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
        row["profile"] = [
            {"op": e.key, "ms_per_step": getattr(e, attr, 0) / 5e3, "calls_per_step": e.count / 5} for e in top
        ]
        row["ops_per_step"] = sum(e.count for e in events) / 5  # every profiler event, nested ones too
        row["launches_per_step"] = (
            sum(e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel"))) / 5
        )
    return row


def run(args) -> dict:
    import torch

    from irllrec_dist.config import load_config

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = args.compile.split(",")
    if not modes or any(m not in ("off", "on") for m in modes):
        raise SystemExit(f"bench step: --compile takes off and/or on, got {args.compile!r}")
    rows = []
    for preset in args.presets.split(","):
        path = preset if preset.endswith((".yaml", ".yml")) else str(CONFIGS / f"{preset}.yaml")
        cfg = load_config([args.config, path], args.overrides)
        for mode in modes:
            row = {
                "preset": preset,
                "compile": mode,
                **time_step(cfg, device, mode == "on", args.steps, args.warmup, args.profile),
            }
            rows.append(row)
            print(
                f"  {preset} compile={mode}: {row['ms_per_step']:.1f} ms/step, {row['s_per_epoch']:.2f} s/epoch, "
                f"warm-up {row['warmup_s']:.1f} s",
                flush=True,
            )
            for op in row.get("profile", []):
                print(f"      {op['ms_per_step']:8.2f} ms {op['calls_per_step']:6.0f}x  {op['op'][:70]}")
    for row in rows:  # the baseline of the same run: the eager step of the same preset
        base = next((b for b in rows if b["preset"] == row["preset"] and b["compile"] == "off"), None)
        row["speedup_vs_eager"] = base["ms_per_step"] / row["ms_per_step"] if base else None
    cols = ["preset", "compile", "ms_per_step", "s_per_epoch", "speedup_vs_eager", "warmup_s", "ops_per_step",
            "launches_per_step", "peak_device_mib", ("peak_rss_mib", "peak RSS MiB so far", ",.0f")]  # fmt: skip
    title = f"{args.config} on {args.device}, {args.threads} thread(s), {args.steps} timed steps after {args.warmup}"
    print_table(title, rows, cols)
    return save_report(
        {
            "benchmark": "step",
            "config": args.config,
            "device": args.device,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "threads": args.threads,
            "steps": args.steps,
            "warmup": args.warmup,
            "overrides": args.overrides,
            "results": rows,
        },
        args.out,
    )
