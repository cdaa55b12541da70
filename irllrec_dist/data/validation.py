"""Raw input -> canonical dataset, with every check of design.md §4.

Errors name the file, the row (or id) and what was expected. Conditions that
are legitimate in real data (cold users in val/test, entities without text,
text for entities without edges) are counted in the report instead; nothing
is dropped without being counted. The input rules (canonical ids, the dense
order, line numbers, size bounds) are documented in readers.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from irllrec_dist.data.arrays import sorted_unique
from irllrec_dist.data.readers import SPLITS, IdColumn, InputError, RawDataset, RawText, check_declared_range, show

EDGE_SCHEMA = pa.schema([("user", pa.int64()), ("item", pa.int64())])


def entity_schema(id_name: str) -> pa.Schema:
    return pa.schema([(id_name, pa.int64()), ("raw_id", pa.string()), ("text", pa.string())])


@dataclass
class Canonical:
    tables: dict[str, pa.Table]  # users, items, train, val, test
    report: dict


_CANONICAL_DECIMAL = r"^(0|[1-9][0-9]*)$"


class _IdMap:
    """Raw ids -> dense [0, n) (the rule is documented in readers.py).

    A declared range (pickled matrices) maps every id to itself, after the range has been
    checked against the ids present (``check_declared_range``). Otherwise the distinct ids of
    every file of the side are numbered: in numeric order when all of them are canonical
    non-negative decimals (ids 0..n-1 map to themselves; compared as (length, digits), so
    exact beyond int64), else in the order of their UTF-8 bytes."""

    def __init__(
        self, cols: list[IdColumn], declared_n: int | None, side: str, places: list, declared_by: str | None = None
    ):
        self.side = side
        if declared_n is not None:
            if any(c.values is not None for c in cols):
                raise InputError(f"{declared_by}: a declared {side} range cannot be combined with text ids")
            present = sorted_unique(np.concatenate([c.codes for c in cols])) if cols else np.zeros(0, np.int64)
            check_declared_range(declared_n, int(present.size), side, declared_by or places[0].file)
            for col, place in zip(cols, places):
                bad = np.flatnonzero((col.codes < 0) | (col.codes >= declared_n))
                if bad.size:
                    raise InputError(
                        f"{place.where(bad[0])}: {side} id {col.codes[bad[0]]} out of range; "
                        f"expected 0 <= id < {declared_n}"
                    )
            self.n, self.sorted = int(declared_n), None
            return
        values = [c.values for c in cols]
        uniq = pc.unique(pa.concat_arrays(values)) if values else pa.array([], pa.large_string())
        if len(uniq) and pc.all(pc.match_substring_regex(uniq, _CANONICAL_DECIMAL)).as_py():
            keys = pa.table({"len": pc.binary_length(uniq), "id": uniq})
            order = pc.sort_indices(keys, sort_keys=[("len", "ascending"), ("id", "ascending")])
        else:
            order = pc.sort_indices(uniq)
        self.sorted = uniq.take(order)
        self.n = len(uniq)

    def __len__(self) -> int:
        return self.n

    def dense(self, col: IdColumn) -> np.ndarray:
        if self.sorted is None:
            return col.codes.astype(np.int64)
        to_dense = pc.index_in(col.values, value_set=self.sorted).to_numpy(zero_copy_only=False).astype(np.int64)
        return to_dense[col.codes]

    def raw(self, d) -> str:
        return str(int(d)) if self.sorted is None else self.sorted[int(d)].as_py()

    def raw_strings(self) -> pa.Array:
        if self.sorted is None:
            return pa.array(np.arange(self.n, dtype=np.int64)).cast(pa.string())
        return self.sorted.cast(pa.string())


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


def _id_text(raw: str) -> str:
    """An id (already free of control characters, see readers) for a message, cut if long."""
    return raw if len(raw) <= 60 else show(raw)


def _text_column(
    text: RawText | None, idmap: _IdMap, side: str, report: dict, has_edge: np.ndarray
) -> list[str | None]:
    out: list[str | None] = [None] * len(idmap)
    if text is None:
        report[f"{side}_with_text"] = 0
        report[f"{side}s_text_without_edges"] = 0
        return out
    dense = idmap.dense(text.ids)
    first, rep = _first_duplicate(dense)
    if rep.size:
        raise InputError(
            f"{text.where(rep[0])}: {side} id {_id_text(text.ids.raw(rep[0]))} already has text at "
            f"{text.where(first[0])}; expected one text record per {side}"
        )
    # Text for an id no edge file names: a catalogue entry without interactions (kept, counted,
    # sampled with its line). A text file none of whose ids is in the edge lists is keyed
    # differently (e.g. names instead of numbers): that is an error, not a catalogue.
    orphan = np.flatnonzero(~has_edge[dense]) if len(dense) else np.zeros(0, dtype=np.int64)
    if len(dense) and orphan.size == len(dense):
        raise InputError(
            f"{text.file}: none of its {len(dense)} {side} ids occurs in an edge file (first: "
            f"{text.where(0)}, {side} id {show(text.ids.raw(0))}); expected the ids of the edge "
            f"lists, spelled the same (ids are compared as exact strings; a JSON integer 3 is '3')"
        )
    report[f"{side}s_text_without_edges"] = int(orphan.size)
    report[f"{side}s_text_without_edges_sample"] = [f"{text.where(k)}: {show(text.ids.raw(k))}" for k in orphan[:5]]
    missing_values = 0
    for idx, (d, t) in enumerate(zip(dense, text.texts)):
        if t is None:
            missing_values += 1
            continue
        if not t.strip():
            raise InputError(
                f"{text.where(idx)}: {side} id {_id_text(text.ids.raw(idx))} has empty text; "
                f"expected non-empty text (omit the record if there is none)"
            )
        out[d] = t
    report[f"{side}_with_text"] = sum(t is not None for t in out)
    report[f"{side}_text_null_records"] = missing_values
    return out


def build_canonical(raw: RawDataset, on_duplicate: str = "error") -> Canonical:
    report: dict = {"splits": {}}
    user_cols = [raw.splits[s].users for s in SPLITS] + ([raw.user_text.ids] if raw.user_text else [])
    item_cols = [raw.splits[s].items for s in SPLITS] + ([raw.item_text.ids] if raw.item_text else [])
    places_u = [raw.splits[s] for s in SPLITS] + ([raw.user_text] if raw.user_text else [])
    places_i = [raw.splits[s] for s in SPLITS] + ([raw.item_text] if raw.item_text else [])
    declared_by = raw.extra.get("declared_by")
    umap = _IdMap(user_cols, raw.n_users, "user", places_u, declared_by)
    imap = _IdMap(item_cols, raw.n_items, "item", places_i, declared_by)
    n_users, n_items = len(umap), len(imap)

    keys, edges, rows = {}, {}, {}  # rows: each kept edge's row in its file, for messages
    for split in SPLITS:
        part = raw.splits[split]
        u, i = umap.dense(part.users), imap.dense(part.items)
        k = u * n_items + i
        first, rep = _first_duplicate(k)
        if rep.size:
            if on_duplicate == "error":
                raise InputError(
                    f"{part.where(rep[0])}: duplicate edge (user {_id_text(part.users.raw(rep[0]))}, item "
                    f"{_id_text(part.items.raw(rep[0]))}), first seen at {part.where(first[0])}; expected each "
                    f"interaction once per split ({rep.size} repeats in all; set "
                    f"ingest.on_duplicate=dedupe to drop and count them)"
                )
            keep = np.ones(len(k), dtype=bool)
            keep[rep] = False
            u, i, k = u[keep], i[keep], k[keep]
            row = np.flatnonzero(keep)
        else:
            row = np.arange(len(k))
        report["splits"][split] = {
            "file": part.file,
            "rows": int(len(part.users)),
            "duplicates_dropped": int(rep.size),
            "edges": int(len(k)),
        }
        order = np.argsort(k, kind="stable")
        keys[split], edges[split], rows[split] = k[order], (u[order], i[order]), row[order]

    for a_idx, a in enumerate(SPLITS):
        for b in SPLITS[a_idx + 1 :]:
            common, ia, ib = np.intersect1d(keys[a], keys[b], return_indices=True)
            if common.size:
                ua, ib_ = edges[a][0][ia[0]], edges[a][1][ia[0]]
                raise InputError(
                    f"{raw.splits[a].where(rows[a][ia[0]])} and {raw.splits[b].where(rows[b][ib[0]])}: edge (user "
                    f"{_id_text(umap.raw(ua))}, item {_id_text(imap.raw(ib_))}) is in both '{a}' and '{b}' "
                    f"({common.size} shared edges in all); expected disjoint splits"
                )

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
        report["splits"][split].update(
            {
                "users": int(len(sorted_unique(u))),
                "users_without_train": int(cold_u.size),
                "users_without_train_sample": [umap.raw(x) for x in cold_u[:5]],
                "items_without_train": int(cold_i.size),
                "items_without_train_sample": [imap.raw(x) for x in cold_i[:5]],
            }
        )
    user_has_edge = np.zeros(n_users, dtype=bool)
    item_has_edge = np.zeros(n_items, dtype=bool)
    for s in SPLITS:
        user_has_edge[edges[s][0]] = True
        item_has_edge[edges[s][1]] = True
    report["n_users"], report["n_items"] = n_users, n_items
    report["users_without_any_edge"] = int((~user_has_edge).sum())
    report["items_without_any_edge"] = int((~item_has_edge).sum())
    report["users_without_train"] = int((~train_users).sum())
    report["items_without_train"] = int((~train_items).sum())

    item_texts = _text_column(raw.item_text, imap, "item", report, item_has_edge)
    user_texts = _text_column(raw.user_text, umap, "user", report, user_has_edge)

    tables = {
        "users": pa.table(
            [pa.array(np.arange(n_users, dtype=np.int64)), umap.raw_strings(), pa.array(user_texts, pa.string())],
            schema=entity_schema("user_id"),
        ),
        "items": pa.table(
            [pa.array(np.arange(n_items, dtype=np.int64)), imap.raw_strings(), pa.array(item_texts, pa.string())],
            schema=entity_schema("item_id"),
        ),
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
        raise InputError(
            f"{source}: id {ids[bad[0]]} has a NaN/Inf vector ({bad.size} such rows); expected finite values"
        )
