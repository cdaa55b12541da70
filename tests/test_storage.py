import json

import pyarrow as pa
import pytest

from irllrec_dist import storage


def _table(n=10):
    return pa.table({"a": pa.array(range(n), pa.int64()), "b": pa.array([f"x{i}" for i in range(n)])})


def test_roundtrip_with_shards(tmp_path):
    uri = str(tmp_path / "t")
    m = storage.write_table(uri, _table(25), "h1", rows_per_shard=10)
    assert [s["num_rows"] for s in m["shards"]] == [10, 10, 5]
    assert storage.read_table(uri).equals(_table(25))
    assert storage.read_table(uri, columns=["b"]).column_names == ["b"]
    assert storage.is_complete(uri, "h1") and not storage.is_complete(uri, "h2")


def test_file_uri(tmp_path):
    uri = f"file://{tmp_path}/t"
    storage.write_table(uri, _table(), "h")
    assert storage.read_table(uri).num_rows == 10


def test_no_manifest_means_absent(tmp_path):
    uri = str(tmp_path / "t")
    w = storage.ShardWriter(uri, "h")
    w.write(_table())  # shards on disk, never committed
    with pytest.raises(storage.OutputMissing, match="no _manifest.json"):
        storage.read_table(uri)
    assert not storage.is_complete(uri)


def test_failed_writer_leaves_nothing(tmp_path):
    uri = str(tmp_path / "t")
    with pytest.raises(RuntimeError):
        with storage.ShardWriter(uri, "h") as w:
            w.write(_table())
            raise RuntimeError("killed")
    assert not any(p.name.startswith("attempt-") for p in (tmp_path / "t").iterdir())
    assert storage.read_manifest(uri) is None


def test_recommit_removes_old_attempts_once_their_lease_is_over(tmp_path, monkeypatch):
    uri = str(tmp_path / "t")

    def attempts():
        return sorted(p.name for p in (tmp_path / "t").iterdir() if p.name.startswith("attempt-"))

    first = storage.write_table(uri, _table(3), "h1")["attempt"]
    storage.write_table(uri, _table(5), "h2")
    assert first in attempts() and len(attempts()) == 2  # superseded, but inside its lease: kept
    monkeypatch.setenv("IRLLREC_ATTEMPT_LEASE_S", "0")
    last = storage.write_table(uri, _table(4), "h3")["attempt"]
    assert attempts() == [last]  # unreferenced and past the lease: removed
    assert storage.read_table(uri).num_rows == 4


def test_corrupt_shard_is_named(tmp_path):
    uri = str(tmp_path / "t")
    m = storage.write_table(uri, _table(), "h")
    shard = tmp_path / "t" / m["shards"][0]["path"]
    shard.write_bytes(b"not parquet at all")
    with pytest.raises(storage.CorruptOutput, match=r"part-00000\.parquet: 18 bytes, manifest promises \d+"):
        storage.read_table(uri)


def test_row_count_mismatch_is_caught(tmp_path):
    uri = str(tmp_path / "t")
    storage.write_table(uri, _table(), "h")
    mpath = tmp_path / "t" / "_manifest.json"
    m = json.loads(mpath.read_text())
    m["shards"][0]["num_rows"] = m["num_rows"] = 11
    mpath.write_text(json.dumps(m))
    with pytest.raises(storage.CorruptOutput, match="10 rows, manifest promises 11"):
        storage.read_table(uri)


def test_schema_mismatch_between_writes(tmp_path):
    w = storage.ShardWriter(str(tmp_path / "t"), "h")
    w.write(_table())
    with pytest.raises(ValueError, match="schema"):
        w.write(pa.table({"a": pa.array([1.0])}))
    w.abort()


def test_config_hash_is_stable():
    assert storage.config_hash({"a": 1, "b": [1, 2]}) == storage.config_hash({"b": [1, 2], "a": 1})
    assert storage.config_hash({"a": 1}) != storage.config_hash({"a": 2})
