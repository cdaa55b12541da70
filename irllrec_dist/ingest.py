"""Stage 1: raw interactions and text -> canonical Parquet dataset on the run root.

    python -m irllrec_dist.ingest --config configs/amazon.yaml run_root=s3://bucket/run

Formats (``ingest.format``): ``rlmrec-pickle`` (trn/val/tst_mat.pkl, loaded
through an allow-listed unpickler), ``csv-jsonl`` (user,item CSVs + JSON-Lines
item text), ``parquet`` (train/val/test.parquet + optional items/users.parquet
with a ``text`` column). A rerun with the same config and input is skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from irllrec_dist import storage
from irllrec_dist.config import Config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data.cold_start import hold_out_cold
from irllrec_dist.data.readers import READERS, SPLITS, InputError
from irllrec_dist.data.validation import build_canonical

log = logging.getLogger("irllrec_dist.ingest")


def _input_fingerprint(source: str) -> list:
    """Names, sizes and mtimes of the raw files, so a changed input is re-ingested."""
    fs, path = storage.filesystem(source)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError as e:
        raise InputError(f"{source}: input folder not found") from e
    return sorted(
        (e["name"].rsplit("/", 1)[-1], e.get("size"), str(e.get("mtime") or e.get("LastModified"))) for e in entries
    )


def run(cfg: Config, force: bool = False) -> dict:
    ic = cfg.ingest
    if not ic.source:
        raise InputError("ingest.source is empty; expected the folder or URI holding the raw files")
    # The cold-start keys join the hash only when set, so datasets ingested before they existed stay valid.
    cold = bool(ic.cold_users or ic.cold_items)
    keys = {k: v for k, v in vars(ic).items() if k != "rows_per_shard" and not (k.startswith("cold_") and not cold)}
    chash = storage.config_hash({"ingest": keys, "input": _input_fingerprint(ic.source)})
    out = ds.dataset_uri(cfg.run_root)
    if not force and ds.is_committed(cfg.run_root, chash):
        log.info("dataset at %s is up to date (config hash %s); skipping", out, chash)
        return ds.report(cfg.run_root)

    t0 = time.time()
    raw = READERS[ic.format](ic.source)
    canon = build_canonical(raw, ic.on_duplicate)
    tables, report = canon.tables, dict(canon.report)
    if cold:
        tables, report["cold"] = hold_out_cold(tables, ic.cold_users, ic.cold_items, ic.cold_seed)
        for s in SPLITS:  # what is left for training and the warm evaluation
            report["splits"][s]["edges_after_cold_start"] = int(tables[s].num_rows)
    report.update(config_hash=chash, seconds=round(time.time() - t0, 2))
    # One commit for every table and the report: a kill anywhere before it leaves the
    # previous dataset (or none); a cold split of an earlier ingest is simply not named.
    writer = storage.GroupWriter(out, chash, rows_per_shard=ic.rows_per_shard)
    try:
        for name in tables:
            writer.write(name, tables[name])
        writer.commit(meta={"stage": "ingest", "format": ic.format, "source": ic.source, "report": report})
    except BaseException:
        writer.abort()
        raise
    log.info(
        "ingested %d users, %d items, %s edges in %.1fs -> %s",
        report["n_users"],
        report["n_items"],
        {s: v.get("edges_after_cold_start", v["edges"]) for s, v in report["splits"].items()},
        report["seconds"],
        out,
    )
    for side in ("users", "items"):
        if side in report.get("cold", {}):
            rep = report["cold"][side]
            log.info(
                "held out %d cold-start %s with %d edges (%s)", rep["count"], side, rep["edges"], rep["edges_from"]
            )
    return report


def main(argv: list[str] | None = None) -> int:
    from irllrec_dist.cli import config_main

    def add_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--force", action="store_true", help="re-ingest even if up to date")

    return config_main("ingest", __doc__, lambda cfg, args: run(cfg, force=args.force), argv, add_args)


if __name__ == "__main__":
    sys.exit(main())
