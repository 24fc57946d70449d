"""stapmagic: `%%kprobe`, DWARF-less SystemTap kernel probes as pandas DataFrames.

%load_ext stapmagic
%%kprobe tcp_v4_connect sk:ptr uaddr:ptr len:uint
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("stapmagic")  # declared once, in pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# IPython refuses a cell magic whose body is empty before the magic runs, yet a one-line
# `%%kprobe tcp_v4_connect ...` cell is the most common use: turn it into the line magic.
_EMPTY_BODY_CELL = re.compile(r"%%(kprobe)\b(.*)")


def one_line_cell(lines: list[str]) -> list[str]:
    """Input transformer: `%%kprobe SPEC` with nothing below becomes `%kprobe SPEC`."""
    if not lines or any(ln.strip() for ln in lines[1:]):
        return lines
    match = _EMPTY_BODY_CELL.match(lines[0].rstrip("\n"))
    if match is None:
        return lines
    return [f"%{match.group(1)}{match.group(2)}\n"]


def load_ipython_extension(ipython: Any) -> None:
    from .magic import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magic import unregister

    unregister(ipython)
