"""Ids are text and are kept exactly, in one canonical form across CSV, JSONL and Parquet
(readers.py docstring): no float inference, integers in decimal, strings byte for byte, and
anything without an exact id (3.0, true, null, float columns) refused with file and line."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from irllrec_dist import ingest
from irllrec_dist.config import Config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data.readers import MAX_ID_BYTES, InputError

BIG = 2**64 - 1  # beyond int64: must not wrap or round
SPLITS = {"train": [(0, 5), (0, BIG), (1, 5), (2, 7), (10, 7)], "val": [(1, BIG), (2, 5)], "test": [(10, 5), (0, 7)]}
TEXT = {5: "five", BIG: "big", 7: "seven"}
CSV = {"train": "total_trn.csv", "val": "total_val.csv", "test": "total_tst.csv"}


def run(tmp_path, src, fmt, name="root"):
    cfg = Config(run_root=str(tmp_path / name))
    cfg.ingest.source, cfg.ingest.format = str(src), fmt
    report = ingest.run(cfg)
    return report, ds.load(str(tmp_path / name))


def write_csv(folder, splits, text_lines=None, raw=None):
    folder.mkdir(parents=True, exist_ok=True)
    for s, name in CSV.items():
        body = (raw or {}).get(s) or "user,item\n" + "".join(f"{u},{i}\n" for u, i in splits[s])
        (folder / name).write_bytes(body.encode() if isinstance(body, str) else body)
    if text_lines is not None:
        (folder / "item_profile.json").write_text("".join(line + "\n" for line in text_lines))
    return folder


def write_parquet(folder, columns_by_split, items=None):
    folder.mkdir(parents=True, exist_ok=True)
    for s, cols in columns_by_split.items():
        pq.write_table(pa.table(cols), folder / f"{s}.parquet")
    if items is not None:
        pq.write_table(pa.table(items), folder / "items.parquet")
    return folder


def edges_raw(data, split="train"):
    e = getattr(data, split)
    return sorted((data.user_raw[u], data.item_raw[i]) for u, i in e.tolist())


def expected_raw(split="train"):
    return sorted((str(u), str(i)) for u, i in SPLITS[split])


# ------------------------------------------------------------ one canonical form


def parquet_variants():
    """The same edges as Parquet columns of every id type a writer may choose."""

    def cols(split, user_type, item_type, dictionary=False):
        u = [u for u, _ in SPLITS[split]]
        i = [i for _, i in SPLITS[split]]
        conv = {
            "int64": lambda v: pa.array(v, pa.int64()),
            "uint64": lambda v: pa.array(v, pa.uint64()),
            "string": lambda v: pa.array([str(x) for x in v], pa.string()),
            "large_string": lambda v: pa.array([str(x) for x in v], pa.large_string()),
        }
        ua, ia = conv[user_type](u), conv[item_type](i)
        if dictionary:
            ua, ia = ua.dictionary_encode(), ia.dictionary_encode()
        return {"user": ua, "item": ia}

    return {
        "int64 users, uint64 items": {s: cols(s, "int64", "uint64") for s in SPLITS},
        "strings": {s: cols(s, "string", "string") for s in SPLITS},
        "large strings": {s: cols(s, "large_string", "large_string") for s in SPLITS},
        "dictionary-encoded strings": {s: cols(s, "string", "string", True) for s in SPLITS},
        "dictionary-encoded integers": {s: cols(s, "int64", "uint64", True) for s in SPLITS},
        "integers in train, strings elsewhere": {
            s: cols(s, *(("int64", "uint64") if s == "train" else ("string", "large_string"))) for s in SPLITS
        },
    }


@pytest.mark.parametrize("variant", sorted(parquet_variants()))
def test_csv_jsonl_and_parquet_give_the_same_dataset(tmp_path, variant):
    _, a = run(
        tmp_path,
        write_csv(tmp_path / "csv", SPLITS, [json.dumps({"iid": k, "s": t}) for k, t in TEXT.items()]),
        "csv-jsonl",
        "a",
    )
    items = {"item": pa.array(list(TEXT), pa.uint64()), "text": pa.array(list(TEXT.values()))}
    _, b = run(tmp_path, write_parquet(tmp_path / "pq", parquet_variants()[variant], items), "parquet", "b")
    for d in (a, b):
        assert d.user_raw == ["0", "1", "2", "10"]  # canonical decimals: numeric order, 0..n-1 -> themselves
        assert d.item_raw == ["5", "7", str(BIG)]
        assert d.item_text == ["five", "seven", "big"]
        for split in ("train", "val", "test"):
            assert edges_raw(d, split) == expected_raw(split)
    assert (a.train == b.train).all() and (a.val == b.val).all() and (a.test == b.test).all()


def test_jsonl_integer_and_string_ids_are_one_id(tmp_path):
    lines = [
        json.dumps({"iid": 5, "s": "five"}),
        json.dumps({"iid": "7", "s": "seven"}),
        '{"iid": 18446744073709551615, "s": "big"}',
    ]
    report, data = run(tmp_path, write_csv(tmp_path / "src", SPLITS, lines), "csv-jsonl")
    assert data.item_text == ["five", "seven", "big"] and report["items_text_without_edges"] == 0


def test_csv_integers_beyond_int64_stay_exact_and_distinct(tmp_path):
    ids = [
        "9223372036854775807",
        "9223372036854775808",
        "9223372036854775809",
        "99999999999999999999",
        "100000000000000000000",
    ]
    splits = {"train": [(0, i) for i in ids], "val": [(1, ids[0])], "test": [(1, ids[1])]}
    _, data = run(tmp_path, write_csv(tmp_path / "src", splits), "csv-jsonl")
    assert data.item_raw == ids  # distinct, exact, numeric order (by length, then digits)
    assert edges_raw(data) == sorted(("0", i) for i in ids)


def test_numeric_order_maps_integer_ids_to_themselves(tmp_path):
    rng = np.random.default_rng(0)
    items = rng.permutation(12).tolist()
    splits = {"train": [(u % 3, i) for u, i in enumerate(items)], "val": [(0, 11), (1, 0)], "test": [(2, 3)]}
    splits["val"] = [e for e in splits["val"] if e not in splits["train"]]
    splits["test"] = [e for e in splits["test"] if e not in splits["train"]]
    _, data = run(tmp_path, write_csv(tmp_path / "src", splits), "csv-jsonl")
    assert data.item_raw == [str(i) for i in range(12)]  # 9 before 10: not string order
    assert sorted(map(tuple, data.train.tolist())) == sorted(splits["train"])  # dense id == raw id


@pytest.mark.parametrize(
    "ids, order",
    [
        (["3", "03", "3.0", "+3"], ["+3", "03", "3", "3.0"]),  # four ids; not all canonical: string order
        (["10", "9", "-1"], ["-1", "10", "9"]),  # a negative is not canonical: string order
        (["b", "a", "\u00e9", "Z"], ["Z", "a", "b", "\u00e9"]),  # UTF-8 byte order
    ],
)
def test_non_canonical_ids_are_distinct_and_ordered_as_strings(tmp_path, ids, order):
    splits = {"train": [("u", i) for i in ids], "val": [], "test": []}
    _, data = run(tmp_path, write_csv(tmp_path / "src", splits), "csv-jsonl")
    assert data.item_raw == order


def test_parquet_negative_integers_and_json_minus_zero(tmp_path):
    cols = {s: {"user": pa.array([-5, 0], pa.int8()), "item": pa.array(["a", "b"])} for s in ("train",)}
    cols |= {s: {"user": pa.array([], pa.int8()), "item": pa.array([], pa.string())} for s in ("val", "test")}
    _, data = run(tmp_path, write_parquet(tmp_path / "pq", cols), "parquet")
    assert data.user_raw == ["-5", "0"]
    lines = ['{"iid": -0, "s": "zero"}']
    _, data = run(
        tmp_path, write_csv(tmp_path / "csv", {"train": [(1, 0)], "val": [], "test": []}, lines), "csv-jsonl", "root2"
    )
    assert data.item_raw == ["0"] and data.item_text == ["zero"]


# ------------------------------------------------------------ values without an exact id are refused


@pytest.mark.parametrize(
    "value, kind",
    [
        ("3.0", "a number with a fraction or exponent 3.0"),
        ("1e3", "a number with a fraction or exponent 1000.0"),
        ("true", "a boolean True"),
        ("null", "null None"),
        ("[3]", r"an array \[3\]"),
        ('{"a": 3}', r"an object \{'a': 3\}"),
        ("NaN", None),
        ("Infinity", None),
    ],
)
def test_jsonl_ids_without_an_exact_value_are_refused(tmp_path, value, kind):
    lines = [json.dumps({"iid": 5, "s": "five"}), "", f'{{"iid": {value}, "s": "x"}}']
    src = write_csv(tmp_path / "src", SPLITS, lines)
    message = (
        rf"item_profile\.json line 3: 'iid' is {kind}; expected a JSON string or integer id"
        if kind
        else rf"item_profile\.json line 3: not valid JSON \(.*{value} is not JSON\)"
    )
    with pytest.raises(InputError, match=message):
        run(tmp_path, src, "csv-jsonl")


@pytest.mark.parametrize(
    "column, type_text",
    [
        (pa.array([1.0, float("nan")]), "double"),
        (pa.array([1.0, float("inf")], pa.float32()), "float"),
        (pa.array([True, False]), "bool"),
        (pa.array([b"1", b"2"]), "binary"),
        (pa.array([[1], [2]]), r"list<(item|element): int64>"),
        (pa.array([{"a": 1}, {"a": 2}]), r"struct<a: int64>"),
        (pa.array([1, 2], pa.timestamp("s")), r"timestamp\[m?s\]"),
        (pa.array([1, 2], pa.decimal128(5, 0)), r"decimal128\(5, 0\)"),
    ],
)
def test_parquet_id_columns_without_exact_ids_are_refused(tmp_path, column, type_text):
    cols = {s: {"user": pa.array(["a", "b"]), "item": pa.array(["x", "y"])} for s in ("train", "val", "test")}
    cols["val"] = {"user": column, "item": pa.array(["x", "z"])}
    src = write_parquet(tmp_path / "src", cols)
    with pytest.raises(
        InputError,
        match=rf"val\.parquet: column 'user' has type {type_text}; expected string or "
        rf"integer ids",
    ):
        run(tmp_path, src, "parquet")


@pytest.mark.parametrize(
    "bad, where, what",
    [
        ("0, 5", "line 3", r"item id ' 5' has leading or trailing whitespace"),
        ("0,5 ", "line 3", r"item id '5 ' has leading or trailing whitespace"),
        ('0,"5\t"', "line 3", r"item id '5\\t' contains a control character"),
        ("0,a\u2028b", "line 3", r"item id 'a\\u2028b' contains a control character or line separator"),
        ("0,a\u00a0", "line 3", r"item id 'a\\xa0' has leading or trailing whitespace"),
        (
            "0," + "x" * (MAX_ID_BYTES + 1),
            "line 3",
            rf"item id 'x{{60}}'\.\.\.\(1025 in all\) is longer than {MAX_ID_BYTES} bytes",
        ),
    ],
)
def test_csv_ids_that_would_be_silently_normalised_are_refused(tmp_path, bad, where, what):
    src = write_csv(tmp_path / "src", SPLITS, raw={"val": f"user,item\n1,{BIG}\n{bad}\n"})
    with pytest.raises(InputError, match=rf"total_val\.csv {where}: {what}") as e:
        run(tmp_path, src, "csv-jsonl")
    assert len(str(e.value)) < 500


def test_jsonl_and_parquet_ids_follow_the_same_rules(tmp_path):
    src = write_csv(tmp_path / "a", SPLITS, [json.dumps({"iid": 5, "s": "x"}), json.dumps({"iid": " 7", "s": "y"})])
    with pytest.raises(InputError, match=r"item_profile\.json line 2: item id ' 7' has leading or trailing whitespace"):
        run(tmp_path, src, "csv-jsonl")
    cols = {s: {"user": pa.array(["a", "b"]), "item": pa.array(["x", "y"])} for s in ("train", "val", "test")}
    cols["test"] = {"user": pa.array(["a", "b"]).dictionary_encode(), "item": pa.array(["z", "y\x00"])}
    with pytest.raises(InputError, match=r"test\.parquet row 1: item id 'y\\x00' contains a control character"):
        run(tmp_path, write_parquet(tmp_path / "b", cols), "parquet", "r2")


def test_repeated_header_is_an_error_naming_its_line(tmp_path):
    body = "user,item\n0,5\n\nuser,item\n1,5\n"
    src = write_csv(tmp_path / "src", SPLITS, raw={"train": body})
    with pytest.raises(InputError, match=r"total_trn\.csv line 4: the header 'user,item' again; expected a data row"):
        run(tmp_path, src, "csv-jsonl")


# ------------------------------------------------------------ text keyed by ids the edges do not have


def test_text_for_an_id_without_edges_is_kept_counted_and_located(tmp_path):
    """'03' is not '3': its text is an entity of its own (a catalogue entry without
    interactions), counted with its line; item 3 gets no text. Nothing lands silently."""
    splits = {"train": [(0, 3), (1, 4)], "val": [], "test": []}
    lines = [json.dumps({"iid": 4, "s": "four"}), json.dumps({"iid": "03", "s": "zero-three"})]
    report, data = run(tmp_path, write_csv(tmp_path / "src", splits, lines), "csv-jsonl")
    assert report["items_text_without_edges"] == 1
    assert report["items_text_without_edges_sample"] == [f"{tmp_path / 'src' / 'item_profile.json'} line 2: '03'"]
    assert report["items_without_any_edge"] == 1
    assert data.item_raw == ["03", "3", "4"]  # '03' is not canonical: string order
    assert data.item_text == ["zero-three", None, "four"]


def test_text_file_keyed_differently_from_the_edges_is_an_error(tmp_path):
    splits = {"train": [(0, 3), (1, 4)], "val": [], "test": []}
    lines = [json.dumps({"iid": "item-3", "s": "three"}), json.dumps({"iid": "item-4", "s": "four"})]
    with pytest.raises(
        InputError,
        match=r"item_profile\.json: none of its 2 item ids occurs in an edge file \(first: "
        r".*item_profile\.json line 1, item id 'item-3'\)",
    ):
        run(tmp_path, write_csv(tmp_path / "src", splits, lines), "csv-jsonl")
