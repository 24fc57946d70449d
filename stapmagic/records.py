"""Streaming parser for the record lines the generated scripts print (DESIGN.md "Record format").

`RecordParser.feed(bytes)` takes stap's output in chunks of any size (a line may be split
anywhere, even inside a multi-byte character or between ``\\r`` and ``\\n``), buffers whole
lines and parses them in batches:

* A line that contains ``@@sm1`` must be one whole, well-formed record, else it is DAMAGED
  (counted, kept in `damaged`, never a row, and never the reason another row is lost).
* ``@@smh``/``@@sms`` tagged lines become `Histogram`/`Summary` objects (see hist.py).
* The 10 lines of a ``print_regs()`` dump that follow a record of a ``print_regs`` probe are
  split into register columns of that record (`PRINT_REGS_COLUMNS`).
* Every other line is a message (decoded utf-8, errors="backslashreplace"), kept in order.

Speed: a batch (batch_bytes of whole lines, or what flush() finds) of records of one shape
goes first to the compiled scanner (_recscan.c, when it was
built: `SCANNER`), one strict pass that writes the numbers straight into the row table and
gives up on anything `parse_record` would not accept. Otherwise, or when it gives up, the
batch is parsed by pyarrow's (multithreaded) CSV reader with explicit column types;
`@@sm1`/`@@` are read as bool (true_values/false_values), so a wrong tag is a conversion
error at no cost. Only when a batch is not clean (message lines, several record shapes,
damage) are its lines indexed with numpy, and only a group the vectorized parse rejects goes
through the per-line reference parser `parse_record`. The numeric columns of every row live
in one contiguous, pre-reserved (untouched until used) array per column: each batch is
copied in while hot (or scanned in place) and `frame()` returns views, without
concatenating.

This module is the public face; the parts live in stapmagic/parse/ (one module per concern,
each engine behind one interface): plan, linebuffer, classify, engine + compiled / arrow /
reference, columns, tags, batch, parser. The wire format itself is stapmagic/wire.py.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .parse import compiled as _compiled
from .parse.batch import STAP_MESSAGE_PREFIXES, Batch, MessageLog
from .parse.columns import INITIAL_ROWS
from .parse.parser import RecordParser
from .wire import (
    DUMP_LINES,
    MAX_FOREIGN_IN_DUMP,
    ParsedRecord,
    TagCount,
    escape_text,
    format_record,
    parse_print_regs,
    parse_record,
    parse_tag_count,
    unescape_text,
)
from .wire import RECORD_TAG_B as RECORD_TAG

__all__ = [
    "Batch",
    "RecordParser",
    "ParsedRecord",
    "RECORD_TAG",
    "SCANNER",
    "escape_text",
    "unescape_text",
    "format_record",
    "parse_record",
    "parse_print_regs",
    "TagCount",
    "parse_tag_count",
    "MessageLog",
    "STAP_MESSAGE_PREFIXES",
    "DUMP_LINES",
    "MAX_FOREIGN_IN_DUMP",
    "INITIAL_ROWS",
]

SCANNER = _compiled.SCANNER


class _Records(types.ModuleType):
    """`records._recscan` is the switch tests and bench/ingest.py use to run without the
    compiled scanner (set it to None); it lives in parse.compiled, so it is forwarded."""

    @property
    def _recscan(self) -> Any:
        return _compiled._recscan

    @_recscan.setter
    def _recscan(self, value: Any) -> None:
        _compiled._recscan = value


sys.modules[__name__].__class__ = _Records
