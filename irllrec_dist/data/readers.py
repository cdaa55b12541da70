"""Readers for the raw input formats. Each returns a ``RawDataset``: edges per
split with their source file and a row locator (for error messages), and
optional per-entity text. The readers enforce the input rules below (what a
file must look like); ``validation.py`` does the cross-file checks (duplicates,
overlapping splits, ...) so every format gets the same ones.

Input rules (the files are untrusted: every violation is an ``InputError`` whose
message is one line naming the file, the line/row/entry and what was expected)

Ids are text and are kept exactly; the one canonical form, across formats, is
a string:
- CSV: every ``user``/``item`` field is read as a string, byte for byte: no
  type inference, so ``7``, ``07``, ``7.0`` and ``99999999999999999999`` are
  four different ids (none is rounded through a float).
- JSONL: a JSON string is the id as written; a JSON integer is written in
  decimal (``3`` -> ``"3"``, so ``{"iid": 3}`` and ``{"iid": "3"}`` name the
  same item; ``-0`` -> ``"0"``). Any other JSON value (``3.0``, ``1e3``,
  ``true``, ``null``, arrays, objects) is an error: it has no exact id.
- Parquet: string, large_string and dictionary-encoded string columns as
  written; integer columns (int8..int64, uint8..uint64) in decimal (a uint64
  beyond int64 stays exact). Float, boolean, binary, temporal and nested
  columns are errors.
- Every id is non-empty, at most ``MAX_ID_BYTES`` bytes of UTF-8, without
  leading or trailing whitespace, control characters (Unicode Cc: NUL, tab,
  CR, ...), U+2028/U+2029 or U+FEFF. Such ids are refused, not normalised:
  ``" 7"`` silently becoming ``"7"`` (or not) would merge or split ids.
- Dense ids (validation.py): pickled matrices keep their row/column numbers.
  Otherwise, when every id of a side is a canonical non-negative decimal
  integer (``0`` or ``[1-9][0-9]*``, any length) the ids are numbered in
  numeric order, so ids 0..n-1 map to themselves; else in the order of their
  UTF-8 bytes. ``03`` is not canonical, so a side with ``03`` and ``3`` has
  two ids and is ordered as strings.
- Text records whose id occurs in no edge file are kept as entities without
  edges (a catalogue entry nobody interacted with yet: the cold-start case)
  and counted in the report (``items_text_without_edges`` with a sample of
  file/line/id); a text file none of whose ids occurs in any edge file is an
  error (it is keyed differently from the edge lists).

Where: text files (CSV, JSONL) name ``line N``, the physical line as an editor
shows it (1-based, the CSV header is line 1, blank lines count; a CSV field
quoted across lines moves the later lines with it). Parquet names ``row N``,
the 0-based row index (as pyarrow numbers rows); pickles name ``entry N``,
the 0-based position in the matrix's stored arrays.

Text files are UTF-8; a UTF-8 byte-order mark at the start is accepted and
ignored. Invalid UTF-8 and NUL bytes are errors (line and byte offset). Lines
end with ``\\n`` or ``\\r\\n``; JSONL is split on ``\\n`` only, so U+2028/U+2029
inside a JSON string are text, not line breaks; a CSV ``\\r`` not followed by
``\\n`` is an error.

CSV: comma-separated, RFC 4180 quoting; a header naming ``user`` and ``item``
once each (other columns are ignored); every row has the header's number of
fields; empty lines are skipped; a row that repeats the header (``user,item``)
is an error. JSONL: one object per line with one id key and one text field,
keys unique; blank lines skipped; NaN/Infinity and unpaired UTF-16 surrogate
escapes (``"\\ud800"``: valid JSON, not Unicode) are errors. Parquet strings
are checked for UTF-8 too (Arrow does not check them on read).

Sizes are bounded by what a file holds, never by what it declares:
- Pickles are rebuilt from validated arrays without running scipy: the
  unpickler maps the scipy sparse classes (coo/csr/csc, matrix and array,
  every module path scipy used) to an inert holder of their state, numpy
  arrays to a holder of dtype/shape/bytes, and admits numeric dtypes only (no
  object arrays). Length-prefixed opcodes are checked against the bytes
  present before the unpickler allocates (``pickletools`` pass), memo
  entries must be numbered in order (the C unpickler sizes its memo by the
  largest index it is given), at most ``MAX_PICKLE_OPCODES`` opcodes, no
  persistent ids or out-of-band buffers. Each array's byte length must equal its
  shape times its item size; index arrays are 1-D integers, CSR/CSC
  ``indptr`` starts at 0, never decreases and ends at nnz, indices lie in
  the shape, and only then are the edges built (numpy only). Protocols 0-5,
  scipy sparse matrices and arrays, COO/CSR/CSC are accepted.
- A declared shape may pad the ids that occur with edgeless ones by at most
  their number plus ``DECLARED_SLACK``: n <= 2 * (distinct ids in the three
  matrices) + 1024 per side, so memory stays proportional to the edges in the
  files (RLMRec's matrices declare exactly the ids they use).
- Parquet: at most ``PARQUET_ROWS_PER_BYTE`` rows per byte of file and
  ``PARQUET_EXPANSION`` bytes of decompressed/decoded column data per byte of
  file (each plus a small floor), checked from the footer before reading and,
  for dictionary-encoded text, before decoding it per row.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import json
import math
import pickle
import pickletools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from irllrec_dist import storage

SPLITS = ("train", "val", "test")

MAX_ID_BYTES = 1024
DECLARED_SLACK = 1024
MAX_PICKLE_OPCODES = 100_000
PARQUET_ROWS_PER_BYTE = 100
PARQUET_EXPANSION = 1000

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` on one line: control characters and line/paragraph separators escaped (a
    value taken from a file cannot break the message), cut after ``limit`` characters."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + f"...[{len(text) - limit} more characters]"
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def show(value, limit: int = 60) -> str:
    """A raw value for a message: its repr (quoted, non-printable characters escaped), cut
    to about ``limit`` characters."""
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        return repr(value[:limit]) + f"...({len(value)} in all)"
    try:
        r = repr(value)
    except Exception:  # noqa: BLE001 -- e.g. RecursionError on a deeply nested value
        r = f"<{type(value).__name__}>"
    return r if len(r) <= limit else r[:limit] + "..."


class InputError(ValueError):
    """Bad input: the message names the file, the row or id, and what was expected. It is
    always one line (see ``one_line``), whatever the file put into it."""

    def __init__(self, message: str = "", *args):
        super().__init__(one_line(message), *args)


@dataclass
class IdColumn:
    """One id column. ``codes[r]`` is row r's id as an index into ``values``, the column's
    distinct ids in canonical form (large_string). ``values`` None: integer ids in a declared
    range (pickled matrices), ``codes`` are the ids themselves."""

    codes: np.ndarray
    values: pa.Array | None = None

    def __len__(self) -> int:
        return len(self.codes)

    def raw(self, row: int) -> str:
        c = int(self.codes[row])
        return str(c) if self.values is None else self.values[c].as_py()


def _row_label(i: int) -> str:
    return f"row {i}"


def _entry_label(i: int) -> str:
    return f"entry {i}"


@dataclass
class RawEdges:
    file: str
    users: IdColumn
    items: IdColumn
    locate: Callable[[int], str] = _row_label  # row index -> "line N" / "row N" / "entry N"

    def where(self, idx: int) -> str:
        return f"{self.file} {self.locate(int(idx))}"


@dataclass
class RawText:
    file: str
    ids: IdColumn
    texts: list[str | None]
    locate: Callable[[int], str] = _row_label

    def where(self, idx: int) -> str:
        return f"{self.file} {self.locate(int(idx))}"


@dataclass
class RawDataset:
    splits: dict[str, RawEdges]
    item_text: RawText | None = None
    user_text: RawText | None = None
    # Declared id ranges (pickled matrices carry a shape); None = infer from ids.
    n_users: int | None = None
    n_items: int | None = None
    extra: dict = field(default_factory=dict)


def _read_bytes(uri: str) -> bytes:
    """The whole file. A missing or unreadable file is bad input; other OS errors (storage
    unreachable, ...) are left to the stage's storage error path."""
    try:
        return storage.read_bytes(uri)
    except FileNotFoundError as e:
        raise InputError(f"{uri}: file not found") from e
    except (IsADirectoryError, NotADirectoryError, PermissionError) as e:
        raise InputError(f"{uri}: cannot be read as a file ({type(e).__name__}); expected a readable file") from e


