"""Stage: full-ranking evaluation of a trained run, and top-K export.

    python -m irllrec_dist.evaluate --config configs/amazon.yaml [--split val|test] [--no-export]
    python -m irllrec_dist.evaluate --config configs/yelp.yaml --reference-rows

Reads ``runs/<run_name>/checkpoints/best.pt``, reports Recall@K / NDCG@K on the
split, and writes the top-K recommendations of every user as a
manifest-committed Parquet output ``runs/<run_name>/recommendations``: warm users from their
trained vectors against the trained item vectors, users without a training edge (cold start)
from the same text-tower vectors and catalogue their cold-start metrics score with.
``--reference-rows`` scores the popularity and text-alone baselines instead
(``runs/popularity``, ``runs/text_only``).

The checkpoint is refused, with one line naming what differs, when it does not belong to the
config and run root: a config key that decides what was trained differs (model shape, loss
terms, seed, lr, ...; evaluation settings and runtime keys may differ: ``FREE_KEYS``), the
dataset's size, or the dataset / embedding config hashes it recorded differ from the run root's
(re-ingested or re-embedded since); also when it cannot be read (truncated, corrupt) or holds
NaN/Inf weights. Nothing is written then.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import torch

from irllrec_dist import scoring, storage
from irllrec_dist.artifacts import load_text_inputs
from irllrec_dist.cli import config_main
from irllrec_dist.config import Config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data.dataset import COLD_TABLES
from irllrec_dist.scoring import by_degree, cold_metrics, split_metrics

log = logging.getLogger("irllrec_dist.evaluate")


def run(cfg: Config, split: str = "test", export: bool = True) -> dict:
    """The stage: the best checkpoint's metrics on ``split``, and the top-K export."""
    return scoring.evaluate_run(cfg, split, export)


def reference_rows(cfg: Config) -> dict[str, dict]:
    """Two rows that show how much signal the data carries without training:
    popularity (score = training degree of the item) and text alone (score = user text
    vector . item text vector from the embedding stage). Written as runs/<name>/metrics.json.
    With cold splits: cold users get the same popularity ranking (the usual fallback for a
    new user); for the held-out items, which have no training edge, popularity is counted
    on their held-out edges themselves -- an oracle no real system has at cold start, an
    upper reference rather than a baseline."""
    data = ds.load(cfg.run_root)
    ones = torch.ones(data.n_users, 1)
    pop = torch.from_numpy(np.bincount(data.train[:, 1], minlength=data.n_items).astype(np.float32))[:, None]
    oracle = torch.from_numpy(np.bincount(data.cold_items[:, 1], minlength=data.n_items).astype(np.float32))[:, None]
    rows = {"popularity": ((ones, pop), (ones, pop), (ones, oracle))}
    if storage.is_complete(storage.join(cfg.run_root, "embeddings", "items")):
        text = load_text_inputs(cfg.run_root, data.n_users, data.n_items)
        item = text.item_profile.clone()
        item[~text.item_has] = 0.0
        pair = (text.user_profile, item)
        rows["text_only"] = (pair, pair, pair)
    out = {}
    for name, ((u, i), cold_u, cold_i) in rows.items():
        summary = {
            "run_name": name,
            "seed": None,
            "best_epoch": None,
            "val": {k: v for k, v in split_metrics(cfg, data, u, i, "val").items() if "@" in k},
        }
        test = split_metrics(cfg, data, u, i, "test")
        summary["test"] = {k: v for k, v in test.items() if "@" in k or k == "users"}
        summary["test_by_degree"] = by_degree(cfg, data, u, i, "test")
        summary.update(cold_metrics(cfg, data, cold_u, cold_i))
        storage.write_json(storage.join(cfg.run_root, "runs", name, "metrics.json"), summary)
        out[name] = summary
    return out


def main(argv: list[str] | None = None) -> int:
    return config_main("evaluate", __doc__, _main, argv, _add_args)


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument(
        "--reference-rows",
        action="store_true",
        help="score popularity and text-alone baselines instead of a trained run",
    )


def _main(cfg: Config, args: argparse.Namespace) -> dict:
    if args.reference_rows:
        out = reference_rows(cfg)
        return {k: {s: v[s] for s in ("test", *COLD_TABLES) if s in v} for k, v in out.items()}
    return run(cfg, args.split, not args.no_export)


if __name__ == "__main__":
    sys.exit(main())
