"""Readers for the raw input formats. Each returns a ``RawDataset``: edges per
split with their source file and row labels (for error messages), and
optional per-entity text. Nothing is validated beyond "can this be read";
``validation.py`` does the rest so every format gets the same checks.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from irllrec_dist import storage

SPLITS = ("train", "val", "test")


class InputError(ValueError):
    """Bad input: the message names the file, the row or id, and what was expected."""


@dataclass
class RawEdges:
    file: str
    users: np.ndarray  # raw ids (int64 or object/str)
    items: np.ndarray
    row_offset: int  # row label of element 0 (CSV: header is line 1, so 2)
    row_word: str  # "line" or "row"

    def where(self, idx: int) -> str:
        return f"{self.file} {self.row_word} {int(idx) + self.row_offset}"


@dataclass
class RawText:
    file: str
    ids: np.ndarray
    texts: list[str | None]
    labels: np.ndarray  # row label of each record in its file
    row_word: str = "line"

    def where(self, idx: int) -> str:
        return f"{self.file} {self.row_word} {int(self.labels[idx])}"


@dataclass
class RawDataset:
    splits: dict[str, RawEdges]
    item_text: RawText | None = None
    user_text: RawText | None = None
    # Declared id ranges (pickled matrices carry a shape); None = infer from ids.
    n_users: int | None = None
    n_items: int | None = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- pickles

# Exactly the globals that pickled scipy COO/CSR matrices of numpy arrays need.
PICKLE_ALLOW = {
    ("scipy.sparse._coo", "coo_matrix"), ("scipy.sparse.coo", "coo_matrix"),
    ("scipy.sparse._csr", "csr_matrix"), ("scipy.sparse.csr", "csr_matrix"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, source: str):
        super().__init__(f)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_ALLOW:
            raise InputError(f"{self.source}: pickle asks for {module}.{name}, which is not in the "
                             f"allow-list (expected only scipy sparse matrices of numpy arrays)")
        return super().find_class(module, name)


def load_pickled_matrix(uri: str):
    import scipy.sparse as sp

    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as e:
        raise InputError(f"{uri}: file not found") from e
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), uri).load()
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{uri}: not a readable pickle ({type(e).__name__}: {e})") from e
    if not sp.issparse(obj):
        raise InputError(f"{uri}: expected a scipy sparse matrix, got {type(obj).__name__}")
    return obj.tocoo()


def read_rlmrec_pickles(source: str) -> RawDataset:
    names = {"train": "trn_mat.pkl", "val": "val_mat.pkl", "test": "tst_mat.pkl"}
    splits, shape = {}, None
    for split, name in names.items():
        uri = storage.join(source, name)
        m = load_pickled_matrix(uri)
        if shape is None:
            shape = m.shape
        elif m.shape != shape:
            raise InputError(f"{uri}: shape {m.shape} differs from trn_mat.pkl's {shape} "
                             f"(expected every split over the same users x items)")
        bad = np.flatnonzero(m.data != 1.0) if m.data.size else np.array([], dtype=np.int64)
        if bad.size:
            raise InputError(f"{uri}: entry {int(bad[0])} (user {m.row[bad[0]]}, item {m.col[bad[0]]}) "
                             f"has value {m.data[bad[0]]}; expected implicit feedback (1.0)")
        splits[split] = RawEdges(uri, m.row.astype(np.int64), m.col.astype(np.int64), 0, "entry")
    return RawDataset(splits, n_users=shape[0], n_items=shape[1])


# ---------------------------------------------------------------- tables

def _id_column(col: pa.ChunkedArray, where: str, name: str) -> np.ndarray:
    if col.null_count:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{where}: row {first}: empty '{name}'; expected an id")
    if pa.types.is_integer(col.type):
        return col.to_numpy().astype(np.int64)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        vals = np.asarray(col.to_pylist(), dtype=object)
        empty = np.flatnonzero(np.char.str_len(vals.astype(str)) == 0)
        if empty.size:
            raise InputError(f"{where}: row {int(empty[0])}: empty '{name}'; expected an id")
        return vals
    raise InputError(f"{where}: column '{name}' has type {col.type}; expected integer or string ids")


def _require(table: pa.Table, cols: tuple[str, ...], where: str) -> None:
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise InputError(f"{where}: missing column(s) {missing}; expected {list(cols)}, "
                         f"found {table.column_names}")


def _edges_from_table(table: pa.Table, uri: str, row_offset: int, row_word: str) -> RawEdges:
    _require(table, ("user", "item"), uri)
    users = _id_column(table.column("user"), uri, "user")
    items = _id_column(table.column("item"), uri, "item")
    return RawEdges(uri, users, items, row_offset, row_word)


def _read_parquet(uri: str) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except FileNotFoundError as e:
        raise InputError(f"{uri}: file not found") from e
    except Exception as e:
        raise InputError(f"{uri}: unreadable Parquet file ({e})") from e


def _text_from_table(table: pa.Table, uri: str, id_col: str) -> RawText:
    _require(table, (id_col, "text"), uri)
    ids = _id_column(table.column(id_col), uri, id_col)
    return RawText(uri, ids, table.column("text").to_pylist(), np.arange(table.num_rows), "row")


def read_parquet_edges(source: str) -> RawDataset:
    splits = {}
    for split in SPLITS:
        uri = storage.join(source, f"{split}.parquet")
        splits[split] = _edges_from_table(_read_parquet(uri), uri, 0, "row")
    texts = {}
    for side, id_col in (("items", "item"), ("users", "user")):
        uri = storage.join(source, f"{side}.parquet")
        if storage.exists(uri):
            texts[side] = _text_from_table(_read_parquet(uri), uri, id_col)
    return RawDataset(splits, item_text=texts.get("items"), user_text=texts.get("users"))


def _find(source: str, candidates: tuple[str, ...], what: str) -> str:
    for name in candidates:
        uri = storage.join(source, name)
        if storage.exists(uri):
            return uri
    raise InputError(f"{source}: no {what} file; expected one of {list(candidates)}")


CSV_NAMES = {"train": ("train.csv", "trn.csv", "total_trn.csv"),
             "val": ("val.csv", "total_val.csv"),
             "test": ("test.csv", "tst.csv", "total_tst.csv")}


def read_csv_edges(uri: str) -> RawEdges:
    try:
        table = pacsv.read_csv(io.BytesIO(storage.read_bytes(uri)),
                               convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    except pa.ArrowInvalid as e:
        raise InputError(f"{uri}: not a readable CSV edge list ({e})") from e
    _require(table, ("user", "item"), uri)
    for name in ("user", "item"):
        col = table.column(name)
        # An empty or all-blank column is typed null; other non-integer ids are kept as strings.
        target = pa.int64() if pa.types.is_null(col.type) else pa.string()
        if not (pa.types.is_integer(col.type) or pa.types.is_string(col.type)):
            table = table.set_column(table.column_names.index(name), name, col.cast(target))
    # Header is line 1, so data row i is line i + 2.
    return _edges_from_table(table, uri, 2, "line")


def _text_value(value, uri: str, line: int) -> str | None:
    """The text of one JSONL record; a JSON string inside is unwrapped (XRec profiles)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{uri} line {line}: text is {type(value).__name__}; expected a string")
    stripped = value.strip()
    if stripped.startswith("{"):
        try:
            inner = json.loads(stripped)
        except ValueError as e:
            raise InputError(f"{uri} line {line}: text looks like JSON but does not parse ({e})") from e
        parts = [v for v in inner.values() if isinstance(v, str)] if isinstance(inner, dict) else []
        if not parts:
            raise InputError(f"{uri} line {line}: inner JSON has no string field; expected e.g. "
                             f'{{"summarization": "..."}}')
        return " ".join(parts)
    return value


