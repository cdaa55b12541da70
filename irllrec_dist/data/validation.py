"""Raw input -> canonical dataset, with every check of design.md §4.

Errors name the file, the row (or id) and what was expected. Conditions that
are legitimate in real data (cold users in val/test, entities without text)
are counted in the report instead; nothing is dropped without being counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from irllrec_dist.data.arrays import sorted_unique
from irllrec_dist.data.readers import SPLITS, InputError, RawDataset, RawText

EDGE_SCHEMA = pa.schema([("user", pa.int64()), ("item", pa.int64())])


def entity_schema(id_name: str) -> pa.Schema:
    return pa.schema([(id_name, pa.int64()), ("raw_id", pa.string()), ("text", pa.string())])


@dataclass
class Canonical:
    tables: dict[str, pa.Table]  # users, items, train, val, test
    report: dict


def _id_kind(arrays: list[np.ndarray]) -> str:
    kinds = {"str" if a.dtype == object else "int" for a in arrays if a.size}
    return "str" if "str" in kinds else "int"


class _IdMap:
    """Raw ids -> dense [0, n). Integer ids keep numeric order (0..n-1 maps to itself)."""

    def __init__(self, arrays: list[np.ndarray], declared_n: int | None, side: str,
                 places: list):
        self.side = side
        self.kind = _id_kind(arrays)
        if declared_n is not None:
            for arr, place in zip(arrays, places):
                bad = np.flatnonzero((arr < 0) | (arr >= declared_n)) if arr.size else []
                if len(bad):
                    raise InputError(f"{place.where(bad[0])}: {side} id {arr[bad[0]]} out of range; "
                                     f"expected 0 <= id < {declared_n}")
            self.uniques = np.arange(declared_n, dtype=np.int64)
            self.identity = True
        else:
            norm = [self._norm(a) for a in arrays]
            self.uniques = sorted_unique(np.concatenate(norm)) if norm else np.array([], dtype=np.int64)
            self.identity = False

    def _norm(self, a: np.ndarray) -> np.ndarray:
        return a.astype(str).astype(object) if self.kind == "str" and a.dtype != object else a

    def __len__(self) -> int:
        return len(self.uniques)

    def dense(self, a: np.ndarray) -> np.ndarray:
        if self.identity:
            return a.astype(np.int64)
        norm = self._norm(a)
        if self.kind == "str":
            return np.searchsorted(self.uniques.astype(str), norm.astype(str)).astype(np.int64)
        return np.searchsorted(self.uniques, norm).astype(np.int64)

    def raw_strings(self) -> list[str]:
        return [str(x) for x in self.uniques]


def _first_duplicate(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (first, repeat) of every repeated key, in original row order."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    rep = np.flatnonzero(sk[1:] == sk[:-1]) + 1
    if rep.size == 0:
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    # For each repeat, the first occurrence is the start of its run of equal keys.
    run_start = np.maximum.accumulate(np.where(np.r_[True, sk[1:] != sk[:-1]], np.arange(len(sk)), 0))
    return order[run_start[rep]], order[rep]


def _text_column(text: RawText | None, idmap: _IdMap, side: str, report: dict) -> list[str | None]:
    out: list[str | None] = [None] * len(idmap)
    if text is None:
        report[f"{side}_with_text"] = 0
        return out
    dense = idmap.dense(text.ids)
    first, rep = _first_duplicate(dense)
    if rep.size:
        raise InputError(f"{text.where(rep[0])}: {side} id {text.ids[rep[0]]} already has text at "
                         f"{text.where(first[0])}; expected one text record per {side}")
    missing_values = 0
    for idx, (d, t) in enumerate(zip(dense, text.texts)):
        if t is None:
            missing_values += 1
            continue
        if not t.strip():
            raise InputError(f"{text.where(idx)}: {side} id {text.ids[idx]} has empty text; "
                             f"expected non-empty text (omit the record if there is none)")
        out[d] = t
    report[f"{side}_with_text"] = sum(t is not None for t in out)
    report[f"{side}_text_null_records"] = missing_values
    return out


def build_canonical(raw: RawDataset, on_duplicate: str = "error") -> Canonical:
    report: dict = {"splits": {}}
    user_arrays = [raw.splits[s].users for s in SPLITS] + ([raw.user_text.ids] if raw.user_text else [])
    item_arrays = [raw.splits[s].items for s in SPLITS] + ([raw.item_text.ids] if raw.item_text else [])
    places_u = [raw.splits[s] for s in SPLITS] + ([raw.user_text] if raw.user_text else [])
    places_i = [raw.splits[s] for s in SPLITS] + ([raw.item_text] if raw.item_text else [])
    umap = _IdMap(user_arrays, raw.n_users, "user", places_u)
    imap = _IdMap(item_arrays, raw.n_items, "item", places_i)
    n_users, n_items = len(umap), len(imap)

    keys, edges = {}, {}
    for split in SPLITS:
        part = raw.splits[split]
        u, i = umap.dense(part.users), imap.dense(part.items)
        k = u * n_items + i
        first, rep = _first_duplicate(k)
        if rep.size:
            if on_duplicate == "error":
                raise InputError(
                    f"{part.where(rep[0])}: duplicate edge (user {part.users[rep[0]]}, item "
                    f"{part.items[rep[0]]}), first seen at {part.where(first[0])}; expected each "
                    f"interaction once per split ({rep.size} repeats in all; set "
                    f"ingest.on_duplicate=dedupe to drop and count them)")
            keep = np.ones(len(k), dtype=bool)
            keep[rep] = False
            u, i, k = u[keep], i[keep], k[keep]
        report["splits"][split] = {"file": part.file, "rows": int(len(part.users)),
                                   "duplicates_dropped": int(rep.size), "edges": int(len(k))}
        order = np.argsort(k, kind="stable")
        keys[split], edges[split] = k[order], (u[order], i[order])

    for a_idx, a in enumerate(SPLITS):
        for b in SPLITS[a_idx + 1:]:
            common, ia, ib = np.intersect1d(keys[a], keys[b], return_indices=True)
            if common.size:
                ua, ib_ = edges[a][0][ia[0]], edges[a][1][ia[0]]
                raise InputError(
                    f"{raw.splits[a].file} and {raw.splits[b].file}: edge (user "
                    f"{umap.uniques[ua]}, item {imap.uniques[ib_]}) is in both '{a}' and '{b}' "
                    f"({common.size} shared edges in all); expected disjoint splits")

    if len(keys["train"]) == 0:
        raise InputError(f"{raw.splits['train'].file}: no training edges; expected at least one")

    train_users = np.zeros(n_users, dtype=bool)
    train_users[edges["train"][0]] = True
    train_items = np.zeros(n_items, dtype=bool)
    train_items[edges["train"][1]] = True
    for split in ("val", "test"):
        u, i = edges[split]
        cold_u = sorted_unique(u[~train_users[u]])
        cold_i = sorted_unique(i[~train_items[i]])
        report["splits"][split].update({
            "users": int(len(sorted_unique(u))),
            "users_without_train": int(cold_u.size),
            "users_without_train_sample": [str(umap.uniques[x]) for x in cold_u[:5]],
            "items_without_train": int(cold_i.size),
            "items_without_train_sample": [str(imap.uniques[x]) for x in cold_i[:5]],
        })
    report["n_users"], report["n_items"] = n_users, n_items
    report["users_without_any_edge"] = int(n_users - len(sorted_unique(np.concatenate([edges[s][0] for s in SPLITS]))))
    report["items_without_any_edge"] = int(n_items - len(sorted_unique(np.concatenate([edges[s][1] for s in SPLITS]))))
    report["users_without_train"] = int((~train_users).sum())
    report["items_without_train"] = int((~train_items).sum())

    item_texts = _text_column(raw.item_text, imap, "item", report)
    user_texts = _text_column(raw.user_text, umap, "user", report)

    tables = {
        "users": pa.table([pa.array(np.arange(n_users, dtype=np.int64)), pa.array(umap.raw_strings()),
                           pa.array(user_texts, pa.string())], schema=entity_schema("user_id")),
        "items": pa.table([pa.array(np.arange(n_items, dtype=np.int64)), pa.array(imap.raw_strings()),
                           pa.array(item_texts, pa.string())], schema=entity_schema("item_id")),
    }
    for split in SPLITS:
        u, i = edges[split]
        tables[split] = pa.table([pa.array(u), pa.array(i)], schema=EDGE_SCHEMA)
    return Canonical(tables, report)


def check_vectors(ids: np.ndarray, vectors: np.ndarray, dim: int, source: str) -> None:
    """Embedding rows must be finite and of the expected width (embed/train stages)."""
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise InputError(f"{source}: vectors have shape {vectors.shape}; expected (n, {dim})")
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise InputError(f"{source}: id {ids[bad[0]]} has a NaN/Inf vector ({bad.size} such rows); "
                         f"expected finite values")
