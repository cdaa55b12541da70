"""Stage: full-ranking evaluation of a trained run, and top-K export.

    python -m irllrec_dist.evaluate --config configs/amazon.yaml [split=test]

Reads ``runs/<run_name>/checkpoints/best.pt``, reports Recall@K / NDCG@K on the
split, and writes the top-K recommendations of every user as a
manifest-committed Parquet output ``runs/<run_name>/recommendations``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch

from irllrec_dist import storage
from irllrec_dist.config import Config, add_config_args, load_config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data.dataset import COLD_TABLES
from irllrec_dist.graph.adjacency import build_adjacency
from irllrec_dist.metrics import evaluate_ranking, evaluate_ranking_sharded, top_k
from irllrec_dist.model.dual_tower import build_model, cold_vectors, fused_item_vectors

log = logging.getLogger("irllrec_dist.evaluate")


def run_uri(cfg: Config, *parts: str) -> str:
    return storage.join(cfg.run_root, "runs", cfg.train.run_name, *parts)


def exclusion(data: ds.Dataset, split: str, mask_val_in_test: bool) -> sp.csr_matrix:
    """Items ranked out for a split: training items, plus validation items at test when asked."""
    excl = data.matrix("train")
    if split == "test" and mask_val_in_test:
        excl = (excl + data.matrix("val")).tocsr()
    return excl


def split_metrics(cfg: Config, data: ds.Dataset, user_emb: torch.Tensor, item_emb: torch.Tensor,
                  split: str, users: np.ndarray | None = None, rank: int = 0, world: int = 1) -> dict:
    """Full-ranking metrics of a split; with world > 1 (inside a process group) every rank
    ranks a shard of the users and all ranks get the single-process result."""
    args = (user_emb, item_emb, data.matrix(split), exclusion(data, split, cfg.eval.mask_val_in_test),
            tuple(cfg.eval.ks), cfg.eval.max_scores_per_batch)
    if world > 1:
        return evaluate_ranking_sharded(*args, rank=rank, world=world, users=users)
    return evaluate_ranking(*args, users)


def degree_buckets(cfg: Config, data: ds.Dataset) -> dict[str, np.ndarray]:
    """Users grouped by training degree: (<= b0), (b0, b1], ..., (> b_last)."""
    deg = np.bincount(data.train[:, 0], minlength=data.n_users)
    edges = [0, *cfg.eval.degree_buckets, int(deg.max()) + 1]
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        name = f"{lo + 1}-{hi}" if hi <= deg.max() else f">{lo}"
        out[name] = np.flatnonzero((deg > lo) & (deg <= hi))
    return out


def by_degree(cfg: Config, data: ds.Dataset, user_emb: torch.Tensor, item_emb: torch.Tensor,
              split: str) -> dict[str, dict]:
    return {name: split_metrics(cfg, data, user_emb, item_emb, split, users)
            for name, users in degree_buckets(cfg, data).items()}


def scoring_vectors(cfg: Config, model, mats, text) -> tuple[torch.Tensor, torch.Tensor]:
    """(user vectors, item vectors) that scores use: the interaction tower's h, items fused
    with their text direction when eval.fuse_text > 0."""
    with torch.no_grad():
        u, i = model(*mats)
        if cfg.eval.fuse_text:
            i = fused_item_vectors(i, model.text_directions(text, "item"), cfg.eval.fuse_text)
    return u, i


def warm_nodes(data: ds.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Users / items with at least one training edge."""
    return (torch.from_numpy(np.bincount(data.train[:, 0], minlength=data.n_users) > 0),
            torch.from_numpy(np.bincount(data.train[:, 1], minlength=data.n_items) > 0))


@dataclass
class Scorer:
    """What a trained run scores with: warm users and items by ``user`` / ``item``; users and
    items without a training edge by ``cold_user`` / ``cold_item`` -- their text direction
    through the trained profile tower (loss.prf > 0), else their ID vectors (all an ID model has)."""

    user: torch.Tensor
    item: torch.Tensor
    cold_user: torch.Tensor
    cold_item: torch.Tensor
    warm_item: torch.Tensor  # bool: the item has a training edge

    def catalogue(self) -> torch.Tensor:
        """Every item as a cold user sees the catalogue: warm items by ``item``, the others by ``cold_item``."""
        return torch.where(self.warm_item[:, None], self.item, self.cold_item)


def load_scorer(cfg: Config, data: ds.Dataset) -> tuple[Scorer, dict]:
    """The best checkpoint's scorer, and the checkpoint."""
    blob = storage.read_bytes(run_uri(cfg, "checkpoints", "best.pt"))
    ckpt = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    model = build_model(cfg, data.n_users, data.n_items, ckpt.get("text_dim"))
    model.load_state_dict(ckpt["model"])
    adj = build_adjacency(data.train, data.n_users, data.n_items)
    text = None
    if ckpt.get("text_dim"):
        from irllrec_dist.embed import load_text_inputs

        text = load_text_inputs(cfg.run_root, data.n_users, data.n_items)
    u, i = scoring_vectors(cfg, model, adj.matrices(), text)
    cold_u, cold_i = u, i
    warm_u, warm_i = warm_nodes(data)
    if text is not None and cfg.loss.prf and (len(data.cold_users) or len(data.cold_items)):
        with torch.no_grad():
            cold_u = cold_vectors(u, model.text_directions(text, "user"), warm_u)
            cold_i = cold_vectors(i, model.text_directions(text, "item"), warm_i)
    return Scorer(u, i, cold_u, cold_i, warm_i), ckpt


