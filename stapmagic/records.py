"""Streaming parser for the record lines the generated scripts print (DESIGN.md "Record format").

`RecordParser.feed(bytes)` takes stap's output in chunks of any size (a line may be split
anywhere, even inside a multi-byte character or between ``\\r`` and ``\\n``), buffers whole
lines and parses them in batches:

* A line that contains ``@@sm1`` must be one whole, well-formed record, else it is DAMAGED
  (counted, kept in `damaged`, never a row, and never the reason another row is lost).
* ``@@smh``/``@@sms`` tagged lines become `Histogram`/`Summary` objects (see hist.py).
* The 10 lines of a ``print_regs()`` dump that follow a record of a ``print_regs`` probe are
  split into register columns of that record (`PRINT_REGS_COLUMNS`).
* Every other line is a message (decoded utf-8, errors="backslashreplace"), kept in order.

Speed: a batch (batch_bytes of whole lines, or what flush() finds) of records of one shape
goes first to the compiled scanner (_recscan.c, when it was
built: `SCANNER`), one strict pass that writes the numbers straight into the row table and
gives up on anything `parse_record` would not accept. Otherwise, or when it gives up, the
batch is parsed by pyarrow's (multithreaded) CSV reader with explicit column types;
`@@sm1`/`@@` are read as bool (true_values/false_values), so a wrong tag is a conversion
error at no cost. Only when a batch is not clean (message lines, several record shapes,
damage) are its lines indexed with numpy, and only a group the vectorized parse rejects goes
through the per-line reference parser `parse_record`. The numeric columns of every row live
in one contiguous, pre-reserved (untouched until used) array per column: each batch is
copied in while hot (or scanned in place) and `frame()` returns views, without
concatenating.
"""

from __future__ import annotations

import mmap
import os
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from . import wire
from .hist import Histogram, Summary, hist_kind, parse_hist_block, parse_summary
from .schema import BASE_COLUMNS, PRINT_REGS_COLUMNS, ColumnKind, ProbeSchema
from .wire import (
    DUMP_LINES,
    MAX_FOREIGN_IN_DUMP,
    ParsedRecord,
    TagCount,
    escape_text,
    format_record,
    parse_print_regs,
    parse_record,
    parse_tag_count,
    unescape_text,
)

__all__ = [
    "Batch",
    "RecordParser",
    "ParsedRecord",
    "RECORD_TAG",
    "escape_text",
    "unescape_text",
    "format_record",
    "parse_record",
    "parse_print_regs",
    "TagCount",
    "parse_tag_count",
]

RECORD_TAG = wire.RECORD_TAG_B
_PREFIX = wire.RECORD_PREFIX_B
_SUFFIX = wire.RECORD_SUFFIX_B
_HIST_TAG = wire.HIST_TAG_B
_HIST_END = wire.HIST_END_B
_SUMMARY_TAG = wire.SUMMARY_TAG_B
_COUNTER_TAG = wire.COUNTER_TAG_B
_KEYS_TAG = wire.KEYS_TAG_B
_TAG_NAME_RE = wire._TAG_NAME_RE
_PLAIN = wire._PLAIN
_unescape_cached = wire._unescape_cached
_DUMP_RES = wire._DUMP_RES
_DUMP_PREFIXES = wire._DUMP_PREFIXES

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
BoolArr = npt.NDArray[np.bool_]
AnyArr = npt.NDArray[Any]

# --------------------------------------------------------------------------------------
# Batches and the column plan
# --------------------------------------------------------------------------------------


# stap's own lines, which the diagnoses read: kept before ordinary output when lines must go.
STAP_MESSAGE_PREFIXES = ("ERROR:", "WARNING:", "semantic error:", "Pass ")


class MessageLog:
    """Message lines in order, in bounded memory: the first `head` lines, the last `tail`,
    and between them up to `stap` of stap's own lines (`STAP_MESSAGE_PREFIXES`) that fell
    out of the tail; every other line is counted in `dropped`."""

    __slots__ = ("head", "tail", "stap", "dropped", "_head", "_stap", "_tail")

    def __init__(self, head: int, tail: int, stap: int) -> None:
        self.head, self.tail, self.stap = head, tail, stap
        self.dropped = 0
        self._head: list[str] = []
        self._stap: list[str] = []
        self._tail: deque[str] = deque()

    def append(self, text: str) -> None:
        if len(self._head) < self.head:
            self._head.append(text)
            return
        self._tail.append(text)
        if len(self._tail) > self.tail:
            old = self._tail.popleft()
            if len(self._stap) < self.stap and old.lstrip().startswith(STAP_MESSAGE_PREFIXES):
                self._stap.append(old)
            else:
                self.dropped += 1

    def lines(self) -> list[str]:
        return self._head + self._stap + list(self._tail)

    def __bool__(self) -> bool:
        return bool(self._head or self._tail or self._stap)


class Batch:
    """What one feed()/flush()/close() produced: `frame`, the new rows (index continuing
    the parser's row numbering; None when no rows; built from the batch's columns on first
    access, once), new `messages` lines (bounded like RecordParser.messages; the lines left
    out are counted in `messages_dropped`), new `histograms` and `summaries`, and how many
    `rows` / `damaged` lines it added."""

    __slots__ = ("messages", "messages_dropped", "rows", "damaged", "histograms", "summaries",
                 "_make", "_frame")

    def __init__(self, frame: pd.DataFrame | Callable[[], pd.DataFrame] | None = None,
                 messages: tuple[str, ...] = (), rows: int = 0, damaged: int = 0,
                 histograms: tuple[Histogram, ...] = (),
                 summaries: tuple[Summary, ...] = (), messages_dropped: int = 0) -> None:
        self.messages = messages
        self.messages_dropped = messages_dropped
        self.rows = rows
        self.damaged = damaged
        self.histograms = histograms
        self.summaries = summaries
        self._frame: pd.DataFrame | None = None
        self._make: Callable[[], pd.DataFrame] | None = None
        if isinstance(frame, pd.DataFrame):
            self._frame = frame
        else:
            self._make = frame

    @property
    def frame(self) -> pd.DataFrame | None:
        if self._make is not None:
            self._frame, self._make = self._make(), None
        return self._frame

    @property
    def empty(self) -> bool:
        return not (self.rows or self.messages or self.messages_dropped or self.damaged
                    or self.histograms
                    or self.summaries)

    def __repr__(self) -> str:
        return (f"Batch(rows={self.rows}, messages={len(self.messages)}, "
                f"damaged={self.damaged}, histograms={len(self.histograms)}, "
                f"summaries={len(self.summaries)})")


Store = Literal["time", "cat", "int64", "uint64", "Int64", "UInt64", "str", "errno", "object"]


def _store_for(kinds: set[str], full: bool) -> Store:
    if kinds <= {"int"}:
        return "int64" if full else "Int64"
    if kinds <= {"uint", "hex"}:
        return "uint64" if full else "UInt64"
    if kinds == {"str"}:
        return "str"
    if kinds == {"errno"}:
        return "errno"
    return "object"


@dataclass
class _Shape:
    """Probes whose records have the same field kinds: parsed together by one CSV read."""

    kinds: tuple[ColumnKind, ...]
    probes: list[int]
    names: list[str] = field(default_factory=list)
    types: dict[str, Any] = field(default_factory=dict)
    scan_kinds: bytes = b""             # the kinds as _recscan.scan takes them
    probe_ok: bytes = b""               # per probe index: 1 if the probe has this shape


_BINARY_DICT = pa.dictionary(pa.int32(), pa.binary())
_ARROW_KIND_TYPES: dict[str, Any] = {"int": pa.int64(), "uint": pa.uint64(), "hex": pa.binary(),
                                     "str": pa.binary(), "errno": _BINARY_DICT}


def _make_shape(kinds: tuple[ColumnKind, ...], probes: list[int]) -> _Shape:
    # tag and end are read as bool with true_values ["@@sm1"] and false_values ["@@"]:
    # anything else in them is a conversion error, and checking costs nothing.
    names = ["tag", "idx", "time", "pid", "tid", "cpu", "comm"]
    names += [f"f{j}" for j in range(len(kinds))] + ["end"]
    types: dict[str, Any] = {"tag": pa.bool_(), "idx": pa.int64(), "time": pa.int64(),
                             "pid": pa.int64(), "tid": pa.int64(), "cpu": pa.int64(),
                             "comm": _BINARY_DICT, "end": pa.bool_()}
    for j, k in enumerate(kinds):
        types[f"f{j}"] = _ARROW_KIND_TYPES[k]
    return _Shape(kinds, probes, names, types)


# A "chunk" is one contiguous piece of a column: an ndarray (int64/uint64/int32 codes/
# object), an (values, mask) pair for the nullable stores, or a pa.StringArray.
Chunk = Any


