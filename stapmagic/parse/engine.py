"""The engine interface: what turns a batch of record lines of one shape into columns.

Like pandas' io/parsers engines behind `readers._make_engine`, each engine is one module:

* `compiled.CompiledEngine`  _recscan.c, one strict pass (optional: built by setup.py)
* `arrow.ArrowEngine`        pyarrow's CSV reader with explicit types, then column checks
* `reference.ReferenceEngine` the per-line reference parser `wire.parse_record`

An engine only reads: what it returns (`Parsed`, or the reference engine's rows and damaged
lines) touches no parser state; `RecordParser` decides what to do with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .columns import I64, AnyArr, BoolArr, Chunk


@dataclass
class Parsed:
    """What an engine made of a batch of one shape (comm as its decoded dictionary and
    indices; bad: rows the column checks rejected, None if none)."""

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


class Engine(Protocol):
    """A parser of a clean batch: every line (ending in ``\\n``, nrows of them) a record of
    shape `sid`. None: the batch is not clean, or the engine cannot vouch for it."""

    name: str

    def parse(self, buf: bytes, sid: int, nrows: int) -> Parsed | None: ...