@contextlib.contextmanager
def _content_errors(uri: str, what: str):
    """Whatever a parser library raises on hostile bytes (after they were read) is bad input."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 -- the file's content is at fault, not the code
        raise InputError(f"{uri}: {what} ({type(e).__name__}: {one_line(str(e), 300)})") from e


def check_declared_range(n: int, present: int, side: str, where: str) -> None:
    """A declared id range (pickled shape) may exceed the number of distinct ids that occur in
    the edges by at most that number plus DECLARED_SLACK: every declared id becomes a row of
    the entity table, so the bound keeps memory proportional to the edges present."""
    bound = 2 * present + DECLARED_SLACK
    if n > bound:
        raise InputError(
            f"{where}: declared shape gives {n} {side}s but only {present} distinct {side} ids "
            f"occur in the matrices; expected at most 2 x {present} + {DECLARED_SLACK} = {bound} "
            f"(a declared range may add at most that many {side}s without any edge)"
        )


# ---------------------------------------------------------------- pickles


class _PickleRefused(Exception):
    """Something in the pickle that a scipy sparse matrix of numeric numpy arrays never holds."""


class _SparseStub:
    """Stands in for a pickled scipy sparse matrix or array: it receives the pickled state
    (a dict of arrays and the shape) and runs no scipy code."""

    fmt = "coo"
    cls_name = "coo_matrix"
    state = None

    def __init__(self, *args, **kwargs):
        if args or kwargs:
            raise _PickleRefused(f"{self.cls_name} constructed with arguments")

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise _PickleRefused(f"{self.cls_name} state is {type(state).__name__}, not a dict")
        self.state = state


class _ObjectMarker:
    """``builtins.object`` as the base argument of ``copyreg._reconstructor`` (protocols 0/1)."""


class _NdarrayMarker:
    """``numpy.ndarray`` as the subtype argument of ``numpy.core.multiarray._reconstruct``."""


# numpy's dtype codes of plain numbers; no object, string, void/structured or datetime types.
_NUMERIC_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}


class _DtypeStub:
    """``numpy.dtype(code, align, copy)`` + its BUILD state, checked before a dtype exists."""

    def __init__(self, code=None, align=False, copy=False, *rest):
        if not isinstance(code, str) or code not in _NUMERIC_DTYPES or rest:
            raise _PickleRefused(f"numpy dtype {show(code)} (only numeric dtypes are admitted)")
        self.code, self.state = code, None

    def __setstate__(self, state):
        self.state = state

    def dtype(self) -> np.dtype:
        dt = np.dtype(self.code)
        st = self.state
        if st is not None:
            # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
            if not (
                isinstance(st, tuple)
                and len(st) >= 8
                and st[1] in ("<", ">", "|", "=")
                and st[2] is None
                and st[3] is None
                and st[4] is None
            ):
                raise _PickleRefused(
                    f"numpy dtype {self.code} with state {show(st)} (a plain numeric dtype has no subarray or fields)"
                )
            if st[1] in ("<", ">"):
                dt = dt.newbyteorder(st[1])
        return dt


class _ArrayStub:
    """An ndarray's dtype, shape and bytes as pickled; turned into an array by ``_to_array``."""

    def __init__(self):
        self.shape = self.dtype = self.raw = None
        self.fortran = False

    def __setstate__(self, state):  # ndarray.__setstate__: ([version,] shape, dtype, is_fortran, rawdata)
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _PickleRefused(f"ndarray state {show(state)}")
        self.shape, self.dtype, self.fortran, self.raw = state


def _np_reconstruct(subtype=None, shape=None, dtype=None, *rest):
    if subtype is not _NdarrayMarker or rest:
        raise _PickleRefused("numpy _reconstruct of something other than a plain ndarray")
    return _ArrayStub()


