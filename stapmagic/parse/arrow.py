"""The pyarrow engine: pyarrow's (multithreaded) CSV reader with explicit column types, then
vectorized checks of what it is lenient about (hex, text_str() text, spaces and 0x in numbers).

`@@sm1`/`@@` are read as bool (true_values/false_values), so a wrong tag is a conversion
error at no cost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .. import wire
from .columns import I64, AnyArr, BoolArr, Chunk
from .compiled import errno_decode
from .engine import Parsed
from .plan import Plan, Shape

U64 = npt.NDArray[np.uint64]

_CSV_PARSE = pacsv.ParseOptions(
    delimiter=wire.FIELD_SEP,
    quote_char=False,
    double_quote=False,
    escape_char=False,
    newlines_in_values=False,
    ignore_empty_lines=False,
)
_CPUS = os.cpu_count() or 1


class ArrowReject(Exception):
    """The vectorized parse of a group did not vouch for every line."""


# --------------------------------------------------------------------------------------
# Vectorized conversions
# --------------------------------------------------------------------------------------

_HEX_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_LUT[_c] = 10 + _i
_TEXT_OK = np.zeros(256, dtype=np.bool_)
_TEXT_OK[np.frombuffer(wire._PLAIN, dtype=np.uint8)] = True
_ARANGE16 = np.arange(16, dtype=np.int64)


def _binary_parts(arr: Any) -> tuple[I64, npt.NDArray[np.uint8]]:
    """(offsets relative to the returned data, data) of a pyarrow binary array chunk."""
    n = len(arr)
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    offs64 = offs.astype(np.int64)
    if not n or bufs[2] is None:
        return offs64 - offs64[0], np.zeros(0, dtype=np.uint8)
    data = np.frombuffer(bufs[2], dtype=np.uint8)[int(offs64[0]) : int(offs64[-1])]
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
    win = np.lib.stride_tricks.sliding_window_view(padded, 16)[offs[1:]]  # copies n x 16
    shift = (16 - np.clip(lens, 0, 16)).astype(np.int8)
    win[_ARANGE16_I8[None, :] < shift[:, None]] = 0x30
    d = (win | 0x20) - 0x30  # '0'-'9' -> 0-9, 'a'-'f'/'A'-'F' -> 49-54
    d -= (d > 9).astype(np.uint8) * 39
    packed = np.ascontiguousarray((d[:, 0::2] << 4) | d[:, 1::2])
    return packed.view(">u8").ravel().astype(np.uint64), bad


def _str_chunk(arr: Any) -> tuple[Any, BoolArr]:
    """Escaped text -> pa.StringArray (unescaped), and the mask of rows text_str() cannot
    have printed."""
    offs, data = _binary_parts(arr)
    n = len(offs) - 1
    bad = np.zeros(n, dtype=np.bool_)
    special = (data == 0x5C) | (data == 0x22)  # \ and " : checked by unescape_text
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
                vals.append(wire.unescape_text(b))
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


def _indices(chunk: Any) -> I64:
    return cast(I64, chunk.indices.to_numpy(zero_copy_only=False))


def _np_chunks(col: Any) -> list[AnyArr]:
    return [ch.to_numpy(zero_copy_only=False) for ch in col.chunks]


class ArrowEngine:
    name = "pyarrow"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._threads_off = 0  # batches to read single-threaded (see _read_csv)
        self._thread_gain = 2.0

    def _read_csv(self, buf: bytes, shape: Shape) -> Any:
        """pyarrow's CSV reader with the shape's column types. Big batches use its threads
        while they pay: when the other cores are busy (threads bring no speed, only ~7%
        more CPU) it reads single-threaded for a while, then tries threads again."""
        n = len(buf)
        threads = _CPUS > 1 and n >= (1 << 20) and self._threads_off <= 0
        if not threads and self._threads_off > 0 and n >= (1 << 20):
            self._threads_off -= 1
        block = max(1 << 20, -(-n // _CPUS)) if threads else n + 1
        ropts = pacsv.ReadOptions(column_names=shape.names, use_threads=threads, block_size=block)
        copts = pacsv.ConvertOptions(
            column_types=shape.types,
            null_values=[],
            true_values=[wire.RECORD_TAG],
            false_values=[wire.END_TAG],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            check_utf8=False,
        )
        w, c = time.perf_counter(), time.process_time()
        tbl = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(buf)),
            read_options=ropts,
            parse_options=_CSV_PARSE,
            convert_options=copts,
        )
        if threads:
            wall = time.perf_counter() - w
            if wall > 0.002:
                eff = (time.process_time() - c) / wall  # cores busy while reading
                self._thread_gain = 0.5 * self._thread_gain + 0.5 * eff
                if self._thread_gain < 1.2:
                    self._threads_off = 16
                    self._thread_gain = 2.0
        return tbl

    def parse(self, buf: bytes, sid: int, nrows: int, one_shape: bool = True) -> Parsed | None:
        """A clean batch of shape `sid` (one_shape: check that every line has it); None
        when the CSV read cannot vouch for every line."""
        try:
            return self.read(buf, sid, nrows, one_shape)
        except ArrowReject:
            return None

    def read(self, buf: bytes, sid: int, nrows: int, one_shape: bool) -> Parsed:
        """parse(), raising ArrowReject. Rows that the per-column checks reject are
        marked in Parsed.bad."""
        shape = self.plan.shapes[sid]
        try:
            tbl = self._read_csv(buf, shape)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ArrowReject(str(e)) from e
        if tbl.num_rows != nrows:
            raise ArrowReject("row count")
        if nrows:
            if not (pc.all(tbl.column("tag")).as_py() and not pc.any(tbl.column("end")).as_py()):
                raise ArrowReject("tag")
            mm = pc.min_max(tbl.column("idx")).as_py()
            if mm["min"] < 0 or mm["max"] >= len(self.plan.schemas):
                raise ArrowReject("probe index")
        idx = _np_chunks(tbl.column("idx"))
        if one_shape and nrows and len(self.plan.shapes) > 1:
            if not all(bool(np.all(self.plan.shape_of[c] == sid)) for c in idx):
                raise ArrowReject("shape")
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

        comm_vals, comm_col = _dict_values(tbl.column("comm"), wire._unescape_cached)
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
                if shape.nullable[j] and pc.any(pc.equal(col, wire.NA_FIELD_B)).as_py():
                    raise ArrowReject("NA field")  # the reference engine reads it
                parts = [_hex_chunk(ch) for ch in col.chunks]
                fields.append([p[0] for p in parts])
                mark([p[1] for p in parts])
            elif kind == "str":
                sparts = [_str_chunk(ch) for ch in col.chunks]
                fields.append([p[0] for p in sparts])
                mark([p[1] for p in sparts])
            else:
                evals, ecol = _dict_values(col, errno_decode)
                eind = [_indices(ch) for ch in ecol.chunks]
                isbad = np.array([v is _BAD for v in evals], dtype=np.bool_)
                if isbad.any():
                    mark([isbad[i] for i in eind])
                    evals[isbad] = None
                fields.append([evals[i] for i in eind])
        return Parsed(
            sid=sid,
            n=nrows,
            idx=idx,
            time=_np_chunks(tbl.column("time")),
            pid=_np_chunks(tbl.column("pid")),
            tid=_np_chunks(tbl.column("tid")),
            cpu=_np_chunks(tbl.column("cpu")),
            comm_vals=comm_vals,
            comm_ind=comm_ind,
            fields=fields,
            bad=None if bad is None else np.concatenate(bad),
        )

    def _check_lenient(self, buf: bytes, tbl: Any, shape: Shape) -> None:
        """pyarrow's integer parser trims spaces and takes a 0x/0X prefix; records never
        have either in a number. So every space, x and X of the batch must be inside the
        text fields (comm, str, errno): count them in both."""
        wanted = [c for c in b" xX" if bytes((c,)) in buf]
        if not wanted:
            return
        a = np.frombuffer(buf, dtype=np.uint8)
        text_cols = ["comm"] + [f"f{j}" for j, k in enumerate(shape.kinds) if k in ("str", "errno")]
        for c in wanted:
            total = int(np.count_nonzero(a == c))
            inside = 0
            for name in text_cols:
                col = tbl.column(name)
                if pa.types.is_dictionary(col.type):
                    col = col.unify_dictionaries()
                    if not col.num_chunks:
                        continue
                    per = np.array(
                        [v.count(c) for v in col.chunk(0).dictionary.to_pylist()], dtype=np.int64
                    )
                    if per.any():
                        for ch in col.chunks:
                            inside += int(np.bincount(_indices(ch), minlength=len(per)) @ per)
                else:
                    for ch in col.chunks:
                        _, data = _binary_parts(ch)
                        inside += int(np.count_nonzero(data == c))
            if inside != total:
                raise ArrowReject("space or 0x in a number")
