"""Where every stage's output lives on a run root, and how a later stage reads it.

Stages exchange data only through storage (Parquet shards committed by a manifest, see
storage.py); this module is the one place that names those locations and turns them back into
what the next stage uses, so that no stage imports another:

    <run_root>/dataset/{users,items,train,val,test,...}   ingest     (data/dataset.py reads it)
    <run_root>/intents/{items,users}                       intents    side_uri, read_intents, read_report
    <run_root>/embeddings/{items,users}                    embed      embeddings_uri, load_text_inputs
    <run_root>/runs/<run_name>/...                         train      run_uri (checkpoints, metrics.json,
                                                           evaluate   tensorboard, recommendations, ...)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from irllrec_dist import storage
from irllrec_dist.config import Config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data.readers import InputError
from irllrec_dist.data.validation import check_vectors
from irllrec_dist.model.dual_tower import TextInputs

INTENT_SIDES = ("items", "users")


def run_uri(cfg: Config, *parts: str) -> str:
    """A file or folder of the run ``train.run_name`` under the run root."""
    return storage.join(cfg.run_root, "runs", cfg.train.run_name, *parts)


# ----------------------------------------------------------------------------------------------
# intents (written by intents.py)


def side_uri(run_root: str, side: str) -> str:
    return storage.join(run_root, "intents", side)


def chunk_uri(run_root: str, side: str, k: int) -> str:
    return storage.join(side_uri(run_root, side), f"chunk-{k:05d}")


def read_intents(run_root: str, side: str) -> pa.Table:
    """The committed output of one side (raises storage.OutputMissing until every chunk is done)."""
    return storage.read_table(side_uri(run_root, side))


def read_report(run_root: str) -> dict:
    """The committed sides' summaries (what ``intents.run`` returned), read from their manifests."""
    sides = {}
    for side in INTENT_SIDES:
        m = storage.read_manifest(side_uri(run_root, side))
        if m is not None:
            sides[side] = m["meta"]
    return {"sides": sides}


# ----------------------------------------------------------------------------------------------
# embeddings (written by embed.py)


def embeddings_uri(run_root: str, side: str) -> str:
    return storage.join(run_root, "embeddings", side)


def load_text_inputs(run_root: str, n_users: int, n_items: int) -> TextInputs:
    """Dense per-node text vectors for the trainer, validated (finite, one width, ids in range)."""
    out = {}
    dim = None
    for side, n in (("users", n_users), ("items", n_items)):
        uri = embeddings_uri(run_root, side)
        built_from = ((storage.read_manifest(uri) or {}).get("meta") or {}).get("dataset")
        if built_from is not None and built_from != ds.ingest_hash(run_root):
            # e.g. re-ingested with other cold-start entities: a user's mean could hold held-out items
            raise InputError(
                f"{uri}: built from another ingest of {ds.dataset_uri(run_root)} "
                f"({built_from}); run `python -m irllrec_dist.embed` again"
            )
        table = storage.read_table(uri)
        ids = table.column("id").to_numpy()
        bad = np.flatnonzero((ids < 0) | (ids >= n))
        if bad.size:
            raise InputError(f"{uri}: id {ids[bad[0]]} out of range; expected 0 <= id < {n}")
        prof = table.column("profile").combine_chunks()
        width = prof.type.list_size
        dim = dim or width
        arrays = {}
        for col in ("profile", "intent"):
            flat = table.column(col).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            v = flat.reshape(len(ids), width)
            check_vectors(ids, v, dim, f"{uri} column {col}")
            dense = np.zeros((n, dim), dtype=np.float32)
            dense[ids] = v
            arrays[col] = torch.from_numpy(dense)
        has = torch.zeros(n, dtype=torch.bool)
        has[torch.from_numpy(ids.copy())] = True
        out[side] = (arrays["profile"], arrays["intent"], has)
    return TextInputs(
        out["users"][0], out["users"][1], out["items"][0], out["items"][1], out["users"][2], out["items"][2]
    )


# ----------------------------------------------------------------------------------------------
# what a training run was built from


def input_hashes(cfg: Config) -> dict:
    """The committed config hashes of what training reads (dataset; embeddings with text losses).
    Training records them in its resumable state and in ``best.pt``, so that neither a resumed run
    nor an evaluation goes on over data that changed under the same config."""
    hashes = {"dataset": ds.ingest_hash(cfg.run_root)}
    if cfg.loss.uses_text():
        for side in ("users", "items"):
            hashes[side] = (storage.read_manifest(embeddings_uri(cfg.run_root, side)) or {}).get("config_hash")
    return hashes


def load_text(cfg: Config, data: ds.Dataset) -> TextInputs | None:
    """The run root's text vectors when a text loss is on (None for LightGCN)."""
    if not cfg.loss.uses_text():
        return None
    return load_text_inputs(cfg.run_root, data.n_users, data.n_items)
