"""The canonical dataset on a run root: ``<root>/dataset/{users,items,train,val,test}``.

The tables and ingest's report are committed together by one group manifest
(``dataset/_group.json``, see ``storage.GroupWriter``): a dataset is there
whole or not at all. Optional edge tables ``cold_users`` / ``cold_items``
(ingest.cold_users / cold_items) hold the held-out cold-start entities' edges;
they belong to the dataset exactly when its manifest names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from irllrec_dist import storage

TABLES = ("users", "items", "train", "val", "test")
COLD_TABLES = ("cold_users", "cold_items")


def dataset_uri(run_root: str) -> str:
    return storage.join(run_root, "dataset")


def ingest_hash(run_root: str) -> str | None:
    """The config hash of the committed dataset (None: no dataset yet)."""
    return (storage.read_group(dataset_uri(run_root)) or {}).get("config_hash")


def report(run_root: str) -> dict:
    """Ingest's report, committed with the tables it describes."""
    group = storage.read_group(dataset_uri(run_root))
    if group is None:
        raise storage.OutputMissing(f"{dataset_uri(run_root)}: no committed dataset; run ingest first")
    return group["meta"]["report"]


@dataclass
class Dataset:
    n_users: int
    n_items: int
    train: np.ndarray  # (n, 2) int64 user, item
    val: np.ndarray
    test: np.ndarray | None  # None when loaded without it (load(..., with_test=False))
    user_raw: list[str]
    item_raw: list[str]
    user_text: list[str | None]
    item_text: list[str | None]
    cold_users: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    def matrix(self, split: str) -> sp.csr_matrix:
        e = getattr(self, split)
        return sp.csr_matrix(
            (np.ones(len(e), dtype=np.float32), (e[:, 0], e[:, 1])), shape=(self.n_users, self.n_items)
        )


def is_committed(run_root: str, chash: str | None = None) -> bool:
    """The dataset is committed whole (every table and the report in one manifest, every shard
    there), with this hash if given."""
    try:
        group = storage.read_group(dataset_uri(run_root))
    except storage.CorruptOutput:
        return False  # unreadable: not a dataset to skip over; ingest rewrites it
    return (
        group is not None
        and all(t in group["tables"] for t in TABLES)
        and (chash is None or group["config_hash"] == chash)
        and not storage.missing_shards(dataset_uri(run_root), group)
    )


def load(run_root: str, with_test: bool = True) -> Dataset:
    """The committed dataset, every table verified as it is read. ``with_test=False`` (a search
    judged on validation) leaves the test split unread: ``Dataset.test`` is None."""
    base = dataset_uri(run_root)
    group = storage.read_group(base)
    if group is None:
        raise storage.OutputMissing(
            f"{base}: no {storage.GROUP_MANIFEST} (dataset absent or never committed); run ingest first"
        )
    missing = [t for t in TABLES if t not in group["tables"]]
    if missing:
        raise storage.CorruptOutput(f"{storage.join(base, storage.GROUP_MANIFEST)}: no table(s) {missing}")
    tables = {t: storage.read_table(storage.join(base, t)) for t in group["tables"] if with_test or t != "test"}

    def edges(name: str) -> np.ndarray:
        t = tables[name]
        return np.stack([t.column("user").to_numpy(), t.column("item").to_numpy()], axis=1).astype(np.int64)

    users, items = tables["users"], tables["items"]
    return Dataset(
        n_users=users.num_rows,
        n_items=items.num_rows,
        train=edges("train"),
        val=edges("val"),
        test=edges("test") if with_test else None,
        user_raw=users.column("raw_id").to_pylist(),
        item_raw=items.column("raw_id").to_pylist(),
        user_text=users.column("text").to_pylist(),
        item_text=items.column("text").to_pylist(),
        **{name: edges(name) for name in COLD_TABLES if name in tables},
    )
