"""The line buffer: stap's output in chunks of any size -> batches of whole lines.

A line may be split anywhere (inside a multi-byte character, between ``\\r`` and ``\\n``);
whole lines are handed to `process` once batch_bytes are buffered (or on drain()). A line
longer than max_line is never buffered whole, even when it arrives in one chunk: its first
max_line bytes go to `on_overlong` (with whether it holds the record tag and how many bytes
were not kept).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..wire import RECORD_TAG_B as RECORD_TAG

_SCAN_WINDOW = 1 << 20

# process(buf, final) -> bytes consumed (the rest is held back and given again later)
Process = Callable[[bytes, bool], int]
# on_overlong(head, tagged, bytes not kept)
OnOverlong = Callable[[bytes, bool, int], None]


class LineBuffer:
    def __init__(self, max_line: int, process: Process, on_overlong: OnOverlong) -> None:
        self.max_line = max_line
        self._process = process
        self._on_overlong = on_overlong
        self._chunks: list[bytes] = []
        self._size = 0
        self._nl_chunk = -1  # index in _chunks of the last chunk holding a newline
        self._partial = 0  # bytes after the last newline
        self._overlong: bytearray | None = None
        self._overlong_len = 0
        self._overlong_tagged = False
        self._overlong_tail = b""

    @property
    def size(self) -> int:
        """Bytes buffered."""
        return self._size

    @property
    def has_lines(self) -> bool:
        """Whether a whole line is buffered."""
        return self._nl_chunk >= 0

    @property
    def in_overlong(self) -> bool:
        return self._overlong is not None

    def take_all(self) -> bytes:
        """Everything buffered (the end of output), the buffer emptied."""
        buf = b"".join(self._chunks)
        self._chunks, self._size, self._nl_chunk, self._partial = [], 0, -1, 0
        return buf

    def add(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._overlong is not None:
                nl = data.find(b"\n", pos)
                self._overlong_extend(data, pos, n if nl < 0 else nl)
                if nl < 0:
                    return
                self.finish_overlong()
                pos = nl + 1
                continue
            # A chunk may hold a whole line longer than max_line: cut it here, before it
            # is buffered (and copied) whole.
            k = self._first_overlong(data, pos) if n - pos + self._partial > self.max_line else -1
            if k < 0:
                self._buffer(data if pos == 0 else data[pos:])
                return
            if k > pos:
                self._buffer(data[pos:k])
            self._start_overlong()
            pos = k

    def _first_overlong(self, data: bytes, pos: int) -> int:
        """Where in data[pos:] the first line longer than max_line starts (pos: the line
        buffered so far goes on), or -1. Scans in windows, so a huge chunk costs no more
        than a window of temporary memory."""
        last = pos - 1 - self._partial  # where the newline before the current line is
        n = len(data)
        for ws in range(pos, n, _SCAN_WINDOW):
            we = min(n, ws + _SCAN_WINDOW)
            nl = (
                np.flatnonzero(np.frombuffer(data, dtype=np.uint8, count=we - ws, offset=ws) == 10)
                + ws
            )
            if nl.size:
                prev = np.empty(nl.size, dtype=np.int64)
                prev[0] = last
                prev[1:] = nl[:-1]
                over = np.flatnonzero(nl - prev - 1 > self.max_line)
                if over.size:
                    return max(pos, int(prev[over[0]]) + 1)
                last = int(nl[-1])
            if we - last - 1 > self.max_line:
                return max(pos, last + 1)
        return -1

    def _buffer(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        nl = data.rfind(b"\n")
        if nl >= 0:
            self._nl_chunk = len(self._chunks) - 1
            self._partial = len(data) - nl - 1
        else:
            self._partial += len(data)

    def _start_overlong(self) -> None:
        # Parse the whole lines before the long one first, so the order stays right.
        if self._nl_chunk >= 0:
            self.drain(True)
        rest = b"".join(self._chunks)
        self._chunks, self._size, self._nl_chunk, self._partial = [], 0, -1, 0
        self._overlong = bytearray()
        self._overlong_len = 0
        self._overlong_tagged = False
        self._overlong_tail = b""
        self._overlong_extend(rest, 0, len(rest))

    def _overlong_extend(self, data: bytes, start: int, end: int) -> None:
        """Take data[start:end] into the overlong line without copying all of it."""
        assert self._overlong is not None
        t = len(RECORD_TAG) - 1
        edge = self._overlong_tail + data[start : min(end, start + t)]
        if not self._overlong_tagged and (
            RECORD_TAG in edge or data.find(RECORD_TAG, start, end) >= 0
        ):
            self._overlong_tagged = True
        self._overlong_tail = (self._overlong_tail + data[max(start, end - t) : end])[-t:]
        keep = min(self.max_line - len(self._overlong), end - start)
        if keep > 0:
            self._overlong += data[start : start + keep]
        self._overlong_len += end - start

    def finish_overlong(self) -> None:
        """The overlong line ends (a newline, or the end of output): hand on its head."""
        assert self._overlong is not None
        head = bytes(self._overlong)
        total = self._overlong_len
        self._overlong = None
        if total == len(head) and head.endswith(b"\r"):
            head = head[:-1]
        self._on_overlong(head, self._overlong_tagged, total - len(head))

    def drain(self, final: bool) -> None:
        """Parse the whole lines buffered; keep the partial last line (and whatever the
        processing holds back) for later."""
        k = self._nl_chunk
        if k < 0:
            return
        last = self._chunks[k]
        cut = last.rfind(b"\n") + 1
        tail_chunks = self._chunks[k + 1 :]
        if cut == len(last):
            head, rest = last, b""
        else:
            head, rest = last[:cut], last[cut:]
        buf = head if k == 0 else b"".join(self._chunks[:k] + [head])
        consumed = self._process(buf, final)
        held = buf[consumed:] if consumed < len(buf) else b""
        new_chunks = [c for c in (held, rest) if c] + tail_chunks
        self._chunks = new_chunks
        self._size = sum(len(c) for c in new_chunks)
        self._nl_chunk = 0 if held else -1
        # _partial is unchanged: the bytes after the last newline are the same.
