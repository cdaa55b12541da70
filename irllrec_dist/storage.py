"""Run-root storage: URIs to filesystems, and outputs committed by one atomic manifest write.

Layout of one output (a "table") under a run root::

    <table>/attempt-<time>-<id>/part-00000.parquet   # this writer's shards, invisible until committed
    <table>/attempt-<time>-<id>/_lease               # rewritten by its writer while the attempt is alive
    <table>/_manifest.json                           # the commit: shards with rows, bytes and sha256

A *group* commits several tables at once (the dataset: users, items, the splits and
ingest's report): each table's shards live under ``<group>/<table>/attempt-…/`` and one
``<group>/_group.json`` names them all. A *union* (an intents side) is a manifest
naming shards that other committed outputs below it wrote (``chunk-00003/attempt-…``).

The protocol (what is adopted from Delta Lake / Iceberg, and what is not): data files
are immutable and written under a name no other writer uses (the attempt), and a commit
is a single atomic write of a small metadata file that names every data file with its
size and checksum — Iceberg's "new metadata file, then swap the pointer". Delta and
Iceberg make the swap conditional (put-if-absent of log entry N+1, or a catalog
compare-and-swap) so that concurrent writers serialise; here two writers of one output
compute the *same* output from the same inputs (a retried task, a second pipeline), so
the swap is a plain atomic replace — rename on a local disk, one PUT on S3 — and the
last writer wins. What makes that safe is what Delta's VACUUM does with its retention
period: a commit never deletes anything that another writer may still name. An attempt
is removed only when it is (a) not named by the output's manifest nor by the manifest of
the folder above (a group or union), and (b) older than the lease (``IRLLREC_ATTEMPT_LEASE_S``,
default one hour) by its ``_lease`` file, which its writer renews before it commits
(and a union renews for the attempts it names). So a committed manifest only names
attempts of writers that finished, and those are kept for at least a lease after their
last renewal. The one window left is a writer that renews, checks and commits between
another writer's check and its delete of the same attempt — milliseconds, after the
attempt was unreferenced for an hour; readers would then refuse the output (missing
shard) rather than read wrong data.

Readers verify: the manifest's fields and types, that every shard path stays inside its
output (no ``..``, no absolute path, a group table only under its own folder), and each
shard's byte size, sha256, Parquet row count and schema. Any difference is a
``CorruptOutput`` naming the path and what differs.

S3 calls are bounded: connect and read timeouts and a retry budget (``IRLLREC_S3_*``
variables, see ``storage_options``), so an endpoint that accepts and never answers fails a
stage within about a minute.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

MANIFEST = "_manifest.json"
GROUP_MANIFEST = "_group.json"  # its own name: a reader of one table looks for it above without reading unions
LEASE = "_lease"
FORMAT_VERSION = 2

_ATTEMPT = r"attempt-\d{8}T\d{6}-[0-9a-f]{16}"
_ATTEMPT_RE = re.compile(rf"^{_ATTEMPT}$")
# A shard path inside its output: safe name components, ending in an attempt's part file.
_SHARD_RE = re.compile(rf"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*/)*{_ATTEMPT}/part-\d{{5}}\.parquet$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class OutputMissing(FileNotFoundError):
    """The output has no manifest: it was never committed (or was deleted)."""


class CorruptOutput(ValueError):
    """The output's manifest or one of its shards cannot be read as promised."""


def lease_seconds() -> float:
    return float(os.environ.get("IRLLREC_ATTEMPT_LEASE_S", "3600"))


# ---------------------------------------------------------------- filesystems


