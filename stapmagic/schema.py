"""The column schema shared by script.py (which writes records) and records.py (which reads them).

These are the `Column` and `ProbeSchema` dataclasses of DESIGN.md ("Schema"), defined here,
in a module with no dependencies, so that script.py and records.py can both import them
without importing each other. script.py re-exports them next to `Script`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColumnKind = Literal["int", "uint", "hex", "str", "errno"]
COLUMN_KINDS: tuple[ColumnKind, ...] = ("int", "uint", "hex", "str", "errno")

# The columns every record has, in DataFrame order (record order is idx, time, pid, tid,
# cpu, comm; the DataFrame puts `probe` second and keeps DESIGN.md's reserved-name order).
BASE_COLUMNS: tuple[str, ...] = ("time", "probe", "pid", "tid", "comm", "cpu")

# The columns records.py splits a print_regs() dump into (x86_64 runtime/linux/regs.c),
# all uint64. The FS/GS selector values printed in parentheses are not kept: in kernel mode
# on x86_64 they are always 0000 (the bases are in fs/gs).
PRINT_REGS_COLUMNS: tuple[str, ...] = (
    "rip", "rsp", "eflags",
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "fs", "gs", "knlgs", "cs", "ds", "es",
    "cr0", "cr2", "cr3", "cr4",
)


@dataclass(frozen=True)
class Column:
    """One per-probe field after `comm` in a record, in record order.

    kind: "int" (`%d`, int64), "uint" (`%u`, uint64), "hex" (`%x` without 0x, uint64),
    "str" (text_str-escaped string), "errno" (errno name or empty; empty -> None).
    """

    name: str
    kind: ColumnKind


@dataclass(frozen=True)
class ProbeSchema:
    """What records.py needs to know about probe number `i` (= index into Script.probes).

    label: the `probe` column's value; columns: the fields after `comm` in record order;
    print_regs: the script calls print_regs() right after this probe's record line.
    """

    label: str
    columns: tuple[Column, ...]
    print_regs: bool