def _np_frombuffer(buf=None, dtype=None, shape=None, order="C", *rest):
    """numpy's protocol-5 reduction: ``_frombuffer(PickleBuffer, dtype, shape, order)`` (in-band
    the buffer arrives as bytes or bytearray)."""
    if rest:
        raise _PickleRefused("numpy _frombuffer with extra arguments")
    a = _ArrayStub()
    a.raw, a.dtype, a.shape, a.fortran = buf, dtype, shape, order == "F"
    return a


def _np_scalar(dtype=None, raw=None, *rest):
    """A numpy scalar (e.g. a shape entry that was a numpy integer): a Python int/float."""
    if not isinstance(dtype, _DtypeStub) or rest:
        raise _PickleRefused("numpy scalar of a non-numeric dtype")
    dt = dtype.dtype()
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != dt.itemsize:
        raise _PickleRefused(f"numpy scalar of {dt} with {show(raw)}")
    return np.frombuffer(bytes(raw), dtype=dt)[0].item()


def _codecs_encode(obj=None, encoding="utf-8", *rest):
    """Protocols 0-2 pickle bytes as ``_codecs.encode(latin-1 text, 'latin1')``."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or rest:
        raise _PickleRefused("_codecs.encode of something other than latin-1 text")
    return obj.encode("latin-1")


def _empty_bytes(*args):
    """Protocols 0-2 pickle b'' as ``bytes()``; ``bytes(n)`` would allocate n bytes."""
    if args:
        raise _PickleRefused("bytes() with arguments")
    return b""


def _copyreg_reconstructor(cls=None, base=None, state=None, *rest):
    """Protocols 0/1 rebuild a plain object as ``copyreg._reconstructor(cls, object, None)``."""
    if (
        not (isinstance(cls, type) and issubclass(cls, _SparseStub))
        or base is not _ObjectMarker
        or state is not None
        or rest
    ):
        raise _PickleRefused("copyreg._reconstructor of something other than a scipy sparse matrix")
    return cls()


_SPARSE_MODULES = (
    "scipy.sparse",
    "scipy.sparse._coo",
    "scipy.sparse.coo",
    "scipy.sparse._csr",
    "scipy.sparse.csr",
    "scipy.sparse._csc",
    "scipy.sparse.csc",
    "scipy.sparse._arrays",
)
_SPARSE_STUBS = {
    f"{fmt}_{kind}": type(f"_{fmt}_{kind}", (_SparseStub,), {"fmt": fmt, "cls_name": f"{fmt}_{kind}"})
    for fmt in ("coo", "csr", "csc")
    for kind in ("matrix", "array")
}
_NUMPY_CORE = ("numpy.core", "numpy._core")

# What each admitted global becomes. Every target is inert: nothing from numpy or scipy runs
# on the pickle's data until _to_array/_matrix_edges have checked it. The names were taken
# from real pickles (numpy 1.x/2.x, scipy 1.x, protocols 0-5; the RLMRec files are protocol 4).
PICKLE_ALLOW = {
    **{(m, n): stub for m in _SPARSE_MODULES for n, stub in _SPARSE_STUBS.items()},
    **{(f"{core}.multiarray", "_reconstruct"): _np_reconstruct for core in _NUMPY_CORE},
    **{(f"{core}.multiarray", "scalar"): _np_scalar for core in _NUMPY_CORE},
    **{(f"{core}.numeric", "_frombuffer"): _np_frombuffer for core in _NUMPY_CORE},
    ("numpy", "ndarray"): _NdarrayMarker,
    ("numpy", "dtype"): _DtypeStub,
    ("_codecs", "encode"): _codecs_encode,
    ("copy_reg", "_reconstructor"): _copyreg_reconstructor,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("__builtin__", "object"): _ObjectMarker,
    ("builtins", "object"): _ObjectMarker,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, source: str):
        super().__init__(f)
        self.source = source

    def find_class(self, module: str, name: str):
        target = PICKLE_ALLOW.get((module, name))
        if target is None:
            raise InputError(
                f"{self.source}: pickle asks for {str(module)[:100]}.{str(name)[:100]}, which is not "
                f"in the allow-list (expected only scipy sparse matrices of numpy arrays)"
            )
        return target

    def persistent_load(self, pid):
        raise _PickleRefused("a persistent id")


def _prescan(data: bytes, uri: str) -> None:
    """Walk the opcodes without building anything: every length-prefixed argument (bytes,
    strings, bytearrays, frames) must be present in full before the real unpickler allocates
    for it, and the opcode count is bounded (a scipy matrix pickle has a few hundred)."""
    if not data:
        raise InputError(f"{uri}: empty file; expected a pickled scipy sparse matrix")
    n, pos = 0, 0
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            n += 1
            if n > MAX_PICKLE_OPCODES:
                raise InputError(
                    f"{uri}: pickle has more than {MAX_PICKLE_OPCODES} opcodes; expected a scipy "
                    f"sparse matrix (a few hundred)"
                )
            if op.name == "FRAME" and pos + 9 + arg > len(data):
                raise InputError(
                    f"{uri}: pickle frame at byte {pos} declares {arg} bytes but {len(data) - pos - 9} "
                    f"follow; expected a complete pickle"
                )
            # The C unpickler grows its memo table to the index a PUT names: LONG_BINPUT 2**31
            # would allocate 16 GiB. Picklers number memo entries 0, 1, 2, ..., one per PUT.
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not (0 <= arg < n):
                raise InputError(
                    f"{uri}: pickle stores memo entry {arg} at byte {pos} after {n - 1} opcodes; "
                    f"expected entries numbered in order"
                )
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 -- pickletools raises ValueError and friends on bad bytes
        raise InputError(
            f"{uri}: not a readable pickle near byte {pos} ({type(e).__name__}: "
            f"{one_line(str(e), 200)}); expected a pickled scipy sparse matrix"
        ) from e


def _unpickle(data: bytes, uri: str):
    _prescan(data, uri)
    try:
        return _RestrictedUnpickler(io.BytesIO(data), uri).load()
    except InputError:
        raise
    except _PickleRefused as e:
        raise InputError(f"{uri}: pickle holds {e}; expected only scipy sparse matrices of numeric numpy arrays") from e
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{uri}: not a readable pickle ({type(e).__name__}: {one_line(str(e), 200)})") from e


def _type_name(obj) -> str:
    return obj.cls_name if isinstance(obj, _SparseStub) else type(obj).__name__


def _to_array(obj, what: str, uri: str) -> np.ndarray:
    """A pickled array as numpy, once its dtype is numeric and its bytes match its shape."""
    if not isinstance(obj, _ArrayStub):
        raise InputError(f"{uri}: '{what}' is {_type_name(obj)}; expected a numpy array")
    shape = obj.shape
    if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
        raise InputError(f"{uri}: '{what}' has shape {show(shape)}; expected a tuple of non-negative integers")
    if not isinstance(obj.dtype, _DtypeStub):
        raise InputError(f"{uri}: '{what}' has dtype {_type_name(obj.dtype)}; expected a numeric numpy dtype")
    try:
        dt = obj.dtype.dtype()
    except _PickleRefused as e:
        raise InputError(f"{uri}: '{what}': {e}; expected a numeric numpy dtype") from e
    raw = obj.raw
    if not isinstance(raw, (bytes, bytearray)):
        raise InputError(f"{uri}: '{what}' data is {type(raw).__name__}; expected the array's bytes")
    n = math.prod(shape)
    if n * dt.itemsize != len(raw):
        raise InputError(
            f"{uri}: '{what}' holds {len(raw)} bytes; expected {n} x {dt.itemsize} for shape {shape} of {dt}"
        )
    return np.frombuffer(raw, dtype=dt, count=n).reshape(shape, order="F" if obj.fortran is True else "C")


_INT64_MAX = np.iinfo(np.int64).max


def _index_array(obj, what: str, uri: str) -> np.ndarray:
    a = _to_array(obj, what, uri)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise InputError(f"{uri}: '{what}' is a {a.ndim}-d array of {a.dtype}; expected a 1-d integer array")
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and int(a.max()) > _INT64_MAX:
        k = int(np.argmax(a > _INT64_MAX))
        raise InputError(f"{uri}: '{what}' position {k} is {int(a[k])}; expected an index below 2**63")
    return a.astype(np.int64)


def _check_range(ids: np.ndarray, n: int, side: str, uri: str) -> None:
    bad = np.flatnonzero((ids < 0) | (ids >= n))
    if bad.size:
        k = int(bad[0])
        raise InputError(f"{uri} entry {k}: {side} id {int(ids[k])} out of range; expected 0 <= id < {n}")


def _matrix_edges(obj, uri: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(rows, cols, shape) of a pickled COO/CSR/CSC matrix or array, every array checked
    before it is used; CSR/CSC are expanded here with numpy, never by scipy."""
    if not isinstance(obj, _SparseStub):
        raise InputError(f"{uri}: expected a scipy sparse matrix, got {_type_name(obj)}")
    st, name = obj.state, obj.cls_name
    if st is None:
        raise InputError(f"{uri}: pickled {name} carries no state; expected its arrays and shape")
    shape = st.get("_shape", st.get("shape"))
    if isinstance(shape, list):
        shape = tuple(shape)
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(type(d) is int and d >= 0 for d in shape)):
        raise InputError(f"{uri}: {name} shape is {show(shape)}; expected two non-negative integers (users, items)")
    n_rows, n_cols = shape
    data = _to_array(st.get("data"), "data", uri)
    if data.ndim != 1 or data.dtype.kind not in "biuf":
        raise InputError(f"{uri}: 'data' is a {data.ndim}-d array of {data.dtype}; expected a 1-d numeric array")
    nnz = len(data)
    if obj.fmt == "coo":
        coords = st.get("coords")
        if coords is None:  # scipy < 1.13 pickled row and col
            coords = (st.get("row"), st.get("col"))
        if not (isinstance(coords, (tuple, list)) and len(coords) == 2):
            raise InputError(f"{uri}: {name} coords are {show(coords)}; expected (row, col) arrays")
        rows, cols = _index_array(coords[0], "row", uri), _index_array(coords[1], "col", uri)
        if not (len(rows) == len(cols) == nnz):
            raise InputError(
                f"{uri}: {name} has {len(rows)} rows, {len(cols)} cols and {nnz} values; expected equal lengths"
            )
        _check_range(rows, n_rows, "user", uri)
        _check_range(cols, n_cols, "item", uri)
    else:
        indptr, indices = _index_array(st.get("indptr"), "indptr", uri), _index_array(st.get("indices"), "indices", uri)
        n_major, n_minor = (n_rows, n_cols) if obj.fmt == "csr" else (n_cols, n_rows)
        minor_side = "item" if obj.fmt == "csr" else "user"
        if len(indptr) != n_major + 1:
            raise InputError(
                f"{uri}: {name} indptr has {len(indptr)} entries; expected {n_major} + 1 for shape {shape}"
            )
        if indptr[0] != 0:
            raise InputError(f"{uri}: {name} indptr starts at {int(indptr[0])}; expected 0")
        steps = np.diff(indptr)
        down = np.flatnonzero(steps < 0)
        if down.size:
            k = int(down[0])
            raise InputError(
                f"{uri}: {name} indptr decreases at position {k + 1} ({int(indptr[k])} -> "
                f"{int(indptr[k + 1])}); expected non-decreasing offsets"
            )
        if not (int(indptr[-1]) == len(indices) == nnz):
            raise InputError(
                f"{uri}: {name} indptr ends at {int(indptr[-1])} with {len(indices)} indices and "
                f"{nnz} values; expected all three equal"
            )
        _check_range(indices, n_minor, minor_side, uri)
        major = np.repeat(np.arange(n_major, dtype=np.int64), steps)
        rows, cols = (major, indices) if obj.fmt == "csr" else (indices, major)
    bad = np.flatnonzero(data != 1) if nnz else np.array([], dtype=np.int64)
    if bad.size:
        k = int(bad[0])
        raise InputError(
            f"{uri}: entry {k} (user {rows[k]}, item {cols[k]}) has value {data[k]}; expected implicit feedback (1.0)"
        )
    return rows, cols, (n_rows, n_cols)


