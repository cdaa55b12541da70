"""Pickled matrices (ingest.format=rlmrec-pickle) are untrusted: every valid variant scipy and
numpy write is read, and every crafted one ends in one InputError line naming the file, before
scipy or an allocation sized by the file's declarations could touch it (readers.py docstring)."""

import copyreg
import json
import pickle
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from irllrec_dist import ingest
from irllrec_dist.config import Config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data.readers import DECLARED_SLACK, InputError, load_pickled_matrix

try:
    from numpy._core.multiarray import _reconstruct as np_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as np_reconstruct

EDGES = {"train": [(0, 0), (0, 1), (1, 1), (2, 2)], "val": [(0, 2), (1, 0)], "test": [(2, 0), (1, 2)]}
FILES = {"train": "trn_mat.pkl", "val": "val_mat.pkl", "test": "tst_mat.pkl"}
CLASSES = ["coo_matrix", "csr_matrix", "csc_matrix", "coo_array", "csr_array", "csc_array"]


def matrix(edges, shape=(3, 3), cls="coo_matrix", dtype=np.float32, index=np.int32):
    e = np.array(edges, dtype=np.int64).reshape(-1, 2)
    m = sp.coo_matrix((np.ones(len(e), dtype), (e[:, 0].astype(index), e[:, 1].astype(index))), shape=shape)
    return getattr(sp, cls)(m)


def write(folder, train=None, protocol=4, shape=(3, 3), **kw):
    """The three RLMRec files; ``train`` replaces trn_mat.pkl's object (crafted or not)."""
    folder.mkdir(parents=True, exist_ok=True)
    for s, name in FILES.items():
        obj = train if (s == "train" and train is not None) else matrix(EDGES[s], shape, **kw)
        (folder / name).write_bytes(pickle.dumps(obj, protocol=protocol))
    return folder


def run_ingest(tmp_path, source):
    cfg = Config(run_root=str(tmp_path / "root"))
    cfg.ingest.source, cfg.ingest.format = str(source), "rlmrec-pickle"
    return ingest.run(cfg)


class Crafted:
    """Pickles exactly like a scipy sparse class with an arbitrary state: what a hostile file holds."""

    def __init__(self, cls, state):
        self.cls, self.state = cls, state

    @property
    def __class__(self):  # the pickler checks that __newobj__'s class is the object's
        return self.cls

    def __reduce_ex__(self, protocol):
        if protocol < 2:
            return (copyreg._reconstructor, (self.cls, object, None), self.state)
        return (copyreg.__newobj__, (self.cls,), self.state)


class RawArray:
    """Pickles like an ndarray whose shape, dtype and bytes are whatever the file says."""

    def __init__(self, shape, dtype, raw, version=1):
        self.shape, self.dtype, self.raw, self.version = shape, dtype, raw, version

    def __reduce__(self):
        return (np_reconstruct, (np.ndarray, (0,), b"b"), (self.version, self.shape, self.dtype, False, self.raw))


def csr_state(indptr, indices, data=None, shape=(3, 3)):
    indices = np.asarray(indices, dtype=np.int32)
    return {
        "_shape": shape,
        "indptr": np.asarray(indptr, dtype=np.int32),
        "indices": indices,
        "data": np.ones(len(indices), np.float32) if data is None else data,
        "maxprint": 50,
    }


def coo_state(row, col, data=None, shape=(3, 3)):
    row = np.asarray(row, dtype=np.int32)
    return {
        "_shape": shape,
        "coords": (row, np.asarray(col, dtype=np.int32)),
        "data": np.ones(len(row), np.float32) if data is None else data,
        "has_canonical_format": False,
    }


def assert_one_line(msg: str, name: str):
    assert "\n" not in msg and "\r" not in msg and name in msg and len(msg) < 2500, msg


