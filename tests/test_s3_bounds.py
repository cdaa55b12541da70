"""An S3 endpoint that accepts connections and never answers: every call is bounded in time.

The silent server listens on 127.0.0.1 only and is closed when the test ends.
"""

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from test_commit_protocol import EDGES
from test_ingest import write_csv

from irllrec_dist import storage


@contextlib.contextmanager
def silent_endpoint():
    """Accepts every connection, reads what is sent, answers nothing."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.2)
    held, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)  # kept open, never written to

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        srv.close()


def _env(endpoint: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IRLLREC_S3_"))}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="k",
        AWS_SECRET_ACCESS_KEY="s",
        AWS_DEFAULT_REGION="us-east-1",
        **extra,
    )
    return env


def test_each_storage_call_is_bounded_by_the_configured_timeouts(monkeypatch):
    with silent_endpoint() as endpoint:
        for k, v in _env(endpoint, IRLLREC_S3_READ_TIMEOUT="1", IRLLREC_S3_MAX_ATTEMPTS="2").items():
            monkeypatch.setenv(k, v)
        t0 = time.time()
        with pytest.raises(Exception) as e:
            storage.read_manifest("s3://bucket/run/dataset/items")
        took = time.time() - t0
    # 2 attempts x 1 s without a byte, plus botocore's back-off and start-up (~6 s on a loaded
    # 2-core machine); unbounded, the same call waited about 7 minutes
    assert took < 20, f"took {took:.1f}s"
    assert "timeout" in repr(e.value).lower() or "timed out" in repr(e.value).lower()


def test_a_stage_fails_within_a_minute_with_one_line(tmp_path):
    """With the default bounds: the ingest CLI against a silent endpoint gives up in about 45 s."""
    source = write_csv(tmp_path / "raw", EDGES)
    with silent_endpoint() as endpoint:
        t0 = time.time()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "irllrec_dist.ingest",
                "run_root=s3://bucket/run",
                f"ingest.source={source}",
                "ingest.format=csv-jsonl",
            ],
            env=_env(endpoint),
            capture_output=True,
            text=True,
            timeout=180,
        )
        took = time.time() - t0
    assert took < 75, f"took {took:.0f}s"
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ingest:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "s3://bucket/run" in lines[0] or "bucket/run" in lines[0]