def read_jsonl_text(uri: str, id_keys: tuple[str, ...]) -> RawText:
    ids, texts = [], []
    raw = storage.read_bytes(uri).decode("utf-8", errors="strict").splitlines()
    for n, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise InputError(f"{uri} line {n}: not valid JSON ({e})") from e
        if not isinstance(rec, dict):
            raise InputError(f"{uri} line {n}: expected a JSON object")
        key = next((k for k in id_keys if k in rec), None)
        if key is None:
            raise InputError(f"{uri} line {n}: no id field; expected one of {list(id_keys)}")
        others = [k for k in rec if k != key]
        if len(others) != 1:
            raise InputError(f"{uri} line {n}: expected exactly one text field beside '{key}', "
                             f"found {others}")
        ids.append((rec[key], n))
        texts.append(_text_value(rec[others[0]], uri, n))
    id_vals = [i for i, _ in ids]
    arr = (np.asarray(id_vals, dtype=np.int64) if all(isinstance(i, int) and not isinstance(i, bool)
                                                      for i in id_vals)
           else np.asarray([str(i) for i in id_vals], dtype=object))
    return RawText(uri, arr, texts, np.asarray([n for _, n in ids], dtype=np.int64), "line")


def read_csv_jsonl(source: str) -> RawDataset:
    splits = {s: read_csv_edges(_find(source, CSV_NAMES[s], f"{s} edge list")) for s in SPLITS}
    item_text = user_text = None
    for name in ("item_profile.json", "items.jsonl"):
        uri = storage.join(source, name)
        if storage.exists(uri):
            item_text = read_jsonl_text(uri, ("iid", "item", "item_id"))
            break
    for name in ("user_profile.json", "users.jsonl"):
        uri = storage.join(source, name)
        if storage.exists(uri):
            user_text = read_jsonl_text(uri, ("uid", "user", "user_id"))
            break
    return RawDataset(splits, item_text=item_text, user_text=user_text)


READERS = {"rlmrec-pickle": read_rlmrec_pickles, "csv-jsonl": read_csv_jsonl, "parquet": read_parquet_edges}