def cold_metrics(cfg: Config, data: ds.Dataset, cold_users: tuple[torch.Tensor, torch.Tensor] | None,
                 cold_items: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, dict]:
    """Cold start, for the cold splits the dataset has. ``cold_users`` = (user vectors, item
    vectors): the cold users rank the whole catalogue. ``cold_items`` = (user vectors, item
    vectors): every user with an edge to a held-out item ranks only the held-out items.
    Nothing is excluded: none of these edges or entities was seen in training."""
    ks, max_scores = tuple(cfg.eval.ks), cfg.eval.max_scores_per_batch
    out = {}
    if len(data.cold_users) and cold_users is not None:
        none = sp.csr_matrix((data.n_users, data.n_items), dtype=np.float32)
        out["cold_users"] = evaluate_ranking(*cold_users, data.matrix("cold_users"), none, ks, max_scores)
    if len(data.cold_items) and cold_items is not None:
        items = np.unique(data.cold_items[:, 1])
        col = np.full(data.n_items, -1, dtype=np.int64)
        col[items] = np.arange(len(items))
        e = data.cold_items
        truth = sp.csr_matrix((np.ones(len(e), dtype=np.float32), (e[:, 0], col[e[:, 1]])),
                              shape=(data.n_users, len(items)))
        none = sp.csr_matrix((data.n_users, len(items)), dtype=np.float32)
        user_vecs, item_vecs = cold_items
        out["cold_items"] = dict(evaluate_ranking(user_vecs, item_vecs[torch.from_numpy(items)], truth, none,
                                                  ks, max_scores), items=int(len(items)))
    return out


def export_top_k(cfg: Config, data: ds.Dataset, user_emb: torch.Tensor, item_emb: torch.Tensor) -> str:
    users = np.arange(data.n_users)
    items, scores = top_k(user_emb, item_emb, users, data.matrix("train"), cfg.eval.export_top_k,
                          cfg.eval.max_scores_per_batch)
    item_raw = np.asarray(data.item_raw, dtype=object)
    k = items.shape[1]
    table = pa.table({
        "user_id": pa.array(users, pa.int64()),
        "user": pa.array(data.user_raw, pa.string()),
        "item_ids": pa.FixedSizeListArray.from_arrays(pa.array(items.reshape(-1), pa.int64()), k),
        "items": pa.array(item_raw[items].tolist(), pa.list_(pa.string())),
        "scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1), pa.float32()), k),
    })
    uri = run_uri(cfg, "recommendations")
    storage.write_table(uri, table, storage.config_hash(cfg.to_dict()), meta={"stage": "evaluate", "k": k})
    return uri


def run(cfg: Config, split: str = "test", export: bool = True) -> dict:
    data = ds.load(cfg.run_root)
    scorer, ckpt = load_scorer(cfg, data)
    u, i = scorer.user, scorer.item
    result = split_metrics(cfg, data, u, i, split)
    result = {"split": split, "best_epoch": ckpt.get("epoch"), **result,
              "by_degree": by_degree(cfg, data, u, i, split)}
    result.update(cold_metrics(cfg, data, (scorer.cold_user, scorer.catalogue()), (u, scorer.cold_item)))
    if export:
        result["recommendations"] = export_top_k(cfg, data, u, i)
    storage.write_json(run_uri(cfg, f"eval_{split}.json"), result)
    return result


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
        from irllrec_dist.embed import load_text_inputs

        text = load_text_inputs(cfg.run_root, data.n_users, data.n_items)
        item = text.item_profile.clone()
        item[~text.item_has] = 0.0
        pair = (text.user_profile, item)
        rows["text_only"] = (pair, pair, pair)
    out = {}
    for name, ((u, i), cold_u, cold_i) in rows.items():
        summary = {"run_name": name, "seed": None, "best_epoch": None,
                   "val": {k: v for k, v in split_metrics(cfg, data, u, i, "val").items() if "@" in k}}
        test = split_metrics(cfg, data, u, i, "test")
        summary["test"] = {k: v for k, v in test.items() if "@" in k or k == "users"}
        summary["test_by_degree"] = by_degree(cfg, data, u, i, "test")
        summary.update(cold_metrics(cfg, data, cold_u, cold_i))
        storage.write_json(storage.join(cfg.run_root, "runs", name, "metrics.json"), summary)
        out[name] = summary
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--reference-rows", action="store_true",
                        help="score popularity and text-alone baselines instead of a trained run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(args.config, args.overrides)
    if args.reference_rows:
        out = reference_rows(cfg)
        print(json.dumps({k: {s: v[s] for s in ("test", *COLD_TABLES) if s in v} for k, v in out.items()}, indent=1))
        return 0
    print(json.dumps(run(cfg, args.split, not args.no_export), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