def storage_options(uri: str) -> dict[str, Any]:
    """Filesystem options taken from the environment only (never from configs).

    For ``s3://`` the endpoint comes from ``AWS_ENDPOINT_URL`` (or
    ``S3_ENDPOINT_URL``); keys come from the usual ``AWS_*`` variables, which
    s3fs/botocore read themselves. Every call is bounded: ``IRLLREC_S3_CONNECT_TIMEOUT``
    (s, default 5), ``IRLLREC_S3_READ_TIMEOUT`` (s without a byte, default 15) and
    ``IRLLREC_S3_MAX_ATTEMPTS`` (botocore's attempts per call, default 3; s3fs's own retry
    loop is reduced to one pass so the two do not multiply): a silent endpoint fails a
    call within about 3 x 15 s.
    """
    if not uri.startswith("s3://"):
        return {}
    config: dict[str, Any] = {
        "connect_timeout": float(os.environ.get("IRLLREC_S3_CONNECT_TIMEOUT", "5")),
        "read_timeout": float(os.environ.get("IRLLREC_S3_READ_TIMEOUT", "15")),
        "retries": {"max_attempts": int(os.environ.get("IRLLREC_S3_MAX_ATTEMPTS", "3")), "mode": "standard"},
    }
    opts: dict[str, Any] = {"config_kwargs": config}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
        config["s3"] = {"addressing_style": "path"}
    return opts


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Turn a run-root URI (plain path, ``file://``, ``s3://``) into (filesystem, path)."""
    if "://" not in uri:
        uri = os.path.abspath(uri)
    fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri))
    if uri.startswith("s3://"):
        fs.retries = 1  # botocore's bounded attempts are the retry budget (storage_options)
    return fs, path.rstrip("/")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able config fragment."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _fresh(fs: fsspec.AbstractFileSystem, path: str) -> None:
    # s3fs caches listings and object info: another writer's commit must be seen.
    fs.invalidate_cache(path)


