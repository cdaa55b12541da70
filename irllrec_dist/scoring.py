"""Full-ranking scoring of a trained run: what validation during training, the final test and the
``evaluate`` stage share.

The vectors a run scores with (``Scorer``: warm users and items from the interaction tower, users
and items without a training edge from the text tower), the metrics of a split overall, by user
degree and for cold start, the checks a ``best.pt`` must pass before it is scored, and the top-K
export.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch

from irllrec_dist import storage
from irllrec_dist.artifacts import input_hashes, load_text_inputs, run_uri
from irllrec_dist.cli import CheckpointError
from irllrec_dist.config import RUNTIME_KEYS, Config, config_differences
from irllrec_dist.data import dataset as ds
from irllrec_dist.graph.adjacency import build_adjacency
from irllrec_dist.metrics import evaluate_ranking, evaluate_ranking_sharded, top_k
from irllrec_dist.model.dual_tower import build_model, cold_vectors, fused_item_vectors


def exclusion(data: ds.Dataset, split: str, mask_val_in_test: bool) -> sp.csr_matrix:
    """Items ranked out for a split: training items, plus validation items at test when asked."""
    excl = data.matrix("train")
    if split == "test" and mask_val_in_test:
        excl = (excl + data.matrix("val")).tocsr()
    return excl


def split_metrics(
    cfg: Config,
    data: ds.Dataset,
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    split: str,
    users: np.ndarray | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict:
    """Full-ranking metrics of a split; with world > 1 (inside a process group) every rank
    ranks a shard of the users and all ranks get the single-process result."""
    args = (
        user_emb,
        item_emb,
        data.matrix(split),
        exclusion(data, split, cfg.eval.mask_val_in_test),
        tuple(cfg.eval.ks),
        cfg.eval.max_scores_per_batch,
    )
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


def by_degree(
    cfg: Config, data: ds.Dataset, user_emb: torch.Tensor, item_emb: torch.Tensor, split: str
) -> dict[str, dict]:
    return {
        name: split_metrics(cfg, data, user_emb, item_emb, split, users)
        for name, users in degree_buckets(cfg, data).items()
    }


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
    return (
        torch.from_numpy(np.bincount(data.train[:, 0], minlength=data.n_users) > 0),
        torch.from_numpy(np.bincount(data.train[:, 1], minlength=data.n_items) > 0),
    )


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
    warm_user: torch.Tensor | None = None  # bool: the user has a training edge (None: every user)

    def catalogue(self) -> torch.Tensor:
        """Every item as a cold user sees the catalogue: warm items by ``item``, the others by ``cold_item``."""
        return torch.where(self.warm_item[:, None], self.item, self.cold_item)

    def cold_users(self) -> np.ndarray:
        """The users without a training edge, scored by ``cold_user`` against ``catalogue()``."""
        if self.warm_user is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(~self.warm_user.cpu().numpy())


# What may differ between the config a checkpoint was trained with and the one evaluating it:
# evaluation settings; how, where and how long training ran (as for resuming, train.py
# StorageCheckpoints); the label model.name; and the upstream stages' settings, whose effect is
# compared through the dataset / embedding hashes instead. Every other key (model shape, loss
# terms, seed, lr, sampling, ...) decides what was trained and must be equal.
FREE_SECTIONS = ("eval", "ingest", "synthetic", "intents", "embed", "tune")
FREE_KEYS = RUNTIME_KEYS | {
    "run_root",
    "model.name",
    "train.workers",
    "train.cpus_per_worker",
    "train.max_failures",
    "train.resume",
}
INPUT_NAMES = {
    "dataset": "dataset config hash",
    "users": "user embeddings config hash",
    "items": "item embeddings config hash",
}


def free_at_evaluation(key: str) -> bool:
    return key in FREE_KEYS or key.split(".", 1)[0] in FREE_SECTIONS


def nonfinite_tensor(state: dict) -> str | None:
    """'name (count of count values: nan/inf)' for the first floating tensor with a NaN or Inf, else None."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                return f"{name} ({int((~finite).sum())} of {t.numel()} values NaN/Inf)"
    return None


