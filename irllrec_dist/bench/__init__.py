"""Benchmarks: ``python -m irllrec_dist.bench <subcommand> [...]``.

Subcommands (one module each, with ``add_args(parser)`` and ``run(args)``; register new ones
in ``SUBCOMMANDS``; the shared report, table and memory helpers are in ``report``):

``sampler`` (``sampler.py``)
    Neighbour-sampler throughput on a planted-intent synthetic graph
    (``irllrec_dist.data.synthetic``; the train split is the graph): batches/s,
    seeds/s, sampled edges/s and peak RSS for the pure-torch sampler, and, with
    ``--dgl-python PATH``, the same measurement with DGL 2.1.0's
    ``NeighborSampler`` in that other interpreter (``dgl_worker.py``: same graph,
    same seed batches, same thread count), reported as the ratio ours / DGL from
    the same run. ``--make-dgl-env DIR`` builds such an interpreter first (a ~5 GB
    download: torch 2.2.1 from PyPI is the CUDA build).

``train`` (``train.py``)
    Training throughput of the real step (the trainer of
    ``training.setup.build_trainer``: sampled blocks, DDP, touched-row exchange of
    the embedding tables, Adam) on synthetic graphs of several sizes (``--sizes
    1m,medium,large,xl`` = ~1M to ~50M edges), for 1 and 2 workers in a real gloo
    process group: training edges/s per worker, bytes all-reduced per step (dense
    parameters + table rows) against what a dense all-reduce of the tables would
    move, and peak RSS per worker.

``step`` (``step.py``)
    The real full training step (``training.setup.build_trainer``'s
    ``Trainer.batch_step``: propagation, every loss term of the preset, Adam, EMA
    teacher) on an ingested (and, for text presets, embedded) dataset preset, for
    each model preset, eager and/or through ``torch.compile`` (``train.compile``),
    on the CPU or a CUDA device: ms per step, seconds per epoch, warm-up
    (compilation) time, peak device memory and the speed-up against the eager step
    of the same preset in the same run; ``--profile`` adds the ops that take the
    most device (or CPU) time.

``intents`` (``intents.py``)
    Intent generation on the first ``--items`` items of a dataset (default
    ``configs/yelp.yaml``: ../shared/data/xrec-yelp, ingested under
    bench_out/): the stage's prompts and generation loop
    (``llm.generation.generate_with_retries``) for the same model, greedy first
    answers, with the vLLM backend in ``--vllm-python`` (an environment from
    ``launch/setup_vllm_cpu.sh``; ``--make-vllm-env DIR`` runs it first) and the
    transformers backend on the first ``--transformers-items`` of them (~5x
    slower): parse-success rate, output tokens/s, entities/s, engine load time,
    and the ratio vLLM / transformers from the same run.

Timings on a shared machine are noisy; compare numbers from the same run only.
"""

from __future__ import annotations

import argparse

from irllrec_dist.bench import intents, sampler, step, train
from irllrec_dist.bench.graphs import SIZES
from irllrec_dist.cli import add_debug_arg, run_main

__all__ = ["SIZES", "SUBCOMMANDS", "build_parser", "main"]

SUBCOMMANDS = {
    # name: (help, add_args, run)
    "sampler": ("neighbour-sampler throughput (optionally against DGL)", sampler.add_args, sampler.run),
    "train": ("training edges/s, bytes all-reduced and peak memory for 1 and 2 workers", train.add_args, train.run),
    "step": (
        "ms per full training step of model presets on a dataset, eager and compiled, CPU or CUDA",
        step.add_args,
        step.run,
    ),
    "intents": (
        "intent generation: vLLM against transformers on the same model and prompts",
        intents.add_args,
        intents.run,
    ),
    "_intents-worker": (
        "(internal) one backend's generation, run in another interpreter",
        intents.add_worker_args,
        intents.run_worker,
    ),
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
