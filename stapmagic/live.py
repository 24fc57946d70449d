"""The live view of a running probe: stap's compile progress, then counters and the last rows.

`LiveView.update()` is called once per parser batch. It keeps O(1) state (counters and the
last `tail` rows, taken with `.tail()` of each batch frame) and redraws at most `max_rate_hz`
times per second, so a run costs the same to watch at 10 events as at 10 million. In a
notebook it redraws one IPython display (a display handle), which `close()` replaces in place
by the run's summary; elsewhere it prints a status line to stdout every few seconds.
"""

from __future__ import annotations

import html
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TextIO

import pandas as pd

__all__ = [
    "STOP_HINT",
    "LiveStatus",
    "LiveView",
    "PassProgress",
    "RunSummary",
    "hex_text",
    "parse_pass_line",
    "summary_line",
]


class PassProgress(NamedTuple):
    """One `Pass N: ...` line of `stap -v`: pass number, what it did, wall time (None if
    stap gave none, e.g. "Pass 5: starting run." or "Pass 3: using cached ...")."""

    pass_no: int
    text: str
    real_ms: int | None


# "Pass 1: parsed user script and 484 library scripts using 112756virt/101972res/7120shr/
# 95012data kb, in 3890usr/1220sys/5277real ms."; Pass 4 has no memory part and no comma.
_PASS = re.compile(
    r"Pass (?P<no>\d+): (?P<text>.*?)"
    r"(?:(?: using \S+ kb)?,? in \d+usr/\d+sys/(?P<real>\d+)real ms)?\.?\s*\Z"
)

# What stap does after pass N has been reported, i.e. what it is busy with now.
_NEXT = {
    0: "pass 1/5: parsing the script",
    1: "pass 2/5: resolving probes and symbols",
    2: "pass 3/5: translating to C",
    3: "pass 4/5: building the kernel module (can take minutes)",
    4: "pass 5/5: loading the module",
}


def parse_pass_line(line: str) -> PassProgress | None:
    """The PassProgress of one stap -v line, or None for any other line."""
    match = _PASS.match(line.strip())
    if match is None:
        return None
    real = match.group("real")
    return PassProgress(
        int(match.group("no")), match.group("text"), int(real) if real is not None else None
    )


def _failed(progress: PassProgress) -> bool:
    """A compile pass failed. Pass 5's "run failed" is how the run ended (a failed -c
    command, an error, a stop): the summary says which, so the view only shows it ending."""
    return progress.pass_no < 5 and " failed" in progress.text


def _ended(progress: PassProgress) -> bool:
    return progress.pass_no == 5 and (" failed" in progress.text or "completed" in progress.text)


def _seconds(ms: int | None) -> str:
    return "" if ms is None else f" ({ms / 1000:.1f} s)"


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Said while a run can be stopped: the stop button (SIGINT) ends stap and keeps the rows.
STOP_HINT = "the stop button (■) ends the run and keeps the rows received so far"


def hex_text(value: Any) -> str:
    """A pointer or register value as the tables show it: 0x..., <NA> when missing."""
    return "<NA>" if pd.isna(value) else f"0x{int(value):x}"


