"""What the parser hands out: `Batch` (one flush's news) and the bounded `MessageLog`."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from ..hist import Histogram, Summary
from ..wire import TagCount

__all__ = ["Batch", "MessageLog", "STAP_MESSAGE_PREFIXES", "EMPTY_BATCH"]


# stap's own lines, which the diagnoses read: kept before ordinary output when lines must go.
STAP_MESSAGE_PREFIXES = ("ERROR:", "WARNING:", "semantic error:", "Pass ")


class MessageLog(list[str]):
    """Message lines in order, in bounded memory: the first `head` lines, the last `tail`,
    and between them up to `stap` of stap's own lines (`STAP_MESSAGE_PREFIXES`) that fell
    out of the tail; every other line is counted in `dropped`. The log is the list of the
    kept lines itself (add() keeps the bounds; list methods work as on any list)."""

    def __init__(self, head: int, tail: int, stap: int) -> None:
        super().__init__()
        self.head, self.tail, self.stap = head, tail, stap
        self.dropped = 0
        self._nhead = 0
        self._nstap = 0

    def add(self, text: str) -> None:
        if self._nhead < self.head and len(self) == self._nhead:
            self.append(text)
            self._nhead += 1
            return
        self.append(text)
        first = self._nhead + self._nstap  # the oldest line of the tail
        if len(self) - first > self.tail:
            if self._nstap < self.stap and self[first].lstrip().startswith(STAP_MESSAGE_PREFIXES):
                self._nstap += 1  # it stays, as the last of stap's lines
            else:
                del self[first]
                self.dropped += 1

    def lines(self) -> list[str]:
        return list(self)


class Batch:
    """What one feed()/flush()/close() produced: `frame`, the new rows (index continuing
    the parser's row numbering; None when no rows; built from the batch's columns on first
    access, once), new `messages` lines (bounded like RecordParser.messages; the lines left
    out are counted in `messages_dropped`), new `histograms` and `summaries`, and how many
    `rows` / `damaged` lines it added."""

    __slots__ = (
        "messages",
        "messages_dropped",
        "rows",
        "damaged",
        "histograms",
        "summaries",
        "_make",
        "_frame",
    )

    def __init__(
        self,
        frame: pd.DataFrame | Callable[[], pd.DataFrame] | None = None,
        messages: tuple[str, ...] = (),
        rows: int = 0,
        damaged: int = 0,
        histograms: tuple[Histogram, ...] = (),
        summaries: tuple[Summary, ...] = (),
        messages_dropped: int = 0,
    ) -> None:
        self.messages = messages
        self.messages_dropped = messages_dropped
        self.rows = rows
        self.damaged = damaged
        self.histograms = histograms
        self.summaries = summaries
        self._frame: pd.DataFrame | None = None
        self._make: Callable[[], pd.DataFrame] | None = None
        if isinstance(frame, pd.DataFrame):
            self._frame = frame
        else:
            self._make = frame

    @property
    def frame(self) -> pd.DataFrame | None:
        if self._make is not None:
            self._frame, self._make = self._make(), None
        return self._frame

    @property
    def empty(self) -> bool:
        return not (
            self.rows
            or self.messages
            or self.messages_dropped
            or self.damaged
            or self.histograms
            or self.summaries
        )

    def __repr__(self) -> str:
        return (
            f"Batch(rows={self.rows}, messages={len(self.messages)}, "
            f"damaged={self.damaged}, histograms={len(self.histograms)}, "
            f"summaries={len(self.summaries)})"
        )


EMPTY_BATCH = Batch()


class Output:
    """Everything the parser found besides rows, in full (bounded) and as news for the
    next Batch: messages, damaged lines, histograms, summaries, @@smc/@@smk counts."""

    def __init__(
        self, max_line: int, max_damaged_kept: int, message_bounds: tuple[int, int, int]
    ) -> None:
        self.max_line = max_line
        self.max_damaged_kept = max_damaged_kept
        self._bounds = message_bounds
        self.messages = MessageLog(*message_bounds)
        self.damaged: list[bytes] = []
        self.damaged_count = 0
        self.histograms: list[Histogram] = []
        self.summaries: list[Summary] = []
        self.tag_counts: list[TagCount] = []  # @@smc / @@smk lines, in order
        self._new_messages = MessageLog(*message_bounds)
        self._new_damaged = 0
        self._new_hists: list[Histogram] = []
        self._new_summaries: list[Summary] = []

    def message(self, line: bytes, note: str = "") -> None:
        text = line.decode("utf-8", "backslashreplace") + note
        self.messages.add(text)
        self._new_messages.add(text)

    def damage(self, line: bytes) -> None:
        self.damaged_count += 1
        self._new_damaged += 1
        if len(self.damaged) < self.max_damaged_kept:
            self.damaged.append(line[: self.max_line])

    def histogram(self, h: Histogram) -> None:
        self.histograms.append(h)
        self._new_hists.append(h)

    def summary(self, s: Summary) -> None:
        self.summaries.append(s)
        self._new_summaries.append(s)

    def tag_count(self, t: TagCount) -> None:
        self.tag_counts.append(t)

    def take_batch(self, make: Callable[[], pd.DataFrame] | None, rows: int) -> Batch:
        """The Batch of the news since the last one (with `rows` rows built by `make`)."""
        new = self._new_messages
        if not (
            rows
            or new
            or new.dropped
            or self._new_damaged
            or self._new_hists
            or self._new_summaries
        ):
            return EMPTY_BATCH
        b = Batch(
            frame=make,
            messages=tuple(new.lines()),
            messages_dropped=new.dropped,
            rows=rows,
            damaged=self._new_damaged,
            histograms=tuple(self._new_hists),
            summaries=tuple(self._new_summaries),
        )
        self._new_messages = MessageLog(*self._bounds)
        self._new_damaged = 0
        self._new_hists = []
        self._new_summaries = []
        return b