# ------------------------------------------------------------ valid variants are accepted


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("cls", CLASSES)
def test_every_protocol_and_sparse_class_reads_the_same_edges(tmp_path, cls, protocol):
    for index in (np.int32, np.int64):
        f = tmp_path / f"m{index.__name__}.pkl"
        f.write_bytes(pickle.dumps(matrix(EDGES["train"], (3, 4), cls, np.float64, index), protocol=protocol))
        rows, cols, shape = load_pickled_matrix(str(f))
        assert sorted(zip(rows.tolist(), cols.tolist())) == EDGES["train"] and shape == (3, 4)
    empty = tmp_path / "empty.pkl"  # protocols 0-2 pickle b'' as bytes(): admitted without arguments only
    empty.write_bytes(pickle.dumps(getattr(sp, cls)((3, 4), dtype=np.float32), protocol=protocol))
    rows, cols, shape = load_pickled_matrix(str(empty))
    assert rows.size == cols.size == 0 and shape == (3, 4)


def test_ingest_of_csc_arrays_under_protocol_5_equals_coo_under_4(tmp_path):
    run_ingest(tmp_path / "a", write(tmp_path / "coo", protocol=4))
    run_ingest(tmp_path / "b", write(tmp_path / "csc", protocol=5, cls="csc_array", dtype=np.float64))
    a, b = ds.load(str(tmp_path / "a" / "root")), ds.load(str(tmp_path / "b" / "root"))
    assert (a.train == b.train).all() and (a.val == b.val).all() and (a.test == b.test).all()
    assert sorted(map(tuple, a.train.tolist())) == EDGES["train"]


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_old_scipy_row_col_state_and_big_endian_arrays_are_read(tmp_path, protocol):
    """scipy < 1.13 pickled COO as row/col; a big-endian machine writes '>' dtypes."""
    state = {
        "_shape": (np.int64(3), np.int32(3)),
        "row": np.array([0, 2], ">i8"),
        "col": np.array([1, 2], ">i4"),
        "data": np.ones(2, ">f8"),
    }  # numpy integers in the shape arrive as numpy scalars
    f = tmp_path / "old.pkl"
    f.write_bytes(pickle.dumps(Crafted(sp.coo_matrix, state), protocol=protocol))
    rows, cols, shape = load_pickled_matrix(str(f))
    assert rows.tolist() == [0, 2] and cols.tolist() == [1, 2] and shape == (3, 3)


# ------------------------------------------------------------ crafted internals are refused