@dataclass(frozen=True, repr=False)
class LiveStatus:
    """What one draw shows: a status line, stap's pass progress and the last rows
    (`hex_columns` in hex, as the result table shows them), a note (e.g. that this is a
    replay), the stop hint while the run can be stopped, -n progress (done, of)."""

    status: str
    progress: tuple[PassProgress, ...] = ()
    rows: pd.DataFrame | None = None
    final: bool = False
    hex_columns: tuple[str, ...] = ()
    note: str | None = None
    hint: str | None = None
    count: tuple[int, int] | None = None

    def progress_line(self) -> str:
        """The passes so far on one line, e.g. "Pass 1 5.3 s · Pass 2 0.1 s" (a pass stap
        reported twice, like Pass 5's start and end, once, with its last line)."""
        latest: dict[int, PassProgress] = {}
        for p in self.progress:
            latest[p.pass_no] = p
        return " · ".join(
            f"Pass {p.pass_no}{'' if p.real_ms is None else f' {p.real_ms / 1000:.1f} s'}"
            + ("" if p.real_ms is not None or p.pass_no == 5 else f" {_short(p.text, 30)}")
            for p in latest.values()
        )

    def _formatters(self) -> dict[str, Callable[[Any], str]]:
        rows = self.rows
        if rows is None:
            return {}
        return {c: hex_text for c in self.hex_columns if c in rows.columns}

    def __repr__(self) -> str:
        lines = [f"stapmagic: {self.status}"]
        if self.note:
            lines.append(f"  {self.note}")
        if self.progress:
            lines.append(f"  stap: {self.progress_line()}")
        if self.rows is not None and len(self.rows):
            lines.append(
                self.rows.to_string(index=False, max_colwidth=32, formatters=self._formatters())
            )
        if self.hint:
            lines.append(f"  ({self.hint})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = [f"<div><b>stapmagic</b> {html.escape(self.status)}</div>"]
        if self.count is not None:
            done, of = self.count
            parts.append(f"<progress value='{min(done, of)}' max='{of}'></progress>")
        if self.note:
            parts.append(f"<div style='color:#666'>{html.escape(self.note)}</div>")
        if self.progress:
            parts.append(f"<div style='color:#666'>stap: {html.escape(self.progress_line())}</div>")
        if self.rows is not None and len(self.rows):
            parts.append(
                self.rows.to_html(
                    index=False,
                    border=0,
                    max_cols=16,
                    notebook=False,
                    formatters=self._formatters(),
                )
            )
        if self.hint:
            parts.append(f"<div style='color:#666'>{html.escape(self.hint)}</div>")
        return (
            "<div class='stapmagic-live' style='font-family:monospace;font-size:85%'>"
            + "".join(parts)
            + "</div>"
        )


@dataclass(frozen=True, repr=False)
class RunSummary:
    """What a finished cell shows in place of its live view: one summary line, the
    warnings and errors (visible), and stap's and the workload's other messages in a
    collapsed "messages (N)" section (listed under the line in plain text)."""

    line: str
    warnings: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()
    note: str | None = None

    def __repr__(self) -> str:
        lines = [f"stapmagic: {self.line}"]
        if self.note:
            lines.append(f"  {self.note}")
        lines += [f"stapmagic: {w}" for w in self.warnings]
        lines += self.messages
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = [f"<div><b>stapmagic</b> {html.escape(self.line)}</div>"]
        if self.note:
            parts.append(f"<div style='color:#666'>{html.escape(self.note)}</div>")
        parts += [f"<div style='color:#a40'>{html.escape(w)}</div>" for w in self.warnings]
        if self.messages:
            text = html.escape("\n".join(self.messages))
            parts.append(
                f"<details><summary>messages ({len(self.messages)})</summary>"
                f"<pre style='margin:0'>{text}</pre></details>"
            )
        return (
            "<div class='stapmagic-summary' style='font-family:monospace;font-size:85%'>"
            + "".join(parts)
            + "</div>"
        )


def summary_line(
    rows: int,
    total: float,
    compile_s: float,
    run_s: float,
    lost: int,
    *,
    interrupted: bool = False,
    notes: Sequence[str] = (),
    rows_word: bool = True,
) -> str:
    """ "3 rows in 4.9 s: compile 1.8 s, run 2.8 s, 0 lost" (+ notes; + that a stopped
    run keeps its rows). `rows_word` False: an aggregating run, whose notes say what it
    counted instead of "0 rows"."""
    head = f"{rows:,} row{'' if rows == 1 else 's'}" if rows_word else ", ".join(notes)
    line = f"{head} in {total:.1f} s: compile {compile_s:.1f} s, run {run_s:.1f} s, {lost:,} lost"
    extra = list(notes) if rows_word else []
    if interrupted:
        extra.append(f"stopped: the {rows:,} row{'' if rows == 1 else 's'} received are kept")
    return "; ".join([line, *extra])


class DisplayHandle(Protocol):
    """What `IPython.display.display(obj, display_id=True)` returns."""

    def update(self, obj: Any) -> None: ...


DisplayFunc = Callable[..., Any]


def _kernel_display() -> DisplayFunc | None:
    """IPython's `display` inside a kernel (notebook, lab); None in plain or terminal Python,
    where a display handle cannot redraw in place."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    from IPython.display import display

    return display


class LiveView:
    """Throttled live status of one stap run (see the module docstring).

    `display` is a function like `IPython.display.display` (called as
    `display(obj, display_id=True)`, returning a handle with `.update(obj)`); None means
    IPython's inside a kernel, and text lines on `stream` (default stderr) otherwise.
    """

    def __init__(
        self,
        max_rate_hz: float = 4.0,
        tail: int = 5,
        clock: Callable[[], float] = time.monotonic,
        display: DisplayFunc | None = None,
        *,
        stream: TextIO | None = None,
        text_interval: float = 5.0,
        hex_columns: Sequence[str] = (),
        duration: float | None = None,
        count: int | None = None,
        note: str | None = None,
    ) -> None:
        if max_rate_hz <= 0:
            raise ValueError(f"max_rate_hz must be positive, not {max_rate_hz!r}")
        self.period = 1.0 / max_rate_hz
        self.tail = max(0, tail)
        self._clock = clock
        self._display = display if display is not None else _kernel_display()
        self._stream = stream
        self.text_interval = text_interval
        self.hex_columns = tuple(hex_columns)
        self.duration = duration
        self.count = count
        self.note = note
        self._handle: DisplayHandle | None = None
        self._started = clock()
        self._run_started: float | None = None
        self._last_draw: float | None = None
        self.draws = 0
        self.rows_total = 0
        self.skipped = 0
        self.transport_failures = 0
        self.compile_progress: list[PassProgress] = []
        self._rate = 0.0
        self._rate_sample: tuple[float, int] | None = None
        # Tails of the latest batches, just enough of them to hold `tail` rows.
        self._tails: deque[pd.DataFrame] = deque()
        self._tail_rows = 0
        self.closed = False
        self._stopping = False

    # -- feeding ------------------------------------------------------------------------

    def update(
        self,
        batch_frame: pd.DataFrame | None,
        new_messages: Sequence[str],
        *,
        rows_total: int,
        skipped: int,
        transport_failures: int,
        force: bool = False,
    ) -> bool:
        """Take one batch (its frame, its new message lines, the run's totals); redraw if
        the last draw is at least 1/max_rate_hz old, or `force`. True if it drew."""
        now = self._clock()
        for line in new_messages:
            if line.lstrip().startswith("Pass "):
                progress = parse_pass_line(line)
                if progress is not None:
                    self.compile_progress.append(progress)
                    if progress.pass_no == 5 and self._run_started is None:
                        self._run_started = now
        if batch_frame is not None and self.tail:
            self._keep_tail(batch_frame)
        self.rows_total = rows_total
        self.skipped = skipped
        self.transport_failures = transport_failures
        if rows_total and self._run_started is None:
            self._run_started = now  # stap without -v prints no "Pass 5" line
        if force or self._due(now):
            self._draw(now)
            return True
        return False

    def stopping(self) -> None:
        """A stop was asked (the stop button, `.stop()`): stap now runs its end probes and
        unloads; shown at once, and no rate (there are no new rows to measure) until close()."""
        if self._stopping or self.closed:
            return
        self._stopping = True
        self._draw(self._clock())

    def close(self, final_summary: str | RunSummary) -> None:
        """Replace the live view by `final_summary` (in place: the same display). In text
        mode only after earlier lines, so that a short run prints nothing but the caller's
        own summary."""
        if self.closed:
            return
        self.closed = True
        now = self._clock()
        self._ended = now
        self._measure_rate(now, final=True)
        if self._display is None and self._last_draw is None:
            return
        if isinstance(final_summary, RunSummary):
            self._emit(final_summary)
        else:
            self._emit(self.status(now, final_summary))
        self._last_draw = now

    def timings(self) -> tuple[float, float, float]:
        """(total, compile, run) seconds: compile until stap's Pass 5 (or the first row),
        run from then to the end (close(), or now)."""
        end = getattr(self, "_ended", None)
        now = self._clock() if end is None else end
        total = max(0.0, now - self._started)
        begun = self._run_started if self._run_started is not None else now
        compile_s = min(total, max(0.0, begun - self._started))
        return total, compile_s, total - compile_s

    # -- state --------------------------------------------------------------------------

    def _keep_tail(self, frame: pd.DataFrame) -> None:
        last = frame.tail(self.tail)
        if not len(last):
            return
        if len(last) >= self.tail:
            self._tails.clear()
            self._tail_rows = 0
        self._tails.append(last)
        self._tail_rows += len(last)
        while self._tail_rows - len(self._tails[0]) >= self.tail:
            self._tail_rows -= len(self._tails.popleft())

    def last_rows(self) -> pd.DataFrame | None:
        """The last `tail` rows seen (a small copy), or None before any."""
        if not self._tails:
            return None
        frames = list(self._tails)
        rows = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        # A copy, so that no batch frame stays alive through a view of its tail.
        rows = rows.tail(self.tail).reset_index(drop=True).copy()
        self._tails = deque([rows])
        self._tail_rows = len(rows)
        return rows

    @property
    def phase(self) -> str:
        """ "starting", "compiling", "failed", "running", "stopping" or "finished"."""
        if self.closed:
            return "finished"
        if any(_failed(p) for p in self.compile_progress):
            return "failed"
        if self._stopping or any(_ended(p) for p in self.compile_progress):
            return "stopping"
        if self._run_started is not None:
            return "running"
        return "compiling" if self.compile_progress else "starting"

    def _counters(self, rate: bool = True) -> str:
        events = (
            f"{self.rows_total:,}/{self.count:,} events"
            if self.count
            else f"{self.rows_total:,} events"
        )
        parts = [events, f"{self._rate:,.0f}/s"] if rate else [events]
        if self.skipped:
            parts.append(f"{self.skipped:,} skipped")
        if self.transport_failures:
            parts.append(f"{self.transport_failures:,} transport failures")
        return " · ".join(parts)

    def status(self, now: float | None = None, final_summary: str | None = None) -> LiveStatus:
        """The LiveStatus a draw at `now` (default: the clock) would show."""
        now = self._clock() if now is None else now
        elapsed = now - self._started
        ran = now - (self._run_started if self._run_started is not None else self._started)
        phase = self.phase
        if phase == "finished":
            line = final_summary or f"finished: {self.rows_total:,} events"
        elif phase == "running":
            line = f"running {ran:.1f} s · {self._counters()}"
            if self.duration is not None:
                line += f" · {max(0.0, self.duration - ran):.0f} s left of {self.duration:g}"
        elif phase == "stopping":
            line = f"stopping... ran {ran:.1f} s · {self._counters(rate=False)}"
        elif phase == "failed":
            failed = next(p for p in self.compile_progress if _failed(p))
            line = f"stap failed: Pass {failed.pass_no}: {failed.text} · {elapsed:.1f} s"
        elif phase == "compiling":
            done = self.compile_progress[-1]
            line = (
                f"compiling: Pass {done.pass_no}: {_short(done.text)}{_seconds(done.real_ms)}"
                f" · now {_NEXT.get(done.pass_no, 'running')} · {elapsed:.1f} s"
            )
        else:
            line = f"starting stap · {elapsed:.1f} s · no events yet"
        final = phase == "finished"
        return LiveStatus(
            line,
            tuple(self.compile_progress),
            self.last_rows(),
            final=final,
            hex_columns=self.hex_columns,
            note=self.note,
            hint=None if phase in ("finished", "failed", "stopping") else STOP_HINT,
            count=(self.rows_total, self.count) if self.count and not final else None,
        )

    # -- drawing ------------------------------------------------------------------------

    def _due(self, now: float) -> bool:
        if self._last_draw is None:
            # Text lines start only once the run has lasted a while: short runs stay quiet.
            return self._display is not None or now - self._started >= self.text_interval
        interval = self.period if self._display is not None else self.text_interval
        return now - self._last_draw >= interval

    def _measure_rate(self, now: float, final: bool = False) -> None:
        if final:
            start = self._run_started if self._run_started is not None else self._started
            self._rate = self.rows_total / (now - start) if now > start else 0.0
            return
        if self._run_started is None:
            return
        if self._rate_sample is None:
            self._rate_sample = (self._run_started, 0)
        then, rows = self._rate_sample
        # Over the last draw interval: the current rate, not the run's average. A forced
        # draw right after another would divide by almost nothing, so keep the old value.
        if now - then >= self.period / 2:
            self._rate = (self.rows_total - rows) / (now - then)
            self._rate_sample = (now, self.rows_total)

    def _draw(self, now: float) -> None:
        self._measure_rate(now)
        self._emit(self.status(now))
        self._last_draw = now

    def _emit(self, status: LiveStatus | RunSummary) -> None:
        self.draws += 1
        if self._display is None:
            # Progress is normal output: stdout (stderr is drawn as an error in notebooks).
            text = repr(status) if isinstance(status, RunSummary) else repr(status).splitlines()[0]
            print(text, file=self._stream or sys.stdout, flush=True)
        elif self._handle is None:
            self._handle = self._display(status, display_id=True)
        else:
            self._handle.update(status)
