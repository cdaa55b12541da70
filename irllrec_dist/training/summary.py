"""The end of a run: check that the replicas agree and the best state is finite, save it as
``best.pt``, score it on the test split, and write ``metrics.json``."""

from __future__ import annotations

import hashlib
import io
import logging

import torch
import torch.distributed as dist
from torch import nn

from irllrec_dist import scoring, storage
from irllrec_dist.artifacts import run_uri
from irllrec_dist.cli import NonFiniteLoss
from irllrec_dist.data.dataset import COLD_TABLES
from irllrec_dist.memory import peak_rss_mib
from irllrec_dist.sparse_allreduce import dense_allreduce_bytes
from irllrec_dist.training.state import TrainState

log = logging.getLogger("irllrec_dist.train")


def digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for t in module.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_replicas(state: TrainState) -> bool:
    """Collective. Replicas must agree bit for bit: students through DDP, teachers through identical
    updates; -> whether every rank's model and teacher digests are equal. Only rank 0 holds the best
    state: its finiteness check travels with the digests, so that every rank raises NonFiniteLoss
    on a non-finite one (a Ray run ends on all ranks at once, see train._ray_worker)."""
    t, v = state.trainer, state.validator
    digests = {"model": digest(t.model), "teacher": digest(t.teacher) if t.teacher is not None else None}
    bad = scoring.nonfinite_tensor(v.best_state) if t.rank == 0 else None
    gathered = [(digests, bad)]
    if t.world > 1:
        gathered = [None] * t.world
        dist.all_gather_object(gathered, (digests, bad))
    bad = gathered[0][1]
    if bad is not None:
        raise NonFiniteLoss(
            f"the best model state (epoch {v.best['epoch']}) holds non-finite weights: {bad}; "
            "not saved (the run diverged: lower train.lr)"
        )
    return all(d == gathered[0][0] for d, _ in gathered)


def save_best(state: TrainState, inputs: dict) -> None:
    """``best.pt`` with what evaluate compares before it scores with it: the config, the dataset's
    size, the dataset / embedding hashes it was trained on (scoring.load_checkpoint)."""
    t, v = state.trainer, state.validator
    buf = io.BytesIO()
    torch.save(
        {
            "model": v.best_state,
            "teacher": v.best_teacher,
            "epoch": v.best["epoch"],
            "text_dim": t.text.dim if t.text is not None else None,
            "n_users": t.data.n_users,
            "n_items": t.data.n_items,
            "inputs": inputs,
            "val": {k: x for k, x in v.best.items()},
            "config": t.cfg.to_dict(),
        },
        buf,
    )
    storage.write_bytes(run_uri(t.cfg, "checkpoints", "best.pt"), buf.getvalue())


def summarise(state: TrainState, replicas_identical: bool) -> dict:
    """Score the best checkpoint on test (with the top-K export; not with ``train.test: false``)
    and write ``metrics.json``."""
    t, v, history = state.trainer, state.validator, state.history
    cfg, tc = t.cfg, t.cfg.train
    test = scoring.evaluate_run(cfg, "test") if tc.test else None
    tested = (
        {}
        if test is None
        else {
            "test": {k: x for k, x in test.items() if "@" in k or k == "users"},
            "test_by_degree": test["by_degree"],
            **{name: test[name] for name in COLD_TABLES if name in test},
        }
    )
    summary = {
        "run_name": tc.run_name,
        "seed": tc.seed,
        "workers": t.world,
        "best_epoch": v.best["epoch"],
        "epochs_run": len(history),
        "wall_s": round(state.wall_s, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "replicas_identical": replicas_identical,
        "resumed_at_epoch": state.resumed_at,
        "fanouts": tc.fanouts,
        "allreduce_bytes_per_step": history[-1]["allreduce_bytes_per_step"],
        "table_rows_bytes_per_step": history[-1]["table_rows_bytes_per_step"],
        "dense_tables_bytes_per_step": dense_allreduce_bytes(t.step.tables),
        "val": {k: x for k, x in v.best.items() if "@" in k},
        **tested,
        "history": history,
    }
    storage.write_json(run_uri(cfg, "metrics.json"), summary)
    tested_line = f"test {v.monitor} {test.get(v.monitor, float('nan')):.4f}" if test else "test split not read"
    log.info(
        "done: best epoch %d (val %s %.4f), %s, %d epochs in %.0fs -> %s",
        v.best["epoch"],
        v.monitor,
        v.best[v.monitor],
        tested_line,
        len(history),
        summary["wall_s"],
        run_uri(cfg, "metrics.json"),
    )
    return summary