BAD_CSR = {
    # indptr that scipy would walk out of bounds or turn into edges the file does not hold
    "indptr decreases": (csr_state([0, 3, 1, 4], [0, 1, 2, 0]), r"indptr decreases at position 2 \(3 -> 1\)"),
    "indptr does not start at 0": (csr_state([1, 2, 3, 4], [0, 1, 2, 0]), r"indptr starts at 1; expected 0"),
    "indptr ends past nnz": (csr_state([0, 1, 2, 9], [0, 1, 2]), r"indptr ends at 9 with 3 indices and 3 values"),
    "indptr too short for the shape": (csr_state([0, 1, 3], [0, 1, 2]), r"indptr has 3 entries; expected 3 \+ 1"),
    "index beyond the columns": (
        csr_state([0, 1, 2, 3], [0, 1, 3]),
        r"entry 2: item id 3 out of range; expected 0 <= id < 3",
    ),
    "negative index": (csr_state([0, 1, 2, 3], [0, -1, 2]), r"entry 1: item id -1 out of range"),
    "data shorter than indices": (
        csr_state([0, 1, 2, 3], [0, 1, 2], np.ones(2, np.float32)),
        r"indptr ends at 3 with 3 indices and 2 values; expected all three equal",
    ),
    "float indices": (
        {**csr_state([0, 1, 2, 3], [0, 1, 2]), "indices": np.array([0.0, 1.0, 2.0])},
        r"'indices' is a 1-d array of float64; expected a 1-d integer array",
    ),
    "2-d indptr": (
        {**csr_state([0, 1, 2, 3], [0, 1, 2]), "indptr": np.array([[0, 1], [2, 3]], np.int32)},
        r"'indptr' is a 2-d array",
    ),
    "uint64 index beyond int64": (
        {**csr_state([0, 1, 2, 3], [0, 1, 2]), "indices": np.array([0, 1, 2**63], np.uint64)},
        r"'indices' position 2 is 9223372036854775808; expected an index below 2\*\*63",
    ),
    "object indices": (
        {**csr_state([0, 1, 2, 3], [0, 1, 2]), "indices": np.array([0, 1, 2], dtype=object)},
        r"numpy dtype 'O8' \(only numeric dtypes are admitted\)",
    ),
    "object data": (
        {**csr_state([0, 1, 2, 3], [0, 1, 2]), "data": np.array([1, 1, 1], dtype=object)},
        r"numpy dtype 'O8'",
    ),
    "structured dtype": (
        {**csr_state([0, 1, 2, 3], [0, 1, 2]), "data": np.ones(3, dtype=[("a", "f4")])},
        r"numpy dtype 'V4'",
    ),
    "string array": ({**csr_state([0, 1, 2, 3], [0, 1, 2]), "indices": np.array(["0", "1", "2"])}, r"numpy dtype 'U1'"),
    "missing indptr": (
        {k: v for k, v in csr_state([0, 1, 2, 3], [0, 1, 2]).items() if k != "indptr"},
        r"'indptr' is NoneType; expected a numpy array",
    ),
    "list instead of array": (
        {**csr_state([0, 1, 2, 3], [0, 1, 2]), "indices": [0, 1, 2]},
        r"'indices' is list; expected a numpy array",
    ),
    "shape of three": (csr_state([0, 1, 2, 3], [0, 1, 2], shape=(3, 3, 1)), r"shape is \(3, 3, 1\); expected two"),
    "negative shape": (csr_state([0, 1, 2, 3], [0, 1, 2], shape=(3, -3)), r"shape is \(3, -3\)"),
    "float shape": (csr_state([0, 1, 2, 3], [0, 1, 2], shape=(3.0, 3)), r"shape is \(3\.0, 3\)"),
    "value not 1": (
        csr_state([0, 1, 2, 3], [0, 1, 2], np.array([1, 5, 1], np.float32)),
        r"entry 1 \(user 1, item 1\) has value 5\.0; expected implicit feedback",
    ),
    "NaN value": (csr_state([0, 1, 2, 3], [0, 1, 2], np.array([1, np.nan, 1], np.float64)), r"has value nan"),
}

BAD_COO = {
    "row/col lengths differ": (
        coo_state([0, 1, 2], [0, 1]),
        r"has 3 rows, 2 cols and 3 values; expected equal lengths",
    ),
    "row beyond the shape": (coo_state([0, 7], [0, 1]), r"entry 1: user id 7 out of range; expected 0 <= id < 3"),
    "negative col": (coo_state([0, 1], [0, -2]), r"entry 1: item id -2 out of range"),
    "coords not a pair": ({**coo_state([0], [0]), "coords": (np.array([0], np.int32),)}, r"coords are"),
    "bytes shorter than the shape": (
        {**coo_state([0], [0]), "data": RawArray((10**9,), np.dtype("f8"), b"\0" * 8)},
        r"'data' holds 8 bytes; expected 1000000000 x 8 for shape",
    ),
    "bytes longer than the shape": (
        {**coo_state([0], [0]), "data": RawArray((1,), np.dtype("f4"), b"\0" * 64)},
        r"'data' holds 64 bytes; expected 1 x 4",
    ),
    "raw data is a list": (
        {**coo_state([0], [0]), "data": RawArray((1,), np.dtype("f4"), [1.0])},
        r"'data' data is list; expected the array's bytes",
    ),
    "state is not a dict": (("not", "a", "dict"), r"coo_array state is tuple, not a dict"),
}


@pytest.mark.parametrize("name", sorted(BAD_CSR))
def test_crafted_csr_internals_are_refused(tmp_path, name):
    state, message = BAD_CSR[name]
    src = write(tmp_path / "src", train=Crafted(sp.csr_matrix, state), protocol=4)
    with pytest.raises(InputError, match=message) as e:
        run_ingest(tmp_path, src)
    assert_one_line(str(e.value), "trn_mat.pkl")
    assert not ds.is_committed(str(tmp_path / "root"))