def load_pickled_matrix(uri: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(rows, cols, shape) of one pickled scipy sparse matrix, validated (no scipy object is built)."""
    data = _read_bytes(uri)
    with _content_errors(uri, "not a readable pickled matrix"):
        return _matrix_edges(_unpickle(data, uri), uri)


def read_rlmrec_pickles(source: str) -> RawDataset:
    names = {"train": "trn_mat.pkl", "val": "val_mat.pkl", "test": "tst_mat.pkl"}
    splits, shape, first = {}, None, None
    for split, name in names.items():
        uri = storage.join(source, name)
        rows, cols, m_shape = load_pickled_matrix(uri)
        if shape is None:
            shape, first = m_shape, uri
        elif m_shape != shape:
            raise InputError(
                f"{uri}: shape {m_shape} differs from trn_mat.pkl's {shape} "
                f"(expected every split over the same users x items)"
            )
        splits[split] = RawEdges(uri, IdColumn(rows), IdColumn(cols), _entry_label)
    from irllrec_dist.data.arrays import sorted_unique

    for side, n, attr in (("user", shape[0], "users"), ("item", shape[1], "items")):
        present = sorted_unique(np.concatenate([getattr(splits[s], attr).codes for s in SPLITS])).size
        check_declared_range(n, present, side, first)
    return RawDataset(splits, n_users=shape[0], n_items=shape[1], extra={"declared_by": first})


# ---------------------------------------------------------------- ids (all text formats)

_BAD_ID_CHARS = r"[\p{Cc}\x{2028}\x{2029}\x{FEFF}]"


def _is_str_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _utf8_error_index(values: pa.Array) -> int | None:
    """Index of the first value that is not valid UTF-8 (Arrow does not check Parquet strings)."""
    try:
        values.validate(full=True)
        return None
    except pa.ArrowInvalid as e:
        m = re.search(r"string index (\d+)", str(e))
        if m:
            return int(m.group(1))
        for k in range(len(values)):  # not expected: Arrow names the index
            try:
                values.slice(k, 1).validate(full=True)
            except pa.ArrowInvalid:
                return k
        return 0


def id_column(col, name: str, uri: str, locate: Callable[[int], str]) -> IdColumn:
    """Canonical ids of one column (see the module docstring): factorised into per-row codes and
    the distinct values, so neither checks nor memory scale with repeated long strings."""
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col], type=col.type)
    t = col.type
    vt = t.value_type if pa.types.is_dictionary(t) else t
    if not (pa.types.is_integer(vt) or _is_str_type(vt)):
        raise InputError(
            f"{uri}: column '{name}' has type {t}; expected string or integer ids (floats, booleans, "
            f"binary and nested values have no exact id)"
        )
    if col.null_count:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{uri} {locate(first)}: empty '{name}'; expected an id")
    if not pa.types.is_dictionary(t):
        # Encoding the whole column at once gives one dictionary shared by every chunk.
        col = pc.dictionary_encode(col)
    codes_parts, value_parts, offset = [], [], 0
    shared = not pa.types.is_dictionary(t)
    for chunk in col.chunks:
        enc = chunk
        if shared and value_parts:  # same dictionary as the first chunk: reuse its values
            idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            codes_parts.append(idx)
            continue
        values = enc.dictionary.cast(pa.large_string())  # integers -> decimal, exact for uint64 too
        idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(values)):
            raise InputError(
                f"{uri}: column '{name}' has dictionary indices outside its dictionary; expected a "
                f"valid dictionary encoding"
            )
        codes_parts.append(idx + offset)
        value_parts.append(values)
        offset += len(values)
    all_values = pa.concat_arrays(value_parts) if value_parts else pa.array([], pa.large_string())
    codes = np.concatenate(codes_parts) if codes_parts else np.zeros(0, dtype=np.int64)
    bad = _utf8_error_index(all_values)
    if bad is not None:
        row = int(np.flatnonzero(codes == bad)[0]) if (codes == bad).any() else 0
        raise InputError(
            f"{uri} {locate(row)}: '{name}' is not valid UTF-8 "
            f"({show(all_values.cast(pa.large_binary())[bad].as_py())}); expected UTF-8 text"
        )
    uniq = pc.unique(all_values)
    remap = pc.index_in(all_values, value_set=uniq).to_numpy(zero_copy_only=False).astype(np.int64)
    codes = remap[codes]
    used = np.zeros(len(uniq), dtype=bool)
    used[codes] = True
    if not used.all():  # a dictionary may carry values no row uses: they are not ids
        keep = np.flatnonzero(used)
        uniq = uniq.take(pa.array(keep))
        codes = (np.cumsum(used) - 1)[codes]
    out = IdColumn(codes, uniq)
    _check_id_values(out, name, uri, locate)
    return out


def _check_id_values(col: IdColumn, name: str, uri: str, locate: Callable[[int], str]) -> None:
    v = col.values
    nbytes = pc.binary_length(v)
    checks = (
        (pc.equal(nbytes, 0), None),
        (
            pc.greater(nbytes, MAX_ID_BYTES),
            f"is longer than {MAX_ID_BYTES} bytes; expected an id of at most {MAX_ID_BYTES} bytes",
        ),
        (
            pc.match_substring_regex(v, _BAD_ID_CHARS),
            "contains a control character or line separator; expected printable text",
        ),
        (
            pc.not_equal(pc.utf8_trim_whitespace(v), v),
            "has leading or trailing whitespace; expected the id alone "
            "(ids are not trimmed: ' 7' and '7' would be two ids)",
        ),
    )
    for mask, what in checks:
        m = mask.to_numpy(zero_copy_only=False)
        if m.any():
            row = int(np.flatnonzero(m[col.codes])[0])
            if what is None:
                raise InputError(f"{uri} {locate(row)}: empty '{name}'; expected an id")
            raise InputError(f"{uri} {locate(row)}: {name} id {show(col.raw(row))} {what}")


# ---------------------------------------------------------------- text files

_BOM = b"\xef\xbb\xbf"


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def _check_text_bytes(data: bytes, uri: str) -> int:
    """UTF-8 without NUL bytes; returns the length of a leading byte-order mark (0 or 3)."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InputError(f"{uri} line {_line_of(data, nul)}: NUL byte at byte offset {nul}; expected text")
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64).tobytes())
    whole = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)])
    if _utf8_error_index(whole) is not None:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(
                f"{uri} line {_line_of(data, e.start)}: invalid UTF-8 at byte offset {e.start} "
                f"({show(data[e.start : e.start + 4])}); expected UTF-8 text"
            ) from e
    return len(_BOM) if data.startswith(_BOM) else 0


