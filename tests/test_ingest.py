import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from conftest import SHARED_DATA

from irllrec_dist import ingest, storage
from irllrec_dist.config import Config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data.readers import InputError
from irllrec_dist.data.validation import check_vectors

GOOD = {"train": [(0, 0), (0, 1), (1, 1), (2, 2)], "val": [(0, 2), (1, 0)], "test": [(2, 0), (1, 2)]}
CSV_NAMES = {"train": "total_trn.csv", "val": "total_val.csv", "test": "total_tst.csv"}


def write_csv(folder, splits=GOOD, items=None, raw_override=None):
    folder.mkdir(parents=True, exist_ok=True)
    for s, edges in splits.items():
        body = "user,item\n" + "".join(f"{u},{i}\n" for u, i in edges)
        (folder / CSV_NAMES[s]).write_text(raw_override.get(s, body) if raw_override else body)
    if items is not None:
        (folder / "item_profile.json").write_text("".join(line + "\n" for line in items))
    return folder


def write_parquet(folder, splits=GOOD, items=None, drop_col=None):
    folder.mkdir(parents=True, exist_ok=True)
    for s, edges in splits.items():
        t = pa.table({"user": [u for u, _ in edges], "item": [i for _, i in edges]})
        if drop_col and s == "train":
            t = t.drop([drop_col])
        pq.write_table(t, folder / f"{s}.parquet")
    if items is not None:
        pq.write_table(
            pa.table({"item": [i for i, _ in items], "text": [t for _, t in items]}), folder / "items.parquet"
        )
    return folder


def write_pickles(folder, shape=(3, 3), val_shape=None, bad_row=False, value=1.0, payload=None):
    folder.mkdir(parents=True, exist_ok=True)
    for s, name in (("train", "trn_mat.pkl"), ("val", "val_mat.pkl"), ("test", "tst_mat.pkl")):
        e = np.array(GOOD[s])
        m = sp.coo_matrix(
            (np.full(len(e), value), (e[:, 0], e[:, 1])), shape=val_shape if (s == "val" and val_shape) else shape
        )
        if bad_row and s == "test":
            m.row[0] = 7
        with open(folder / name, "wb") as f:
            pickle.dump(payload if (payload is not None and s == "train") else m, f)
    return folder


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def run_ingest(tmp_path, source, fmt, **kw):
    cfg = Config(run_root=str(tmp_path / "root"))
    cfg.ingest.source, cfg.ingest.format = str(source), fmt
    for k, v in kw.items():
        setattr(cfg.ingest, k, v)
    return ingest.run(cfg)