def _write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    # Object stores make a single PUT atomic; on a local disk rename (os.replace) is.
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def _modified(info: dict) -> float:
    """Seconds since the epoch of a listing entry (local mtime or S3 LastModified)."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return float(value) if value is not None else 0.0


# ---------------------------------------------------------------- manifests


def _fail(where: str, what: str) -> CorruptOutput:
    return CorruptOutput(f"{where}: {what}")


def _check_entry(entry: Any, where: str, prefix: str = "") -> None:
    """A table entry (shards, num_rows, schema) has the promised fields, types and paths."""
    if not isinstance(entry, dict):
        raise _fail(where, f"expected a JSON object, got {type(entry).__name__}")
    shards = entry.get("shards")
    if not isinstance(shards, list):
        raise _fail(where, "'shards' is missing or not a list")
    total = 0
    for n, s in enumerate(shards):
        if not isinstance(s, dict):
            raise _fail(where, f"shard {n} is not an object")
        path, rows, size, digest = s.get("path"), s.get("num_rows"), s.get("bytes"), s.get("sha256")
        if not isinstance(path, str) or not _SHARD_RE.match(path) or not path.startswith(prefix):
            raise _fail(
                where,
                f"shard {n} path {path!r} is not inside this output; expected "
                f"'{prefix}attempt-<time>-<id>/part-NNNNN.parquet'",
            )
        for key, value in (("num_rows", rows), ("bytes", size)):
            if type(value) is not int or value < 0:
                raise _fail(where, f"shard {n} '{key}' is {value!r}; expected a non-negative integer")
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise _fail(where, f"shard {n} 'sha256' is {digest!r}; expected 64 hex digits")
        total += rows
    if entry.get("num_rows") != total:
        raise _fail(where, f"'num_rows' is {entry.get('num_rows')!r} but its shards hold {total}")
    try:
        pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(entry["schema_ipc"])))
    except (KeyError, TypeError, ValueError, pa.ArrowException) as e:
        raise _fail(where, f"'schema_ipc' is missing or unreadable ({type(e).__name__})") from e


def _load_manifest(fs: fsspec.AbstractFileSystem, mpath: str, where: str, check: bool = True) -> dict | None:
    _fresh(fs, mpath)
    try:
        blob = fs.cat_file(mpath)  # one GET: open() would HEAD first, then lose a race to a new commit
    except FileNotFoundError:
        return None
    if not check:  # only to see which attempts it names (garbage collection): no trust needed
        try:
            manifest = json.loads(blob)
        except ValueError:
            return None
        return manifest if isinstance(manifest, dict) else None
    try:
        manifest = json.loads(blob)
    except ValueError as e:
        raise _fail(where, f"manifest is not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise _fail(where, "manifest is not a JSON object")
    if manifest.get("format_version") == 1:
        # Written by irllrec_dist before shards had checksums: not trusted, so not committed;
        # the stage that writes it redoes the output.
        return None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _fail(
            where,
            f"manifest format {manifest.get('format_version')!r}; expected {FORMAT_VERSION} "
            f"(written by another version of irllrec_dist: re-run the stage that writes it)",
        )
    if not isinstance(manifest.get("config_hash"), str):
        raise _fail(where, "'config_hash' is missing or not a string")
    if not isinstance(manifest.get("meta", {}), dict):
        raise _fail(where, "'meta' is not an object")
    if manifest.get("kind") == "group":
        tables = manifest.get("tables")
        if not isinstance(tables, dict):
            raise _fail(where, "group manifest has no 'tables' object")
        for name, entry in tables.items():
            if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", name):
                raise _fail(where, f"table name {name!r} is not a plain folder name")
            _check_entry(entry, f"{where} table '{name}'", prefix=f"{name}/")
    else:
        _check_entry(manifest, where)
    return manifest


def _parent(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


def _parent_uri(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def read_manifest(uri: str) -> dict | None:
    """The committed manifest of one table, or None when it is not committed.

    A table inside a group (``<group>/<table>``) is answered from the group's manifest,
    which then alone decides: a table the group does not name is absent.
    """
    fs, path = filesystem(uri)
    parent, name = _parent(path)
    group = _load_group(fs, parent, _parent_uri(uri)) if parent else None
    if group is not None:
        entry = group["tables"].get(name)
        if entry is None:
            return None
        cut = len(name) + 1
        return {
            **entry,
            "shards": [{**s, "path": s["path"][cut:]} for s in entry["shards"]],
            "config_hash": group["config_hash"],
            "meta": group.get("meta", {}),
            "format_version": FORMAT_VERSION,
            "committed_at": group.get("committed_at"),
        }
    return _load_manifest(fs, f"{path}/{MANIFEST}", join(uri, MANIFEST))


def _load_group(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> dict | None:
    m = _load_manifest(fs, f"{path}/{GROUP_MANIFEST}", join(uri, GROUP_MANIFEST))
    if m is not None and m.get("kind") != "group":
        raise _fail(join(uri, GROUP_MANIFEST), "expected a group manifest (several tables)")
    return m


def read_group(uri: str) -> dict | None:
    """The committed manifest of a group (None when absent)."""
    fs, path = filesystem(uri)
    return _load_group(fs, path, uri)


def missing_shards(uri: str, manifest: dict) -> list[str]:
    """Shards a manifest names that are not there with their promised size (one listing
    per attempt folder, no reads): what decides whether finished work can be skipped."""
    fs, path = filesystem(uri)
    shards = _shards_of(manifest)
    sizes: dict[str, int] = {}
    for folder in sorted({s["path"].rsplit("/", 1)[0] for s in shards}):
        _fresh(fs, f"{path}/{folder}")
        try:
            listing = fs.ls(f"{path}/{folder}", detail=True)
        except FileNotFoundError:
            continue
        sizes.update({f"{folder}/{e['name'].rsplit('/', 1)[-1]}": e.get("size") for e in listing})
    return [s["path"] for s in shards if sizes.get(s["path"]) != s["bytes"]]


def is_complete(uri: str, expected_hash: str | None = None) -> bool:
    """True when the output is committed whole (and, if given, with this config hash)."""
    try:
        manifest = read_manifest(uri)
    except CorruptOutput:
        return False  # an unreadable or foreign manifest is not a committed output: redo it
    if manifest is None or (expected_hash is not None and manifest["config_hash"] != expected_hash):
        return False
    return not missing_shards(uri, manifest)


def _plain(value: Any) -> Any:
    """numpy scalars in a manifest's meta as the plain numbers they are."""
    return value.item() if hasattr(value, "item") else str(value)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_attempt() -> str:
    return f"attempt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:16]}"


# ---------------------------------------------------------------- writing


