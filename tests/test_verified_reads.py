"""Nothing read is trusted without a check: checksums, sizes, rows, schema, and shard paths
confined to their output. Each case alters a committed output the way a bad disk, a bad copy
or a hostile hand would, and the reader must name the path and what differs."""

import hashlib
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from irllrec_dist import storage


def _table(n=10, tag="x"):
    return pa.table({"a": pa.array(range(n), pa.int64()), "b": pa.array([f"{tag}{i}" for i in range(n)])})


@pytest.fixture
def out(tmp_path):
    uri = str(tmp_path / "t")
    manifest = storage.write_table(uri, _table(10), "h", rows_per_shard=4)
    return tmp_path / "t", uri, manifest


def _rewrite_manifest(folder, change):
    path = folder / "_manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def test_a_flipped_byte_is_caught_by_the_checksum(out):
    folder, uri, m = out
    shard = folder / m["shards"][1]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit: a reader without checksums may decode it
    shard.write_bytes(bytes(data))
    with pytest.raises(storage.CorruptOutput, match=r"part-00001\.parquet: sha256 [0-9a-f]{16}… differs"):
        storage.read_table(uri)


def test_truncated_extended_and_missing_shards(out):
    folder, uri, m = out
    shard = folder / m["shards"][0]["path"]
    good = shard.read_bytes()
    shard.write_bytes(good[:-7])
    with pytest.raises(
        storage.CorruptOutput, match=rf"part-00000\.parquet: {len(good) - 7} bytes, manifest promises {len(good)}"
    ):
        storage.read_table(uri)
    shard.write_bytes(good + b"\0")
    with pytest.raises(storage.CorruptOutput, match="manifest promises"):
        storage.read_table(uri)
    shard.unlink()
    with pytest.raises(storage.CorruptOutput, match=r"part-00000\.parquet: shard named by the manifest is missing"):
        storage.read_table(uri)
    assert not storage.is_complete(uri)  # a stage would redo it rather than skip it


def test_a_shard_swapped_with_a_consistent_manifest_entry_is_caught_by_schema(out):
    """Someone replaces a shard and fixes its size and checksum: the columns still must match."""
    folder, uri, m = out
    buf = io.BytesIO()
    pq.write_table(pa.table({"a": pa.array(range(4), pa.int64()), "c": pa.array([1.0] * 4)}), buf)
    (folder / m["shards"][0]["path"]).write_bytes(buf.getvalue())

    def fix(mm):
        mm["shards"][0].update(bytes=len(buf.getvalue()), sha256=hashlib.sha256(buf.getvalue()).hexdigest())

    _rewrite_manifest(folder, fix)
    with pytest.raises(storage.CorruptOutput, match=r"columns \['a', 'c'\] differ from the manifest's \['a', 'b'\]"):
        storage.read_table(uri)


@pytest.mark.parametrize(
    "path",
    [
        "../other/attempt-20260101T000000-0123456789abcdef/part-00000.parquet",
        "/etc/attempt-20260101T000000-0123456789abcdef/part-00000.parquet",
        "attempt-20260101T000000-0123456789abcdef/../../x/part-00000.parquet",
        "attempt-20260101T000000-0123456789abcdef/part-00000.parquet/../../../secret",
        "attempt-20260101T000000-0123456789abcdef/part-0.parquet",
        "s3://bucket/attempt-20260101T000000-0123456789abcdef/part-00000.parquet",
        "attempt-20260101T000000-0123456789abcdef\\..\\part-00000.parquet",
        "",
    ],
)
def test_shard_paths_are_confined_to_their_output(out, path):
    folder, uri, m = out
    _rewrite_manifest(folder, lambda mm: mm["shards"][0].update(path=path))
    with pytest.raises(storage.CorruptOutput, match="shard 0 path .* is not inside this output"):
        storage.read_table(uri)
    assert not storage.is_complete(uri)


def test_a_group_table_cannot_name_another_tables_shard(tmp_path):
    uri = str(tmp_path / "g")
    w = storage.GroupWriter(uri, "h")
    w.write("users", _table(3, "u"))
    w.write("items", _table(4, "i"))
    w.commit()
    path = tmp_path / "g" / "_group.json"
    m = json.loads(path.read_text())
    m["tables"]["items"]["shards"] = m["tables"]["users"]["shards"]
    m["tables"]["items"]["num_rows"] = 3
    path.write_text(json.dumps(m))
    with pytest.raises(storage.CorruptOutput, match=r"table 'items': shard 0 path 'users/attempt-.*' is not inside"):
        storage.read_table(storage.join(uri, "items"))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(num_rows="10"), "'num_rows' is '10' but its shards hold 10"),
        (lambda m: m.update(num_rows=11), "'num_rows' is 11 but its shards hold 10"),
        (lambda m: m.update(shards={}), "'shards' is missing or not a list"),
        (lambda m: m["shards"][0].update(num_rows=-1), "shard 0 'num_rows' is -1"),
        (lambda m: m["shards"][0].update(num_rows=True), "shard 0 'num_rows' is True"),
        (lambda m: m["shards"][0].update(bytes=1.5), "shard 0 'bytes' is 1.5"),
        (lambda m: m["shards"][0].update(sha256="abc"), "shard 0 'sha256' is 'abc'"),
        (lambda m: m["shards"].__setitem__(0, "x"), "shard 0 is not an object"),
        (lambda m: m.update(schema_ipc="zz"), "'schema_ipc' is missing or unreadable"),
        (lambda m: m.pop("config_hash"), "'config_hash' is missing"),
        (lambda m: m.update(format_version=99), "manifest format 99; expected 2"),
    ],
)
def test_a_malformed_manifest_is_named_with_what_is_wrong(out, change, message):
    folder, uri, _ = out
    _rewrite_manifest(folder, change)
    with pytest.raises(storage.CorruptOutput) as e:
        storage.read_table(uri)
    assert str(e.value).startswith(str(folder / "_manifest.json")) and message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("blob", [b"", b"{not json", b"[1, 2]", b"\xff\xfe", b"null"])
def test_an_unreadable_manifest_is_corrupt_not_absent(out, blob):
    folder, uri, _ = out
    (folder / "_manifest.json").write_bytes(blob)
    with pytest.raises(storage.CorruptOutput, match="_manifest.json: manifest is not"):
        storage.read_table(uri)
    assert not storage.is_complete(uri)


def test_a_manifest_of_the_format_without_checksums_is_not_trusted(out):
    folder, uri, _ = out
    _rewrite_manifest(folder, lambda m: m.update(format_version=1))
    assert storage.read_manifest(uri) is None and not storage.is_complete(uri)
    with pytest.raises(storage.OutputMissing):
        storage.read_table(uri)


def test_read_json_names_the_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_bytes(b'{"a": 1')
    with pytest.raises(storage.CorruptOutput, match=r"metrics\.json: not valid JSON"):
        storage.read_json(str(path))


def test_a_good_output_reads_back_exactly(out):
    _, uri, m = out
    assert [s["num_rows"] for s in m["shards"]] == [4, 4, 2]
    assert storage.read_table(uri).equals(_table(10))
    assert storage.is_complete(uri, "h") and not storage.missing_shards(uri, m)
    assert os.path.basename(m["shards"][0]["path"]) == "part-00000.parquet"
