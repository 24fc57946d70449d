"""The parse plan: what the schemas say once, before any byte is read.

Probes whose records have the same field kinds form a `Shape` (parsed together by one scan
or CSV read); the plan also fixes the output columns, their stores and the register columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from .. import wire
from ..schema import BASE_COLUMNS, ColumnKind, ProbeSchema

Store = Literal["time", "cat", "int64", "uint64", "Int64", "UInt64", "str", "errno", "object"]

_BINARY_DICT = pa.dictionary(pa.int32(), pa.binary())
_ARROW_KIND_TYPES: dict[str, Any] = {
    "int": pa.int64(),
    "uint": pa.uint64(),
    "hex": pa.binary(),
    "str": pa.binary(),
    "errno": _BINARY_DICT,
}


@dataclass
class Shape:
    """Probes whose records have the same field kinds: parsed together by one read."""

    kinds: tuple[ColumnKind, ...]
    probes: list[int]
    names: list[str] = field(default_factory=list)  # the CSV columns
    types: dict[str, Any] = field(default_factory=dict)  # their pyarrow types
    scan_kinds: bytes = b""  # the kinds as _recscan.scan takes them
    probe_ok: bytes = b""  # per probe index: 1 if the probe has this shape
    nullable: tuple[bool, ...] = ()  # per field: may be wire.NA_FIELD


def make_shape(
    kinds: tuple[ColumnKind, ...], probes: list[int], nullable: tuple[bool, ...] = ()
) -> Shape:
    # tag and end are read as bool with true_values [RECORD_TAG] and false_values [END_TAG]:
    # anything else in them is a conversion error, and checking costs nothing.
    names = ["tag", *wire.RECORD_FIELDS]
    names += [f"f{j}" for j in range(len(kinds))] + ["end"]
    types: dict[str, Any] = {
        "tag": pa.bool_(),
        "idx": pa.int64(),
        "time": pa.int64(),
        "pid": pa.int64(),
        "tid": pa.int64(),
        "cpu": pa.int64(),
        "comm": _BINARY_DICT,
        "end": pa.bool_(),
    }
    for j, k in enumerate(kinds):
        types[f"f{j}"] = _ARROW_KIND_TYPES[k]
    # The compiled scanner reads wire.NA_FIELD in the nullable fields; pyarrow's integer
    # reader rejects it (such a batch then goes to the reference engine).
    return Shape(
        kinds,
        probes,
        names,
        types,
        scan_kinds=b"".join(wire.SCAN_KIND_CODES[k] for k in kinds),
        nullable=nullable or (False,) * len(kinds),
    )


def store_for(kinds: set[str], full: bool, nullable: bool = False) -> Store:
    """The store of an output column whose fields have `kinds` (in every probe: full;
    nullable: some may be NA)."""
    full = full and not nullable
    if kinds <= {"int"}:
        return "int64" if full else "Int64"
    if kinds <= {"uint", "hex"}:
        return "uint64" if full else "UInt64"
    if kinds == {"str"}:
        return "str"
    if kinds == {"errno"}:
        return "errno"
    return "object"


class Plan:
    """Schemas -> probe categories, output columns and stores, shapes, register columns."""

    def __init__(self, schemas: Sequence[ProbeSchema]) -> None:
        self.schemas: tuple[ProbeSchema, ...] = tuple(schemas)
        labels: list[str] = []
        self.probe_code = np.zeros(max(1, len(schemas)), dtype=np.int32)
        for i, s in enumerate(schemas):
            if s.label not in labels:
                labels.append(s.label)
            self.probe_code[i] = labels.index(s.label)
        self.probe_categories = labels

        kinds_by_name: dict[str, set[str]] = {}
        count_by_name: dict[str, int] = {}
        nullable_names: set[str] = set()
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
                if c.nullable:
                    nullable_names.add(c.name)
                count_by_name[c.name] += 1
        self.stores: dict[str, Store] = {
            "time": "time",
            "probe": "cat",
            "pid": "int64",
            "tid": "int64",
            "comm": "cat",
            "cpu": "int64",
        }
        for name in order:
            full = count_by_name[name] == len(schemas)
            self.stores[name] = store_for(kinds_by_name[name], full, name in nullable_names)
        self.field_names = order
        # per probe: output column name -> field position
        self.field_pos = [{c.name: j for j, c in enumerate(s.columns)} for s in schemas]
        self.any_regs = any(s.print_regs for s in schemas)
        self.reg_names = (
            [r for r in wire.PRINT_REGS_COLUMNS if r not in kinds_by_name] if self.any_regs else []
        )
        self.reg_set = set(self.reg_names)
        for r in self.reg_names:
            self.stores[r] = "UInt64"
        self.regs_probe: npt.NDArray[np.bool_] = np.array(
            [s.print_regs for s in schemas] or [False], dtype=np.bool_
        )

        shapes: dict[tuple[tuple[ColumnKind, ...], tuple[bool, ...]], int] = {}
        self.shape_of = np.zeros(max(1, len(schemas)), dtype=np.int64)
        self.shapes: list[Shape] = []
        for i, s in enumerate(schemas):
            kinds = tuple(c.kind for c in s.columns)
            key = (kinds, tuple(c.nullable for c in s.columns))
            if key not in shapes:
                shapes[key] = len(self.shapes)
                self.shapes.append(make_shape(kinds, [], key[1]))
            self.shapes[shapes[key]].probes.append(i)
            self.shape_of[i] = shapes[key]
        for sid, shape in enumerate(self.shapes):
            shape.probe_ok = bytes(int(s == sid) for s in self.shape_of[: len(schemas)])