class ShardWriter:
    """Writes one output as Parquet shards under its own attempt and commits it with a manifest.

    Use as a context manager: leaving the block with an exception deletes this
    attempt's shards, leaving it normally commits.
    """

    def __init__(
        self,
        uri: str,
        chash: str,
        meta: dict | None = None,
        rows_per_shard: int = 1_000_000,
        attempt: str | None = None,
    ):
        if type(rows_per_shard) is not int or rows_per_shard <= 0:
            raise ValueError(f"{uri}: rows_per_shard is {rows_per_shard!r}; expected a positive integer")
        self.uri = uri
        self.fs, self.path = filesystem(uri)
        self.chash = chash
        self.meta = dict(meta or {})
        self.rows_per_shard = rows_per_shard
        self.attempt = attempt or new_attempt()
        self.shards: list[dict] = []
        self.schema: pa.Schema | None = None
        self.committed = False

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
            self.fs.makedirs(f"{self.path}/{self.attempt}", exist_ok=True)
            renew_lease(self.fs, f"{self.path}/{self.attempt}")
        elif not table.schema.equals(self.schema):
            raise ValueError(f"{self.uri}: shard schema {table.schema} differs from {self.schema}")
        for start in range(0, max(table.num_rows, 1), self.rows_per_shard):
            buf = io.BytesIO()
            pq.write_table(table.slice(start, self.rows_per_shard), buf)
            data = buf.getvalue()
            rel = f"{self.attempt}/part-{len(self.shards):05d}.parquet"
            with self.fs.open(f"{self.path}/{rel}", "wb") as f:
                f.write(data)
            self.shards.append(
                {
                    "path": rel,
                    "num_rows": min(self.rows_per_shard, table.num_rows - start),
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )

    def entry(self) -> dict:
        """This attempt's table entry (shards, rows, schema) for a manifest."""
        if self.schema is None:
            raise ValueError(f"{self.uri}: nothing was written")
        return {
            "shards": self.shards,
            "num_rows": sum(s["num_rows"] for s in self.shards),
            "schema": self.schema.to_string(show_schema_metadata=False),
            "schema_ipc": self.schema.serialize().to_pybytes().hex(),
        }

    def commit(self) -> dict:
        manifest = {
            "format_version": FORMAT_VERSION,
            **self.entry(),
            "config_hash": self.chash,
            "meta": self.meta,
            "attempt": self.attempt,
            "committed_at": _now(),
        }
        _commit(self.fs, self.path, manifest, [f"{self.path}/{self.attempt}"])
        self.committed = True
        collect_garbage(self.uri)
        return manifest

    def abort(self) -> None:
        target = f"{self.path}/{self.attempt}"
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.committed:
            self.commit()


class GroupWriter:
    """Several tables committed by one manifest (``<uri>/_manifest.json``): all or none.

    ``meta`` (e.g. a stage's report) is part of the same commit.
    """

    def __init__(self, uri: str, chash: str, rows_per_shard: int = 1_000_000):
        self.uri, self.chash = uri, chash
        self.fs, self.path = filesystem(uri)
        self.attempt = new_attempt()
        self.rows_per_shard = rows_per_shard
        self.writers: dict[str, ShardWriter] = {}

    def write(self, name: str, table: pa.Table) -> None:
        if name not in self.writers:
            self.writers[name] = ShardWriter(
                join(self.uri, name), self.chash, rows_per_shard=self.rows_per_shard, attempt=self.attempt
            )
        self.writers[name].write(table)

    def commit(self, meta: dict | None = None) -> dict:
        tables = {}
        for name, w in self.writers.items():
            e = w.entry()
            tables[name] = {**e, "shards": [{**s, "path": f"{name}/{s['path']}"} for s in e["shards"]]}
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "group",
            "tables": tables,
            "config_hash": self.chash,
            "meta": dict(meta or {}),
            "attempt": self.attempt,
            "committed_at": _now(),
        }
        _commit(
            self.fs, self.path, manifest, [f"{w.path}/{w.attempt}" for w in self.writers.values()], name=GROUP_MANIFEST
        )
        for w in self.writers.values():
            collect_garbage(w.uri)
        return manifest

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


