"""RecordParser: the composition of the parse package's parts (see stapmagic/parse/__init__.py).

bytes -> LineBuffer -> batch of whole lines
      -> clean batch (records of one shape)? engines in turn: compiled, pyarrow
      -> else Classifier: record lines per shape (pyarrow, then the reference engine
         for a group it cannot vouch for), print_regs dumps, other lines in order
      -> Columns (rows) / TagReader -> Output (messages, damage, tags) -> Batch
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

import numpy as np
import pandas as pd

from ..hist import Histogram, Summary
from ..schema import ColumnKind, ProbeSchema
from ..wire import RECORD_PREFIX_B, TagCount
from .arrow import ArrowEngine, ArrowReject
from .batch import Batch, Output
from .classify import Classifier, Lines
from .columns import I64, BoolArr, Columns, Group
from .compiled import CompiledEngine
from .engine import Parsed
from .linebuffer import LineBuffer
from .plan import Plan
from .reference import ReferenceEngine
from .tags import TagReader

# (line number in the batch, the line): damaged lines an engine found, put back in order
Damaged = list[tuple[int, bytes]]


class RecordParser:
    """Incremental parser of stap's output (stapmagic.records' module docstring).

    Each parsed row, message, damaged line, histogram and summary is reported once, in the
    Batch of the next flush() or close() (feed() only buffers and parses).

    batch_bytes: feed() parses once this much is buffered (flush() parses whatever whole
    lines are buffered, close() everything). max_line: a line longer than this is not
    buffered whole: its first max_line bytes are kept (as a damaged line if it contains
    ``@@sm1``, else as a message with a note) and the rest is skipped. max_damaged_kept:
    how many damaged lines are kept in `damaged` (all are counted in `damaged_count`).
    messages_head, messages_tail, stap_messages: the bounds of `messages` (MessageLog): a
    chatty -c command cannot grow memory without end, and stap's ERROR/WARNING lines stay.
    key_kinds: the `@@smk` key kind per probe label (script.Aggregate.key_kinds), so a key
    the script cannot have printed for it is a damaged line; a label not in it: text.
    """

    def __init__(
        self,
        schemas: Sequence[ProbeSchema],
        *,
        batch_bytes: int = 4 << 20,
        max_line: int = 1 << 20,
        max_damaged_kept: int = 10_000,
        key_kinds: Mapping[str, ColumnKind] | None = None,
        messages_head: int = 2000,
        messages_tail: int = 2000,
        stap_messages: int = 2000,
    ) -> None:
        self.plan = Plan(schemas)
        self.schemas = self.plan.schemas
        self.batch_bytes = batch_bytes
        self.out = Output(max_line, max_damaged_kept, (messages_head, messages_tail, stap_messages))
        self.tags = TagReader(self.out, key_kinds or {})
        self.columns_store = Columns(self.plan)
        self.buffer = LineBuffer(max_line, self._process, self._overlong)
        self.classifier = Classifier(self.plan)
        self.compiled = CompiledEngine(self.plan, self.columns_store)
        self.arrow = ArrowEngine(self.plan)
        self.reference = ReferenceEngine(self.plan)
        self._closed = False
        self._clean_first = True  # try a batch as clean (the last one was, or was not tried)

    # ---- public API -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Buffer `data` (any chunk of stap's output); parse the whole lines if batch_bytes
        or more are buffered. What it parses is reported by the next flush() or close(),
        so a caller that only looks at those (the runner's timer and the end) misses
        nothing, and nothing is reported twice."""
        if self._closed:
            raise ValueError("feed() after close()")
        if data:
            self.buffer.add(bytes(data))
        if self.buffer.size >= self.batch_bytes and self.buffer.has_lines:
            self.buffer.drain(False)

    def flush(self) -> Batch:
        """Parse every whole line buffered so far (the live view calls this on a timer)."""
        if not self._closed and self.buffer.has_lines:
            self.buffer.drain(False)
        return self._take_batch()

    def close(self) -> Batch:
        """End of output: parse everything, including a last line without a newline (a
        partial record line is damaged, a partial other line is a message)."""
        if self._closed:
            return self._take_batch()
        self._closed = True
        if self.buffer.in_overlong:
            self.buffer.finish_overlong()
        buf = self.buffer.take_all()
        if buf:
            if buf.endswith(b"\n"):
                self._process(buf, True)
            else:
                self._process(buf + b"\n", True, last_partial=True)
        self.tags.close()
        return self._take_batch()

    def keep_last(self, n: int) -> None:
        """--keep N: frame() holds only the last `n` rows (row_count still counts all);
        every row is still in exactly one Batch, whose frame is then built at once."""
        self.columns_store.keep_last(n)

    def rows_per_probe(self) -> dict[str, int]:
        """Rows received per probe label, over the whole run (also those --keep let go)."""
        cats = self.columns_store.plan.probe_categories
        return {label: int(n) for label, n in zip(cats, self.columns_store.probe_rows, strict=True)}

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered(self) -> int:
        """Bytes fed but not parsed yet."""
        return self.buffer.size

    @property
    def max_line(self) -> int:
        return self.buffer.max_line

    @property
    def messages(self) -> list[str]:
        """The message lines kept, in order (a MessageLog; `messages_dropped` counts the
        others)."""
        return self.out.messages

    @property
    def messages_dropped(self) -> int:
        return self.out.messages.dropped

    @property
    def damaged(self) -> list[bytes]:
        return self.out.damaged

    @property
    def damaged_count(self) -> int:
        return self.out.damaged_count

    @property
    def histograms(self) -> list[Histogram]:
        return self.out.histograms

    @property
    def summaries(self) -> list[Summary]:
        return self.out.summaries

    @property
    def tag_counts(self) -> list[TagCount]:
        return self.out.tag_counts

    @property
    def key_kinds(self) -> dict[str, ColumnKind]:
        return self.tags.key_kinds

    @property
    def row_count(self) -> int:
        return self.columns_store.row_count

    @row_count.setter
    def row_count(self, n: int) -> None:
        # tests/lab/test_faults.py fakes a run's row count without rows (it was a field)
        self.columns_store.row_count = n

    @property
    def columns(self) -> list[str]:
        """The DataFrame's columns, in order."""
        return list(self.columns_store.stores)

    def frame(self) -> pd.DataFrame:
        """All rows so far as one DataFrame. Numeric columns are views of the parser's
        contiguous columns (no copy); the result is a shallow copy under pandas
        copy-on-write, so changing it does not change the parser's rows."""
        return self.columns_store.frame()

    # ---- one batch of whole lines ---------------------------------------------------

    def _overlong(self, head: bytes, tagged: bool, more: int) -> None:
        if tagged:
            self.out.damage(head)
        else:
            self.out.message(
                head, note=f" [... {more} more bytes of this line not kept]" if more > 0 else ""
            )

    def _take_batch(self) -> Batch:
        pieces, rows = self.columns_store.take_pieces()
        make: Callable[[], pd.DataFrame] | None = None
        if pieces:
            columns, comm_categories = self.columns_store, list(self.columns_store.comm_categories)

            def make() -> pd.DataFrame:
                return columns.batch_frame(pieces, comm_categories)

            if columns.keep is not None:
                # built now: once taken, its rows may be let go of before a lazy build
                frame = make()
                make = lambda: frame  # noqa: E731

        return self.out.take_batch(make, rows)

    def _process(self, buf: bytes, final: bool, last_partial: bool = False) -> int:
        """Parse `buf` (whole lines, ends with a newline). Returns how many bytes were
        consumed; the rest (a record whose print_regs dump is not complete yet) is held
        back for the next call."""
        if not buf:
            return 0
        if (
            self._clean_first
            and not self.plan.any_regs
            and not last_partial
            and buf.startswith(RECORD_PREFIX_B)
        ):
            if self._clean(buf):
                return len(buf)
            self._clean_first = False  # skip the attempt for the next batch
        else:
            self._clean_first = True
        return self._general(buf, final, last_partial)

    def _clean(self, buf: bytes) -> bool:
        """A batch of nothing but well-formed records of one shape: the engines in turn."""
        if b"\0" in buf:
            return False
        # The CSV reader ends a row at \n, \r\n and a lone \r, and (ignore_empty_lines
        # off) fails on an empty one: as many rows as \n means no lone \r, no empty line.
        nrows = int(np.count_nonzero(np.frombuffer(buf, dtype=np.uint8) == 10))
        digits = buf[len(RECORD_PREFIX_B) : buf.find(b"\t", len(RECORD_PREFIX_B))]
        if not digits.isdigit() or int(digits) >= len(self.schemas):
            return False
        sid = int(self.plan.shape_of[int(digits)])
        parsed = self.compiled.parse(buf, sid, nrows) or self.arrow.parse(buf, sid, nrows)
        if parsed is None:
            return False
        group, damaged = self._group(parsed, buf, None, None)
        for _, t in sorted(damaged, key=lambda e: e[0]):
            self.out.damage(t)
        self.columns_store.emit([group], {})
        return True

    def _general(self, buf: bytes, final: bool, last_partial: bool) -> int:
        """Classify the lines, parse the record lines per shape, the others in order."""
        c = self.classifier.classify(buf, final, last_partial)
        groups: list[Group] = []
        others = list(c.others)
        for sid, gl in c.by_shape:
            group, damaged = self._shape_lines(c.lines, gl, sid)
            groups.append(group)
            others.extend((j, t, True) for j, t in damaged)
        others.sort(key=lambda e: e[0])
        for _, t, damaged_line in others:
            self.tags.line(t, damaged_line)
        if groups:
            self.columns_store.emit(groups, c.regs)
        return c.consumed

    def _shape_lines(self, ln: Lines, gl: I64, sid: int) -> tuple[Group, Damaged]:
        """The record lines `gl` (all of shape sid) -> a group: pyarrow if it can vouch
        for them, else the reference engine."""
        starts, cend, nl = ln.starts, ln.cend, ln.nl
        if gl.size == ln.n:
            sub, sub_bounds = ln.buf, (starts, cend)
        else:
            lens = nl[gl] + 1 - starts[gl]
            if int(gl[-1]) - int(gl[0]) + 1 == gl.size:
                sub = ln.buf[int(starts[gl[0]]) : int(nl[gl[-1]]) + 1]
            else:
                line_mask = np.zeros(ln.n, dtype=np.bool_)
                line_mask[gl] = True
                sub = ln.a[np.repeat(line_mask, nl + 1 - starts)].tobytes()
            sub_starts = np.zeros(gl.size, dtype=np.int64)
            sub_starts[1:] = np.cumsum(lens)[:-1]
            sub_bounds = (sub_starts, sub_starts + (cend[gl] - starts[gl]))
        try:
            parsed = self.arrow.read(sub, sid, int(gl.size), one_shape=False)
        except ArrowReject:
            texts = [ln.line(j) for j in gl.tolist()]
            return self.reference.parse_lines(sid, gl, texts, self.columns_store.comm_code)
        return self._group(parsed, sub, gl, sub_bounds)

    def _group(
        self, p: Parsed, buf: bytes, lines: I64 | None, bounds: tuple[I64, I64] | None
    ) -> tuple[Group, Damaged]:
        """An engine's result -> a group of the kept rows (comm codes only for those) and
        the damaged lines (rows the column checks rejected)."""
        lut = np.full(len(p.comm_vals), -1, dtype=np.int32)
        if p.bad is None:
            used: Iterable[int] = range(len(p.comm_vals))
        else:
            used = np.unique(np.concatenate(p.comm_ind)[~p.bad]).tolist()
        for i in used:
            lut[i] = self.columns_store.comm_code(cast(str, p.comm_vals[i]))
        g = Group(
            shape=self.plan.shapes[p.sid],
            n=p.n,
            lines=lines,
            idx=p.idx,
            time=p.time,
            pid=p.pid,
            tid=p.tid,
            cpu=p.cpu,
            comm=[lut[i] for i in p.comm_ind],
            fields=p.fields,
        )
        if p.bad is None:
            return g, []
        return _drop_bad(g, p.bad, buf, bounds)


def _drop_bad(
    g: Group, bad: BoolArr, buf: bytes, bounds: tuple[I64, I64] | None
) -> tuple[Group, Damaged]:
    starts, cend = bounds if bounds is not None else _line_bounds(buf)
    lines = g.line_numbers()
    # rows are the lines of `buf` in order
    damaged = [
        (int(lines[r]), buf[int(starts[r]) : int(cend[r])]) for r in np.flatnonzero(bad).tolist()
    ]
    return g.keep(~bad), damaged


def _line_bounds(buf: bytes) -> tuple[I64, I64]:
    a = np.frombuffer(buf, dtype=np.uint8)
    nl = np.flatnonzero(a == 10).astype(np.int64)
    starts = np.empty_like(nl)
    if nl.size:
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
    has_cr = (nl > starts) & (a[np.maximum(nl - 1, 0)] == 13)
    return starts, nl - has_cr
