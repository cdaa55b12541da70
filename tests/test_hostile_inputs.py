"""Text, CSV and Parquet inputs as a hostile user writes them: every bad file ends in ONE
InputError line naming the file, the line as an editor shows it and what was expected, every
valid oddity (BOM, CRLF, U+2028 in JSON strings, dictionary/large_string Parquet columns, extra
columns) is read, and a byte-level fuzz of valid files of each format never ends in another
exception or a crash (readers.py docstring has the rules)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from irllrec_dist import ingest
from irllrec_dist.config import Config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data.readers import InputError

CSV = {"train": "total_trn.csv", "val": "total_val.csv", "test": "total_tst.csv"}
GOOD = {"train": "user,item\n0,0\n0,1\n1,1\n2,2\n", "val": "user,item\n0,2\n1,0\n", "test": "user,item\n2,0\n1,2\n"}
ITEMS = [{"iid": 0, "s": "zero"}, {"iid": 1, "s": "one"}, {"iid": 2, "s": "two"}]


def write_csv(folder, raw=None, items=None):
    """CSV edge files (raw bytes or text per split) and an optional item_profile.json (raw)."""
    folder.mkdir(parents=True, exist_ok=True)
    for s, name in CSV.items():
        body = (raw or {}).get(s, GOOD[s])
        (folder / name).write_bytes(body if isinstance(body, bytes) else body.encode())
    if items is not None:
        (folder / "item_profile.json").write_bytes(items if isinstance(items, bytes) else items.encode())
    return folder


def jsonl(records, sep="\n"):
    return "".join(json.dumps(r, ensure_ascii=False) + sep for r in records)


def write_parquet(folder, tables=None, items=None):
    folder.mkdir(parents=True, exist_ok=True)
    for s in CSV:
        t = (tables or {}).get(s)
        if t is None:
            rows = [line.split(",") for line in GOOD[s].splitlines()[1:]]
            t = pa.table({"user": [int(u) for u, _ in rows], "item": [int(i) for _, i in rows]})
        if isinstance(t, bytes):
            (folder / f"{s}.parquet").write_bytes(t)
        else:
            pq.write_table(t, folder / f"{s}.parquet")
    if items is not None:
        if isinstance(items, bytes):
            (folder / "items.parquet").write_bytes(items)
        else:
            pq.write_table(items, folder / "items.parquet")
    return folder


def run(tmp_path, src, fmt, name="root"):
    cfg = Config(run_root=str(tmp_path / name))
    cfg.ingest.source, cfg.ingest.format = str(src), fmt
    return ingest.run(cfg), ds.load(str(tmp_path / name))


def refused(tmp_path, src, fmt, pattern):
    with pytest.raises(InputError, match=pattern) as e:
        run(tmp_path, src, fmt)
    msg = str(e.value)
    assert "\n" not in msg and "\r" not in msg and str(src) in msg and len(msg) < 2500, msg
    return msg


# ------------------------------------------------------------ line numbers are the file's


@pytest.mark.parametrize(
    "body, line, first",
    [
        ("user,item\n0,0\n\n0,1\n0,0\n", 5, 2),  # a blank line counts
        ("\ufeffuser,item\r\n0,0\r\n\r\n0,1\r\n0,0\r\n", 5, 2),  # BOM and CRLF
        ("\n\nuser,item\n0,0\n0,0\n", 5, 4),  # blank lines before the header
        ('user,item,note\n0,0,"two\nlines"\n0,1,x\n0,0,y\n', 5, 2),  # a quoted field across lines
        ('user,item,note\n0,1,"a ""quoted"" word"\n"0","0",\n0,0,"x\n\ny"\n', 4, 3),  # quotes, empty quoted line
    ],
)
def test_csv_messages_name_the_line_as_in_the_file(tmp_path, body, line, first):
    src = write_csv(tmp_path / "src", {"train": body})
    refused(
        tmp_path,
        src,
        "csv-jsonl",
        rf"total_trn\.csv line {line}: duplicate edge \(user 0, item 0\), first seen at "
        rf".*total_trn\.csv line {first};",
    )


def test_overlapping_splits_name_both_lines(tmp_path):
    src = write_csv(tmp_path / "src", {"train": "user,item\n0,0\n\n0,1\n", "test": "user,item\n2,0\n1,2\n0,1\n"})
    refused(
        tmp_path,
        src,
        "csv-jsonl",
        r"total_trn\.csv line 4 and .*total_tst\.csv line 4: edge \(user 0, item 1\) is "
        r"in both 'train' and 'test'",
    )


def test_jsonl_line_numbers_count_blank_and_crlf_lines(tmp_path):
    body = '{"iid": 0, "s": "a"}\r\n\r\n   \n{"iid": 1, "s": "b"}\n{"iid": 0, "s": "c"}\n'
    src = write_csv(tmp_path / "src", items=body)
    refused(tmp_path, src, "csv-jsonl", r"item_profile\.json line 5: item id 0 already has text at .*line 1;")


def test_wrong_field_count_names_its_line(tmp_path):
    src = write_csv(tmp_path / "src", {"val": 'user,item\n0,2\n"1\n",0\n1,2,9\n'})
    refused(
        tmp_path,
        src,
        "csv-jsonl",
        r"total_val\.csv line 5: 3 field\(s\) '1,2,9'; expected 2 as in the header 'user,item'",
    )


# ------------------------------------------------------------ valid oddities are read


def test_bom_crlf_extra_columns_and_quoted_ids_are_read(tmp_path):
    raw = {
        "train": '\ufeffuser,item,rating,ts\r\n0,0,5,1\r\n"0",1,3,2\r\n1,"1",4,3\r\n2,2,,4\r\n',
        "val": "user,item\n0,2\n1,0",  # no final newline
        "test": "item,user\n0,2\n2,1\n",
    }  # columns in another order
    items = "\ufeff" + jsonl(ITEMS, "\r\n")
    report, data = run(tmp_path, write_csv(tmp_path / "src", raw, items), "csv-jsonl")
    assert [report["splits"][s]["edges"] for s in CSV] == [4, 2, 2]
    assert data.item_text == ["zero", "one", "two"] and data.user_raw == ["0", "1", "2"]


def test_rows_longer_than_a_block_and_very_wide_headers_are_read_in_linear_time(tmp_path):
    """pyarrow parses in 1 MiB blocks: a 3 MB row (a long extra column) and a 200,000-column header
    are valid files (a header check that is quadratic in the columns took minutes here)."""
    wide = "user,item," + ",".join(f"c{i}" for i in range(200_000)) + "\n"
    raw = {"val": "user,item,note\n0,2," + "x" * 3_000_000 + "\n1,0,y\n", "test": wide}
    t0 = time.monotonic()
    report, _ = run(tmp_path, write_csv(tmp_path / "src", raw), "csv-jsonl")
    assert report["splits"]["val"]["edges"] == 2 and report["splits"]["test"]["edges"] == 0
    assert time.monotonic() - t0 < 30


def test_header_only_files_are_empty_splits(tmp_path):
    report, _ = run(tmp_path, write_csv(tmp_path / "src", {"val": "user,item", "test": "user,item\n"}), "csv-jsonl")
    assert report["splits"]["val"]["edges"] == report["splits"]["test"]["edges"] == 0


def test_jsonl_line_separators_inside_strings_are_text(tmp_path):
    """U+2028/U+2029, \\x0b, \\x1c and \\x85 inside a JSON string are not line breaks (str.splitlines would
    split there and break the record)."""
    text = "para one\u2028para two\u2029end \x85 x"
    items = jsonl([{"iid": 0, "s": text}, {"iid": 1, "s": "b"}]).encode()
    _, data = run(tmp_path, write_csv(tmp_path / "src", items=items), "csv-jsonl")
    assert data.item_text[0] == text and data.item_text[1] == "b"


def test_parquet_dictionary_and_large_string_columns_are_read(tmp_path):
    tables = {
        "train": pa.table(
            {
                "user": pa.array(["0", "0", "1", "2"]).dictionary_encode(),
                "item": pa.array(["0", "1", "1", "2"], pa.large_string()),
                "intents": pa.array([["a"], [], ["b"], ["c"]]),
            }
        )
    }  # extra nested column: ignored
    items = pa.table(
        {
            "item": pa.array([0, 1, 2], pa.uint8()).dictionary_encode(),
            "text": pa.array(["zero", "one", "zero"]).dictionary_encode(),
        }
    )
    _, data = run(tmp_path, write_parquet(tmp_path / "src", tables, items), "parquet")
    assert data.item_text == ["zero", "one", "zero"] and data.user_raw == ["0", "1", "2"]
    items = pa.table({"item": pa.array(["0", "1", "2"]), "text": pa.array(["a", None, "c"], pa.large_string())})
    report, data = run(tmp_path, write_parquet(tmp_path / "src2", None, items), "parquet", "root2")
    assert data.item_text == ["a", None, "c"] and report["item_text_null_records"] == 1


# ------------------------------------------------------------ bad text files: one line each

BAD_CSV = {
    "invalid UTF-8": (
        {"val": b"user,item\n0,2\n1,\xff\n"},
        r"total_val\.csv line 3: invalid UTF-8 at byte offset 16 \(b'\\xff\\n'\)",
    ),
    "NUL byte": (
        {"val": b"user,item\n0,2\n1,0\x00\n"},
        r"total_val\.csv line 3: NUL byte at byte offset 17; expected text",
    ),
    "empty file": ({"train": b""}, r"total_trn\.csv: empty file; expected a header line 'user,item'"),
    "only blank lines": ({"train": b"\n\r\n\n"}, r"total_trn\.csv: empty file"),
    "only a header in train": ({"train": b"user,item\n"}, r"total_trn\.csv: no training edges"),
    "duplicate header column": (
        {"test": b"user,item,user\n1,2,3\n"},
        r"total_tst\.csv line 1: column 'user' appears 2 times in the header",
    ),
    "wrong delimiter": (
        {"test": b"user;item\n1;2\n"},
        r"total_tst\.csv: missing column\(s\) \['user', 'item'\].*found \['user;item'\] "
        r"\(the header must be comma-separated\)",
    ),
    "tab-separated": ({"test": b"user\titem\n1\t2\n"}, r"missing column\(s\).*\['user\\titem'\]"),
    "no header": ({"test": b"1,2\n2,0\n"}, r"total_tst\.csv: missing column\(s\) \['user', 'item'\]"),
    "lone carriage return": (
        {"val": b"user,item\n0,2\r1,0\n"},
        r"total_val\.csv line 2: carriage return not followed by a newline at byte offset 13",
    ),
    "too few fields": ({"val": b"user,item\n0,2\n1\n"}, r"total_val\.csv line 3: 1 field\(s\) '1'; expected 2"),
    "blank-looking line of spaces": ({"val": b"user,item\n0,2\n   \n"}, r"total_val\.csv line 3: 1 field\(s\) '   '"),
    "unterminated quote": ({"val": b'user,item\n0,2\n"1,0\n'}, r"total_val\.csv line 3: "),
    "quoted newline in an id": (
        {"val": b'user,item\n0,2\n"1\n",0\n'},
        r"total_val\.csv line 3: user id '1\\n' contains a control character",
    ),
    "empty quoted id": ({"val": b'user,item\n0,2\n"",0\n'}, r"total_val\.csv line 3: empty 'user'; expected an id"),
    "long garbage line": (
        {"val": b"user,item\n" + b"9," * 5000 + b"\n"},
        r"total_val\.csv line 2: 5001 field\(s\) '9,9,9.*expected 2",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_CSV))
def test_bad_csv_is_one_line(tmp_path, name):
    raw, pattern = BAD_CSV[name]
    msg = refused(tmp_path, write_csv(tmp_path / "src", raw), "csv-jsonl", pattern)
    assert len(msg) < 700


BAD_JSONL = {
    "invalid UTF-8": (b'{"iid": 0, "s": "a"}\n{"iid": 1, "s": "\xc3("}\n', r"line 2: invalid UTF-8 at byte offset 38"),
    "NUL byte": (b'{"iid": 0, "s": "a\x00"}\n', r"line 1: NUL byte at byte offset 18"),
    "raw newline in a string": (b'{"iid": 0, "s": "a\rb"}\n', r"line 1: not valid JSON \(Invalid control character at"),
    "duplicate key": (b'{"iid": 0, "iid": 1, "s": "a"}\n', r"line 1: key 'iid' appears twice in one object"),
    "deep nesting": (b'{"iid": 0, "s": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", r"line 1: not valid JSON"),
    "deeply nested inner JSON": (
        json.dumps({"iid": 0, "s": "{" + '"a":{' * 50_000}).encode() + b"\n",
        r"line 1: text looks like JSON but does not parse",
    ),
    "text is a number": (b'{"iid": 0, "s": 5}\n', r"line 1: text is int; expected a string"),
    "not an object": (b"[1, 2]\n", r"line 1: an array; expected a JSON object"),
    "two text fields": (b'{"iid": 0, "s": "a", "t": "b"}\n', r"line 1: expected exactly one text field beside 'iid'"),
    "NaN text": (b'{"iid": 0, "s": NaN}\n', r"line 1: not valid JSON \(ValueError: NaN is not JSON\)"),
    "empty text": (b'{"iid": 0, "s": "  "}\n', r"line 1: item id 0 has empty text"),
    # valid JSON, not Unicode: Arrow could not store it, and would fail far from the line
    "unpaired surrogate in text": (
        b'{"iid": 0, "s": "a"}\n{"iid": 1, "s": "a\\ud800b"}\n',
        r"line 2: unpaired UTF-16 surrogate '\\ud800' in 'a\\ud800b'",
    ),
    "unpaired surrogate in an id": (b'{"iid": "\\udfff", "s": "a"}\n', r"line 1: unpaired UTF-16 surrogate"),
    "unpaired surrogate in inner JSON": (
        (json.dumps({"iid": 0, "s": '{"summarization": "x\\udc00"}'}) + "\n").encode(),
        r"line 1: unpaired UTF-16 surrogate '\\udc00'",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_JSONL))
def test_bad_jsonl_is_one_line(tmp_path, name):
    items, pattern = BAD_JSONL[name]
    msg = refused(tmp_path, write_csv(tmp_path / "src", items=items), "csv-jsonl", rf"item_profile\.json {pattern}")
    assert len(msg) < 700


def test_hostile_values_cannot_break_the_message_line(tmp_path):
    nasty = "x\n\r\u2028\u2029\x1b[31m" * 50
    items = (json.dumps({"iid": nasty, "s": "t"}) + "\n").encode()
    msg = refused(
        tmp_path, write_csv(tmp_path / "src", items=items), "csv-jsonl", r"item_profile\.json line 1: item id"
    )
    assert "\x1b" not in msg and "\u2028" not in msg and len(msg) < 700


def parquet_bytes(table, **kw) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **kw)
    return sink.getvalue().to_pybytes()


def invalid_utf8_strings(n_bad_at: int, n: int = 3) -> pa.Array:
    good = [b"ok"] * n
    good[n_bad_at] = b"\xff\xfe"
    return pa.array(good, pa.binary()).view(pa.string())  # Arrow does not check when viewing


BAD_PARQUET = {
    "not Parquet": ({"val": b"PAR1 this is not parquet"}, None, r"val\.parquet: unreadable Parquet file"),
    "empty file": ({"val": b""}, None, r"val\.parquet: unreadable Parquet file"),
    "truncated": (
        {"val": parquet_bytes(pa.table({"user": [1, 2], "item": [3, 4]}))[:-30]},
        None,
        r"val\.parquet: unreadable Parquet file",
    ),
    "text column of integers": (
        None,
        pa.table({"item": [0, 1], "text": [5, 6]}),
        r"items\.parquet: column 'text' has type int64; expected a string column",
    ),
    "text column of lists": (
        None,
        pa.table({"item": [0, 1], "text": [["a"], ["b"]]}),
        r"items\.parquet: column 'text' has type list<.*>; expected a string column",
    ),
    "invalid UTF-8 text": (
        None,
        pa.table({"item": [0, 1, 2], "text": invalid_utf8_strings(1)}),
        r"items\.parquet row 1: 'text' is not valid UTF-8",
    ),
    "invalid UTF-8 dictionary text": (
        None,
        pa.table({"item": [0, 1, 2], "text": invalid_utf8_strings(2).dictionary_encode()}),
        r"items\.parquet row 2: 'text' is not valid UTF-8",
    ),
    "invalid UTF-8 id": (
        {"test": pa.table({"user": invalid_utf8_strings(0, 2), "item": ["0", "1"]})},
        None,
        r"test\.parquet row 0: 'user' is not valid UTF-8",
    ),
    "null id": (
        {"test": pa.table({"user": pa.array([1, None]), "item": [0, 1]})},
        None,
        r"test\.parquet row 1: empty 'user'; expected an id",
    ),
    "duplicate columns": (
        {"test": pa.Table.from_arrays([pa.array([1]), pa.array([2]), pa.array([3])], names=["user", "item", "user"])},
        None,
        r"test\.parquet: column 'user' appears 2 times",
    ),
    "missing column": ({"test": pa.table({"user": [1]})}, None, r"test\.parquet: missing column\(s\) \['item'\]"),
}


@pytest.mark.parametrize("name", sorted(BAD_PARQUET))
def test_bad_parquet_is_one_line(tmp_path, name):
    tables, items, pattern = BAD_PARQUET[name]
    refused(tmp_path, write_parquet(tmp_path / "src", tables, items), "parquet", pattern)


def test_parquet_row_count_bomb_is_refused_from_the_footer(tmp_path):
    """3M equal rows compress to a few KB (RLE): the footer's row count is refused before decoding."""
    n = 3_000_000
    blob = parquet_bytes(
        pa.table({"user": pa.repeat(pa.scalar(1), n), "item": pa.repeat(pa.scalar(2), n)}), compression="zstd"
    )
    assert len(blob) * 100 + 100_000 < n
    refused(
        tmp_path,
        write_parquet(tmp_path / "src", {"val": blob}),
        "parquet",
        rf"val\.parquet: declares {n} rows in {len(blob)} bytes; expected at most 100 rows per byte",
    )