class _CsvLines:
    """Data row -> physical line, computed on first use (only error messages need it). Without
    quotes a record is a non-empty line; with quotes the Python csv module, which quotes as
    pyarrow does, finds where each record starts."""

    def __init__(self, data: bytes, n_rows: int):
        self.data, self.n_rows, self._lines = data, n_rows, None

    def _compute(self) -> np.ndarray | None:
        data = self.data
        if b'"' not in data:
            buf = np.frombuffer(data, dtype=np.uint8)
            nl = np.flatnonzero(buf == 0x0A)
            starts = np.concatenate([[0], nl + 1])
            starts = starts[starts < len(buf)]
            first = buf[starts]
            second = buf[np.minimum(starts + 1, len(buf) - 1)]
            empty = (first == 0x0A) | ((first == 0x0D) & (second == 0x0A))
            lines = np.searchsorted(nl, starts[~empty], side="right") + 1
        else:
            reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
            out, prev = [], 0
            try:
                with _csv_fields_up_to(len(data)):
                    for rec in reader:
                        if rec:
                            out.append(prev + 1)
                        prev = reader.line_num
            except csv.Error:
                return None
            lines = np.asarray(out, dtype=np.int64)
        return lines if len(lines) == self.n_rows + 1 else None  # + the header

    def header_line(self) -> int:
        return self.label_line(-1) or 1

    def label_line(self, row: int) -> int | None:
        if self._lines is None:
            self._lines = self._compute()
            if self._lines is None:
                self._lines = False
        return None if self._lines is False else int(self._lines[row + 1])

    def __call__(self, row: int) -> str:
        line = self.label_line(row)
        return f"line {line}" if line is not None else f"data row {row + 1} (line unknown)"


