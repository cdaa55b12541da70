"""The canonical dataset on a run root: ``<root>/dataset/{users,items,train,val,test}``.

Each table is a manifest-committed output; ``_report.json`` (ingest's counts)
is written after all five, and the dataset counts as present only when every
table is committed with the same config hash.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from irllrec_dist import storage

TABLES = ("users", "items", "train", "val", "test")


def dataset_uri(run_root: str) -> str:
    return storage.join(run_root, "dataset")


@dataclass
class Dataset:
    n_users: int
    n_items: int
    train: np.ndarray  # (n, 2) int64 user, item
    val: np.ndarray
    test: np.ndarray
    user_raw: list[str]
    item_raw: list[str]
    user_text: list[str | None]
    item_text: list[str | None]

    def matrix(self, split: str) -> sp.csr_matrix:
        e = getattr(self, split)
        return sp.csr_matrix((np.ones(len(e), dtype=np.float32), (e[:, 0], e[:, 1])),
                             shape=(self.n_users, self.n_items))


def is_committed(run_root: str, chash: str | None = None) -> bool:
    base = dataset_uri(run_root)
    hashes = set()
    for t in TABLES:
        m = storage.read_manifest(storage.join(base, t))
        if m is None:
            return False
        hashes.add(m["config_hash"])
    return len(hashes) == 1 and (chash is None or hashes == {chash})


def load(run_root: str) -> Dataset:
    base = dataset_uri(run_root)
    tables = {t: storage.read_table(storage.join(base, t)) for t in TABLES}
    hashes = {storage.read_manifest(storage.join(base, t))["config_hash"] for t in TABLES}
    if len(hashes) != 1:
        raise storage.CorruptOutput(f"{base}: tables come from different ingests (config hashes {hashes})")

    def edges(name: str) -> np.ndarray:
        t = tables[name]
        return np.stack([t.column("user").to_numpy(), t.column("item").to_numpy()], axis=1).astype(np.int64)

    users, items = tables["users"], tables["items"]
    return Dataset(
        n_users=users.num_rows, n_items=items.num_rows,
        train=edges("train"), val=edges("val"), test=edges("test"),
        user_raw=users.column("raw_id").to_pylist(), item_raw=items.column("raw_id").to_pylist(),
        user_text=users.column("text").to_pylist(), item_text=items.column("text").to_pylist(),
    )