def test_parquet_dictionary_text_bomb_is_refused_before_decoding(tmp_path):
    """One 200 KB text shared by 2000 items is a few KB on disk and 400 MB decoded."""
    n = 2000
    text = pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int32()), pa.array(["ab" * 100_000]))
    items = pa.table({"item": pa.array(list(range(n))), "text": text})
    blob = parquet_bytes(items, compression="zstd")
    tables = {"train": pa.table({"user": [0] * n, "item": list(range(n))})}
    refused(
        tmp_path,
        write_parquet(tmp_path / "src", tables, blob),
        "parquet",
        rf"items\.parquet: 'text' decodes to {n * 200_000} bytes from a file of {len(blob)} bytes; "
        rf"expected at most 1000",
    )


# ------------------------------------------------------------ fuzz: nothing but success or one InputError line

FUZZ = textwrap.dedent(r"""
    import json, os, pathlib, shutil, sys, faulthandler
    faulthandler.enable()
    import numpy as np
    from irllrec_dist import ingest
    from irllrec_dist.config import Config
    from irllrec_dist.data.readers import InputError

    fmt, src, root, budget = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    targets = sys.argv[5:]
    rng = np.random.default_rng(17)
    INSERTS = [b'"', b"\n", b"\x00", b"\r", b",", b"\xff", b"{", b"\xe2\x80\xa8"]

    def mutations(data):
        step = max(1, len(data) // budget)
        for pos in range(0, len(data), step):
            yield f"truncate@{pos}", data[:pos]
            flipped = bytearray(data); flipped[pos] ^= 0xFF
            yield f"flip@{pos}", bytes(flipped)
            rnd = bytearray(data); rnd[pos] = int(rng.integers(256))
            yield f"random@{pos}", bytes(rnd)
            ins = INSERTS[(pos // step) % len(INSERTS)]
            yield f"insert{ins!r}@{pos}", data[:pos] + ins + data[pos:]

    counts = {"ok": 0, "input_error": 0}
    bad = []
    for name in targets:
        path = src / name
        original = path.read_bytes()
        for label, blob in mutations(original):
            path.write_bytes(blob)
            cfg = Config(run_root=root)
            cfg.ingest.source, cfg.ingest.format = str(src), fmt
            try:
                ingest.run(cfg, force=True)
                counts["ok"] += 1
            except InputError as e:
                msg = str(e)
                if "\n" in msg or "\r" in msg or str(src) not in msg:
                    bad.append([name, label, "InputError not one line naming the file", msg[:300]])
                counts["input_error"] += 1
            except Exception as e:
                bad.append([name, label, type(e).__name__, str(e)[:300]])
        path.write_bytes(original)
    print(json.dumps({"counts": counts, "bad": bad[:20], "n_bad": len(bad)}))
""")


