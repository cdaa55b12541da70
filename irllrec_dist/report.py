"""Collect runs/*/metrics.json under a run root into a markdown results table.

    python -m irllrec_dist.report runs/yelp [--by-degree] [--split test|val|cold_users|cold_items]
    python -m irllrec_dist.report runs/yelp --plot docs/results/yelp   # PNGs too (the plot extra)

Runs named ``<group>-s<seed>`` are grouped: the table shows mean ± sample std over
seeds (and the count), so each preset is one row. ``--plot DIR`` also draws, from the same
metrics.json files, validation Recall@20 by epoch per preset with a band over seeds, the loss
terms by epoch and test Recall@20 by user degree (plots.py; ``--metric`` picks another K).
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from irllrec_dist import storage
from irllrec_dist.cli import run_main

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def collect(run_root: str) -> dict[str, list[dict]]:
    fs, path = storage.filesystem(storage.join(run_root, "runs"))
    if not fs.isdir(path):
        raise FileNotFoundError(f"{storage.join(run_root, 'runs')}: no runs folder (train a run under this run root)")
    groups: dict[str, list[dict]] = {}
    for entry in sorted(fs.ls(path, detail=False)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        uri = storage.join(run_root, "runs", name, "metrics.json")
        if not storage.exists(uri):
            continue
        group = re.sub(r"-s\d+$", "", name)
        groups.setdefault(group, []).append(storage.read_json(uri))
    return groups


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def table(groups: dict[str, list[dict]], split: str = "test") -> str:
    head = (
        "| run | seeds | "
        + " | ".join(m.replace("recall", "R").replace("ndcg", "N") for m in METRICS)
        + " | best epoch |"
    )
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]
    for group, runs in groups.items():
        runs = [r for r in runs if split in r]
        if not runs:
            continue
        cells = [_cell([r[split][m] for r in runs]) for m in METRICS]
        epochs = [r["best_epoch"] for r in runs if r.get("best_epoch") is not None]
        lines.append(f"| {group} | {len(runs)} | " + " | ".join(cells) + f" | {', '.join(map(str, epochs)) or '-'} |")
    return "\n".join(lines)


def degree_table(groups: dict[str, list[dict]], metric: str = "recall@20") -> str:
    buckets = next(iter(r["test_by_degree"] for runs in groups.values() for r in runs if "test_by_degree" in r))
    lines = [
        "| run | " + " | ".join(f"{metric} users {b} ({buckets[b]['users']})" for b in buckets) + " |",
        "|" + "---|" * (len(buckets) + 1),
    ]
    for group, runs in groups.items():
        runs = [r for r in runs if "test_by_degree" in r]
        if runs:
            lines.append(
                f"| {group} | "
                + " | ".join(_cell([r["test_by_degree"][b][metric] for r in runs]) for b in buckets)
                + " |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_root")
    parser.add_argument(
        "--split",
        default="test",
        choices=("val", "test", "cold_users", "cold_items"),
        help="cold_*: the held-out cold-start users / items (ingest.cold_users / cold_items)",
    )
    parser.add_argument("--by-degree", action="store_true")
    parser.add_argument("--plot", metavar="DIR", help="also draw PNGs of the runs into DIR (local or s3://)")
    parser.add_argument(
        "--metric",
        default="recall@20",
        help="what --plot draws by epoch and by degree (recall@K or ndcg@K with K in eval.ks; default recall@20)",
    )
    return run_main("report", parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    groups = collect(args.run_root)
    print(table(groups, args.split))
    if args.by_degree:
        print()
        print(degree_table(groups))
    if args.plot:
        from irllrec_dist import plots

        print()
        for uri in plots.plot_runs(groups, args.plot, args.metric):
            print(f"wrote {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