def commit_union(uri: str, parts: dict[str, dict], chash: str, meta: dict | None = None) -> dict:
    """Commit an output whose shards are those of committed outputs below it.

    ``parts`` maps a sub-folder (``chunk-00003``) to that output's manifest; the union's
    manifest names their shards under the sub-folder, after renewing the leases of the
    attempts it names and checking that every shard is still there.
    """
    fs, path = filesystem(uri)
    shards, schema, schema_ipc = [], None, None
    attempts = []
    for sub, m in parts.items():
        if schema_ipc is None:
            schema, schema_ipc = m["schema"], m["schema_ipc"]
        elif m["schema_ipc"] != schema_ipc:
            raise ValueError(f"{join(uri, sub)}: schema differs from the other parts'")
        shards += [{**s, "path": f"{sub}/{s['path']}"} for s in m["shards"]]
        attempts += sorted({f"{path}/{sub}/{s['path'].split('/')[0]}" for s in m["shards"]})
    if schema_ipc is None:
        raise ValueError(f"{uri}: a union of no parts")
    manifest = {
        "format_version": FORMAT_VERSION,
        "shards": shards,
        "num_rows": sum(s["num_rows"] for s in shards),
        "schema": schema,
        "schema_ipc": schema_ipc,
        "config_hash": chash,
        "meta": dict(meta or {}),
        "committed_at": _now(),
    }
    _commit(fs, path, manifest, attempts)
    return manifest


def renew_lease(fs: fsspec.AbstractFileSystem, attempt_path: str) -> None:
    with fs.open(f"{attempt_path}/{LEASE}", "wb") as f:
        f.write(_now().encode())


def _commit(
    fs: fsspec.AbstractFileSystem, path: str, manifest: dict, attempts: list[str], name: str = MANIFEST
) -> None:
    """Renew the named attempts' leases, check their shards are there, then swap the manifest in."""
    for a in attempts:
        renew_lease(fs, a)
    for s in _shards_of(manifest):
        full = f"{path}/{s['path']}"
        _fresh(fs, full)
        if not fs.exists(full):
            raise CorruptOutput(f"{full}: shard vanished before the commit (removed by another writer?)")
    fs.makedirs(path, exist_ok=True)
    _write_bytes_atomic(fs, f"{path}/{name}", json.dumps(manifest, indent=1, default=_plain).encode())


def _shards_of(manifest: dict | None) -> list:
    if manifest is None:
        return []
    if isinstance(manifest.get("tables"), dict):
        return [s for t in manifest["tables"].values() if isinstance(t, dict) for s in t.get("shards") or []]
    return manifest.get("shards") if isinstance(manifest.get("shards"), list) else []


def _referenced_attempts(fs: fsspec.AbstractFileSystem, path: str) -> set[str]:
    """Attempt folders (relative to ``path``) named by its manifest or by the group or union above."""
    parent, name = _parent(path)
    above = []
    if parent:
        above = _shards_of(_load_manifest(fs, f"{parent}/{GROUP_MANIFEST}", "", check=False)) + _shards_of(
            _load_manifest(fs, f"{parent}/{MANIFEST}", "", check=False)
        )
    own = _shards_of(_load_manifest(fs, f"{path}/{MANIFEST}", "", check=False))
    names = {str(s.get("path", "")).split("/")[0] for s in own if isinstance(s, dict)}
    for s in above:
        parts = str(s.get("path", "")).split("/") if isinstance(s, dict) else []
        if len(parts) > 2 and parts[0] == name:
            names.add(parts[1])
    return names


def _listing(uri: str) -> tuple[fsspec.AbstractFileSystem, str, list[dict]]:
    """(filesystem, path, fresh listing with details; empty when the folder is absent)."""
    fs, path = filesystem(uri)
    _fresh(fs, path)
    try:
        return fs, path, fs.ls(path, detail=True)
    except FileNotFoundError:
        return fs, path, []


