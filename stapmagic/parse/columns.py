"""The column store: every row's columns across batches, and assembling a batch's parsed
groups into them in line order.

Numeric columns live in one contiguous, pre-reserved array each (`Table`); `frame()` hands
out views. str/errno/object columns are lists of chunks.
"""

from __future__ import annotations

import mmap
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from .. import wire
from .plan import Plan, Shape, Store

I64 = npt.NDArray[np.int64]
BoolArr = npt.NDArray[np.bool_]
AnyArr = npt.NDArray[Any]


# A "chunk" is one contiguous piece of a column: an ndarray (int64/uint64/int32 codes/
# object), an (values, mask) pair for the nullable stores, or a pa.StringArray.
Chunk = Any


def concat_chunks(chunks: Sequence[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    if isinstance(first, tuple):
        return (np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))
    if isinstance(first, pa.Array):
        return pa.concat_arrays(list(chunks))
    return np.concatenate(chunks)


@dataclass
class Group:
    """Rows parsed from the record lines of one shape in one batch, in line order; every
    column as a list of chunks (pyarrow's blocks, not copied)."""

    shape: Shape
    n: int
    lines: I64 | None  # line numbers in the batch; None: lines 0..n-1
    idx: list[I64]
    time: list[I64]
    pid: list[I64]
    tid: list[I64]
    cpu: list[I64]
    comm: list[npt.NDArray[np.int32]]  # codes into the parser's comm categories
    fields: list[list[Chunk]]  # int64/uint64/object ndarrays, pa.StringArray

    def line_numbers(self) -> I64:
        return self.lines if self.lines is not None else np.arange(self.n, dtype=np.int64)

    def flat(self) -> Group:
        return Group(
            self.shape,
            self.n,
            self.line_numbers(),
            [concat_chunks(self.idx)],
            [concat_chunks(self.time)],
            [concat_chunks(self.pid)],
            [concat_chunks(self.tid)],
            [concat_chunks(self.cpu)],
            [concat_chunks(self.comm)],
            [[concat_chunks(f)] for f in self.fields],
        )

    def keep(self, mask: BoolArr) -> Group:
        g = self.flat()
        sel = pa.array(mask)
        return Group(
            g.shape,
            int(mask.sum()),
            g.line_numbers()[mask],
            [g.idx[0][mask]],
            [g.time[0][mask]],
            [g.pid[0][mask]],
            [g.tid[0][mask]],
            [g.cpu[0][mask]],
            [g.comm[0][mask]],
            [[f[0].filter(sel) if isinstance(f[0], pa.Array) else f[0][mask]] for f in g.fields],
        )


_NUMERIC_STORES = ("time", "cat", "int64", "uint64", "Int64", "UInt64")
_STORE_DTYPE: dict[str, Any] = {
    "time": np.int64,
    "cat": np.int32,
    "int64": np.int64,
    "uint64": np.uint64,
    "Int64": np.int64,
    "UInt64": np.uint64,
}
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


class Table:
    """The numeric columns of all rows so far, contiguous, with spare capacity."""

    def __init__(self, dtypes: dict[str, Any], capacity: int = INITIAL_ROWS) -> None:
        self.n = 0
        self.capacity = capacity
        self.generation = 0  # bumped when the arrays are replaced by bigger ones
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
            dest = arr[pos : pos + k]
            if not (k and dest.ctypes.data == c.ctypes.data):  # not already in place
                dest[...] = c
            pos += k


class ColumnStore:
    """One output column: numeric ones live in the parser's Table, str/errno/object ones
    as a list of chunks."""

    def __init__(self, name: str, store: Store) -> None:
        self.name = name
        self.store = store
        self.numeric = store in _NUMERIC_STORES
        self.nullable = store in ("Int64", "UInt64")
        self.chunks: list[Chunk] = []

    def keys(self) -> list[tuple[str, Any]]:
        """The Table arrays of this column (values, and the mask for Int64/UInt64)."""
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
            return cast(Any, pd.Categorical).from_codes(
                chunk, categories=list(categories), validate=False
            )
        if s == "str":
            return pd.array(chunk, dtype="str")
        return pd.Series(chunk, dtype=object, copy=False)

    def from_table(self, table: Table, start: int, end: int, copy: bool) -> Chunk:
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
        return concat_chunks(chunks)

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
            return (
                np.zeros(n, dtype=np.int64 if s == "Int64" else np.uint64),
                np.ones(n, dtype=np.bool_),
            )
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
            if isinstance(chunk, pa.Array):  # a nullable field (wire.NA_FIELD -> null)
                dt = np.int64 if s == "Int64" else np.uint64
                values = chunk.fill_null(0).to_numpy(zero_copy_only=False).astype(dt, copy=False)
                return (values, chunk.is_null().to_numpy(zero_copy_only=False))
            return (chunk, np.zeros(len(chunk), dtype=np.bool_))
        if isinstance(chunk, pa.Array):
            return np.array(chunk.to_pylist(), dtype=object)
        if chunk.dtype != object:
            return np.array(chunk.tolist(), dtype=object)
        return chunk


class Columns:
    """Every row's columns so far, and the assembly of each parse's groups into them.

    Each emit() adds one piece (first row, rows, its str/errno/object chunks) that the next
    take_pieces() hands to a Batch; frame() is all rows (numeric columns as views).
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.stores: dict[str, ColumnStore] = {n: ColumnStore(n, s) for n, s in plan.stores.items()}
        self.table = Table({k: dt for st in self.stores.values() for k, dt in st.keys()})
        self.row_count = 0
        self.comm_categories: list[str] = []
        self._comm_codes: dict[str, int] = {}
        # per emit: (first row, rows, the str/errno/object chunks), until take_pieces()
        self._pieces: list[tuple[int, int, dict[str, list[Chunk]]]] = []
        self._frame_cache: pd.DataFrame | None = None
        self._frame_rows = -1
        # Internal frames whose shallow copies were handed out: while they live, pandas
        # copy-on-write copies before a user's in-place change, so the rows we hold (and
        # hand out again later) stay as parsed.
        self._anchors: list[tuple[pd.DataFrame, weakref.ref[pd.DataFrame]]] = []
        self._anchor_generation = 0

    def take_pieces(self) -> tuple[list[tuple[int, int, dict[str, list[Chunk]]]], int]:
        """The pieces emitted since the last call, and their row count."""
        pieces, self._pieces = self._pieces, []
        return pieces, sum(k for _, k, _ in pieces)

    def frame(self) -> pd.DataFrame:
        """All rows so far as one DataFrame. Numeric columns are views of the parser's
        contiguous columns (no copy); the result is a shallow copy under pandas
        copy-on-write, so changing it does not change the parser's rows."""
        if self._frame_cache is None or self._frame_rows != self.row_count:
            table = self.table
            if table.generation != self._anchor_generation:
                self._anchors = []  # older frames view arrays we no longer use
                self._anchor_generation = table.generation
            data: dict[str, Any] = {}
            for name, st in self.stores.items():
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

    def batch_frame(
        self, pieces: list[tuple[int, int, dict[str, list[Chunk]]]], comm_categories: list[str]
    ) -> pd.DataFrame:
        """The DataFrame of one Batch: its rows copied out of the table, its str/object
        chunks."""
        start = pieces[0][0]
        end = start + sum(k for _, k, _ in pieces)
        data: dict[str, Any] = {}
        for name, st in self.stores.items():
            if st.numeric:
                chunk = st.from_table(self.table, start, end, copy=True)
            else:
                chunk = st.concat([c for _, _, cols in pieces for c in cols[name]])
            cats = comm_categories if name == "comm" else self._categories_for(name)
            data[name] = st.to_pandas(chunk, cats)
        frame = pd.DataFrame(data, copy=False)
        frame.index = pd.RangeIndex(start, end)
        return frame

    def _categories_for(self, name: str) -> list[str] | None:
        if name == "probe":
            return self.plan.probe_categories
        if name == "comm":
            return list(self.comm_categories)
        return None

    def comm_code(self, text: str) -> int:
        code = self._comm_codes.get(text)
        if code is None:
            code = len(self.comm_categories)
            self._comm_codes[text] = code
            self.comm_categories.append(text)
        return code

    def emit(self, groups: list[Group], regs: dict[int, tuple[int, ...]]) -> None:
        groups = [g for g in groups if g.n]
        if not groups:
            return
        g0 = groups[0]
        if (
            len(groups) == 1
            and len(g0.shape.probes) == 1
            and not self.plan.reg_names
            and (g0.lines is None or bool(np.all(g0.lines[1:] > g0.lines[:-1])))
        ):
            cols = self._columns_simple(g0)
        else:
            cols = self._columns_general([g.flat() for g in groups], regs)
        n = sum(g.n for g in groups)
        table = self.table
        start = table.n
        table.reserve(n)
        keep: dict[str, list[Chunk]] = {}
        for name, st in self.stores.items():
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
        self._pieces.append((self.row_count, n, keep))
        self.row_count += n

    def _columns_simple(self, g: Group) -> dict[str, list[Chunk]]:
        """One probe, rows in line order: the group's chunks are the columns."""
        probe = g.shape.probes[0]
        code = int(self.plan.probe_code[probe])
        cols: dict[str, list[Chunk]] = {
            "time": g.time,
            "probe": [np.full(len(c), code, dtype=np.int32) for c in g.idx],
            "pid": g.pid,
            "tid": g.tid,
            "comm": g.comm,
            "cpu": g.cpu,
        }
        pos = self.plan.field_pos[probe]
        sizes = [len(c) for c in g.time]
        for name in self.plan.field_names:
            st = self.stores[name]
            j = pos.get(name)
            if j is None:
                cols[name] = [st.missing(k) for k in sizes]
            else:
                cols[name] = [st.adapt(c) for c in g.fields[j]]
        return cols

    def _columns_general(
        self, groups: list[Group], regs: dict[int, tuple[int, ...]]
    ) -> dict[str, list[Chunk]]:
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
            "probe": [cat([self.plan.probe_code[g.idx[0]] for g in groups])],
            "pid": [cat([g.pid[0] for g in groups])],
            "tid": [cat([g.tid[0] for g in groups])],
            "comm": [cat([g.comm[0] for g in groups])],
            "cpu": [cat([g.cpu[0] for g in groups])],
        }
        offsets = np.cumsum([0] + [g.n for g in groups])
        for name in self.plan.field_names:
            # contributions: (rows in group-concatenated order or None for all, values)
            contrib: list[tuple[I64 | None, Chunk]] = []
            for gi, g in enumerate(groups):
                for p in g.shape.probes:
                    j = self.plan.field_pos[p].get(name)
                    if j is None:
                        continue
                    vals = g.fields[j][0]
                    if len(g.shape.probes) == 1:
                        rows = None
                    else:
                        rows = np.flatnonzero(g.idx[0] == p)
                        if not rows.size:
                            continue
                        vals = (
                            vals.take(pa.array(rows)) if isinstance(vals, pa.Array) else vals[rows]
                        )
                    if rows is None:
                        pos = (
                            None
                            if len(groups) == 1
                            else np.arange(offsets[gi], offsets[gi + 1], dtype=np.int64)
                        )
                    else:
                        pos = rows + offsets[gi]
                    contrib.append((pos, vals))
            cols[name] = [self._assemble(self.stores[name], contrib, n, order)]

        if self.plan.reg_names:
            row_lines = cat([g.line_numbers() for g in groups])
            regvals = np.zeros((n, len(wire.PRINT_REGS_COLUMNS)), dtype=np.uint64)
            present = np.zeros(n, dtype=np.bool_)
            if regs:
                for r, ln in enumerate(row_lines.tolist()):
                    v = regs.get(ln)
                    if v is not None:
                        regvals[r] = v
                        present[r] = True
            for ci, rname in enumerate(wire.PRINT_REGS_COLUMNS):
                if rname in self.plan.reg_set:
                    cols[rname] = [(np.ascontiguousarray(regvals[:, ci]), ~present)]
        return cols

    def _assemble(
        self, st: ColumnStore, contrib: list[tuple[I64 | None, Chunk]], n: int, order: I64 | None
    ) -> Chunk:
        """One output column of a batch from the per-probe contributions, in line order."""
        store = st.store
        if not contrib:
            return st.missing(n)
        if store in ("Int64", "UInt64") and any(isinstance(v, pa.Array) for _, v in contrib):
            # nullable fields: values and NA mask per contribution, then placed like below
            dt = np.int64 if store == "Int64" else np.uint64
            values = np.zeros(n, dtype=dt)
            na = np.ones(n, dtype=np.bool_)
            for pos, v in contrib:
                vals, vna = st.adapt(v)
                where = slice(None) if pos is None else pos
                values[where] = vals
                na[where] = vna
            if order is not None:
                values, na = values[order], na[order]
            return (values, na)
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
