"""Validation every ``eval_every`` epochs on Recall@monitor_k, the best state so far, and early
stopping: stop after ``patience`` checks without improvement, never before ``min_epochs``."""

from __future__ import annotations

import copy

from irllrec_dist import scoring
from irllrec_dist.config import TrainConfig
from irllrec_dist.training.setup import Trainer


def early_stop(bad_checks: int, epochs_done: int, patience: int, min_epochs: int) -> bool:
    """Stop after ``patience`` validation checks without improvement, never before ``min_epochs``."""
    return bad_checks >= patience and epochs_done >= min_epochs


def stop_horizon(best_epoch: int | None, next_epoch: int, tc: TrainConfig) -> int:
    """How many epochs the run lasts if validation never improves again (the progress bar's total,
    so that its ETA is the earliest end): validation runs at epochs 0, eval_every, 2 * eval_every,
    ...; ``patience`` checks after the best one -- or after the first check still to come, which
    becomes the best -- ``early_stop`` fires at the first check that is also past ``min_epochs``;
    never beyond ``max_epochs``."""
    every = tc.eval_every
    if best_epoch is None:
        best_epoch = -(-next_epoch // every) * every
    last = max(best_epoch + tc.patience * every, tc.min_epochs - 1)
    last = -(-last // every) * every  # a check epoch
    return min(last + 1, tc.max_epochs)


class Validator:
    """Ranks the validation split with the model's scoring vectors. Every rank ranks a shard of the
    users and gets the same metrics, so all ranks take the same early-stopping decision; rank 0
    keeps a copy of the best model (and teacher) state."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.tc = trainer, trainer.cfg.train
        self.monitor = f"recall@{trainer.cfg.eval.monitor_k}"
        self.best: dict | None = None  # the best check's metrics and "epoch"
        self.bad_checks = 0
        self.best_state: dict | None = None
        self.best_teacher: dict | None = None

    def due(self, epoch: int) -> bool:
        return epoch % self.tc.eval_every == 0

    def validate(self, epoch: int) -> dict:
        """The validation metrics at ``epoch`` (``recall@K``, ``ndcg@K``, ``users``); keeps the best."""
        t = self.trainer
        t.model.eval()
        users, items = scoring.scoring_vectors(t.cfg, t.model, t.adj.matrices(), t.text)
        val = scoring.split_metrics(t.cfg, t.data, users, items, "val", rank=t.rank, world=t.world)
        if self.best is None or val[self.monitor] > self.best[self.monitor]:
            self.best, self.bad_checks = dict(val, epoch=epoch), 0
            if t.rank == 0:
                self.best_state = copy.deepcopy(t.model.state_dict())
                self.best_teacher = copy.deepcopy(t.teacher.state_dict()) if t.teacher is not None else None
        else:
            self.bad_checks += 1
        return val

    def should_stop(self, epochs_done: int) -> bool:
        return early_stop(self.bad_checks, epochs_done, self.tc.patience, self.tc.min_epochs)

    def horizon(self, next_epoch: int) -> int:
        return stop_horizon(self.best["epoch"] if self.best else None, next_epoch, self.tc)

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "bad_checks": self.bad_checks,
            "best_state": self.best_state,
            "best_teacher": self.best_teacher,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_checks = state["best"], state["bad_checks"]
        self.best_state, self.best_teacher = state["best_state"], state["best_teacher"]
