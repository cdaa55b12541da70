"""The main job end to end: [synthetic data] -> ingest -> [intents] -> [embed] -> train -> evaluate.

    python -m irllrec_dist.pipeline --config configs/demo.yaml [key=value ...]

When ``ingest.source`` is empty the planted-intent generator writes the raw
files to ``<run_root>/raw`` first, so the demo needs nothing from outside.
The LLM intent stage runs when ``intents.enabled`` is set, the embedding stage
when a text loss is switched on or intents were generated. Every stage skips
work that is already committed with the same config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from irllrec_dist import artifacts, embed, evaluate, ingest, intents, storage, train
from irllrec_dist.cli import config_main
from irllrec_dist.config import Config
from irllrec_dist.data import synthetic

log = logging.getLogger("irllrec_dist.pipeline")


def ensure_synthetic(cfg: Config) -> Config:
    if cfg.ingest.source:
        return cfg
    raw = storage.join(cfg.run_root, "raw")
    marker = storage.join(raw, "_synthetic.json")
    want = json.loads(json.dumps(cfg.to_dict()["synthetic"]))  # tuples -> lists, as read back
    if not storage.exists(marker) or storage.read_json(marker) != want:
        t0 = time.time()
        tables = synthetic.generate(cfg.synthetic)
        synthetic.write_raw(tables, raw)
        storage.write_json(marker, want)  # written last: the raw folder is complete
        log.info(
            "synthetic: %d users, %d items, %d train edges in %.1fs -> %s",
            cfg.synthetic.n_users,
            cfg.synthetic.n_items,
            tables["train"].num_rows,
            time.time() - t0,
            raw,
        )
    cfg.ingest.source = raw
    cfg.ingest.format = "parquet"
    return cfg


def format_table(summary: dict) -> str:
    ks = sorted({int(k.split("@")[1]) for k in summary["test"] if "@" in k})
    head = "split      | " + " | ".join(f"R@{k}" for k in ks) + " | " + " | ".join(f"N@{k}" for k in ks)
    rows = [head]
    for split in ("val", "test", "cold_users", "cold_items"):
        if split not in summary:
            continue
        m = summary[split]
        rows.append(
            f"{split:10} | "
            + " | ".join(f"{m[f'recall@{k}']:.4f}" for k in ks)
            + " | "
            + " | ".join(f"{m[f'ndcg@{k}']:.4f}" for k in ks)
        )
    return "\n".join(rows)


def sample_intents(cfg: Config, n: int = 3) -> list[str]:
    """A few generated descriptions to show (parsed ones first), one line each."""
    lines = []
    for side in ("items", "users"):
        uri = artifacts.side_uri(cfg.run_root, side)
        if not storage.is_complete(uri):
            continue
        rows = artifacts.read_intents(cfg.run_root, side).to_pylist()
        rows.sort(key=lambda r: (r["fallback"], r["status"] != "ok", r["id"]))
        for r in rows[:n]:
            lines.append(
                f"{side[:-1]} {r['id']} [{r['status']}{', fallback' if r['fallback'] else ''}]: "
                f"profile {r['profile'][:160]!r}; intents {r['intents'][:6]}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    return config_main("pipeline", __doc__, _main, argv)


def _main(cfg: Config, args: argparse.Namespace) -> None:
    t0 = time.time()
    cfg = ensure_synthetic(cfg)
    ingest.run(cfg)
    if cfg.intents.enabled:
        intents.run(cfg)
    if cfg.loss.uses_text() or cfg.intents.enabled:
        embed.run(cfg)
    summary = train.run(cfg)
    reference = evaluate.reference_rows(cfg)
    print(
        f"\nrun root: {cfg.run_root}   best epoch: {summary['best_epoch']}   "
        f"wall: {time.time() - t0:.0f}s   peak RSS: {summary['peak_rss_mib']:.0f} MiB"
    )
    print(format_table(summary))
    for name, row in reference.items():
        cold = "".join(f"   {c} R@20 {row[c]['recall@20']:.4f}" for c in ("cold_users", "cold_items") if c in row)
        print(f"reference, {name}: test R@20 {row['test']['recall@20']:.4f}  N@20 {row['test']['ndcg@20']:.4f}{cold}")
    if cfg.intents.enabled:
        report = artifacts.read_report(cfg.run_root)
        for side, rep in report["sides"].items():
            print(
                f"intents/{side}: {rep['entities']} described by {cfg.intents.model}, parse success "
                f"{100 * rep['parse_success_rate_first']:.0f}% first try, {100 * rep['parse_success_rate_final']:.0f}% "
                f"after re-asks, {rep['fallback']} fallbacks"
            )
        print("\n".join(sample_intents(cfg)))


if __name__ == "__main__":
    sys.exit(main())
