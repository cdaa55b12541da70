"""What a training run leaves in its folder ``runs/<run_name>/`` beside ``metrics.json``:

- ``config.yaml``: the resolved config (presets + overrides, validated), written when the run
  starts; ``--config runs/<run_name>/config.yaml`` runs it again;
- ``train.log``: the run's log lines (every ``irllrec_dist.*`` logger of the process that trains,
  rank 0 under Ray), rewritten whole at every validation and when the run ends or fails -- an
  object store cannot append, and the log is small (a line per validation);
- ``curves.png``: validation Recall@K and the loss terms by epoch, drawn at the end when
  matplotlib can be imported (plots.py).

All three go through ``storage`` and so work under a local or an ``s3://`` run root alike.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

from irllrec_dist import storage
from irllrec_dist.artifacts import run_uri
from irllrec_dist.config import Config, config_yaml

log = logging.getLogger("irllrec_dist.train")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def write_config(cfg: Config) -> str:
    uri = run_uri(cfg, "config.yaml")
    head = (
        f"# The resolved config of run {cfg.train.run_name}, written by train when it started.\n"
        "# Run it again with: irllrec train --config <this file>\n"
    )
    storage.write_bytes(uri, (head + config_yaml(cfg)).encode())
    return uri


class RunLog(logging.Handler):
    """Keeps the formatted lines of a run in memory; ``save()`` writes them all to ``train.log``."""

    def __init__(self, uri: str, level: int = logging.INFO):
        super().__init__(level)
        self.uri = uri
        self.lines: list[str] = []
        self.previous = ""  # the log of the segments before a resume
        self._save_lock = threading.Lock()
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 -- logging's own convention: report, never raise
            self.handleError(record)

    def keep_previous(self) -> None:
        """A resumed run: the log of the earlier segments stays in front of this one's lines."""
        try:
            if storage.exists(self.uri):
                text = storage.read_bytes(self.uri).decode("utf-8", "replace")
                self.previous = text if text.endswith("\n") or not text else text + "\n"
        except OSError as e:  # the old log is lost, the run is not
            log.warning("could not read the earlier %s (%s); it is overwritten", self.uri, e)

    def text(self) -> str:
        self.acquire()
        try:
            return self.previous + "".join(self.lines)
        finally:
            self.release()

    def save(self) -> None:
        with self._save_lock:
            storage.write_bytes(self.uri, self.text().encode())

    @contextmanager
    def attached(self, logger: str = "irllrec_dist"):
        """Collect the package's INFO lines while the block runs (a process that never configured
        logging, such as a Ray worker, would drop them below WARNING)."""
        target = logging.getLogger(logger)
        level = target.level
        if target.getEffectiveLevel() > self.level:
            target.setLevel(self.level)
        target.addHandler(self)
        try:
            yield self
        finally:
            target.removeHandler(self)
            target.setLevel(level)


def write_curves(cfg: Config, summary: dict) -> str | None:
    """``curves.png`` of a finished run, or None without matplotlib (the ``plot`` extra)."""
    from irllrec_dist import plots

    if not plots.available():
        log.info("curves.png not drawn: matplotlib is not installed (pip install 'irllrec-dist[plot]')")
        return None
    fig = plots.run_curves_figure(summary, f"recall@{cfg.eval.monitor_k}")
    if fig is None:
        return None
    uri = run_uri(cfg, "curves.png")
    storage.write_bytes(uri, plots.png(fig))
    return uri