@pytest.fixture
def fast_dir(tmp_path):
    """Hundreds of small writes per fuzz test: on tmpfs where there is one (the disk is shared)."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    d = pathlib.Path(tempfile.mkdtemp(prefix="irllrec-fuzz-", dir="/dev/shm"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fuzz(tmp_path, fmt, src, targets, budget):
    out = subprocess.run(
        [sys.executable, "-c", FUZZ, fmt, str(src), str(tmp_path / "root"), str(budget), *targets],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # A crash (segfault: negative return code) or an uncaught error fails here.
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n_bad"] == 0, res["bad"]
    assert res["counts"]["input_error"] > 0 and res["counts"]["ok"] > 0, res["counts"]
    return res


def test_fuzz_csv_and_jsonl(fast_dir):
    tmp_path = fast_dir
    src = write_csv(
        tmp_path / "src",
        items=jsonl([{"iid": 0, "s": '{"summarization": "zero"}'}, {"iid": 1, "s": "one"}, {"iid": 2, "s": "two"}]),
    )
    fuzz(tmp_path, "csv-jsonl", src, ["total_trn.csv", "item_profile.json"], budget=40)


def test_fuzz_parquet(fast_dir):
    tmp_path = fast_dir
    items = pa.table({"item": pa.array(["0", "1", "2"]).dictionary_encode(), "text": ["zero", "one", "two"]})
    src = write_parquet(tmp_path / "src", None, items)
    fuzz(tmp_path, "parquet", src, ["train.parquet", "items.parquet"], budget=40)


def test_fuzz_pickles(fast_dir):
    tmp_path = fast_dir
    import pickle

    import numpy as np
    import scipy.sparse as sp

    src = tmp_path / "src"
    src.mkdir()
    for s, name, cls, proto in (
        ("train", "trn_mat.pkl", "csr_matrix", 4),
        ("val", "val_mat.pkl", "coo_matrix", 2),
        ("test", "tst_mat.pkl", "csc_array", 5),
    ):
        rows = [tuple(map(int, line.split(","))) for line in GOOD[s].splitlines()[1:]]
        e = np.array(rows)
        m = getattr(sp, cls)(sp.coo_matrix((np.ones(len(e), np.float32), (e[:, 0], e[:, 1])), shape=(3, 3)))
        (src / name).write_bytes(pickle.dumps(m, protocol=proto))
    fuzz(tmp_path, "rlmrec-pickle", src, ["trn_mat.pkl", "val_mat.pkl", "tst_mat.pkl"], budget=40)
