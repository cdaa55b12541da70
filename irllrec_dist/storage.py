"""Run-root storage: URIs to filesystems, and Parquet outputs committed by a manifest.

Layout of one output (a "table") under a run root::

    <table>/<attempt>/part-00000.parquet   # shards, invisible until committed
    <table>/_manifest.json                 # written last; lists shards, rows, schema, config hash

The attempt folder is the staging name: nothing is renamed at commit (renames
are copies on S3), the manifest alone makes an attempt visible. A reader that
finds no manifest treats the output as absent, so a killed writer leaves
nothing a reader could mistake for data; the next commit removes old attempts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from typing import Any, Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
FORMAT_VERSION = 1


class OutputMissing(FileNotFoundError):
    """The output has no manifest: it was never committed (or was deleted)."""


class CorruptOutput(ValueError):
    """The output's manifest or one of its shards cannot be read as promised."""


def storage_options(uri: str) -> dict[str, Any]:
    """Filesystem options taken from the environment only (never from configs).

    For ``s3://`` the endpoint comes from ``AWS_ENDPOINT_URL`` (or
    ``S3_ENDPOINT_URL``); keys come from the usual ``AWS_*`` variables, which
    s3fs/botocore read themselves.
    """
    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
        opts: dict[str, Any] = {}
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
            opts["config_kwargs"] = {"s3": {"addressing_style": "path"}}
        return opts
    return {}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Turn a run-root URI (plain path, ``file://``, ``s3://``) into (filesystem, path)."""
    if "://" not in uri:
        uri = os.path.abspath(uri)
    fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri))
    return fs, path.rstrip("/")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able config fragment."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    # Object stores make a single PUT atomic; on a local disk rename is.
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def read_manifest(uri: str) -> dict | None:
    fs, path = filesystem(uri)
    mpath = f"{path}/{MANIFEST}"
    if not fs.exists(mpath):
        return None
    try:
        with fs.open(mpath, "rb") as f:
            manifest = json.loads(f.read())
    except (ValueError, OSError) as e:
        raise CorruptOutput(f"{join(uri, MANIFEST)}: cannot read manifest ({e})") from e
    for key in ("shards", "num_rows", "schema", "config_hash"):
        if key not in manifest:
            raise CorruptOutput(f"{join(uri, MANIFEST)}: manifest has no '{key}' field")
    return manifest


def is_complete(uri: str, expected_hash: str | None = None) -> bool:
    """True when the output is committed (and, if given, with this config hash)."""
    manifest = read_manifest(uri)
    if manifest is None:
        return False
    return expected_hash is None or manifest["config_hash"] == expected_hash


class ShardWriter:
    """Writes one output as Parquet shards and commits it with a manifest.

    Use as a context manager: leaving the block with an exception deletes this
    attempt's shards, leaving it normally commits.
    """

    def __init__(self, uri: str, chash: str, meta: dict | None = None,
                 rows_per_shard: int = 1_000_000):
        self.uri = uri
        self.fs, self.path = filesystem(uri)
        self.chash = chash
        self.meta = dict(meta or {})
        self.rows_per_shard = rows_per_shard
        self.attempt = f"attempt-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.shards: list[dict] = []
        self.schema: pa.Schema | None = None
        self.committed = False

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
        elif not table.schema.equals(self.schema):
            raise ValueError(f"{self.uri}: shard schema {table.schema} differs from {self.schema}")
        for start in range(0, max(table.num_rows, 1), self.rows_per_shard):
            part = table.slice(start, self.rows_per_shard)
            rel = f"{self.attempt}/part-{len(self.shards):05d}.parquet"
            self.fs.makedirs(f"{self.path}/{self.attempt}", exist_ok=True)
            with self.fs.open(f"{self.path}/{rel}", "wb") as f:
                pq.write_table(part, f)
            self.shards.append({"path": rel, "num_rows": part.num_rows})

    def commit(self) -> dict:
        if self.schema is None:
            raise ValueError(f"{self.uri}: nothing was written")
        manifest = {
            "format_version": FORMAT_VERSION,
            "shards": self.shards,
            "num_rows": sum(s["num_rows"] for s in self.shards),
            "schema": self.schema.to_string(show_schema_metadata=False),
            "schema_ipc": self.schema.serialize().to_pybytes().hex(),
            "config_hash": self.chash,
            "meta": self.meta,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _write_bytes_atomic(self.fs, f"{self.path}/{MANIFEST}",
                            json.dumps(manifest, indent=1).encode())
        self.committed = True
        self._remove_other_attempts()
        return manifest

    def _remove_other_attempts(self) -> None:
        for entry in self.fs.ls(self.path, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("attempt-") and name != self.attempt:
                self.fs.rm(entry, recursive=True)

    def abort(self) -> None:
        target = f"{self.path}/{self.attempt}"
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.committed:
            self.commit()


def write_table(uri: str, table: pa.Table, chash: str, meta: dict | None = None,
                rows_per_shard: int = 1_000_000) -> dict:
    with ShardWriter(uri, chash, meta, rows_per_shard) as w:
        w.write(table)
        return w.commit()


def read_table(uri: str, columns: Iterable[str] | None = None) -> pa.Table:
    """Read a committed output; raises OutputMissing when it has no manifest."""
    manifest = read_manifest(uri)
    if manifest is None:
        raise OutputMissing(f"{uri}: no {MANIFEST} (output absent or never committed)")
    fs, path = filesystem(uri)
    schema = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(manifest["schema_ipc"])))
    parts = []
    for shard in manifest["shards"]:
        spath = f"{path}/{shard['path']}"
        try:
            with fs.open(spath, "rb") as f:
                part = pq.read_table(io.BytesIO(f.read()), columns=list(columns) if columns else None)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise CorruptOutput(f"{join(uri, shard['path'])}: unreadable Parquet shard ({e})") from e
        if part.num_rows != shard["num_rows"]:
            raise CorruptOutput(f"{join(uri, shard['path'])}: {part.num_rows} rows, "
                                f"manifest promises {shard['num_rows']}")
        parts.append(part)
    if columns:
        schema = pa.schema([schema.field(c) for c in columns])
    return pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=1, default=str).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def remove(uri: str) -> None:
    """Delete a file or folder (recursively) if it exists."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    _write_bytes_atomic(fs, path, data)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()
