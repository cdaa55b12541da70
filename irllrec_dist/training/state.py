"""The resumable state of a run: one ``state_dict`` / ``load_state_dict`` pair, so that a run
started from it goes on bit for bit as if it had never stopped."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from irllrec_dist.training.setup import Trainer
from irllrec_dist.training.validation import Validator


class TrainState:
    """Where the run is (``epoch``: the next one to run; ``history``: a record per epoch run), the
    model, optimiser and teacher, the random streams of every rank, and the validator's best."""

    def __init__(self, trainer: Trainer, validator: Validator, t_start: float | None = None):
        self.trainer, self.validator = trainer, validator
        self.epoch = 0
        self.history: list[dict] = []
        self.t_start = time.time() if t_start is None else t_start
        self.resumed_at: int | None = None

    @property
    def wall_s(self) -> float:
        """Seconds of training over every segment of the run."""
        return time.time() - self.t_start

    def state_dict(self) -> dict | None:
        """Collective with world > 1 (every rank's ``gen`` state is gathered); rank 0 gets the state,
        the other ranks None."""
        t = self.trainer
        gen_states = [t.gen.get_state()]
        if t.world > 1:
            gen_states = [None] * t.world
            dist.all_gather_object(gen_states, t.gen.get_state())
        if t.rank != 0:
            return None
        return {
            "epoch": self.epoch,
            "model": t.model.state_dict(),
            "optimizer": t.step.optimizer_state(),
            "teacher": t.teacher.state_dict() if t.teacher is not None else None,
            "numpy_rng": t.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "gen_rng": gen_states,
            "history": self.history,
            **self.validator.state_dict(),
            "wall_s": self.wall_s,
        }

    def load_state_dict(self, state: dict) -> None:
        t = self.trainer
        t.model.load_state_dict(state["model"])
        t.step.load_optimizer_state(state["optimizer"])
        if t.teacher is not None:
            t.teacher.load_state_dict(state["teacher"])
        t.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        t.gen.set_state(state["gen_rng"][t.rank])
        self.validator.load_state_dict(state)
        self.epoch = self.resumed_at = state["epoch"]
        self.history = state["history"]
        self.t_start -= state["wall_s"]  # wall_s in the summary covers every segment of the run