def _remove_quietly(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:  # absent already, or another writer's clean-up got there first
        pass


def collect_garbage(uri: str, lease_s: float | None = None) -> list[str]:
    """Remove the attempts of ``uri`` that are provably dead; returns what was removed.

    Dead = named neither by the output's manifest nor by the manifest above it, and its
    lease (or, without one, its folder) not renewed for ``lease_s`` seconds.
    """
    fs, path, entries = _listing(uri)
    lease_s = lease_seconds() if lease_s is None else lease_s
    keep = _referenced_attempts(fs, path)
    removed = []
    for e in entries:
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        if not _ATTEMPT_RE.match(name) or name in keep:
            continue
        lease = f"{path}/{name}/{LEASE}"
        _fresh(fs, lease)
        try:
            last = _modified(fs.info(lease))
        except FileNotFoundError:  # a writer that died before its lease: the folder's own age
            last = _modified(e) if _modified(e) else time.time()
        if time.time() - last > lease_s:
            _remove_quietly(fs, f"{path}/{name}")
            removed.append(name)
    return removed


def remove_stale_outputs(uri: str, keep: set[str], lease_s: float | None = None) -> list[str]:
    """Remove sub-outputs of ``uri`` (e.g. chunks of an earlier chunking) not in ``keep``,
    each only when nothing in it was written for ``lease_s`` seconds (so no live writer's)."""
    fs, path, entries = _listing(uri)
    lease_s = lease_seconds() if lease_s is None else lease_s
    removed = []
    for e in entries:
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        if e["type"] != "directory" or name in keep or name.startswith(("attempt-", "_")):
            continue
        newest = max((_modified(i) for i in fs.find(e["name"], detail=True).values()), default=0.0)
        if time.time() - newest > lease_s:
            _remove_quietly(fs, e["name"])
            removed.append(name)
    return removed


def write_table(
    uri: str, table: pa.Table, chash: str, meta: dict | None = None, rows_per_shard: int = 1_000_000
) -> dict:
    with ShardWriter(uri, chash, meta, rows_per_shard) as w:
        w.write(table)
        return w.commit()


# ---------------------------------------------------------------- reading


def _read_shard(fs: fsspec.AbstractFileSystem, uri: str, path: str, shard: dict, columns: list[str] | None) -> pa.Table:
    where = join(uri, shard["path"])
    try:
        data = fs.cat_file(f"{path}/{shard['path']}")
    except FileNotFoundError as e:
        raise CorruptOutput(f"{where}: shard named by the manifest is missing") from e
    if len(data) != shard["bytes"]:
        raise CorruptOutput(f"{where}: {len(data)} bytes, manifest promises {shard['bytes']}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != shard["sha256"]:
        raise CorruptOutput(f"{where}: sha256 {digest[:16]}… differs from the manifest's {shard['sha256'][:16]}…")
    try:
        part = pq.read_table(io.BytesIO(data), columns=columns)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise CorruptOutput(f"{where}: unreadable Parquet shard ({e})") from e
    if part.num_rows != shard["num_rows"]:
        raise CorruptOutput(f"{where}: {part.num_rows} rows, manifest promises {shard['num_rows']}")
    return part


def read_table(uri: str, columns: Iterable[str] | None = None) -> pa.Table:
    """Read a committed output, verified; raises OutputMissing when it has no manifest."""
    manifest = read_manifest(uri)
    if manifest is None:
        raise OutputMissing(f"{uri}: no {MANIFEST} (output absent or never committed)")
    fs, path = filesystem(uri)
    schema = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(manifest["schema_ipc"])))
    cols = list(columns) if columns else None
    if cols:
        missing = [c for c in cols if c not in schema.names]
        if missing:
            raise CorruptOutput(f"{uri}: no column(s) {missing}; the manifest's schema has {schema.names}")
        schema = pa.schema([schema.field(c) for c in cols])
    parts = []
    for s in manifest["shards"]:
        part = _read_shard(fs, uri, path, s, cols)
        if part.schema.names != schema.names:
            raise CorruptOutput(
                f"{join(uri, s['path'])}: columns {part.schema.names} differ from the manifest's {schema.names}"
            )
        try:
            parts.append(part.cast(schema))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise CorruptOutput(f"{join(uri, s['path'])}: schema differs from the manifest's ({e})") from e
    return pa.concat_tables(parts) if parts else schema.empty_table()


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=1, default=str).encode())


def read_json(uri: str) -> Any:
    blob = read_bytes(uri)
    try:
        return json.loads(blob)
    except ValueError as e:
        raise CorruptOutput(f"{uri}: not valid JSON ({e})") from e


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    _fresh(fs, path)
    return fs.exists(path)


def remove(uri: str) -> None:
    """Delete a file or folder (recursively) if it exists."""
    fs, path = filesystem(uri)
    _fresh(fs, path)
    _remove_quietly(fs, path)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    _write_bytes_atomic(fs, path, data)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    _fresh(fs, path)
    return fs.cat_file(path)
