"""The commit protocol under concurrent and retried writers, and under a kill between any two writes.

Every assertion reads through the same verified reader the stages use
(``storage.read_table``): a committed manifest that named a missing or altered
shard would raise ``CorruptOutput`` there.
"""

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
from test_ingest import write_csv

from irllrec_dist import ingest, storage
from irllrec_dist.config import Config
from irllrec_dist.data import dataset as ds

LEASE_S = "5"  # far longer than one write here, far shorter than the default hour: GC runs all along


def _table(writer: int, rnd: int, n: int) -> pa.Table:
    return pa.table(
        {
            "writer": pa.array([writer] * n, pa.int64()),
            "round": pa.array([rnd] * n, pa.int64()),
            "x": pa.array(np.arange(n), pa.int64()),
        }
    )


def _check(t: pa.Table) -> None:
    """A complete output of one writer's one round: no mixing of attempts."""
    w, r, x = (t.column(c).to_numpy() for c in ("writer", "round", "x"))
    assert len(set(w)) == 1 and len(set(r)) == 1 and np.array_equal(x, np.arange(len(x)))


def _writer(uri: str, writer: int, rounds: int, group: bool, start) -> None:
    os.environ["IRLLREC_ATTEMPT_LEASE_S"] = LEASE_S
    start.wait()
    for rnd in range(rounds):
        n = 5 + (writer * 7 + rnd) % 40
        if group:  # two tables and a report, one commit
            w = storage.GroupWriter(uri, f"h{writer}", rows_per_shard=8)
            w.write("a", _table(writer, rnd, n))
            w.write("b", _table(writer, rnd, n + 1))
            w.commit(meta={"report": {"writer": writer, "round": rnd}})
        else:
            storage.write_table(uri, _table(writer, rnd, n), f"h{writer}", rows_per_shard=8)


def _read_loop(uri: str, group: bool, writers: list) -> int:
    """Read until every writer is done; every committed state read must verify."""
    seen = 0
    while any(p.is_alive() for p in writers):
        try:
            if group:
                m = storage.read_group(uri)
                if m is None:
                    continue
                a, b = storage.read_table(storage.join(uri, "a")), storage.read_table(storage.join(uri, "b"))
                _check(a)
                _check(b)
            else:
                _check(storage.read_table(uri))
            seen += 1
        except storage.OutputMissing:
            continue
        except storage.CorruptOutput as e:
            # A reader can lose a race against a newer commit only by reading the manifest of one
            # commit and the shards after that commit's attempt was collected, i.e. after a lease.
            raise AssertionError(f"a committed output did not verify: {e}") from e
    return seen


def _race(uri: str, n_writers: int, rounds: int, group: bool) -> None:
    """Writers in separate processes commit ``uri`` at once while this process reads it."""
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    writers = [ctx.Process(target=_writer, args=(uri, w, rounds, group, start)) for w in range(n_writers)]
    for p in writers:
        p.start()
    start.set()
    seen = _read_loop(uri, group, writers)
    for p in writers:
        p.join()
        assert p.exitcode == 0
    assert seen > 0  # the reader saw committed states while the writers ran


@pytest.mark.parametrize("group", [False, True], ids=["table", "group"])
def test_concurrent_writers_never_commit_a_missing_shard(tmp_path, monkeypatch, group):
    monkeypatch.setenv("IRLLREC_ATTEMPT_LEASE_S", LEASE_S)
    uri = str(tmp_path / "out")
    _race(uri, n_writers=4, rounds=25, group=group)
    # the survivor is one writer's last round, whole, and names only what is there
    final = storage.read_group(uri) if group else storage.read_manifest(uri)
    assert not storage.missing_shards(uri, final)
    if group:
        a = storage.read_table(storage.join(uri, "a"))
        _check(a)
        assert final["meta"]["report"] == {"writer": int(a.column("writer")[0].as_py()), "round": 24}
    else:
        _check(storage.read_table(uri))
    # superseded attempts are collected once their lease is over, never the committed one
    monkeypatch.setenv("IRLLREC_ATTEMPT_LEASE_S", "0")
    folders = [storage.join(uri, t) for t in ("a", "b")] if group else [uri]
    for f in folders:
        storage.collect_garbage(f)
        left = sorted(p for p in os.listdir(f) if p.startswith("attempt-"))
        assert left == [final["attempt"]]
    if group:
        assert storage.read_table(storage.join(uri, "b")).num_rows > 0
    else:
        _check(storage.read_table(uri))


def test_concurrent_writers_on_s3(monkeypatch):
    """The same race on a real S3 server (SeaweedFS), where the commit is one PUT."""
    from s3_server import seaweedfs

    with seaweedfs(bucket="race"):
        monkeypatch.setenv("IRLLREC_ATTEMPT_LEASE_S", LEASE_S)
        uri = "s3://race/out"
        _race(uri, n_writers=3, rounds=6, group=True)
        final = storage.read_group(uri)
        assert not storage.missing_shards(uri, final) and final["meta"]["report"]["round"] == 5
        _check(storage.read_table(storage.join(uri, "a")))


# ------------------------------------------------------------------------- kill between writes

