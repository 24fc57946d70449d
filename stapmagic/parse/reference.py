"""The reference engine: `wire.parse_record`, one line at a time. Slow and simple; it
decides every line the vectorized engines cannot vouch for."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from ..wire import ParsedRecord, parse_record
from .columns import I64, Chunk, Group
from .plan import Plan


class ReferenceEngine:
    name = "reference"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def parse_lines(
        self, sid: int, lines: I64, texts: list[bytes], comm_code: Callable[[str], int]
    ) -> tuple[Group, list[tuple[int, bytes]]]:
        """The record lines `texts` (line numbers `lines`, expected shape `sid`) -> the
        group of the well-formed ones, and (line, text) of the damaged ones."""
        shape = self.plan.shapes[sid]
        recs: list[ParsedRecord] = []
        keep: list[int] = []
        damaged: list[tuple[int, bytes]] = []
        for i, t in enumerate(texts):
            rec = parse_record(t, self.plan.schemas)
            if rec is None or int(self.plan.shape_of[rec.idx]) != sid:
                damaged.append((int(lines[i]), t))
            else:
                recs.append(rec)
                keep.append(i)
        n = len(recs)
        fields: list[list[Chunk]] = []
        for j, kind in enumerate(shape.kinds):
            vals = [r.fields[j] for r in recs]
            if shape.nullable[j]:  # None where the field was wire.NA_FIELD
                fields.append([pa.array(vals, type=pa.int64() if kind == "int" else pa.uint64())])
            elif kind == "int":
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

        group = Group(
            shape=shape,
            n=n,
            lines=lines[np.array(keep, dtype=np.int64)],
            idx=ints([r.idx for r in recs]),
            time=ints([r.time_ns for r in recs]),
            pid=ints([r.pid for r in recs]),
            tid=ints([r.tid for r in recs]),
            cpu=ints([r.cpu for r in recs]),
            comm=[np.array([comm_code(r.comm) for r in recs], dtype=np.int32).reshape(n)],
            fields=fields,
        )
        return group, damaged