def _concat(chunks: Sequence[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    if isinstance(first, tuple):
        return (np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))
    if isinstance(first, pa.Array):
        return pa.concat_arrays(list(chunks))
    return np.concatenate(chunks)


@dataclass
class _Group:
    """Rows parsed from the record lines of one shape in one batch, in line order; every
    column as a list of chunks (pyarrow's blocks, not copied)."""

    shape: _Shape
    n: int
    lines: I64 | None        # line numbers in the batch; None: lines 0..n-1
    idx: list[I64]
    time: list[I64]
    pid: list[I64]
    tid: list[I64]
    cpu: list[I64]
    comm: list[npt.NDArray[np.int32]]     # codes into the parser's comm categories
    fields: list[list[Chunk]]             # int64/uint64/object ndarrays, pa.StringArray

    def line_numbers(self) -> I64:
        return self.lines if self.lines is not None else np.arange(self.n, dtype=np.int64)

    def flat(self) -> _Group:
        return _Group(self.shape, self.n, self.line_numbers(), [_concat(self.idx)],
                      [_concat(self.time)], [_concat(self.pid)], [_concat(self.tid)],
                      [_concat(self.cpu)], [_concat(self.comm)],
                      [[_concat(f)] for f in self.fields])

    def keep(self, mask: BoolArr) -> _Group:
        g = self.flat()
        sel = pa.array(mask)
        return _Group(g.shape, int(mask.sum()), g.line_numbers()[mask], [g.idx[0][mask]],
                      [g.time[0][mask]], [g.pid[0][mask]], [g.tid[0][mask]], [g.cpu[0][mask]],
                      [g.comm[0][mask]],
                      [[f[0].filter(sel) if isinstance(f[0], pa.Array) else f[0][mask]]
                       for f in g.fields])


@dataclass
class _Parsed:
    """What the vectorized parse of a batch of one shape produced (no parser state yet:
    comm as its decoded dictionary and indices; bad: rows the column checks rejected)."""

    sid: int
    n: int
    idx: list[I64]
    time: list[I64]
    pid: list[I64]
    tid: list[I64]
    cpu: list[I64]
    comm_vals: AnyArr
    comm_ind: Sequence[npt.NDArray[np.integer[Any]]]
    fields: list[list[Chunk]]
    bad: BoolArr | None


# --------------------------------------------------------------------------------------
# Vectorized conversions
# --------------------------------------------------------------------------------------

_HEX_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_LUT[_c] = 10 + _i
_TEXT_OK = np.zeros(256, dtype=np.bool_)
_TEXT_OK[np.frombuffer(_PLAIN, dtype=np.uint8)] = True
_ARANGE16 = np.arange(16, dtype=np.int64)


def _binary_parts(arr: Any) -> tuple[I64, npt.NDArray[np.uint8]]:
    """(offsets relative to the returned data, data) of a pyarrow binary array chunk."""
    n = len(arr)
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    offs64 = offs.astype(np.int64)
    if not n or bufs[2] is None:
        return offs64 - offs64[0], np.zeros(0, dtype=np.uint8)
    data = np.frombuffer(bufs[2], dtype=np.uint8)[int(offs64[0]):int(offs64[-1])]
    return offs64 - offs64[0], data


def _rows_of(positions: I64, offs: I64) -> I64:
    rows: I64 = np.searchsorted(offs, positions, side="right") - 1
    return rows


_HEX_DIGITS = b"0123456789abcdefABCDEF"
_ARANGE16_I8 = np.arange(16, dtype=np.int8)


def _hex_chunk(arr: Any) -> tuple[U64, BoolArr]:
    """Hex digits (1..16, no 0x) -> uint64, and the mask of rows that are not such.

    Each value's last 16 bytes (a window ending at its end offset, over the data with 16
    '0' bytes in front) are gathered as an (n, 16) uint8 matrix, the bytes before the value
    set to '0', turned into nibbles with uint8 arithmetic and packed into big-endian
    8-byte words. One bytes.translate() checks every digit; only when it finds a bad
    one are the rows looked at one by one."""
    offs, data = _binary_parts(arr)
    n = len(offs) - 1
    lens = offs[1:] - offs[:-1]
    bad = (lens < 1) | (lens > 16)
    if not n:
        return np.zeros(0, dtype=np.uint64), bad
    if data.tobytes().translate(None, _HEX_DIGITS):
        badpos = np.flatnonzero(_HEX_LUT[data] == 255)
        bad[_rows_of(badpos, offs)] = True
        data = np.where(_HEX_LUT[data] == 255, np.uint8(0x30), data)
    padded = np.empty(data.size + 16, dtype=np.uint8)
    padded[:16] = 0x30
    padded[16:] = data
    win = np.lib.stride_tricks.sliding_window_view(padded, 16)[offs[1:]]   # copies n x 16
    shift = (16 - np.clip(lens, 0, 16)).astype(np.int8)
    win[_ARANGE16_I8[None, :] < shift[:, None]] = 0x30
    d = (win | 0x20) - 0x30                      # '0'-'9' -> 0-9, 'a'-'f'/'A'-'F' -> 49-54
    d -= (d > 9).astype(np.uint8) * 39
    packed = np.ascontiguousarray((d[:, 0::2] << 4) | d[:, 1::2])
    return packed.view(">u8").ravel().astype(np.uint64), bad


def _str_chunk(arr: Any) -> tuple[Any, BoolArr]:
    """Escaped text -> pa.StringArray (unescaped), and the mask of rows text_str() cannot
    have printed."""
    offs, data = _binary_parts(arr)
    n = len(offs) - 1
    bad = np.zeros(n, dtype=np.bool_)
    special = (data == 0x5C) | (data == 0x22)       # \ and " : checked by unescape_text
    badpos = np.flatnonzero(~_TEXT_OK[data] & ~special)
    if badpos.size:
        bad[_rows_of(badpos, offs)] = True
    bspos = np.flatnonzero(special)
    if not bspos.size and not badpos.size:
        return arr.view(pa.string()), bad
    esc_rows = set(_rows_of(bspos, offs).tolist())
    vals: list[str] = []
    for r, b in enumerate(arr.to_pylist()):
        if bad[r]:
            vals.append("")
        elif r in esc_rows:
            try:
                vals.append(unescape_text(b))
            except ValueError:
                bad[r] = True
                vals.append("")
        else:
            vals.append(b.decode("ascii"))
    return pa.array(vals, type=pa.string()), bad


class _BadType:
    def __repr__(self) -> str:
        return "<bad>"


_BAD = _BadType()


def _dict_values(col: Any, decode: Callable[[bytes], Any]) -> tuple[AnyArr, Any]:
    """Dictionary-encoded chunked column -> (the unified dictionary decoded, _BAD where
    decode raised ValueError; the column with unified dictionaries)."""
    col = col.unify_dictionaries()
    if col.num_chunks == 0:
        return np.zeros(0, dtype=object), col
    dictionary = col.chunk(0).dictionary.to_pylist()
    out = np.empty(len(dictionary), dtype=object)
    for i, b in enumerate(dictionary):
        try:
            out[i] = decode(b)
        except ValueError:
            out[i] = _BAD
    return out, col


def _decoded(raw: list[bytes], decode: Callable[[bytes], Any]) -> AnyArr:
    """The distinct raw values of a text field, decoded (ValueError if one cannot be)."""
    out = np.empty(len(raw), dtype=object)
    for i, b in enumerate(raw):
        out[i] = decode(b)
    return out


def _indices(chunk: Any) -> I64:
    return cast(I64, chunk.indices.to_numpy(zero_copy_only=False))


def _errno_decode(b: bytes) -> str | None:
    return unescape_text(b) if b else None


def _np_chunks(col: Any) -> list[AnyArr]:
    return [ch.to_numpy(zero_copy_only=False) for ch in col.chunks]


# --------------------------------------------------------------------------------------
# Per-column storage across batches
# --------------------------------------------------------------------------------------


_NUMERIC_STORES = ("time", "cat", "int64", "uint64", "Int64", "UInt64")
_STORE_DTYPE: dict[str, Any] = {"time": np.int64, "cat": np.int32, "int64": np.int64,
                                "uint64": np.uint64, "Int64": np.int64, "UInt64": np.uint64}
# Rows reserved up front in every numeric column: anonymous memory that is not touched
# until rows arrive, so this costs address space, not RSS. Rows are copied in while they
# are hot in cache and frame() returns views, with no concatenation. Past it the columns
# grow x2 (one copy).
INITIAL_ROWS = 1 << 22


def _reserve(nbytes: int) -> mmap.mmap:
    """Anonymous memory for a column, on ordinary pages. (MADV_HUGEPAGE was tried: with the
    kernel's default THP defrag=madvise a fault may stop for direct compaction, and ingest
    spent up to 0.5 s of system time per 2M rows in such stalls; bench/RESULTS.md.)"""
    return mmap.mmap(-1, max(nbytes, mmap.PAGESIZE), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _empty(capacity: int, dtype: Any) -> AnyArr:
    dt = np.dtype(dtype)
    return np.frombuffer(_reserve(capacity * dt.itemsize), dtype=dt, count=capacity)


class _Table:
    """The numeric columns of all rows so far, contiguous, with spare capacity."""

    def __init__(self, dtypes: dict[str, Any], capacity: int = INITIAL_ROWS) -> None:
        self.n = 0
        self.capacity = capacity
        self.generation = 0          # bumped when the arrays are replaced by bigger ones
        self.arrays: dict[str, AnyArr] = {k: _empty(capacity, dt) for k, dt in dtypes.items()}

    def reserve(self, k: int) -> None:
        need = self.n + k
        if need <= self.capacity:
            return
        cap = self.capacity
        while cap < need:
            cap *= 2
        for key, old in self.arrays.items():
            new = _empty(cap, old.dtype)
            new[: self.n] = old[: self.n]
            self.arrays[key] = new
        self.capacity = cap
        self.generation += 1

    def write(self, key: str, start: int, chunks: Sequence[AnyArr]) -> None:
        arr = self.arrays[key]
        pos = start
        for c in chunks:
            k = len(c)
            dest = arr[pos:pos + k]
            if not (k and dest.ctypes.data == c.ctypes.data):   # not already in place
                dest[...] = c
            pos += k


class _ColumnStore:
    """One output column: numeric ones live in the parser's _Table, str/errno/object ones
    as a list of chunks."""

    def __init__(self, name: str, store: Store) -> None:
        self.name = name
        self.store = store
        self.numeric = store in _NUMERIC_STORES
        self.nullable = store in ("Int64", "UInt64")
        self.chunks: list[Chunk] = []

    def keys(self) -> list[tuple[str, Any]]:
        """The _Table arrays of this column (values, and the mask for Int64/UInt64)."""
        if not self.numeric:
            return []
        keys = [(self.name, _STORE_DTYPE[self.store])]
        if self.nullable:
            keys.append((self.name + "\0mask", np.bool_))
        return keys

    def to_pandas(self, chunk: Chunk, categories: Sequence[str] | None) -> Any:
        s = self.store
        if s == "time":
            return chunk.view("datetime64[ns]")
        if s in ("int64", "uint64"):
            return chunk
        if s in ("Int64", "UInt64"):
            return pd.arrays.IntegerArray(chunk[0], chunk[1])
        if s == "cat":
            assert categories is not None
            return cast(Any, pd.Categorical).from_codes(chunk, categories=list(categories),
                                                        validate=False)
        if s == "str":
            return pd.array(chunk, dtype="str")
        return pd.Series(chunk, dtype=object, copy=False)

    def from_table(self, table: _Table, start: int, end: int, copy: bool) -> Chunk:
        v = table.arrays[self.name][start:end]
        if copy:
            v = v.copy()
        if not self.nullable:
            return v
        m = table.arrays[self.name + "\0mask"][start:end]
        return (v, m.copy() if copy else m)

    def concat(self, chunks: Sequence[Chunk]) -> Chunk:
        if not chunks:
            return self.empty()
        if self.store == "str":
            return pa.chunked_array(list(chunks), type=pa.string())
        return _concat(chunks)

    def consolidate(self) -> Chunk:
        """All chunks as one; the chunks are replaced by it (so memory is held once)."""
        whole = self.concat(self.chunks)
        self.chunks = list(whole.chunks) if self.store == "str" else [whole]
        return whole

    def empty(self) -> Chunk:
        if self.store == "str":
            return pa.chunked_array([], type=pa.string())
        return np.zeros(0, dtype=object)

    def missing(self, n: int) -> Chunk:
        """A chunk of n rows where this column is absent (NA)."""
        s = self.store
        if s in ("Int64", "UInt64"):
            return (np.zeros(n, dtype=np.int64 if s == "Int64" else np.uint64),
                    np.ones(n, dtype=np.bool_))
        if s == "str":
            return pa.nulls(n, type=pa.string())
        if s in ("errno", "object"):
            return np.full(n, None, dtype=object)
        raise AssertionError(f"{self.name} ({s}) cannot be missing")

    def adapt(self, chunk: Chunk) -> Chunk:
        """A group's field chunk (ndarray or pa array) -> this store's chunk type."""
        s = self.store
        if s in ("int64", "uint64", "str"):
            return chunk
        if s in ("Int64", "UInt64"):
            return (chunk, np.zeros(len(chunk), dtype=np.bool_))
        if isinstance(chunk, pa.Array):
            return np.array(chunk.to_pylist(), dtype=object)
        if chunk.dtype != object:
            return np.array(chunk.tolist(), dtype=object)
        return chunk


# --------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------

_CSV_PARSE = pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False,
                                escape_char=False, newlines_in_values=False,
                                ignore_empty_lines=False)
_CPUS = os.cpu_count() or 1

try:
    from . import _recscan
except ImportError:        # installed without a C compiler: pyarrow parses every batch
    _recscan = None        # type: ignore[assignment]
# Which parser takes a clean batch first: "compiled" (_recscan.c, one pass, strict like
# parse_record) or "pyarrow" (its CSV reader, then the column checks).
SCANNER: Literal["compiled", "pyarrow"] = "pyarrow" if _recscan is None else "compiled"
_SCAN_KINDS = wire.SCAN_KIND_CODES


class _ArrowReject(Exception):
    """The vectorized parse of a group did not vouch for every line."""


@dataclass
class _HistBlock:
    name: str
    kind: str
    lines: list[bytes]
    tag: bytes              # the @@smh line


_EMPTY_BATCH = Batch()
_SCAN_WINDOW = 1 << 20


class RecordParser:
    """Incremental parser of stap's output; see the module docstring.

    Each parsed row, message, damaged line, histogram and summary is reported once, in the
    Batch of the next flush() or close() (feed() only buffers and parses).

    batch_bytes: feed() parses once this much is buffered (flush() parses whatever whole
    lines are buffered, close() everything). max_line: a line longer than this is not
    buffered whole: its first max_line bytes are kept (as a damaged line if it contains
    ``@@sm1``, else as a message with a note) and the rest is skipped. max_damaged_kept:
    how many damaged lines are kept in `damaged` (all are counted in `damaged_count`).
    messages_head, messages_tail, stap_messages: the bounds of `messages` (MessageLog): a
    chatty -c command cannot grow memory without end, and stap's ERROR/WARNING lines stay.
    key_kinds: the `@@smk` key kind per probe label (script.Aggregate.key_kinds), so a key
    the script cannot have printed for it is a damaged line; a label not in it: text.
    """

    def __init__(self, schemas: Sequence[ProbeSchema], *, batch_bytes: int = 4 << 20,
                 max_line: int = 1 << 20, max_damaged_kept: int = 10_000,
                 key_kinds: Mapping[str, ColumnKind] | None = None,
                 messages_head: int = 2000, messages_tail: int = 2000,
                 stap_messages: int = 2000) -> None:
        self.schemas: tuple[ProbeSchema, ...] = tuple(schemas)
        self._msg_bounds = (messages_head, messages_tail, stap_messages)
        self._messages = MessageLog(*self._msg_bounds)
        self.key_kinds: dict[str, ColumnKind] = dict(key_kinds or {})
        self.batch_bytes = batch_bytes
        self.max_line = max_line
        self.max_damaged_kept = max_damaged_kept

        self.damaged: list[bytes] = []
        self.damaged_count = 0
        self.row_count = 0
        self.histograms: list[Histogram] = []
        self.summaries: list[Summary] = []
        self.tag_counts: list[TagCount] = []     # @@smc / @@smk lines, in order

        self._chunks: list[bytes] = []
        self._size = 0
        self._nl_chunk = -1        # index in _chunks of the last chunk holding a newline
        self._partial = 0          # bytes after the last newline
        self._overlong: bytearray | None = None
        self._overlong_len = 0
        self._overlong_tagged = False
        self._overlong_tail = b""
        self._closed = False
        self._pending_damage: list[tuple[int, bytes]] = []
        self._hist: _HistBlock | None = None
        self._fast_ok = True
        self._threads_off = 0          # batches to read single-threaded (see _read_csv)
        self._thread_gain = 2.0
        self._frame_cache: pd.DataFrame | None = None
        self._frame_rows = -1
        # Internal frames whose shallow copies were handed out: while they live, pandas
        # copy-on-write copies before a user's in-place change, so the rows we hold (and
        # hand out again later) stay as parsed.
        self._anchors: list[tuple[pd.DataFrame, weakref.ref[pd.DataFrame]]] = []
        self._anchor_generation = 0

        self._new_messages = MessageLog(*self._msg_bounds)
        self._new_damaged = 0
        self._new_hists: list[Histogram] = []
        self._new_summaries: list[Summary] = []
        # per parse: (first row, rows, the str/errno/object chunks)
        self._batch_pieces: list[tuple[int, int, dict[str, list[Chunk]]]] = []
        self._batch_rows = 0

        self._plan()

    # ---- setup ----------------------------------------------------------------------

    def _plan(self) -> None:
        schemas = self.schemas
        labels: list[str] = []
        self._probe_code = np.zeros(max(1, len(schemas)), dtype=np.int32)
        for i, s in enumerate(schemas):
            if s.label not in labels:
                labels.append(s.label)
            self._probe_code[i] = labels.index(s.label)
        self._probe_categories = labels
        self._comm_categories: list[str] = []
        self._comm_codes: dict[str, int] = {}

        kinds_by_name: dict[str, set[str]] = {}
        count_by_name: dict[str, int] = {}
        order: list[str] = []
        for s in schemas:
            seen: set[str] = set()
            for c in s.columns:
                if c.name in seen:
                    raise ValueError(f"{s.label}: duplicate column {c.name!r}")
                seen.add(c.name)
                if c.name in BASE_COLUMNS:
                    raise ValueError(f"{s.label}: column name {c.name!r} is reserved")
                if c.name not in kinds_by_name:
                    order.append(c.name)
                    kinds_by_name[c.name] = set()
                    count_by_name[c.name] = 0
                kinds_by_name[c.name].add(c.kind)
                count_by_name[c.name] += 1
        self._stores: dict[str, _ColumnStore] = {
            "time": _ColumnStore("time", "time"),
            "probe": _ColumnStore("probe", "cat"),
            "pid": _ColumnStore("pid", "int64"),
            "tid": _ColumnStore("tid", "int64"),
            "comm": _ColumnStore("comm", "cat"),
            "cpu": _ColumnStore("cpu", "int64"),
        }
        for name in order:
            full = count_by_name[name] == len(schemas)
            self._stores[name] = _ColumnStore(name, _store_for(kinds_by_name[name], full))
        self._field_names = order
        # per probe: output column name -> field position
        self._field_pos = [{c.name: j for j, c in enumerate(s.columns)} for s in schemas]
        self._any_regs = any(s.print_regs for s in schemas)
        self._reg_names = ([r for r in PRINT_REGS_COLUMNS if r not in kinds_by_name]
                           if self._any_regs else [])
        self._reg_set = set(self._reg_names)
        for r in self._reg_names:
            self._stores[r] = _ColumnStore(r, "UInt64")
        self._regs_probe = np.array([s.print_regs for s in schemas] or [False], dtype=np.bool_)
        self._table = _Table({k: dt for st in self._stores.values() for k, dt in st.keys()})

        shapes: dict[tuple[ColumnKind, ...], int] = {}
        self._shape_of = np.zeros(max(1, len(schemas)), dtype=np.int64)
        self._shapes: list[_Shape] = []
        for i, s in enumerate(schemas):
            kinds = tuple(c.kind for c in s.columns)
            if kinds not in shapes:
                shapes[kinds] = len(self._shapes)
                self._shapes.append(_make_shape(kinds, []))
            self._shapes[shapes[kinds]].probes.append(i)
            self._shape_of[i] = shapes[kinds]
        for sid, shape in enumerate(self._shapes):
            shape.probe_ok = bytes(int(s == sid) for s in self._shape_of[:len(schemas)])
            shape.scan_kinds = b"".join(_SCAN_KINDS[k] for k in shape.kinds)

    # ---- public API -----------------------------------------------------------------

    def feed(self, data: bytes) -> Batch:
        """Buffer `data` (any chunk of stap's output); parse the whole lines if batch_bytes
        or more are buffered. Returns an empty Batch: what feed() parses is reported by the
        next flush() or close(), so a caller that only looks at those (the runner's timer
        and the end) misses nothing, and nothing is reported twice."""
        if self._closed:
            raise ValueError("feed() after close()")
        if data:
            self._add(bytes(data))
        if self._size >= self.batch_bytes and self._nl_chunk >= 0:
            self._drain(final=False)
        return _EMPTY_BATCH

    def flush(self) -> Batch:
        """Parse every whole line buffered so far (the live view calls this on a timer)."""
        if not self._closed and self._nl_chunk >= 0:
            self._drain(final=False)
        return self._take_batch()

    def close(self) -> Batch:
        """End of output: parse everything, including a last line without a newline (a
        partial record line is damaged, a partial other line is a message)."""
        if self._closed:
            return self._take_batch()
        self._closed = True
        if self._overlong is not None:
            self._finish_overlong()
        if self._chunks:
            buf = b"".join(self._chunks)
            self._chunks, self._size, self._nl_chunk, self._partial = [], 0, -1, 0
            if buf.endswith(b"\n"):
                self._process(buf, final=True)
            else:
                self._process(buf + b"\n", final=True, last_partial=True)
        if self._hist is not None:
            block, self._hist = self._hist, None
            self._message(block.tag)
            for ln in block.lines:
                self._message(ln)
        return self._take_batch()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def messages(self) -> list[str]:
        """The message lines kept, in order (see MessageLog; `messages_dropped` counts the
        others)."""
        return self._messages.lines()

    @property
    def messages_dropped(self) -> int:
        return self._messages.dropped

    @property
    def columns(self) -> list[str]:
        """The DataFrame's columns, in order."""
        return list(self._stores)

    def frame(self) -> pd.DataFrame:
        """All rows so far as one DataFrame. Numeric columns are views of the parser's
        contiguous columns (no copy); the result is a shallow copy under pandas
        copy-on-write, so changing it does not change the parser's rows."""
        if self._frame_cache is None or self._frame_rows != self.row_count:
            table = self._table
            if table.generation != self._anchor_generation:
                self._anchors = []          # older frames view arrays we no longer use
                self._anchor_generation = table.generation
            data: dict[str, Any] = {}
            for name, st in self._stores.items():
                if st.numeric:
                    chunk = st.from_table(table, 0, table.n, copy=False)
                else:
                    chunk = st.consolidate()
                data[name] = st.to_pandas(chunk, self._categories_for(name))
            self._frame_cache = pd.DataFrame(data, copy=False)
            self._frame_rows = self.row_count
        out = self._frame_cache.copy(deep=False)
        # keep the internal frame while the copy lives (only those: frame() may be called
        # on every tick of a long run)
        self._anchors = [(f, r) for f, r in self._anchors if r() is not None]
        self._anchors.append((self._frame_cache, weakref.ref(out)))
        return out

    # ---- buffering ------------------------------------------------------------------

    def _add(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._overlong is not None:
                nl = data.find(b"\n", pos)
                self._overlong_extend(data, pos, n if nl < 0 else nl)
                if nl < 0:
                    return
                self._finish_overlong()
                pos = nl + 1
                continue
            # A chunk may hold a whole line longer than max_line: cut it here, before it
            # is buffered (and copied) whole.
            k = self._first_overlong(data, pos) if n - pos + self._partial > self.max_line else -1
            if k < 0:
                self._buffer(data if pos == 0 else data[pos:])
                return
            if k > pos:
                self._buffer(data[pos:k])
            self._start_overlong()
            pos = k

    def _first_overlong(self, data: bytes, pos: int) -> int:
        """Where in data[pos:] the first line longer than max_line starts (pos: the line
        buffered so far goes on), or -1. Scans in windows, so a huge chunk costs no more
        than a window of temporary memory."""
        last = pos - 1 - self._partial      # where the newline before the current line is
        n = len(data)
        for ws in range(pos, n, _SCAN_WINDOW):
            we = min(n, ws + _SCAN_WINDOW)
            nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8, count=we - ws,
                                              offset=ws) == 10) + ws
            if nl.size:
                prev = np.empty(nl.size, dtype=np.int64)
                prev[0] = last
                prev[1:] = nl[:-1]
                over = np.flatnonzero(nl - prev - 1 > self.max_line)
                if over.size:
                    return max(pos, int(prev[over[0]]) + 1)
                last = int(nl[-1])
            if we - last - 1 > self.max_line:
                return max(pos, last + 1)
        return -1

    def _buffer(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        nl = data.rfind(b"\n")
        if nl >= 0:
            self._nl_chunk = len(self._chunks) - 1
            self._partial = len(data) - nl - 1
        else:
            self._partial += len(data)

    def _start_overlong(self) -> None:
        # Parse the whole lines before the long one first, so the order stays right.
        if self._nl_chunk >= 0:
            self._drain(final=True)
        rest = b"".join(self._chunks)
        self._chunks, self._size, self._nl_chunk, self._partial = [], 0, -1, 0
        self._overlong = bytearray()
        self._overlong_len = 0
        self._overlong_tagged = False
        self._overlong_tail = b""
        self._overlong_extend(rest, 0, len(rest))

    def _overlong_extend(self, data: bytes, start: int, end: int) -> None:
        """Take data[start:end] into the overlong line without copying all of it."""
        assert self._overlong is not None
        t = len(RECORD_TAG) - 1
        edge = self._overlong_tail + data[start:min(end, start + t)]
        if not self._overlong_tagged and (RECORD_TAG in edge
                                          or data.find(RECORD_TAG, start, end) >= 0):
            self._overlong_tagged = True
        self._overlong_tail = (self._overlong_tail + data[max(start, end - t):end])[-t:]
        keep = min(self.max_line - len(self._overlong), end - start)
        if keep > 0:
            self._overlong += data[start:start + keep]
        self._overlong_len += end - start

    def _finish_overlong(self) -> None:
        assert self._overlong is not None
        head = bytes(self._overlong)
        total = self._overlong_len
        self._overlong = None
        if total == len(head) and head.endswith(b"\r"):
            head = head[:-1]
        if self._overlong_tagged:
            self._damage(head)
        else:
            more = total - len(head)
            self._message(head, note=f" [... {more} more bytes of this line not kept]"
                          if more > 0 else "")

    def _drain(self, final: bool) -> None:
        """Parse the whole lines buffered; keep the partial last line (and whatever the
        processing holds back) for later."""
        k = self._nl_chunk
        if k < 0:
            return
        last = self._chunks[k]
        cut = last.rfind(b"\n") + 1
        tail_chunks = self._chunks[k + 1:]
        if cut == len(last):
            head, rest = last, b""
        else:
            head, rest = last[:cut], last[cut:]
        buf = head if k == 0 else b"".join(self._chunks[:k] + [head])
        consumed = self._process(buf, final=final)
        held = buf[consumed:] if consumed < len(buf) else b""
        new_chunks = [c for c in (held, rest) if c] + tail_chunks
        self._chunks = new_chunks
        self._size = sum(len(c) for c in new_chunks)
        self._nl_chunk = 0 if held else -1
        # _partial is unchanged: the bytes after the last newline are the same.

    # ---- output bookkeeping ---------------------------------------------------------

    def _message(self, line: bytes, note: str = "") -> None:
        text = line.decode("utf-8", "backslashreplace") + note
        self._messages.append(text)
        self._new_messages.append(text)

    def _damage(self, line: bytes) -> None:
        self.damaged_count += 1
        self._new_damaged += 1
        if len(self.damaged) < self.max_damaged_kept:
            self.damaged.append(line[: self.max_line])

    def _take_batch(self) -> Batch:
        pieces = self._batch_pieces
        if not (pieces or self._new_messages or self._new_messages.dropped
                or self._new_damaged or self._new_hists
                or self._new_summaries):
            return _EMPTY_BATCH
        make: Callable[[], pd.DataFrame] | None = None
        if pieces:
            comm_categories = list(self._comm_categories)

            def make() -> pd.DataFrame:
                return self._batch_frame(pieces, comm_categories)

        b = Batch(frame=make, messages=tuple(self._new_messages.lines()),
                  messages_dropped=self._new_messages.dropped, rows=self._batch_rows,
                  damaged=self._new_damaged, histograms=tuple(self._new_hists),
                  summaries=tuple(self._new_summaries))
        self._batch_pieces = []
        self._batch_rows = 0
        self._new_messages = MessageLog(*self._msg_bounds)
        self._new_damaged = 0
        self._new_hists = []
        self._new_summaries = []
        return b

    def _batch_frame(self, pieces: list[tuple[int, int, dict[str, list[Chunk]]]],
                     comm_categories: list[str]) -> pd.DataFrame:
        """The DataFrame of one Batch: its rows copied out of the table, its str/object
        chunks."""
        start = pieces[0][0]
        end = start + sum(k for _, k, _ in pieces)
        data: dict[str, Any] = {}
        for name, st in self._stores.items():
            if st.numeric:
                chunk = st.from_table(self._table, start, end, copy=True)
            else:
                chunk = st.concat([c for _, _, cols in pieces for c in cols[name]])
            cats = comm_categories if name == "comm" else self._categories_for(name)
            data[name] = st.to_pandas(chunk, cats)
        frame = pd.DataFrame(data, copy=False)
        frame.index = pd.RangeIndex(start, end)
        return frame

    def _categories_for(self, name: str) -> list[str] | None:
        if name == "probe":
            return self._probe_categories
        if name == "comm":
            return list(self._comm_categories)
        return None

    def _comm_code(self, text: str) -> int:
        code = self._comm_codes.get(text)
        if code is None:
            code = len(self._comm_categories)
            self._comm_codes[text] = code
            self._comm_categories.append(text)
        return code

    # ---- batch processing -----------------------------------------------------------

    def _process(self, buf: bytes, final: bool, last_partial: bool = False) -> int:
        """Parse `buf` (whole lines, ends with a newline). Returns how many bytes were
        consumed; the rest (a record whose print_regs dump is not complete yet) is held
        back for the next call."""
        if not buf:
            return 0
        self._pending_damage = []
        if (self._fast_ok and not self._any_regs and not last_partial
                and buf.startswith(_PREFIX)):
            parsed = self._fast_work(buf)
            if parsed is not None:
                self._apply_fast(buf, parsed)
                return len(buf)
            self._fast_ok = False     # skip the attempt for the next batch
        else:
            self._fast_ok = True
        self._pending_damage = []
        return self._vector(buf, final, last_partial)

    def _fast_work(self, buf: bytes) -> _Parsed | None:
        """The clean batch, nothing but well-formed records of one shape: parsed (without
        touching parser state yet). None if the batch is not clean."""
        if b"\0" in buf:
            return None
        # The CSV reader ends a row at \n, \r\n and a lone \r, and (ignore_empty_lines
        # off) fails on an empty one: as many rows as \n means no lone \r, no empty line.
        n_lf = int(np.count_nonzero(np.frombuffer(buf, dtype=np.uint8) == 10))
        tab = buf.find(b"\t", 6)
        digits = buf[6:tab]
        if not digits.isdigit() or int(digits) >= len(self.schemas):
            return None
        sid = int(self._shape_of[int(digits)])
        if _recscan is not None:
            scanned = self._scan(buf, sid, n_lf)
            if scanned is not None:
                return scanned
        try:
            return self._arrow_parse(buf, sid, n_lf, one_shape=True)
        except _ArrowReject:
            return None

    def _scan(self, buf: bytes, sid: int, nrows: int) -> _Parsed | None:
        """The compiled parse of a clean batch of shape `sid`; None if it is not one."""
        shape = self._shapes[sid]
        assert _recscan is not None
        # Columns the batch's rows will be copied into anyway are parsed straight into the
        # table's unused rows (nothing reads past table.n; _Table.write skips the copy):
        # no fresh memory to fault in, no second pass.
        table = self._table
        table.reserve(nrows)
        start = table.n
        direct = len(shape.probes) == 1

        def out(name: str, dtype: Any) -> AnyArr:
            st = self._stores.get(name) if direct else None
            if st is not None and st.store in ("time", "int64", "uint64") \
                    and table.arrays[st.name].dtype == dtype:
                return table.arrays[st.name][start:start + nrows]
            return np.empty(nrows, dtype=dtype)

        idx = np.empty(nrows, dtype=np.int64)
        t, pid, tid, cpu = (out(name, np.int64) for name in ("time", "pid", "tid", "cpu"))
        comm = np.empty(nrows, dtype=np.int32)
        cols = self.schemas[shape.probes[0]].columns
        text = ("str", "errno")
        fields = [np.empty(nrows, dtype=np.int32) if k in text      # codes of the values
                  else out(c.name, np.dtype(np.int64 if k == "int" else np.uint64))
                  for c, k in zip(cols, shape.kinds, strict=True)]
        raw = _recscan.scan(buf, shape.scan_kinds, shape.probe_ok, nrows, idx, t, pid, tid,
                            cpu, comm, fields)
        if raw is None:
            return None
        try:
            comm_vals = _decoded(raw[0], _unescape_cached)
            values = iter(raw[1:])
            chunks: list[Chunk] = []
            for f, k in zip(fields, shape.kinds, strict=True):
                if k == "errno":
                    chunks.append(_decoded(next(values), _errno_decode)[f])
                elif k == "str":
                    strs = pa.array(_decoded(next(values), _unescape_cached), type=pa.string())
                    chunks.append(strs.take(pa.array(f)))
                else:
                    chunks.append(f)
        except ValueError:      # an escape text_str() cannot have printed
            return None
        return _Parsed(sid=sid, n=nrows, idx=[idx], time=[t], pid=[pid], tid=[tid], cpu=[cpu],
                       comm_vals=comm_vals, comm_ind=[comm], fields=[[c] for c in chunks],
                       bad=None)

    def _apply_fast(self, buf: bytes, parsed: _Parsed) -> None:
        self._pending_damage = []
        group = self._finish(parsed, buf, None, None)
        for _, t in sorted(self._pending_damage, key=lambda e: e[0]):
            self._damage(t)
        self._emit([group], {})

    def _read_csv(self, buf: bytes, shape: _Shape) -> Any:
        """pyarrow's CSV reader with the shape's column types. Big batches use its threads
        while they pay: when the other cores are busy (threads bring no speed, only ~7%
        more CPU) it reads single-threaded for a while, then tries threads again."""
        n = len(buf)
        threads = _CPUS > 1 and n >= (1 << 20) and self._threads_off <= 0
        if not threads and self._threads_off > 0 and n >= (1 << 20):
            self._threads_off -= 1
        block = max(1 << 20, -(-n // _CPUS)) if threads else n + 1
        ropts = pacsv.ReadOptions(column_names=shape.names, use_threads=threads,
                                  block_size=block)
        copts = pacsv.ConvertOptions(column_types=shape.types, null_values=[],
                                     true_values=["@@sm1"], false_values=["@@"],
                                     strings_can_be_null=False,
                                     quoted_strings_can_be_null=False, check_utf8=False)
        w, c = time.perf_counter(), time.process_time()
        tbl = pacsv.read_csv(pa.BufferReader(pa.py_buffer(buf)), read_options=ropts,
                             parse_options=_CSV_PARSE, convert_options=copts)
        if threads:
            wall = time.perf_counter() - w
            if wall > 0.002:
                eff = (time.process_time() - c) / wall      # cores busy while reading
                self._thread_gain = 0.5 * self._thread_gain + 0.5 * eff
                if self._thread_gain < 1.2:
                    self._threads_off = 16
                    self._thread_gain = 2.0
        return tbl

    def _arrow_group(self, buf: bytes, sid: int, lines: I64 | None, nrows: int,
                     one_shape: bool, bounds: tuple[I64, I64] | None = None) -> _Group:
        """Parse the record lines in `buf` (all of shape `sid` unless one_shape asks to
        check that) with pyarrow. Raises _ArrowReject when the CSV read cannot vouch for
        every line; rows that the per-column checks reject are dropped and reported as
        damaged."""
        return self._finish(self._arrow_parse(buf, sid, nrows, one_shape), buf, lines, bounds)

    def _arrow_parse(self, buf: bytes, sid: int, nrows: int, one_shape: bool) -> _Parsed:
        """The part of _arrow_group that touches no parser state."""
        shape = self._shapes[sid]
        try:
            tbl = self._read_csv(buf, shape)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise _ArrowReject(str(e)) from e
        if tbl.num_rows != nrows:
            raise _ArrowReject("row count")
        if nrows:
            if not (pc.all(tbl.column("tag")).as_py() and not pc.any(tbl.column("end")).as_py()):
                raise _ArrowReject("tag")
            mm = pc.min_max(tbl.column("idx")).as_py()
            if mm["min"] < 0 or mm["max"] >= len(self.schemas):
                raise _ArrowReject("probe index")
        idx = _np_chunks(tbl.column("idx"))
        if one_shape and nrows and len(self._shapes) > 1:
            if not all(bool(np.all(self._shape_of[c] == sid)) for c in idx):
                raise _ArrowReject("shape")
        self._check_lenient(buf, tbl, shape)

        bad: list[BoolArr] | None = None

        def mark(chunk_bad: list[BoolArr]) -> None:
            nonlocal bad
            if not any(b.any() for b in chunk_bad):
                return
            if bad is None:
                bad = chunk_bad
            else:
                bad = [x | y for x, y in zip(bad, chunk_bad, strict=True)]

        comm_vals, comm_col = _dict_values(tbl.column("comm"), _unescape_cached)
        comm_ind = [_indices(ch) for ch in comm_col.chunks]
        comm_bad = np.array([v is _BAD for v in comm_vals], dtype=np.bool_)
        if comm_bad.any():
            mark([comm_bad[i] for i in comm_ind])
        fields: list[list[Chunk]] = []
        for j, kind in enumerate(shape.kinds):
            col = tbl.column(f"f{j}")
            if kind in ("int", "uint"):
                fields.append(_np_chunks(col))
            elif kind == "hex":
                parts = [_hex_chunk(ch) for ch in col.chunks]
                fields.append([p[0] for p in parts])
                mark([p[1] for p in parts])
            elif kind == "str":
                sparts = [_str_chunk(ch) for ch in col.chunks]
                fields.append([p[0] for p in sparts])
                mark([p[1] for p in sparts])
            else:
                evals, ecol = _dict_values(col, _errno_decode)
                eind = [_indices(ch) for ch in ecol.chunks]
                isbad = np.array([v is _BAD for v in evals], dtype=np.bool_)
                if isbad.any():
                    mark([isbad[i] for i in eind])
                    evals[isbad] = None
                fields.append([evals[i] for i in eind])
        return _Parsed(sid=sid, n=nrows, idx=idx, time=_np_chunks(tbl.column("time")),
                       pid=_np_chunks(tbl.column("pid")), tid=_np_chunks(tbl.column("tid")),
                       cpu=_np_chunks(tbl.column("cpu")), comm_vals=comm_vals,
                       comm_ind=comm_ind, fields=fields,
                       bad=None if bad is None else np.concatenate(bad))

    def _finish(self, p: _Parsed, buf: bytes, lines: I64 | None,
                bounds: tuple[I64, I64] | None) -> _Group:
        """The main-thread part of _arrow_group: comm categories (only for the comms of
        rows that are kept) and the damaged rows."""
        lut = np.full(len(p.comm_vals), -1, dtype=np.int32)
        if p.bad is None:
            used: Iterable[int] = range(len(p.comm_vals))
        else:
            keep = ~p.bad
            used = np.unique(np.concatenate(p.comm_ind)[keep]).tolist()
        for i in used:
            lut[i] = self._comm_code(cast(str, p.comm_vals[i]))
        g = _Group(shape=self._shapes[p.sid], n=p.n, lines=lines, idx=p.idx, time=p.time,
                   pid=p.pid, tid=p.tid, cpu=p.cpu, comm=[lut[i] for i in p.comm_ind],
                   fields=p.fields)
        if p.bad is not None:
            g = self._drop_bad(g, p.bad, buf, bounds)
        return g

    def _check_lenient(self, buf: bytes, tbl: Any, shape: _Shape) -> None:
        """pyarrow's integer parser trims spaces and takes a 0x/0X prefix; records never
        have either in a number. So every space, x and X of the batch must be inside the
        text fields (comm, str, errno): count them in both."""
        wanted = [c for c in b" xX" if bytes((c,)) in buf]
        if not wanted:
            return
        a = np.frombuffer(buf, dtype=np.uint8)
        text_cols = ["comm"] + [f"f{j}" for j, k in enumerate(shape.kinds)
                                if k in ("str", "errno")]
        for c in wanted:
            total = int(np.count_nonzero(a == c))
            inside = 0
            for name in text_cols:
                col = tbl.column(name)
                if pa.types.is_dictionary(col.type):
                    col = col.unify_dictionaries()
                    if not col.num_chunks:
                        continue
                    per = np.array([v.count(c) for v in col.chunk(0).dictionary.to_pylist()],
                                   dtype=np.int64)
                    if per.any():
                        for ch in col.chunks:
                            inside += int(np.bincount(_indices(ch), minlength=len(per)) @ per)
                else:
                    for ch in col.chunks:
                        _, data = _binary_parts(ch)
                        inside += int(np.count_nonzero(data == c))
            if inside != total:
                raise _ArrowReject("space or 0x in a number")

    def _line_bounds(self, buf: bytes) -> tuple[I64, I64]:
        a = np.frombuffer(buf, dtype=np.uint8)
        nl = np.flatnonzero(a == 10).astype(np.int64)
        starts = np.empty_like(nl)
        if nl.size:
            starts[0] = 0
            starts[1:] = nl[:-1] + 1
        has_cr = (nl > starts) & (a[np.maximum(nl - 1, 0)] == 13)
        return starts, nl - has_cr

    def _drop_bad(self, g: _Group, bad: BoolArr, buf: bytes,
                  bounds: tuple[I64, I64] | None) -> _Group:
        starts, cend = bounds if bounds is not None else self._line_bounds(buf)
        lines = g.line_numbers()
        # rows are the lines of `buf` in order
        for r in np.flatnonzero(bad).tolist():
            self._pending_damage.append((int(lines[r]), buf[int(starts[r]):int(cend[r])]))
        return g.keep(~bad)

    def _python_group(self, sid: int, lines: I64, texts: list[bytes]) -> _Group:
        """The reference path for a group the vectorized parse rejected."""
        shape = self._shapes[sid]
        recs: list[ParsedRecord] = []
        keep: list[int] = []
        for i, t in enumerate(texts):
            rec = parse_record(t, self.schemas)
            if rec is None or int(self._shape_of[rec.idx]) != sid:
                self._pending_damage.append((int(lines[i]), t))
            else:
                recs.append(rec)
                keep.append(i)
        n = len(recs)
        fields: list[list[Chunk]] = []
        for j, kind in enumerate(shape.kinds):
            vals = [r.fields[j] for r in recs]
            if kind == "int":
                fields.append([np.array(vals, dtype=np.int64).reshape(n)])
            elif kind in ("uint", "hex"):
                fields.append([np.array(vals, dtype=np.uint64).reshape(n)])
            elif kind == "str":
                fields.append([pa.array(vals, type=pa.string())])
            else:
                arr = np.empty(n, dtype=object)
                arr[:] = vals
                fields.append([arr])

        def ints(vals: list[int]) -> list[I64]:
            return [np.array(vals, dtype=np.int64).reshape(n)]

        return _Group(
            shape=shape, n=n, lines=lines[np.array(keep, dtype=np.int64)],
            idx=ints([r.idx for r in recs]), time=ints([r.time_ns for r in recs]),
            pid=ints([r.pid for r in recs]), tid=ints([r.tid for r in recs]),
            cpu=ints([r.cpu for r in recs]),
            comm=[np.array([self._comm_code(r.comm) for r in recs], dtype=np.int32).reshape(n)],
            fields=fields)

    def _vector(self, buf: bytes, final: bool, last_partial: bool) -> int:
        """The general batch: index lines with numpy, classify them, parse the record lines
        per shape, and handle the others in order."""
        a = np.frombuffer(buf, dtype=np.uint8)
        nl = np.flatnonzero(a == 10).astype(np.int64)
        n = int(nl.size)
        starts = np.empty_like(nl)
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
        has_cr = (nl > starts) & (a[np.maximum(nl - 1, 0)] == 13)
        cend = nl - has_cr
        last = a.size - 1
        cand = (cend - starts) >= 9
        for k, ch in enumerate(_PREFIX):
            cand &= a[np.minimum(starts + k, last)] == ch
        for k, ch in enumerate(_SUFFIX):
            cand &= a[np.maximum(cend - 3 + k, 0)] == ch
        if int(np.count_nonzero(a == 13)) != int(np.count_nonzero(has_cr)):
            crpos = np.flatnonzero(a == 13)
            ln = np.searchsorted(nl, crpos, side="left")
            cand[ln[crpos != cend[ln]]] = False       # a \r inside the line
        if b"\0" in buf:
            cand[np.searchsorted(nl, np.flatnonzero(a == 0), side="left")] = False
        if last_partial:
            cand[n - 1] = False
        # probe index: 1 to 3 digits between the first and the second tab
        p = np.minimum(starts + 6, last)
        d = [a[np.minimum(p + k, last)].astype(np.int64) - 48 for k in range(3)]
        isdig = [(x >= 0) & (x <= 9) for x in d]
        tab = [a[np.minimum(p + k, last)] == 9 for k in range(1, 4)]
        idx = np.full(n, -1, dtype=np.int64)
        one = isdig[0] & tab[0]
        two = isdig[0] & isdig[1] & tab[1]
        three = isdig[0] & isdig[1] & isdig[2] & tab[2]
        idx[one] = d[0][one]
        idx[two] = (d[0] * 10 + d[1])[two]
        idx[three] = (d[0] * 100 + d[1] * 10 + d[2])[three]
        idx[~cand] = -1
        bad_idx = cand & ((idx < 0) | (idx >= len(self.schemas)))
        # kind per line: 0 other, 1 record candidate, 2 damaged already
        kind = np.zeros(n, dtype=np.int8)
        kind[cand] = 1
        kind[bad_idx] = 2
        idx[bad_idx] = -1

        def line(j: int) -> bytes:
            return buf[int(starts[j]):int(cend[j])]

        cut = n
        regs: dict[int, tuple[int, ...]] = {}
        dump_lines: set[int] = set()
        if self._any_regs:
            cut = self._match_dumps(kind, idx, line, n, final, regs, dump_lines)

        # the lines that are not rows, in order: (line, text, damaged?)
        events: list[tuple[int, bytes, bool]] = [
            (j, line(j), kind[j] == 2) for j in np.flatnonzero(kind[:cut] != 1).tolist()
            if j not in dump_lines]
        groups: list[_Group] = []
        rec_lines = np.flatnonzero(kind[:cut] == 1)
        if rec_lines.size:
            shape_ids = self._shape_of[idx[rec_lines]]
            for sid in np.unique(shape_ids).tolist():
                gl = rec_lines[shape_ids == sid] if len(self._shapes) > 1 else rec_lines
                groups.append(self._parse_lines(buf, a, starts, cend, nl, gl, sid, n))
        events.extend((j, t, True) for j, t in self._pending_damage)
        events.sort(key=lambda e: e[0])
        for _, t, damaged in events:
            self._other_line(t, damaged)
        if groups:
            self._emit(groups, regs)
        return int(nl[cut - 1]) + 1 if cut > 0 else 0

    def _parse_lines(self, buf: bytes, a: npt.NDArray[np.uint8], starts: I64, cend: I64,
                     nl: I64, gl: I64, sid: int, n: int) -> _Group:
        """The record lines `gl` (all of shape sid) -> a group, vectorized if possible."""
        if gl.size == n:
            sub = buf
            sub_bounds = (starts, cend)
        else:
            lens = nl[gl] + 1 - starts[gl]
            if int(gl[-1]) - int(gl[0]) + 1 == gl.size:
                sub = buf[int(starts[gl[0]]):int(nl[gl[-1]]) + 1]
            else:
                line_mask = np.zeros(n, dtype=np.bool_)
                line_mask[gl] = True
                sub = a[np.repeat(line_mask, nl + 1 - starts)].tobytes()
            sub_starts = np.zeros(gl.size, dtype=np.int64)
            sub_starts[1:] = np.cumsum(lens)[:-1]
            sub_bounds = (sub_starts, sub_starts + (cend[gl] - starts[gl]))
        try:
            return self._arrow_group(sub, sid, gl, int(gl.size), one_shape=False,
                                     bounds=sub_bounds)
        except _ArrowReject:
            texts = [buf[int(starts[j]):int(cend[j])] for j in gl.tolist()]
            return self._python_group(sid, gl, texts)

    def _match_dumps(self, kind: npt.NDArray[np.int8], idx: I64,
                     line: Callable[[int], bytes], n: int, final: bool,
                     regs: dict[int, tuple[int, ...]], dump_lines: set[int]) -> int:
        """Find the print_regs() dump after each record of a print_regs probe: the next 10
        dump lines in order, other output (at most MAX_FOREIGN_IN_DUMP lines, none of them a
        record, a damaged line or a dump line out of order) may come between them. Returns
        the line to hold back from (n: nothing held back)."""
        rec = np.flatnonzero((kind == 1) & self._regs_probe[np.maximum(idx, 0)])
        for r in rec.tolist():
            k = 0
            foreign = 0
            vals: list[int] = []
            taken: list[int] = []
            j = r + 1
            while k < DUMP_LINES:
                if j >= n:
                    if final:
                        break
                    return r
                if kind[j] != 0:
                    break
                t = line(j)
                if RECORD_TAG in t:
                    break
                m = _DUMP_RES[k].match(t)
                if m is not None:
                    vals.extend(int(g, 16) for g in m.groups())
                    taken.append(j)
                    k += 1
                elif t.startswith(_DUMP_PREFIXES):
                    break
                else:
                    foreign += 1
                    if foreign > MAX_FOREIGN_IN_DUMP:
                        break
                j += 1
            if k == DUMP_LINES:
                regs[r] = tuple(vals)
                dump_lines.update(taken)
        return n

    def _other_line(self, t: bytes, damaged: bool) -> None:
        """A line that is not a row, in order: hist block, summary, damaged or message."""
        if damaged or RECORD_TAG in t:
            self._damage(t)
            return
        if self._hist is not None:
            if t.startswith(_HIST_END):
                block, self._hist = self._hist, None
                text = b"\n".join(block.lines).decode("utf-8", "backslashreplace") + "\n"
                try:
                    h = parse_hist_block(text, block.name, block.kind or None)
                except ValueError:
                    # the tags say it is a histogram, the text is not one: the tag lines
                    # are damaged, stap's text between them stays readable
                    self._damage(block.tag)
                    for ln in block.lines:
                        self._message(ln)
                    self._damage(t)
                    return
                self.histograms.append(h)
                self._new_hists.append(h)
            else:
                self._hist.lines.append(t)
            return
        if t.startswith(_HIST_TAG):
            parts = t.rstrip(b"\r").split(b"\t")
            if parts[-1] == b"@@":
                parts = parts[:-1]
            try:
                if len(parts) != 3 or _TAG_NAME_RE.match(parts[1]) is None:
                    raise ValueError("not @@smh <TAB> name <TAB> kind")
                name, hkind = parts[1].decode(), parts[2].decode("ascii")
                hist_kind(hkind)
            except ValueError:
                self._damage(t)
                return
            self._hist = _HistBlock(name, hkind, [], t)
            return
        if t.startswith(_HIST_END):
            self._damage(t)         # an end without its start
            return
        if t.startswith(_SUMMARY_TAG):
            try:
                s = parse_summary(t.decode("utf-8", "backslashreplace"))
            except ValueError:
                self._damage(t)
                return
            self.summaries.append(s)
            self._new_summaries.append(s)
            return
        if t.startswith(_COUNTER_TAG) or t.startswith(_KEYS_TAG):
            name = t.split(b"\t", 2)[1].decode("utf-8", "replace")
            try:
                self.tag_counts.append(parse_tag_count(t, self.key_kinds.get(name)))
            except ValueError:
                self._damage(t)
            return
        self._message(t)

    # ---- assembling a batch's columns -----------------------------------------------

    def _emit(self, groups: list[_Group], regs: dict[int, tuple[int, ...]]) -> None:
        groups = [g for g in groups if g.n]
        if not groups:
            return
        g0 = groups[0]
        if (len(groups) == 1 and len(g0.shape.probes) == 1 and not self._reg_names
                and (g0.lines is None or bool(np.all(g0.lines[1:] > g0.lines[:-1])))):
            cols = self._columns_simple(g0)
        else:
            cols = self._columns_general([g.flat() for g in groups], regs)
        n = sum(g.n for g in groups)
        table = self._table
        start = table.n
        table.reserve(n)
        keep: dict[str, list[Chunk]] = {}
        for name, st in self._stores.items():
            chunks = cols[name]
            if st.nullable:
                table.write(name, start, [c[0] for c in chunks])
                table.write(name + "\0mask", start, [c[1] for c in chunks])
            elif st.numeric:
                table.write(name, start, chunks)
            else:
                st.chunks.extend(chunks)
                keep[name] = chunks
        table.n = start + n
        self._batch_pieces.append((self.row_count, n, keep))
        self.row_count += n
        self._batch_rows += n

    def _columns_simple(self, g: _Group) -> dict[str, list[Chunk]]:
        """One probe, rows in line order: the group's chunks are the columns."""
        probe = g.shape.probes[0]
        code = int(self._probe_code[probe])
        cols: dict[str, list[Chunk]] = {
            "time": g.time,
            "probe": [np.full(len(c), code, dtype=np.int32) for c in g.idx],
            "pid": g.pid, "tid": g.tid, "comm": g.comm, "cpu": g.cpu,
        }
        pos = self._field_pos[probe]
        sizes = [len(c) for c in g.time]
        for name in self._field_names:
            st = self._stores[name]
            j = pos.get(name)
            if j is None:
                cols[name] = [st.missing(k) for k in sizes]
            else:
                cols[name] = [st.adapt(c) for c in g.fields[j]]
        return cols

    def _columns_general(self, groups: list[_Group],
                         regs: dict[int, tuple[int, ...]]) -> dict[str, list[Chunk]]:
        """Several groups/probes (flattened: one chunk each): put the rows in line order and
        each probe's fields in their columns."""
        all_lines = np.concatenate([g.line_numbers() for g in groups])
        order: I64 | None = None
        if len(all_lines) > 1 and not bool(np.all(all_lines[1:] > all_lines[:-1])):
            order = np.argsort(all_lines, kind="stable")
        n = len(all_lines)

        def cat(arrs: list[AnyArr]) -> AnyArr:
            out = arrs[0] if len(arrs) == 1 else np.concatenate(arrs)
            return out if order is None else out[order]

        cols: dict[str, list[Chunk]] = {
            "time": [cat([g.time[0] for g in groups])],
            "probe": [cat([self._probe_code[g.idx[0]] for g in groups])],
            "pid": [cat([g.pid[0] for g in groups])],
            "tid": [cat([g.tid[0] for g in groups])],
            "comm": [cat([g.comm[0] for g in groups])],
            "cpu": [cat([g.cpu[0] for g in groups])],
        }
        offsets = np.cumsum([0] + [g.n for g in groups])
        for name in self._field_names:
            # contributions: (rows in group-concatenated order or None for all, values)
            contrib: list[tuple[I64 | None, Chunk]] = []
            for gi, g in enumerate(groups):
                for p in g.shape.probes:
                    j = self._field_pos[p].get(name)
                    if j is None:
                        continue
                    vals = g.fields[j][0]
                    if len(g.shape.probes) == 1:
                        rows = None
                    else:
                        rows = np.flatnonzero(g.idx[0] == p)
                        if not rows.size:
                            continue
                        vals = (vals.take(pa.array(rows)) if isinstance(vals, pa.Array)
                                else vals[rows])
                    if rows is None:
                        pos = (None if len(groups) == 1
                               else np.arange(offsets[gi], offsets[gi + 1], dtype=np.int64))
                    else:
                        pos = rows + offsets[gi]
                    contrib.append((pos, vals))
            cols[name] = [self._assemble(self._stores[name], contrib, n, order)]

        if self._reg_names:
            row_lines = cat([g.line_numbers() for g in groups])
            regvals = np.zeros((n, len(PRINT_REGS_COLUMNS)), dtype=np.uint64)
            present = np.zeros(n, dtype=np.bool_)
            if regs:
                for r, ln in enumerate(row_lines.tolist()):
                    v = regs.get(ln)
                    if v is not None:
                        regvals[r] = v
                        present[r] = True
            for ci, rname in enumerate(PRINT_REGS_COLUMNS):
                if rname in self._reg_set:
                    cols[rname] = [(np.ascontiguousarray(regvals[:, ci]), ~present)]
        return cols

    def _assemble(self, st: _ColumnStore, contrib: list[tuple[I64 | None, Chunk]], n: int,
                  order: I64 | None) -> Chunk:
        """One output column of a batch from the per-probe contributions, in line order."""
        store = st.store
        if not contrib:
            return st.missing(n)
        if store in ("int64", "uint64", "Int64", "UInt64"):
            dt = np.int64 if store in ("int64", "Int64") else np.uint64
            if len(contrib) == 1 and contrib[0][0] is None:
                values = np.asarray(contrib[0][1]).astype(dt, copy=False)
                present: BoolArr | None = None
            else:
                values = np.zeros(n, dtype=dt)
                present = np.zeros(n, dtype=np.bool_)
                for pos, v in contrib:
                    if pos is None:
                        values[:] = v
                        present[:] = True
                    else:
                        values[pos] = v
                        present[pos] = True
            if order is not None:
                values = values[order]
                present = present[order] if present is not None else None
            if store in ("int64", "uint64"):
                return values
            return (values, np.zeros(n, dtype=np.bool_) if present is None else ~present)
        if store == "str":
            if len(contrib) == 1 and contrib[0][0] is None:
                arr = contrib[0][1]
                return arr if order is None else arr.take(pa.array(order))
            take = np.full(n, -1, dtype=np.int64)
            chunks: list[Any] = []
            base = 0
            for pos, v in contrib:
                k = len(v)
                take[np.arange(n) if pos is None else pos] = np.arange(base, base + k)
                chunks.append(v)
                base += k
            whole = pa.concat_arrays(chunks)
            if order is not None:
                take = take[order]
            return whole.take(pa.array(take, mask=take < 0))
        out = np.full(n, None, dtype=object)
        for pos, v in contrib:
            v = st.adapt(v)
            if pos is None:
                out[:] = v
            else:
                out[pos] = v
        return out if order is None else out[order]