@contextlib.contextmanager
def _csv_fields_up_to(n: int):
    """The csv module refuses fields over 128 KiB; pyarrow does not, so neither may the
    diagnostics (the limit is process-wide: restored afterwards)."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, min(n, (1 << 31) - 1)))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _csv_parse_error(data: bytes, uri: str, err: Exception) -> InputError:
    """pyarrow says what is wrong but not where: find the line with the csv module."""
    with _csv_fields_up_to(len(data)):
        return _locate_csv_error(data, uri, err)


def _locate_csv_error(data: bytes, uri: str, err: Exception) -> InputError:
    text = data.decode("utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    header, prev = None, 0
    try:
        for rec in reader:
            start, prev = prev + 1, reader.line_num
            if not rec:
                continue
            if header is None:
                header = rec
                continue
            if len(rec) != len(header):
                return InputError(
                    f"{uri} line {start}: {len(rec)} field(s) {show(','.join(rec))}; expected "
                    f"{len(header)} as in the header {show(','.join(header))}"
                )
    except csv.Error as e:
        return InputError(f"{uri} line {reader.line_num}: {e}; expected a CSV record")
    return InputError(f"{uri}: not a readable CSV edge list ({one_line(str(err), 300)})")


def _require(names: list[str], cols: tuple[str, ...], where: str) -> None:
    missing = [c for c in cols if c not in names]
    if missing:
        hint = " (the header must be comma-separated)" if len(names) == 1 and names[0] != cols[0] else ""
        raise InputError(f"{where}: missing column(s) {missing}; expected {list(cols)}, found {show(names, 200)}{hint}")


def read_csv_edges(uri: str) -> RawEdges:
    data = _read_bytes(uri)
    with _content_errors(uri, "not a readable CSV edge list"):
        return _parse_csv_edges(data, uri)


def _parse_csv_edges(data: bytes, uri: str) -> RawEdges:
    bom = _check_text_bytes(data, uri)
    if not data[bom:].strip():
        raise InputError(f"{uri}: empty file; expected a header line 'user,item' and one edge per line")
    if data.count(b"\r") != data.count(b"\r\n"):
        pos = re.search(rb"\r(?!\n)", data).start()
        raise InputError(
            f"{uri} line {_line_of(data, pos)}: carriage return not followed by a newline at byte offset "
            f"{pos}; expected lines ending in \\n or \\r\\n"
        )
    if b"\n" not in data:  # a header alone: pyarrow needs its line end
        data += b"\n"
    table = None
    for block_size in (1 << 20, min(len(data) + 1, (1 << 31) - 1)):
        try:
            table = pacsv.read_csv(
                pa.BufferReader(data),
                read_options=pacsv.ReadOptions(block_size=block_size),
                # Quoted fields may span lines (then blocks must be split quote-aware).
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                # Ids are strings, whatever they look like: no float inference, no nulls.
                convert_options=pacsv.ConvertOptions(
                    column_types={"user": pa.string(), "item": pa.string()},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            break
        except pa.ArrowInvalid as e:
            # A row longer than a block (1 MiB) is not an error of the file: read it as one block.
            if "block" in str(e) and block_size < len(data) + 1:
                continue
            raise _csv_parse_error(data, uri, e) from e
    lines = _CsvLines(data, table.num_rows)
    names = table.column_names
    repeated = [(c, k) for c, k in collections.Counter(names).items() if k > 1]
    if repeated:
        c, k = repeated[0]
        raise InputError(
            f"{uri} line {lines.header_line()}: column {show(c)} appears {k} times in the header; "
            f"expected each column once"
        )
    _require(names, ("user", "item"), uri)
    users = id_column(table.column("user"), "user", uri, lines)
    items = id_column(table.column("item"), "item", uri, lines)
    # A header line repeated inside the file (files concatenated with their headers) is not a user "user".
    ku, ki = _code_of(users, "user"), _code_of(items, "item")
    if ku is not None and ki is not None:
        rep = np.flatnonzero((users.codes == ku) & (items.codes == ki))
        if rep.size:
            raise InputError(
                f"{uri} {lines(int(rep[0]))}: the header 'user,item' again; expected a data row "
                f"(concatenated files must drop their headers)"
            )
    return RawEdges(uri, users, items, lines)


def _code_of(col: IdColumn, value: str) -> int | None:
    k = pc.index(col.values, pa.scalar(value, pa.large_string())).as_py()
    return None if k is None or k < 0 else k


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen[k] = v
    return seen


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _json_kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, float):
        return "a number with a fraction or exponent"
    return {list: "an array", dict: "an object"}.get(type(v), type(v).__name__)


def _json_load(text: str, uri: str, line: int):
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as e:
        raise InputError(
            f"{uri} line {line}: key {show(e.args[0])} appears twice in one object; expected each key once"
        ) from e
    except json.JSONDecodeError as e:
        raise InputError(
            f"{uri} line {line}: not valid JSON ({e.msg} at column {e.colno}); expected one JSON object per line"
        ) from e
    except (ValueError, RecursionError) as e:
        raise InputError(
            f"{uri} line {line}: not valid JSON ({type(e).__name__}: {one_line(str(e), 200)}); "
            f"expected one JSON object per line"
        ) from e


# JSON may escape half of a UTF-16 surrogate pair ("\\ud800"): valid JSON, but not Unicode text
# (it cannot be written as UTF-8, so Arrow would fail on it later, far from the line).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _check_no_surrogates(rec, uri: str, line: int) -> None:
    values = rec.values() if isinstance(rec, dict) else [rec]
    for v in list(values) + (list(rec) if isinstance(rec, dict) else []):
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InputError(
                    f"{uri} line {line}: unpaired UTF-16 surrogate {show(v[e.start : e.end])} in "
                    f"{show(v)}; expected text that is valid Unicode"
                ) from e


def _text_value(value, uri: str, line: int) -> str | None:
    """The text of one JSONL record; a JSON string inside is unwrapped (XRec profiles)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{uri} line {line}: text is {_json_kind(value)}; expected a string")
    stripped = value.strip()
    if stripped.startswith("{"):
        try:
            inner = json.loads(stripped)
        except (ValueError, RecursionError) as e:
            raise InputError(
                f"{uri} line {line}: text looks like JSON but does not parse "
                f"({type(e).__name__}: {one_line(str(e), 200)})"
            ) from e
        parts = [v for v in inner.values() if isinstance(v, str)] if isinstance(inner, dict) else []
        if not parts:
            raise InputError(
                f'{uri} line {line}: inner JSON has no string field; expected e.g. {{"summarization": "..."}}'
            )
        text = " ".join(parts)
        _check_no_surrogates(text, uri, line)
        return text
    return value


