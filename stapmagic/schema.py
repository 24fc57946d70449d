"""The column schema shared by script.py (which writes records) and records.py (which reads them).

These are the `Column` and `ProbeSchema` dataclasses of DESIGN.md ("Schema"), defined here,
in a module with no dependencies, so that script.py and records.py can both import them
without importing each other. script.py re-exports them next to `Script`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import wire

ColumnKind = Literal["int", "uint", "hex", "str", "errno"]
COLUMN_KINDS: tuple[ColumnKind, ...] = ("int", "uint", "hex", "str", "errno")

# The columns every record has, in DataFrame order (record order is idx, time, pid, tid,
# cpu, comm; the DataFrame puts `probe` second and keeps DESIGN.md's reserved-name order).
BASE_COLUMNS: tuple[str, ...] = ("time", "probe", "pid", "tid", "comm", "cpu")

# The register columns of a print_regs() dump: owned by wire.py, re-exported here.
PRINT_REGS_COLUMNS = wire.PRINT_REGS_COLUMNS


@dataclass(frozen=True)
class Column:
    """One per-probe field after `comm` in a record, in record order.

    kind: "int" (`%d`, int64), "uint" (`%u`, uint64), "hex" (`%x` without 0x, uint64),
    "str" (text_str-escaped string), "errno" (errno name or empty; empty -> None).
    nullable: a numeric field that may be `wire.NA_FIELD` (a member read that faulted):
    its column is Int64/UInt64 with <NA> there.
    """

    name: str
    kind: ColumnKind
    nullable: bool = False

    def __post_init__(self) -> None:
        if self.nullable and self.kind not in ("int", "uint", "hex"):
            raise ValueError(f"{self.name}: only a numeric column can be nullable")


@dataclass(frozen=True)
class ProbeSchema:
    """What records.py needs to know about probe number `i` (= index into Script.probes).

    label: the `probe` column's value; columns: the fields after `comm` in record order;
    print_regs: the script calls print_regs() right after this probe's record line.
    """

    label: str
    columns: tuple[Column, ...]
    print_regs: bool
