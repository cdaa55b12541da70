"""The canonical dataset on a run root: ``<root>/dataset/{users,items,train,val,test}``.

Each table is a manifest-committed output; ``_report.json`` (ingest's counts)
is written after all five, and the dataset counts as present only when every
table is committed with the same config hash. Optional edge tables
``cold_users`` / ``cold_items`` (ingest.cold_users / cold_items) hold the
held-out cold-start entities' edges; one belongs to the dataset only when its
config hash is the others'.
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
    """The config hash every committed table of the dataset carries (None: no dataset yet)."""
    return (storage.read_manifest(storage.join(dataset_uri(run_root), "items")) or {}).get("config_hash")


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
    cold_users: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    def matrix(self, split: str) -> sp.csr_matrix:
        e = getattr(self, split)
        return sp.csr_matrix((np.ones(len(e), dtype=np.float32), (e[:, 0], e[:, 1])),
                             shape=(self.n_users, self.n_items))


def _expected_cold(manifest: dict) -> list[str]:
    """The cold tables an ingest wrote, as recorded in its required tables' manifests."""
    return list((manifest.get("meta") or {}).get("cold_tables", []))


def is_committed(run_root: str, chash: str | None = None) -> bool:
    """Every required table, and every cold table the ingest recorded, committed with one hash."""
    base = dataset_uri(run_root)
    hashes, manifests = set(), []
    for t in TABLES:
        m = storage.read_manifest(storage.join(base, t))
        if m is None:
            return False
        hashes.add(m["config_hash"])
        manifests.append(m)
    for name in _expected_cold(manifests[0]):
        m = storage.read_manifest(storage.join(base, name))
        if m is None:
            return False
        hashes.add(m["config_hash"])
    return len(hashes) == 1 and (chash is None or hashes == {chash})


def load(run_root: str) -> Dataset:
    base = dataset_uri(run_root)
    tables = {t: storage.read_table(storage.join(base, t)) for t in TABLES}
    manifests = {t: storage.read_manifest(storage.join(base, t)) for t in TABLES}
    hashes = {m["config_hash"] for m in manifests.values()}
    if len(hashes) != 1:
        raise storage.CorruptOutput(f"{base}: tables come from different ingests (config hashes {hashes})")
    for name in _expected_cold(manifests["users"]):
        uri = storage.join(base, name)
        m = storage.read_manifest(uri)
        if m is None or m["config_hash"] not in hashes:
            raise storage.CorruptOutput(f"{uri}: the ingest that wrote {base} held out a {name} split, "
                                        "but it is missing or from another ingest; re-run ingest")
        tables[name] = storage.read_table(uri)

    def edges(name: str) -> np.ndarray:
        t = tables[name]
        return np.stack([t.column("user").to_numpy(), t.column("item").to_numpy()], axis=1).astype(np.int64)

    users, items = tables["users"], tables["items"]
    return Dataset(
        n_users=users.num_rows, n_items=items.num_rows,
        train=edges("train"), val=edges("val"), test=edges("test"),
        user_raw=users.column("raw_id").to_pylist(), item_raw=items.column("raw_id").to_pylist(),
        user_text=users.column("text").to_pylist(), item_text=items.column("text").to_pylist(),
        **{name: edges(name) for name in COLD_TABLES if name in tables},
    )
