"""The compiled engine: _recscan.c's one strict pass (see that file)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa

from .. import wire
from .columns import AnyArr, Chunk, Columns
from .engine import Parsed
from .plan import Plan

try:
    from .. import _recscan as _recscan  # re-exported: records._recscan switches it
except ImportError:  # installed without a C compiler: pyarrow parses every batch
    _recscan = None  # type: ignore[assignment]
# Which parser takes a clean batch first: "compiled" (_recscan.c, one pass, strict like
# parse_record) or "pyarrow" (its CSV reader, then the column checks).
SCANNER: Literal["compiled", "pyarrow"] = "pyarrow" if _recscan is None else "compiled"


def decoded(raw: list[bytes], decode: Any) -> AnyArr:
    """The distinct raw values of a text field, decoded (ValueError if one cannot be)."""
    out = np.empty(len(raw), dtype=object)
    for i, b in enumerate(raw):
        out[i] = decode(b)
    return out


def errno_decode(b: bytes) -> str | None:
    return wire.unescape_text(b) if b else None


class CompiledEngine:
    name = "compiled"

    def __init__(self, plan: Plan, columns: Columns) -> None:
        self.plan = plan
        self.columns = columns

    @staticmethod
    def available() -> bool:
        return _recscan is not None

    def parse(self, buf: bytes, sid: int, nrows: int) -> Parsed | None:
        """The compiled parse of a clean batch of shape `sid`; None if it is not one."""
        scanner = _recscan
        if scanner is None:
            return None
        shape = self.plan.shapes[sid]
        # Columns the batch's rows will be copied into anyway are parsed straight into the
        # table's unused rows (nothing reads past table.n; Table.write skips the copy):
        # no fresh memory to fault in, no second pass.
        table = self.columns.table
        stores = self.columns.stores
        table.reserve(nrows)
        start = table.n
        direct = len(shape.probes) == 1

        def out(name: str, dtype: Any) -> AnyArr:
            st = stores.get(name) if direct else None
            if (
                st is not None
                and st.store in ("time", "int64", "uint64")
                and table.arrays[st.name].dtype == dtype
            ):
                return table.arrays[st.name][start : start + nrows]
            return np.empty(nrows, dtype=dtype)

        idx = np.empty(nrows, dtype=np.int64)
        t, pid, tid, cpu = (out(name, np.int64) for name in ("time", "pid", "tid", "cpu"))
        comm = np.empty(nrows, dtype=np.int32)
        cols = self.plan.schemas[shape.probes[0]].columns
        text = ("str", "errno")
        fields = [
            np.empty(nrows, dtype=np.int32)
            if k in text  # codes of the values
            else out(c.name, np.dtype(np.int64 if k == "int" else np.uint64))
            for c, k in zip(cols, shape.kinds, strict=True)
        ]
        nulls = [np.empty(nrows, dtype=np.uint8) if n else None for n in shape.nullable]
        raw = scanner.scan(
            buf, shape.scan_kinds, shape.probe_ok, nrows, idx, t, pid, tid, cpu, comm, fields, nulls
        )
        if raw is None:
            return None
        try:
            comm_vals = decoded(raw[0], wire._unescape_cached)
            values = iter(raw[1:])
            chunks: list[Chunk] = []
            for f, k, na in zip(fields, shape.kinds, nulls, strict=True):
                if na is not None and na.any():  # wire.NA_FIELD: null, as the reference has it
                    chunks.append(pa.array(f, mask=na.view(np.bool_)))
                elif k == "errno":
                    chunks.append(decoded(next(values), errno_decode)[f])
                elif k == "str":
                    strs = pa.array(decoded(next(values), wire._unescape_cached), type=pa.string())
                    chunks.append(strs.take(pa.array(f)))
                else:
                    chunks.append(f)
        except ValueError:  # an escape text_str() cannot have printed
            return None
        return Parsed(
            sid=sid,
            n=nrows,
            idx=[idx],
            time=[t],
            pid=[pid],
            tid=[tid],
            cpu=[cpu],
            comm_vals=comm_vals,
            comm_ind=[comm],
            fields=[[c] for c in chunks],
            bad=None,
        )