@pytest.mark.parametrize("protocol", [1, 5])
@pytest.mark.parametrize("name", sorted(BAD_COO))
def test_crafted_coo_internals_are_refused(tmp_path, name, protocol):
    state, message = BAD_COO[name]
    src = write(tmp_path / "src", train=Crafted(sp.coo_array, state), protocol=protocol)
    with pytest.raises(InputError, match=message) as e:
        run_ingest(tmp_path, src)
    assert_one_line(str(e.value), "trn_mat.pkl")


def test_csc_index_out_of_range_names_the_user_side(tmp_path):
    state = csr_state([0, 1, 2, 3], [0, 1, 3])  # CSC: indptr over columns (items), indices are users
    src = write(tmp_path / "src", train=Crafted(sp.csc_matrix, state))
    with pytest.raises(InputError, match=r"trn_mat\.pkl entry 2: user id 3 out of range; expected 0 <= id < 3"):
        run_ingest(tmp_path, src)


class Call:
    """Pickles as a call of ``fn(*args)`` (fn found by module and name)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


HOSTILE_GLOBALS = {
    "bytes(n) allocates n bytes": (Call(bytes, 10**12), r"pickle holds bytes\(\) with arguments"),
    "codecs with another codec": (
        Call(__import__("_codecs").encode, "x", "rot13"),
        r"_codecs\.encode of something other than latin-1 text",
    ),
    "eval": (Call(eval, "1+1"), r"pickle asks for (builtins|__builtin__)\.eval, which is not in the allow-list"),
    "numpy.load": (Call(np.load, "x"), r"pickle asks for numpy\..*load.*not in the allow-list"),
    "scipy class with constructor arguments": (Call(sp.csr_matrix, (3, 3)), r"csr_matrix constructed with arguments"),
    "ndarray subclass": (Call(np_reconstruct, np.matrix, (0,), b"b"), r"pickle asks for numpy\.matrix"),
    "dtype of objects": (Call(np.dtype, "O8", False, True), r"numpy dtype 'O8'"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_GLOBALS))
def test_allow_listed_globals_refuse_hostile_arguments(tmp_path, name):
    obj, message = HOSTILE_GLOBALS[name]
    src = write(tmp_path / "src", train=obj, protocol=2)
    with pytest.raises(InputError, match=message) as e:
        run_ingest(tmp_path, src)
    assert_one_line(str(e.value), "trn_mat.pkl")


def pickle_bytes_with_length(opcode: bytes, declared: int) -> bytes:
    return b"\x80\x05" + opcode + declared.to_bytes(8, "little") + b"abc"


@pytest.mark.parametrize(
    "blob, message",
    [
        (pickle_bytes_with_length(b"\x96", 2**40), r"not a readable pickle near byte"),  # BYTEARRAY8 of 1 TiB
        (pickle_bytes_with_length(b"\x8e", 2**40), r"not a readable pickle near byte"),  # BINBYTES8
        (pickle_bytes_with_length(b"\x8d", 2**40), r"not a readable pickle near byte"),  # BINUNICODE8
        (
            b"\x80\x04\x95" + (2**40).to_bytes(8, "little") + b"N.",
            r"pickle frame at byte 2 declares 1099511627776 bytes",
        ),
        (b"\x80\x02" + b"}" * 200_000 + b".", r"more than 100000 opcodes"),
        # found by the fuzz: a LONG_BINPUT index makes the C unpickler grow its memo to that size
        (b"\x80\x02}r" + (2**24).to_bytes(4, "little") + b".", r"pickle stores memo entry 16777216 at byte 3"),
        (b"(dp99999999\n.", r"pickle stores memo entry 99999999 at byte 2"),
        (b"", r"empty file"),
        (b"not a pickle at all", r"not a readable pickle"),
        (pickle.dumps(matrix(EDGES["train"]), protocol=4)[:-40], r"pickle frame at byte 2 declares \d+ bytes but"),
        (pickle.dumps(matrix(EDGES["train"]), protocol=2)[:-40], r"not a readable pickle"),
    ],
)
def test_declared_lengths_are_checked_against_the_bytes_present(tmp_path, blob, message):
    src = write(tmp_path / "src")
    (src / "trn_mat.pkl").write_bytes(blob)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=message) as e:
            run_ingest(tmp_path, src)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_one_line(str(e.value), "trn_mat.pkl")
    assert peak < 64 << 20, f"peak {peak} bytes traced while refusing a {len(blob)}-byte pickle"


# ------------------------------------------------------------ declared shapes are bounded


def test_declared_shape_bound_is_exact(tmp_path):
    """3 users and 3 items occur: a declared 2*3 + 1024 = 1030 is admitted (the padding is counted
    as entities without any edge), 1031 is refused naming the file and the bound."""
    ok = run_ingest(tmp_path / "ok", write(tmp_path / "ok_src", shape=(3 * 2 + DECLARED_SLACK, 3)))
    assert ok["n_users"] == 1030 and ok["users_without_any_edge"] == 1027
    with pytest.raises(
        InputError,
        match=r"trn_mat\.pkl: declared shape gives 1031 users but only 3 distinct user "
        r"ids occur in the matrices; expected at most 2 x 3 \+ 1024 = 1030",
    ) as e:
        run_ingest(tmp_path / "bad", write(tmp_path / "bad_src", shape=(3 * 2 + DECLARED_SLACK + 1, 3)))
    assert_one_line(str(e.value), "trn_mat.pkl")


@pytest.mark.parametrize("cls", ["coo_matrix", "csr_matrix", "csc_array"])
def test_huge_declared_shape_allocates_nothing_per_declared_id(tmp_path, cls):
    """A 1 KB file declaring 10^12 x 10^12 (CSR can only declare huge columns: its indptr is
    in the file) is refused without allocating per declared id (traced peak)."""
    shape = (3, 10**12) if cls == "csr_matrix" else (10**12, 10**12) if cls == "coo_matrix" else (10**12, 3)
    src = write(tmp_path / "src", shape=shape, cls=cls)
    assert (src / "trn_mat.pkl").stat().st_size < 1024
    tracemalloc.start()
    try:
        with pytest.raises(
            InputError,
            match=r"trn_mat\.pkl: declared shape gives 1000000000000 (users|items) but "
            r"only 3 distinct .* expected at most 2 x 3 \+ 1024 = 1030",
        ):
            run_ingest(tmp_path, src)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"traced peak {peak} bytes"


def test_a_declared_range_of_ten_million_stays_within_memory_bound(tmp_path):
    """10^7 declared users used to cost an arange and a raw-id string per declared user (~1 GB)."""
    src = write(tmp_path / "src", shape=(10**7, 3))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"declared shape gives 10000000 users"):
            run_ingest(tmp_path, src)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"traced peak {peak} bytes"


MEASURE = textwrap.dedent("""
    import json, resource, sys
    import numpy, pyarrow, pyarrow.parquet, scipy.sparse  # imports are not what is measured
    from irllrec_dist import ingest
    from irllrec_dist.config import Config
    from irllrec_dist.data.readers import InputError
    cfg = Config(run_root=sys.argv[2])
    cfg.ingest.source, cfg.ingest.format = sys.argv[1], "rlmrec-pickle"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        ingest.run(cfg)
        msg = None
    except InputError as e:
        msg = str(e)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"msg": msg, "grew_kib": after - before}))
""")


def test_huge_declared_shape_peak_rss_in_a_fresh_process(tmp_path):
    src = write(tmp_path / "src", shape=(10**12, 10**12))
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(src), str(tmp_path / "root")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["msg"] and "trn_mat.pkl" in res["msg"] and "expected at most" in res["msg"]
    assert_one_line(res["msg"], "trn_mat.pkl")
    assert res["grew_kib"] < 64 * 1024, f"peak RSS grew by {res['grew_kib']} KiB"


def test_cli_exits_2_with_one_line(tmp_path):
    src = write(tmp_path / "src", shape=(10**12, 10**12))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "irllrec_dist.ingest",
            f"run_root={tmp_path / 'root'}",
            f"ingest.source={src}",
            "ingest.format=rlmrec-pickle",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ingest: ") and "trn_mat.pkl" in last and "expected at most" in last
    assert "Traceback" not in out.stderr