def read_jsonl_text(uri: str, id_keys: tuple[str, ...], side: str | None = None) -> RawText:
    data = _read_bytes(uri)
    side = side or ("user" if id_keys[0] in ("uid", "user", "user_id") else "item")
    with _content_errors(uri, "not a readable JSON-Lines file"):
        return _parse_jsonl_text(data, uri, id_keys, side)


def _parse_jsonl_text(data: bytes, uri: str, id_keys: tuple[str, ...], side: str) -> RawText:
    bom = _check_text_bytes(data, uri)
    ids, texts, lines = [], [], []
    # Split on \n only: str.splitlines would also split on U+2028/U+2029, \x0b, \x1c.. inside strings.
    for n, raw in enumerate((data[bom:] if bom else data).split(b"\n"), start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        line = raw.decode("utf-8")
        if not line.strip():
            continue
        rec = _json_load(line, uri, n)
        if _SURROGATE_ESCAPE.search(line):
            _check_no_surrogates(rec, uri, n)
        if not isinstance(rec, dict):
            raise InputError(f"{uri} line {n}: {_json_kind(rec)}; expected a JSON object")
        key = next((k for k in id_keys if k in rec), None)
        if key is None:
            raise InputError(f"{uri} line {n}: no id field; expected one of {list(id_keys)}")
        others = [k for k in rec if k != key]
        if len(others) != 1:
            raise InputError(
                f"{uri} line {n}: expected exactly one text field beside '{key}', found {show(others, 200)}"
            )
        value = rec[key]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise InputError(
                f"{uri} line {n}: '{key}' is {_json_kind(value)} {show(value)}; expected a JSON "
                f"string or integer id (ids are kept exactly)"
            )
        ids.append(str(value) if isinstance(value, int) else value)
        texts.append(_text_value(rec[others[0]], uri, n))
        lines.append(n)
    line_of = np.asarray(lines, dtype=np.int64)

    def locate(i: int) -> str:
        return f"line {int(line_of[i])}"

    return RawText(uri, id_column(pa.array(ids, pa.large_string()), side, uri, locate), texts, locate)


# ---------------------------------------------------------------- parquet


def _read_parquet(uri: str, columns: tuple[str, ...], text_column: str | None = None) -> pa.Table:
    """The named columns of a Parquet file, after its footer has been checked against the file's
    size; string columns are read dictionary-encoded so a repeated value is not decoded per row."""
    data = _read_bytes(uri)
    with _content_errors(uri, "unreadable Parquet file"):
        try:
            pf = pq.ParquetFile(pa.BufferReader(data))
            schema, md = pf.schema_arrow, pf.metadata
        except Exception as e:  # noqa: BLE001
            raise InputError(
                f"{uri}: unreadable Parquet file ({type(e).__name__}: {one_line(str(e), 200)}); expected a Parquet file"
            ) from e
        names = schema.names
        _require(names, columns, uri)
        for c in columns:
            if names.count(c) > 1:
                raise InputError(f"{uri}: column '{c}' appears {names.count(c)} times; expected each column once")
        for c in columns:
            t = schema.field(c).type
            vt = t.value_type if pa.types.is_dictionary(t) else t
            ok = (
                (_is_str_type(vt) or pa.types.is_null(vt))
                if c == text_column
                else (pa.types.is_integer(vt) or _is_str_type(vt))
            )
            if not ok:
                want = (
                    "a string column"
                    if c == text_column
                    else "string or integer ids (floats, booleans, binary and nested values have no exact id)"
                )
                raise InputError(f"{uri}: column '{c}' has type {t}; expected {want}")
        size = len(data)
        if md.num_rows > PARQUET_ROWS_PER_BYTE * size + 100_000:
            raise InputError(
                f"{uri}: declares {md.num_rows} rows in {size} bytes; expected at most "
                f"{PARQUET_ROWS_PER_BYTE} rows per byte of file (+100000)"
            )
        declared = sum(
            rg.column(j).total_uncompressed_size
            for rg in (md.row_group(i) for i in range(md.num_row_groups))
            for j in range(rg.num_columns)
            if rg.column(j).path_in_schema in columns
        )
        if declared > PARQUET_EXPANSION * size + (1 << 20):
            raise InputError(
                f"{uri}: declares {declared} uncompressed bytes for {list(columns)} in a file of {size} "
                f"bytes; expected at most {PARQUET_EXPANSION} per byte of file (+1 MiB)"
            )
        strings = [c for c in columns if _is_str_type(schema.field(c).type)]
        pf = pq.ParquetFile(pa.BufferReader(data), read_dictionary=strings)
        table = pf.read(columns=list(columns), use_threads=False)
        if table.num_rows != md.num_rows:
            raise InputError(
                f"{uri}: holds {table.num_rows} rows but its footer declares {md.num_rows}; expected a "
                f"consistent Parquet file"
            )
        if text_column is not None:
            _check_text_size(table.column(text_column), size, uri)
        return table


def _check_text_size(col: pa.ChunkedArray, size: int, uri: str) -> None:
    """Decoded text may not exceed PARQUET_EXPANSION x the file (a dictionary can repeat one
    long string in every row), and must be UTF-8 (Arrow does not check Parquet strings)."""
    total, row0 = 0, 0
    for chunk in col.chunks:
        if pa.types.is_null(chunk.type):
            row0 += len(chunk)
            continue
        if pa.types.is_dictionary(chunk.type):
            lengths = pc.binary_length(chunk.dictionary).cast(pa.int64())
            total += int(pc.sum(lengths.take(chunk.indices)).as_py() or 0)
            bad = _utf8_error_index(chunk.dictionary)
            if bad is not None:
                hits = np.flatnonzero(chunk.indices.to_numpy(zero_copy_only=False) == bad)
                if hits.size:
                    raise InputError(f"{uri} row {row0 + int(hits[0])}: 'text' is not valid UTF-8; expected UTF-8 text")
        else:
            total += int(pc.sum(pc.binary_length(chunk).cast(pa.int64())).as_py() or 0)
            bad = _utf8_error_index(chunk)
            if bad is not None:
                raise InputError(f"{uri} row {row0 + bad}: 'text' is not valid UTF-8; expected UTF-8 text")
        row0 += len(chunk)
    if total > PARQUET_EXPANSION * size + (1 << 20):
        raise InputError(
            f"{uri}: 'text' decodes to {total} bytes from a file of {size} bytes; expected at most "
            f"{PARQUET_EXPANSION} per byte of file (+1 MiB)"
        )


def _edges_from_parquet(uri: str) -> RawEdges:
    table = _read_parquet(uri, ("user", "item"))
    with _content_errors(uri, "unreadable Parquet file"):
        users = id_column(table.column("user"), "user", uri, _row_label)
        items = id_column(table.column("item"), "item", uri, _row_label)
    return RawEdges(uri, users, items, _row_label)


def _text_from_parquet(uri: str, id_col: str) -> RawText:
    table = _read_parquet(uri, (id_col, "text"), text_column="text")
    with _content_errors(uri, "unreadable Parquet file"):
        ids = id_column(table.column(id_col), id_col, uri, _row_label)
        return RawText(uri, ids, table.column("text").to_pylist(), _row_label)


def read_parquet_edges(source: str) -> RawDataset:
    splits = {split: _edges_from_parquet(storage.join(source, f"{split}.parquet")) for split in SPLITS}
    texts = {}
    for side, id_col in (("items", "item"), ("users", "user")):
        uri = storage.join(source, f"{side}.parquet")
        if storage.exists(uri):
            texts[side] = _text_from_parquet(uri, id_col)
    return RawDataset(splits, item_text=texts.get("items"), user_text=texts.get("users"))


# ---------------------------------------------------------------- csv + jsonl


def _find(source: str, candidates: tuple[str, ...], what: str) -> str:
    for name in candidates:
        uri = storage.join(source, name)
        if storage.exists(uri):
            return uri
    raise InputError(f"{source}: no {what} file; expected one of {list(candidates)}")


CSV_NAMES = {
    "train": ("train.csv", "trn.csv", "total_trn.csv"),
    "val": ("val.csv", "total_val.csv"),
    "test": ("test.csv", "tst.csv", "total_tst.csv"),
}


def read_csv_jsonl(source: str) -> RawDataset:
    splits = {s: read_csv_edges(_find(source, CSV_NAMES[s], f"{s} edge list")) for s in SPLITS}
    item_text = user_text = None
    for name in ("item_profile.json", "items.jsonl"):
        uri = storage.join(source, name)
        if storage.exists(uri):
            item_text = read_jsonl_text(uri, ("iid", "item", "item_id"), "item")
            break
    for name in ("user_profile.json", "users.jsonl"):
        uri = storage.join(source, name)
        if storage.exists(uri):
            user_text = read_jsonl_text(uri, ("uid", "user", "user_id"), "user")
            break
    return RawDataset(splits, item_text=item_text, user_text=user_text)


READERS = {"rlmrec-pickle": read_rlmrec_pickles, "csv-jsonl": read_csv_jsonl, "parquet": read_parquet_edges}