# Runs ingest in a child that dies (os._exit, like a SIGKILL: no clean-up runs) just before its
# k-th write to the run root: a file opened for writing, a rename, or a delete.
KILLER = textwrap.dedent("""
    import os, sys
    import fsspec.implementations.local as local
    from irllrec_dist import ingest
    from irllrec_dist.config import Config

    root, source, kill_at, cold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    count = [0]

    def tick(what):
        count[0] += 1
        if count[0] == kill_at:
            os._exit(137)

    real_open, real_rm, real_replace = local.LocalFileSystem._open, local.LocalFileSystem.rm, os.replace

    def _open(self, path, mode="rb", *a, **k):
        if "w" in mode and str(path).startswith(root):
            tick(("open", path))
        return real_open(self, path, mode, *a, **k)

    def rm(self, path, *a, **k):
        tick(("rm", path))
        return real_rm(self, path, *a, **k)

    def replace(src, dst):
        tick(("replace", dst))
        return real_replace(src, dst)

    local.LocalFileSystem._open, local.LocalFileSystem.rm, os.replace = _open, rm, replace
    cfg = Config(run_root=root)
    cfg.ingest.source, cfg.ingest.format, cfg.ingest.cold_items = source, "csv-jsonl", cold
    cfg.ingest.rows_per_shard = 2
    ingest.run(cfg)
    print("writes", count[0])
""")

EDGES = {
    "train": [(u, i) for u in range(6) for i in range(5) if (u + i) % 3],
    "val": [(0, 0), (2, 1), (3, 3), (5, 4)],
    "test": [(0, 3), (1, 2), (2, 4), (4, 2)],
}
ITEM_TEXT = [f'{{"iid": {i}, "summary": "item {i} text"}}' for i in range(5)]


def _cfg(root, source, cold: float) -> Config:
    cfg = Config(run_root=str(root))
    cfg.ingest.source, cfg.ingest.format, cfg.ingest.cold_items = str(source), "csv-jsonl", cold
    cfg.ingest.rows_per_shard = 2
    return cfg


def _snapshot(root) -> dict:
    """What a reader gets from the dataset: its report and every table's rows."""
    data = ds.load(str(root))
    report = {k: v for k, v in ds.report(str(root)).items() if k != "seconds"}  # wall time differs
    return {
        "report": report,
        "train": data.train.tolist(),
        "val": data.val.tolist(),
        "cold_items": data.cold_items.tolist(),
        "items": data.item_raw,
    }


def _run_killer(root, source, kill_at: int, cold: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", KILLER, str(root), str(source), str(kill_at), str(cold)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ingest_killed_before_each_write_leaves_the_old_dataset_whole(tmp_path):
    source = write_csv(tmp_path / "raw", EDGES, items=ITEM_TEXT)
    old_root, new_root = tmp_path / "old", tmp_path / "new"
    ingest.run(_cfg(old_root, source, 0.0))
    old = _snapshot(old_root)
    ingest.run(_cfg(new_root, source, 0.34))  # the same input with a cold-user split: another dataset
    new = _snapshot(new_root)
    assert old != new and new["cold_items"]

    probe = _run_killer(tmp_path / "probe", source, 10**9, 0.34)
    assert probe.returncode == 0, probe.stderr
    n_writes = int(probe.stdout.split("writes")[-1])
    assert n_writes >= 10  # shards, leases, the manifest: the loop below covers every gap
    for k in range(1, n_writes + 1):
        root = tmp_path / f"k{k}"
        ingest.run(_cfg(root, source, 0.0))  # the committed old dataset
        killed = _run_killer(root, source, k, 0.34)
        assert killed.returncode == 137, (k, killed.stderr)
        # a reader finds the old dataset whole, or the new one whole; never a mix or a stale report
        now = _snapshot(root)
        # the commit (one rename) is the last write, so here it is always the old one, whole
        assert now == old, f"killed before write {k}: the dataset is not the old one"
        assert ds.is_committed(str(root))
        # and the retried stage finishes the new one
        ingest.run(_cfg(root, source, 0.34))
        assert _snapshot(root) == new


def test_first_ingest_killed_leaves_nothing_a_reader_takes_for_data(tmp_path):
    source = write_csv(tmp_path / "raw", EDGES, items=ITEM_TEXT)
    for k in (1, 3, 6, 9):
        root = tmp_path / f"k{k}"
        assert _run_killer(root, source, k, 0.0).returncode == 137
        assert not ds.is_committed(str(root))
        with pytest.raises(storage.OutputMissing):
            ds.load(str(root))


# ------------------------------------------------------------------------- unions and leases


def test_union_keeps_the_chunk_attempts_it_names(tmp_path, monkeypatch):
    """An intents side names its chunks' shards: collecting a chunk's garbage keeps them."""
    side = str(tmp_path / "side")
    parts = {
        f"chunk-{k:05d}": storage.write_table(storage.join(side, f"chunk-{k:05d}"), _table(0, k, 4 + k), "c")
        for k in range(3)
    }
    storage.commit_union(side, parts, "s")
    # a retry rewrites chunk 1: its manifest now names another attempt, the side still the old one
    storage.write_table(storage.join(side, "chunk-00001"), _table(1, 1, 9), "c")
    monkeypatch.setenv("IRLLREC_ATTEMPT_LEASE_S", "0")
    storage.collect_garbage(storage.join(side, "chunk-00001"))
    side_rows = storage.read_table(side)  # verified: every shard the side names is still there
    assert side_rows.num_rows == 4 + 5 + 6
    assert set(side_rows.column("writer").to_pylist()) == {0}


def test_rows_per_shard_must_be_positive(tmp_path):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="rows_per_shard"):
            storage.write_table(str(tmp_path / "t"), _table(0, 0, 3), "h", rows_per_shard=bad)
    assert storage.read_manifest(str(tmp_path / "t")) is None


def test_rows_per_shard_is_refused_at_config_validation():
    from irllrec_dist.config import ConfigError, load_config

    for bad in ("0", "-5"):
        with pytest.raises(ConfigError, match="ingest.rows_per_shard must be > 0"):
            load_config(None, [f"ingest.rows_per_shard={bad}"])