def read_checkpoint(uri: str) -> dict:
    """``best.pt`` as written by train, or a one-line CheckpointError naming the file."""
    if not storage.exists(uri):
        raise CheckpointError(f"{uri}: no checkpoint there (train this run first: same run_root and train.run_name)")
    blob = storage.read_bytes(uri)
    try:
        ckpt = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt or foreign: torch raises many kinds
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{uri}: not a readable checkpoint ({len(blob)} bytes; truncated or corrupt: {type(e).__name__}: {first})"
        ) from e
    if not (
        isinstance(ckpt, dict)
        and isinstance(ckpt.get("model"), dict)
        and isinstance(ckpt.get("config"), dict)
        and all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())
    ):
        raise CheckpointError(
            f"{uri}: not a checkpoint written by train (expected a dict with 'model' tensors and 'config')"
        )
    return ckpt


def checkpoint_mismatches(cfg: Config, data: ds.Dataset, ckpt: dict) -> list[str]:
    """What differs between a checkpoint and the current config and run root, one phrase each."""
    differ = config_differences(ckpt["config"], cfg.to_dict(), free_at_evaluation)
    out = [f"was trained with {k}={_show(then)}, config has {_show(now)}" for k, then, now in differ[:6]]
    if len(differ) > 6:
        out.append(f"and {len(differ) - 6} more config keys differ ({', '.join(k for k, _, _ in differ[6:])})")
    n_users, n_items = ckpt.get("n_users"), ckpt.get("n_items")
    if n_users is None:  # written before checkpoints recorded them: the tables' shapes say
        n_users, n_items = (ckpt["model"].get(k, torch.empty(0)).shape[0] for k in ("user_emb", "item_emb"))
    if (n_users, n_items) != (data.n_users, data.n_items):
        out.append(f"has {n_users} users x {n_items} items, the run root's dataset {data.n_users} x {data.n_items}")
    recorded = ckpt.get("inputs")
    if not isinstance(recorded, dict):
        out.append("records no dataset/embedding hashes (written before checkpoints recorded their inputs)")
    else:
        current = input_hashes(cfg)
        order = list(INPUT_NAMES)
        for name in sorted(set(recorded) | set(current), key=lambda n: (order.index(n) if n in order else 9, str(n))):
            if recorded.get(name) != current.get(name):
                out.append(
                    f"{INPUT_NAMES.get(name, name)} {recorded.get(name)} (checkpoint) != {current.get(name)} (run root)"
                )
    return out


def _show(value) -> str:
    return "(missing)" if value is None else str(list(value) if isinstance(value, tuple) else value)


def load_checkpoint(cfg: Config, data: ds.Dataset) -> dict:
    """The run's ``best.pt``, refused (CheckpointError, one line) when it cannot be read, does not
    belong to this config and run root, or holds NaN/Inf weights."""
    uri = run_uri(cfg, "checkpoints", "best.pt")
    ckpt = read_checkpoint(uri)
    differ = checkpoint_mismatches(cfg, data, ckpt)
    if differ:
        raise CheckpointError(
            f"checkpoint {uri} {'; '.join(differ)}: re-run train, or evaluate with the config "
            "and inputs it was trained with"
        )
    bad = nonfinite_tensor(ckpt["model"])
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {uri} holds non-finite weights: {bad}; the run diverged "
            "(re-run train, e.g. with a lower train.lr)"
        )
    return ckpt


