"""`%%kprobe?`: the SPEC grammar, the types, the options in groups, a few examples.

Built from what owns each fact: the types from spec.py, the options (flags, metavars, help)
from the magic's argparse parser and their groups from the options table, so the help cannot
drift from what the line accepts.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Mapping, Sequence

from .spec import ARG_TYPES, RET_TYPES

__all__ = ["TITLES", "kprobe_help"]

# The options table's groups (options.Option.group), in the order the help lists them.
TITLES: dict[str, str] = {
    "run": "what to probe, when to stop, where",
    "aggregate": "aggregating in the kernel (no rows)",
    "output": "what the cell shows and keeps",
    "recording": "recordings",
    "control": "background runs (%kprobe ...)",
}
GRAMMAR = f"""\
SPEC := [MODULE:]FUNCTION[.return[:RETTYPE]] [NAME:TYPE ...]
      | [MODULE:]FUNCTION.call+return[:RETTYPE] [NAME:TYPE ...]   entry+return paired: latency_ns
      | 0xADDRESS [NAME:TYPE ...]                                 statement probe, needs --guru
TYPE    := {" | ".join(ARG_TYPES)}   (_ skips an argument)
RETTYPE := {" | ".join(RET_TYPES)}   (default long: the raw register)
Arguments are numbered from 1 in the order given; str/ustr read a kernel/user string."""

EXAMPLES = """\
%%kprobe tcp_v4_connect sk:ptr uaddr:ptr len:uint
%%kprobe -c "python3 connect_fail.py" --cmd-only tcp_v4_connect.return:int
%%kprobe --latency -T 10 vfs_read
%%kprobe --hist latency -n 1000 tcp_v4_connect
%%kprobe --regs rip,rdi -n 1 tcp_v4_connect sk:ptr
%kfind tcp_v4_*                  find a function to probe (Tab completes names, too)"""


def _flag(action: argparse.Action) -> str:
    flags = ", ".join(action.option_strings)
    if action.nargs == 0:
        return flags
    return f"{flags} {action.metavar or action.dest.upper()}"


def kprobe_help(actions: Sequence[argparse.Action], summary: str, groups: Mapping[str, str]) -> str:
    """The whole `%%kprobe?` text; `groups`: option (argparse dest) -> its group."""
    by_group: dict[str, list[argparse.Action]] = {}
    for action in actions:
        if not action.option_strings or action.dest == "help":
            continue
        by_group.setdefault(groups.get(action.dest, "run"), []).append(action)
    parts = [
        "%%kprobe [options] SPEC",
        "[more SPEC lines, one probe each]",
        "",
        summary,
        "",
        GRAMMAR,
        "",
        "Options:",
    ]
    for key in [*TITLES, *sorted(set(by_group) - set(TITLES))]:
        if key not in by_group:
            continue
        parts.append(f"  {TITLES.get(key, key)}:")
        for action in by_group[key]:
            flag = _flag(action)
            text = (action.help or "").replace("%%", "%")
            lines = textwrap.wrap(text, 60) or [""]
            parts.append(
                f"    {flag:<26} {lines[0]}"
                if len(flag) <= 26
                else f"    {flag}\n    {'':<26} {lines[0]}"
            )
            parts += [f"    {'':<26} {ln}" for ln in lines[1:]]
    parts += ["", "Examples:", textwrap.indent(EXAMPLES, "  ")]
    return "\n".join(parts)
