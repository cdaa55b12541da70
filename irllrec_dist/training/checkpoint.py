"""Where a run's resumable state (``TrainState.state_dict``) is saved at every validation and found
again: Ray Train's checkpoints on a cluster, the run folder in one process."""

from __future__ import annotations

import importlib
import io
import os
import tempfile
from typing import Protocol

import torch

from irllrec_dist import storage
from irllrec_dist.artifacts import input_hashes, run_uri
from irllrec_dist.cli import CheckpointError
from irllrec_dist.config import RUNTIME_KEYS, Config, config_differences


class Checkpointer(Protocol):
    def load(self) -> dict | None:
        """The latest saved state, or None to start from scratch."""

    def save(self, state: dict | None, metrics: dict) -> None:
        """Collective: every rank calls it at every validation; only rank 0 passes a state."""


class RayCheckpoints:
    """Resumable training state through the session of the Ray library the loop runs under: Ray
    Train's (``ray.train``: its storage keeps the latest ``CheckpointConfig.num_to_keep``) or, in a
    trial of the tune stage, Ray Tune's (``ray.tune``: its scheduler reads the reported metrics)."""

    FILE = "state.pt"

    def __init__(self, session: str = "train"):
        if session not in ("train", "tune"):
            raise ValueError(f"session must be train or tune, got {session!r}")
        self.session = session

    def _api(self):
        return importlib.import_module(f"ray.{self.session}")

    def load(self) -> dict | None:
        ckpt = self._api().get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return torch.load(os.path.join(d, self.FILE), map_location="cpu", weights_only=True)

    def save(self, state: dict | None, metrics: dict) -> None:
        api = self._api()
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if state is not None:
                torch.save(state, os.path.join(d, self.FILE))
                ckpt = api.Checkpoint.from_directory(d)
            api.report(metrics, checkpoint=ckpt)


class StorageCheckpoints:
    """Resumable state of an in-process run in its folder (``<run>/checkpoints/state.pt``), written
    atomically at every validation. A run started again with the same config goes on from the last
    one, bit for bit as if never stopped; another config is refused rather than mixed in. The file
    goes (``clear``) once metrics.json is written, so a finished run started again trains from scratch."""

    # What only changes how fast, how long or where a run goes may differ on resume (a run cut on
    # a GPU goes on on a CPU). Threads, compile and the device change float rounding: bit for bit
    # holds only when they stay the same.
    RUNTIME_KEYS = RUNTIME_KEYS | {"eval.export_top_k"}

    @classmethod
    def free(cls, key: str) -> bool:
        """May differ on resume: the runtime keys, and the tune section (the search, not the run)."""
        return key in cls.RUNTIME_KEYS or key.startswith("tune.")

    def __init__(self, cfg: Config, inputs: dict | None = None):
        self.uri = run_uri(cfg, "checkpoints", "state.pt")
        self.config = cfg.to_dict()
        self.inputs = inputs if inputs is not None else input_hashes(cfg)

    def load(self) -> dict | None:
        if not storage.exists(self.uri):
            return None
        refuse = f"{self.uri}: %s; start over with train.resume=false"
        try:
            state = torch.load(io.BytesIO(storage.read_bytes(self.uri)), map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: say which, not a pickle traceback
            raise CheckpointError(
                refuse % f"not a readable training state ({type(e).__name__}: "
                f"{(str(e).strip().splitlines() or [''])[0]})"
            ) from e
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise CheckpointError(refuse % "not a training state written by train")
        # A key the saving code did not have yet ran at its default (e.g. loss.warmup_epochs = 0).
        differ = [k for k, _, _ in config_differences(state["config"], self.config, self.free)]
        if differ:
            raise CheckpointError(
                refuse % f"saved by a run with other settings ({', '.join(differ)}); "
                "start it with those settings to resume"
            )
        if state.get("inputs") != self.inputs:
            raise CheckpointError(
                refuse % f"saved on other inputs ({state.get('inputs')} then, {self.inputs} now: "
                "re-ingested or re-embedded since)"
            )
        return state

    def save(self, state: dict | None, metrics: dict) -> None:
        buf = io.BytesIO()
        torch.save({**state, "config": self.config, "inputs": self.inputs}, buf)
        storage.write_bytes(self.uri, buf.getvalue())

    def clear(self) -> None:
        storage.remove(self.uri)