BAD_CASES = {
    "missing column": (
        lambda d: write_parquet(d, drop_col="item"),
        "parquet",
        r"train\.parquet: missing column\(s\) \['item'\]; expected \['user', 'item'\]",
    ),
    "duplicate edge": (
        lambda d: write_csv(d, {**GOOD, "train": GOOD["train"] + [(1, 1)]}),
        "csv-jsonl",
        r"total_trn\.csv line 6: duplicate edge \(user 1, item 1\), first seen at .*total_trn\.csv line 4",
    ),
    "splits overlap": (
        lambda d: write_csv(d, {**GOOD, "test": GOOD["test"] + [(0, 1)]}),
        "csv-jsonl",
        r"edge \(user 0, item 1\) is in both 'train' and 'test'.*expected disjoint splits",
    ),
    "empty text": (
        lambda d: write_csv(d, items=['{"iid": 0, "summary": "good"}', '{"iid": 1, "summary": "  "}']),
        "csv-jsonl",
        r"item_profile\.json line 2: item id 1 has empty text",
    ),
    "empty text parquet": (
        lambda d: write_parquet(d, items=[(0, "fine"), (2, "")]),
        "parquet",
        r"items\.parquet row 1: item id 2 has empty text",
    ),
    "text twice": (
        lambda d: write_csv(d, items=['{"iid": 0, "s": "a"}', '{"iid": 0, "s": "b"}']),
        "csv-jsonl",
        r"item_profile\.json line 2: item id 0 already has text at .*line 1",
    ),
    "broken json line": (
        lambda d: write_csv(d, items=['{"iid": 0, "s": "a"}', '{"iid": 1, "s": ']),
        "csv-jsonl",
        r"item_profile\.json line 2: not valid JSON",
    ),
    "broken inner json": (
        lambda d: write_csv(d, items=['{"iid": 0, "s": "{\\"summarization\\": "}']),
        "csv-jsonl",
        r"item_profile\.json line 1: text looks like JSON but does not parse",
    ),
    "no id in text": (
        lambda d: write_csv(d, items=['{"name": 0, "s": "a"}']),
        "csv-jsonl",
        r"item_profile\.json line 1: no id field",
    ),
    "empty id": (
        lambda d: write_csv(d, raw_override={"val": "user,item\n0,2\n,0\n"}),
        "csv-jsonl",
        r"total_val\.csv line 3: empty 'user'; expected an id",
    ),
    "id out of range": (
        lambda d: write_pickles(d, bad_row=True),
        "rlmrec-pickle",
        r"tst_mat\.pkl entry 0: user id 7 out of range; expected 0 <= id < 3",
    ),
    "shape mismatch": (
        lambda d: write_pickles(d, val_shape=(4, 3)),
        "rlmrec-pickle",
        r"val_mat\.pkl: shape \(4, 3\) differs from trn_mat\.pkl's \(3, 3\)",
    ),
    "non-binary value": (
        lambda d: write_pickles(d, value=2.0),
        "rlmrec-pickle",
        r"trn_mat\.pkl: entry 0 .* has value 2\.0; expected implicit feedback",
    ),
    "pickle outside allow-list": (
        lambda d: write_pickles(d, payload=Evil()),
        "rlmrec-pickle",
        r"trn_mat\.pkl: pickle asks for posix\.system, which is not in the allow-list",
    ),
    "pickle of a dict": (
        lambda d: write_pickles(d, payload={"a": 1}),
        "rlmrec-pickle",
        r"trn_mat\.pkl: expected a scipy sparse matrix, got dict",
    ),
    "unreadable parquet": (
        lambda d: (write_parquet(d), (d / "val.parquet").write_bytes(b"garbage")),
        "parquet",
        r"val\.parquet: unreadable Parquet file",
    ),
    "missing file": (
        lambda d: (write_csv(d), (d / "total_tst.csv").unlink()),
        "csv-jsonl",
        r"no test edge list file; expected one of",
    ),
    "no training edges": (
        lambda d: write_csv(d, {**GOOD, "train": []}),
        "csv-jsonl",
        r"total_trn\.csv: no training edges",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_input_is_rejected_with_a_clear_message(tmp_path, name):
    make, fmt, message = BAD_CASES[name]
    make(tmp_path / "src")
    with pytest.raises(InputError, match=message):
        run_ingest(tmp_path, tmp_path / "src", fmt)
    # no half-written output: nothing under the dataset folder is readable as a table
    assert not ds.is_committed(str(tmp_path / "root"))


def test_bad_vectors_are_rejected():
    ids = np.array([10, 11])
    with pytest.raises(InputError, match=r"emb\.parquet: vectors have shape \(2, 3\); expected \(n, 4\)"):
        check_vectors(ids, np.zeros((2, 3)), 4, "emb.parquet")
    with pytest.raises(InputError, match=r"emb\.parquet: id 11 has a NaN/Inf vector"):
        check_vectors(ids, np.array([[0.0, 1], [np.nan, 0]]), 2, "emb.parquet")


def test_counted_not_dropped(tmp_path):
    """Cold users/items in val/test and deduplicated repeats are counted in the report."""
    splits = {"train": [(0, 0), (0, 1), (1, 1), (1, 1)], "val": [(0, 2), (5, 0)], "test": [(1, 2), (0, 9)]}
    src = write_csv(tmp_path / "src", splits, items=['{"iid": 0, "s": "a"}', '{"iid": 42, "s": "only text"}'])
    report = run_ingest(tmp_path, src, "csv-jsonl", on_duplicate="dedupe")
    assert report["splits"]["train"]["duplicates_dropped"] == 1
    assert report["splits"]["val"]["users_without_train"] == 1
    assert report["splits"]["val"]["users_without_train_sample"] == ["5"]
    assert report["splits"]["test"]["items_without_train"] == 2  # items 2 and 9
    assert report["items_without_any_edge"] == 1  # item 42 has text only
    assert report["items_text_without_edges"] == 1 and report["items_text_without_edges_sample"][0].endswith(
        "item_profile.json line 2: '42'"
    )  # kept as an entity, counted with its line
    assert report["item_with_text"] == 2
    data = ds.load(str(tmp_path / "root"))
    assert data.item_raw == ["0", "1", "2", "9", "42"]
    assert data.item_text[4] == "only text" and data.item_text[1] is None
    assert len(data.train) == 3


def test_string_ids_and_rerun_skips(tmp_path, tiny_raw):
    report = run_ingest(tmp_path, tiny_raw, "parquet")
    data = ds.load(str(tmp_path / "root"))
    assert data.n_users == 1000 and data.user_raw[0] == "u0000000"
    assert report["item_with_text"] == data.n_items
    assert (data.train[:, 0] < data.n_users).all() and (data.train[:, 1] < data.n_items).all()
    manifest = storage.read_manifest(str(tmp_path / "root" / "dataset" / "train"))
    again = run_ingest(tmp_path, tiny_raw, "parquet")
    assert again["config_hash"] == report["config_hash"]
    assert storage.read_manifest(str(tmp_path / "root" / "dataset" / "train")) == manifest  # not rewritten


def test_xrec_profile_text_is_unwrapped(tmp_path):
    inner = json.dumps({"summarization": "Fans of tacos would enjoy it."})
    src = write_csv(tmp_path / "src", items=[json.dumps({"iid": 0, "business summary": inner})])
    run_ingest(tmp_path, src, "csv-jsonl")
    assert ds.load(str(tmp_path / "root")).item_text[0] == "Fans of tacos would enjoy it."


@pytest.mark.skipif(not (SHARED_DATA / "rlmrec-amazon").exists(), reason="shared data not present")
def test_shared_rlmrec_amazon(tmp_path):
    r = run_ingest(tmp_path, SHARED_DATA / "rlmrec-amazon", "rlmrec-pickle")
    assert (r["n_users"], r["n_items"]) == (11000, 9332)
    assert [r["splits"][s]["edges"] for s in ("train", "val", "test")] == [120464, 40290, 40106]
    assert [r["splits"][s]["users"] for s in ("val", "test")] == [9857, 9860]


@pytest.mark.skipif(not (SHARED_DATA / "xrec-yelp").exists(), reason="shared data not present")
def test_shared_xrec_yelp(tmp_path):
    r = run_ingest(tmp_path, SHARED_DATA / "xrec-yelp", "csv-jsonl")
    assert (r["n_users"], r["n_items"], r["item_with_text"]) == (15962, 14085, 14085)
    assert [r["splits"][s]["edges"] for s in ("train", "val", "test")] == [314944, 39368, 39368]
    data = ds.load(str(tmp_path / "root"))
    assert data.item_raw[:3] == ["0", "1", "2"]  # 0-based integer ids map to themselves
    assert data.item_text[5].startswith("Fans of craft beer")
