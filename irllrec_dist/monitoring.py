"""TensorBoard event files on the run's storage: ``runs/<run_name>/tensorboard``.

SummaryWriter writes to a local folder; for a remote run root (``s3://``) that
folder is a temporary one whose files are copied to storage at every flush,
so TensorBoard can read them from the bucket while the run goes on.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from torch.utils.tensorboard import SummaryWriter

from irllrec_dist import storage


class TensorBoardLog:
    def __init__(self, uri: str):
        self.uri = uri
        self.remote = "://" in uri and not uri.startswith("file://")
        if self.remote:
            self.local = tempfile.mkdtemp(prefix="irllrec-tb-")
        else:
            self.local = uri[len("file://") :] if uri.startswith("file://") else uri
            os.makedirs(self.local, exist_ok=True)
        self.writer = SummaryWriter(self.local)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}{name}", float(value), step)

    def hparams(self, params: dict, metrics: dict[str, float]) -> None:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        self.writer.add_hparams(flat, {f"hparam/{k}": float(v) for k, v in metrics.items()}, run_name=".")

    def flush(self) -> None:
        self.writer.flush()
        if self.remote:
            for root, _, files in os.walk(self.local):
                for name in files:
                    path = os.path.join(root, name)
                    rel = os.path.relpath(path, self.local)
                    with open(path, "rb") as f:
                        storage.write_bytes(storage.join(self.uri, rel), f.read())

    def close(self) -> None:
        self.flush()
        self.writer.close()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