def load_scorer(cfg: Config, data: ds.Dataset) -> tuple[Scorer, dict]:
    """The best checkpoint's scorer, and the checkpoint."""
    uri = run_uri(cfg, "checkpoints", "best.pt")
    ckpt = load_checkpoint(cfg, data)
    text = None
    if cfg.loss.uses_text():  # the checkpoint has text towers too (checked above)
        text = load_text_inputs(cfg.run_root, data.n_users, data.n_items)
        if ckpt.get("text_dim") != text.dim:
            raise CheckpointError(
                f"checkpoint {uri} was trained on {ckpt.get('text_dim')}-dim text vectors, the "
                f"run root's embeddings are {text.dim}-dim: re-run train"
            )
    model = build_model(cfg, data.n_users, data.n_items, ckpt.get("text_dim"))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # what the checks above do not cover (e.g. a hand-edited file)
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"checkpoint {uri} does not fit the model this config builds: {detail}") from e
    adj = build_adjacency(data.train, data.n_users, data.n_items)
    u, i = scoring_vectors(cfg, model, adj.matrices(), text)
    cold_u, cold_i = u, i
    warm_u, warm_i = warm_nodes(data)
    if text is not None and cfg.loss.prf and (len(data.cold_users) or len(data.cold_items)):
        with torch.no_grad():
            cold_u = cold_vectors(u, model.text_directions(text, "user"), warm_u)
            cold_i = cold_vectors(i, model.text_directions(text, "item"), warm_i)
    return Scorer(u, i, cold_u, cold_i, warm_i, warm_u), ckpt


def cold_metrics(
    cfg: Config,
    data: ds.Dataset,
    cold_users: tuple[torch.Tensor, torch.Tensor] | None,
    cold_items: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, dict]:
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
        truth = sp.csr_matrix(
            (np.ones(len(e), dtype=np.float32), (e[:, 0], col[e[:, 1]])), shape=(data.n_users, len(items))
        )
        none = sp.csr_matrix((data.n_users, len(items)), dtype=np.float32)
        user_vecs, item_vecs = cold_items
        out["cold_items"] = dict(
            evaluate_ranking(user_vecs, item_vecs[torch.from_numpy(items)], truth, none, ks, max_scores),
            items=int(len(items)),
        )
    return out


def export_top_k(cfg: Config, data: ds.Dataset, scorer: Scorer) -> str:
    """Every user's top-K with what their metrics score with: warm users ``scorer.user`` against
    ``scorer.item`` (training items ranked out), users without a training edge (cold start)
    ``scorer.cold_user`` -- the text tower's vectors -- against ``scorer.catalogue()``."""
    users = np.arange(data.n_users)
    train = data.matrix("train")
    items, scores = top_k(scorer.user, scorer.item, users, train, cfg.eval.export_top_k, cfg.eval.max_scores_per_batch)
    cold = scorer.cold_users()
    if len(cold):  # a cold user has no training item to rank out
        items[cold], scores[cold] = top_k(
            scorer.cold_user, scorer.catalogue(), cold, None, items.shape[1], cfg.eval.max_scores_per_batch
        )
    item_raw = np.asarray(data.item_raw, dtype=object)
    k = items.shape[1]
    table = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "user": pa.array(data.user_raw, pa.string()),
            "item_ids": pa.FixedSizeListArray.from_arrays(pa.array(items.reshape(-1), pa.int64()), k),
            "items": pa.array(item_raw[items].tolist(), pa.list_(pa.string())),
            "scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1), pa.float32()), k),
        }
    )
    uri = run_uri(cfg, "recommendations")
    storage.write_table(uri, table, storage.config_hash(cfg.to_dict()), meta={"stage": "evaluate", "k": k})
    return uri


def evaluate_run(cfg: Config, split: str = "test", export: bool = True) -> dict:
    """Metrics of the run's best checkpoint on ``split`` (overall, by degree, cold start), written to
    ``eval_<split>.json``; with ``export`` the top-K of every user too."""
    data = ds.load(cfg.run_root)
    scorer, ckpt = load_scorer(cfg, data)
    u, i = scorer.user, scorer.item
    result = split_metrics(cfg, data, u, i, split)
    result = {"split": split, "best_epoch": ckpt.get("epoch"), **result, "by_degree": by_degree(cfg, data, u, i, split)}
    result.update(cold_metrics(cfg, data, (scorer.cold_user, scorer.catalogue()), (u, scorer.cold_item)))
    if export:
        result["recommendations"] = export_top_k(cfg, data, scorer)
    storage.write_json(run_uri(cfg, f"eval_{split}.json"), result)
    return result
