"""``bench step``: ms per full training step of model presets on an ingested dataset, eager and compiled;
the presets are timed in turns (rounds, median) and compared with the first one (e.g. irllrec vs lightgcn)."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import time

from irllrec_dist.bench.report import print_table, save_report
from irllrec_dist.memory import rss

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/yelp.yaml", help="dataset preset, ingested (and embedded for text)")
    p.add_argument("--presets", default="lightgcn,rlmrec_con,irllrec", help="names in configs/ or YAML paths")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--compile", default="off,on", help="off, on, or off,on (eager is then the baseline)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of --steps, presets in turn; the median counts")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--profile", action="store_true", help="print the ops that take the most time per step")
    p.add_argument("--out", default="bench_out/step.json")
    p.add_argument("overrides", nargs="*", help="config overrides for every preset, key=value")


class StepTimer:
    """The trainer's step (``training.setup.build_trainer`` on ``device``, ``train.compile`` =
    ``compiled``) on random batches of the training edges, built once so that several presets
    can be timed in turns (a slow spell of a shared machine then falls on all of them alike)."""

    def __init__(self, cfg, device, compiled: bool):
        import torch

        from irllrec_dist.training.setup import build_trainer

        self.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=compiled))
        self.device = device
        self.trainer = build_trainer(self.cfg, device=device)
        self.negatives = self.trainer.negatives()
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self.k = 0  # global step: keys the dropout and sets the intent warm-up, as in train

    def run(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        t0 = time.perf_counter()
        for _ in range(steps):
            edges = self.trainer.rng.integers(0, self.trainer.n_edges, self.cfg.train.batch_size)
            self.trainer.batch_step(edges, self.negatives, self.k)
            self.k += 1
        self.sync()
        return (time.perf_counter() - t0) / max(steps, 1)

    def profile(self, steps: int = 5) -> dict:
        """The ops taking the most time per step over ``steps`` more steps."""
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        cuda = self.device.type == "cuda"
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_profile(activities=acts) as prof:
            self.run(steps)
        events = prof.key_averages()
        attr = "self_device_time_total" if cuda else "self_cpu_time_total"
        top = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:12]
        return {
            "profile": [
                {"op": e.key, "ms_per_step": getattr(e, attr, 0) / steps / 1e3, "calls_per_step": e.count / steps}
                for e in top
            ],
            "ops_per_step": sum(e.count for e in events) / steps,  # every profiler event, nested ones too
            "launches_per_step": sum(
                e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel"))
            )
            / steps,
        }


def run(args) -> dict:
    import torch

    from irllrec_dist.config import load_config

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = args.compile.split(",")
    if not modes or any(m not in ("off", "on") for m in modes):
        raise SystemExit(f"bench step: --compile takes off and/or on, got {args.compile!r}")
    if args.rounds < 1 or args.steps < 1:
        raise SystemExit("bench step: --rounds and --steps must be at least 1")
    timers, rows = [], []
    for preset in args.presets.split(","):
        path = preset if preset.endswith((".yaml", ".yml")) else str(CONFIGS / f"{preset}.yaml")
        cfg = load_config([args.config, path], args.overrides)
        for mode in modes:
            timer = StepTimer(cfg, device, mode == "on")
            t0 = time.perf_counter()
            timer.run(args.warmup)  # compilation happens here
            timers.append(timer)
            rows.append({"preset": preset, "compile": mode, "warmup_s": time.perf_counter() - t0, "rounds_ms": []})
    # rounds: every (preset, mode) in turn, `steps` steps each; the median round is reported
    for _ in range(args.rounds):
        for timer, row in zip(timers, rows):
            row["rounds_ms"].append(timer.run(args.steps) * 1e3)
    for timer, row in zip(timers, rows):
        row["ms_per_step"] = statistics.median(row["rounds_ms"])
        row["s_per_epoch"] = row["ms_per_step"] / 1e3 * timer.trainer.batches_per_epoch
        row["peak_device_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        row["peak_rss_mib"] = rss().peak_mib
        if args.profile:
            row.update(timer.profile())
        print(
            f"  {row['preset']} compile={row['compile']}: {row['ms_per_step']:.1f} ms/step (median of "
            f"{args.rounds} rounds of {args.steps}), {row['s_per_epoch']:.2f} s/epoch, warm-up {row['warmup_s']:.1f} s",
            flush=True,
        )
        for op in row.get("profile", []):
            print(f"      {op['ms_per_step']:8.2f} ms {op['calls_per_step']:6.0f}x  {op['op'][:70]}")
    first = rows[0]
    for row in rows:  # the baselines of the same run: the eager step of the same preset, the first preset
        base = next((b for b in rows if b["preset"] == row["preset"] and b["compile"] == "off"), None)
        row["speedup_vs_eager"] = base["ms_per_step"] / row["ms_per_step"] if base else None
        row["ratio_vs_first"] = row["ms_per_step"] / first["ms_per_step"]
    cols = ["preset", "compile", "ms_per_step", ("ratio_vs_first", f"x {first['preset']}", ".2f"), "s_per_epoch",
            "speedup_vs_eager", "warmup_s", "ops_per_step",
            "launches_per_step", ("peak_device_mib", "peak device MiB so far", ",.0f"),
            ("peak_rss_mib", "peak RSS MiB so far", ",.0f")]  # fmt: skip
    title = (
        f"{args.config} on {args.device}, {args.threads} thread(s), median of {args.rounds} rounds of "
        f"{args.steps} timed steps after {args.warmup}"
    )
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
            "rounds": args.rounds,
            "overrides": args.overrides,
            "results": rows,
        },
        args.out,
    )
