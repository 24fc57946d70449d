"""stapmagic.live: throttled, flat-cost live view and stap -v pass progress."""

from __future__ import annotations

import io
import statistics
import time
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

from stapmagic.live import LiveStatus, LiveView, PassProgress, parse_pass_line

# Verbatim from shared/reference/stap-4.8-linux-6.1 (4a_first.stderr, 4h_cached.stderr,
# 4f_nosuchfunc.stderr, 4*.stderr with a failed Pass 4).
PASS_4A = [
    "Pass 1: parsed user script and 484 library scripts using 112756virt/101972res/7120shr/95012data kb, in 3890usr/1220sys/5277real ms.",
    "WARNING: Eliding side-effect-free expression : identifier 'asmlinkage' at <input>:1:42",
    "Pass 2: analyzed script: 2 probes, 6 functions, 1 embed, 4 globals using 114476virt/104124res/7496shr/96732data kb, in 110usr/20sys/140real ms.",
    'Pass 3: translated to C into "/tmp/staptxWT7P/stap_288e5dc5f70d2dbc28d2364c1f1b5eb5_11109_src.c" using 114756virt/105412res/8384shr/97012data kb, in 4770usr/2190sys/7394real ms.',
    'Pass 4: compiled C into "stap_288e5dc5f70d2dbc28d2364c1f1b5eb5_11109.ko" in 438050usr/72110sys/284161real ms.',
    "Pass 5: starting run.",
    "Pass 5: run completed in 920usr/940sys/2366real ms.",
]
PASS_4H_CACHED = [
    "Pass 3: using cached /root/.systemtap/cache/28/stap_288e5dc5f70d2dbc28d2364c1f1b5eb5_11109.c",
    "Pass 4: using cached /root/.systemtap/cache/28/stap_288e5dc5f70d2dbc28d2364c1f1b5eb5_11109.ko",
]
PASS_4F_FAILED = [
    "Pass 1: parsed user script and 484 library scripts using 112756virt/102132res/7272shr/95012data kb, in 4040usr/940sys/4984real ms.",
    "semantic error: no match (similar functions: in_lock_functions, in_sched_functions, io_wake_function, trace_function, call_function_init)",
    "Pass 2: analyzed script: 0 probes, 0 functions, 0 embeds, 0 globals using 119620virt/109348res/7648shr/101876data kb, in 2260usr/70sys/2328real ms.",
    "Pass 2: analysis failed.  [man error::pass2]",
]
PASS_4_FAILED = "Pass 4: compilation failed.  [man error::pass4]"


class FakeClock:
    """Integer milliseconds, so that elapsed/period is exact."""

    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> float:
        return self.ms / 1000


class FakeHandle:
    def __init__(self, display: FakeDisplay) -> None:
        self.display = display

    def update(self, obj: Any) -> None:
        self.display.show(obj)


class FakeDisplay:
    """IPython.display.display(obj, display_id=True) stand-in; renders like a notebook."""

    def __init__(self) -> None:
        self.shown: list[LiveStatus] = []
        self.handles = 0

    def show(self, obj: Any) -> None:
        obj._repr_html_()
        self.shown.append(obj)

    def __call__(self, obj: Any, *, display_id: bool) -> FakeHandle:
        assert display_id is True
        self.handles += 1
        self.show(obj)
        return FakeHandle(self)


def events(n: int) -> pd.DataFrame:
    """A %%kprobe-shaped frame with the documented dtypes."""
    return pd.DataFrame(
        {
            "time": pd.Series(
                pd.Timestamp("2025-01-01") + pd.to_timedelta(np.arange(n), unit="us"),
                dtype="datetime64[ns]",
            ),
            "probe": pd.Categorical(np.where(np.arange(n) % 2, "vfs_read", "vfs_write")),
            "pid": np.arange(n, dtype=np.int64),
            "tid": np.arange(n, dtype=np.int64),
            "comm": pd.Categorical(["cat"] * n),
            "cpu": np.zeros(n, dtype=np.int64),
            "count": np.full(n, 4096, dtype=np.uint64),
        }
    )


def view(**kw: Any) -> tuple[LiveView, FakeClock, FakeDisplay]:
    clock, display = FakeClock(), FakeDisplay()
    return LiveView(clock=clock, display=display, **kw), clock, display


def feed(
    lv: LiveView,
    frame: pd.DataFrame | None,
    messages: list[str] | None = None,
    total: int = 0,
    **kw: Any,
) -> bool:
    return lv.update(
        frame,
        messages or [],
        rows_total=total,
        skipped=kw.pop("skipped", 0),
        transport_failures=kw.pop("transport_failures", 0),
        **kw,
    )


# -- cost ------------------------------------------------------------------------------------


def test_update_cost_is_flat_over_a_million_rows() -> None:
    big = events(1_000_000)
    batches = [big.iloc[i * 1000 : (i + 1) * 1000] for i in range(1000)]
    lv, clock, display = view(max_rate_hz=4.0)
    costs, drew = [], []
    total = 0
    for batch in batches:
        total += len(batch)
        start = time.perf_counter()
        drew.append(feed(lv, batch, ["a stap warning"], total))
        costs.append(time.perf_counter() - start)
        clock.ms += 1
    elapsed = 999 / 1000  # the clock read of the last update
    assert lv.draws == len(display.shown) == int(elapsed / lv.period) + 1 == 4
    assert display.handles == 1  # one display, updated in place
    plain = [c for c, d in zip(costs, drew, strict=True) if not d]
    first, last = statistics.mean(plain[:100]), statistics.mean(plain[-100:])
    assert last / first < 3, (first, last)
    assert statistics.mean(costs) < 0.005  # ~0.1 ms in practice
    assert lv.rows_total == 1_000_000
    rows = lv.last_rows()
    assert rows is not None and rows["pid"].tolist() == list(range(999_995, 1_000_000))


class TailOnly:
    """A batch frame that fails the test if LiveView uses anything but `.tail()`."""

    def __init__(self, df: pd.DataFrame) -> None:
        self._df = df
        self.tails: list[int] = []

    def tail(self, n: int) -> pd.DataFrame:
        self.tails.append(n)
        return self._df.tail(n)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"LiveView touched batch_frame.{name}")

    def __len__(self) -> int:
        raise AssertionError("LiveView took len() of the whole batch")


def test_update_only_ever_takes_the_tail_of_a_batch() -> None:
    lv, _, _ = view(tail=5)
    batch = TailOnly(events(100))
    feed(lv, cast(pd.DataFrame, batch), total=100, force=True)
    assert batch.tails == [5]


def test_update_cost_does_not_depend_on_batch_size() -> None:
    small, huge = events(10), events(2_000_000)

    def cost(frame: pd.DataFrame) -> float:
        lv, _, _ = view()
        feed(lv, frame, total=len(frame))  # the first update draws; measure the next ones
        start = time.perf_counter()
        for _ in range(200):
            feed(lv, frame, total=len(frame))
        return (time.perf_counter() - start) / 200

    assert cost(huge) / cost(small) < 5


def test_drawn_rows_do_not_keep_a_batch_alive() -> None:
    big = events(100_000)
    lv, _, display = view(tail=3)
    feed(lv, big, total=len(big), force=True)
    rows = display.shown[-1].rows
    assert rows is not None and len(rows) == 3
    assert not np.shares_memory(rows["pid"].to_numpy(), big["pid"].to_numpy())


# -- throttling and tail -------------------------------------------------------------------------


def test_redraws_at_most_max_rate_unless_forced() -> None:
    lv, clock, display = view(max_rate_hz=2.0)
    assert feed(lv, None) is True  # the first update shows the view at once
    clock.ms = 499
    assert feed(lv, None) is False
    assert feed(lv, None, force=True) is True
    clock.ms = 998
    assert feed(lv, None) is False
    clock.ms = 999
    assert feed(lv, None) is True
    assert len(display.shown) == 3 and display.handles == 1


def test_tail_spans_small_batches_in_order() -> None:
    lv, _, _ = view(tail=5)
    frame = events(20)
    feed(lv, frame.iloc[0:3])
    feed(lv, frame.iloc[3:4])
    feed(lv, frame.iloc[4:5])
    feed(lv, frame.iloc[5:7])
    rows = lv.last_rows()
    assert rows is not None and rows["pid"].tolist() == [2, 3, 4, 5, 6]
    feed(lv, frame.iloc[7:20])
    rows = lv.last_rows()
    assert rows is not None and rows["pid"].tolist() == [15, 16, 17, 18, 19]


# -- compile progress ------------------------------------------------------------------------------


def test_pass_lines_parse_verbatim() -> None:
    assert [parse_pass_line(line) for line in PASS_4A] == [
        PassProgress(1, "parsed user script and 484 library scripts", 5277),
        None,
        PassProgress(2, "analyzed script: 2 probes, 6 functions, 1 embed, 4 globals", 140),
        PassProgress(
            3,
            'translated to C into "/tmp/staptxWT7P/'
            'stap_288e5dc5f70d2dbc28d2364c1f1b5eb5_11109_src.c"',
            7394,
        ),
        PassProgress(4, 'compiled C into "stap_288e5dc5f70d2dbc28d2364c1f1b5eb5_11109.ko"', 284161),
        PassProgress(5, "starting run", None),
        PassProgress(5, "run completed", 2366),
    ]
    assert [parse_pass_line(line) for line in PASS_4H_CACHED] == [
        PassProgress(
            3,
            "using cached /root/.systemtap/cache/28/stap_288e5dc5f70d2dbc28d2364c1f1b5eb5_11109.c",
            None,
        ),
        PassProgress(
            4,
            "using cached /root/.systemtap/cache/28/stap_288e5dc5f70d2dbc28d2364c1f1b5eb5_11109.ko",
            None,
        ),
    ]
    assert parse_pass_line(PASS_4_FAILED) == PassProgress(
        4, "compilation failed.  [man error::pass4]", None
    )
    assert parse_pass_line("Pass 2: analyzed script\r") is not None  # pty line ending


def test_compile_progress_is_shown_while_stap_compiles() -> None:
    lv, clock, display = view()
    feed(lv, None)
    assert "starting" in repr(display.shown[-1])
    clock.ms = 5500
    feed(lv, None, PASS_4A[:3])
    assert lv.phase == "compiling"
    assert lv.compile_progress == [
        (1, "parsed user script and 484 library scripts", 5277),
        (2, "analyzed script: 2 probes, 6 functions, 1 embed, 4 globals", 140),
    ]
    text = repr(display.shown[-1])
    assert "compiling: Pass 2: analyzed script: 2 probes" in text
    assert "(0.1 s)" in text and "5.5 s" in text and "pass 3/5" in text
    assert "Pass 1 5.3 s · Pass 2 0.1 s" in display.shown[-1]._repr_html_()
    clock.ms = 300_000
    feed(lv, None, PASS_4A[3:6])
    assert lv.phase == "running"  # "Pass 5: starting run." with no events yet
    assert [p.pass_no for p in lv.compile_progress] == [1, 2, 3, 4, 5]


def test_failed_pass_is_shown() -> None:
    lv, _, display = view()
    feed(lv, None, PASS_4F_FAILED)
    assert lv.phase == "failed"
    assert "stap failed: Pass 2: analysis failed." in repr(display.shown[-1])


# -- rendering ------------------------------------------------------------------------------------


def test_running_status_text_and_html() -> None:
    lv, clock, display = view(max_rate_hz=4.0, tail=2)
    feed(lv, None, PASS_4A[:6])
    clock.ms = 250
    feed(lv, events(1234), total=1234, skipped=3, transport_failures=1)
    status = display.shown[-1]
    text, page = repr(status), status._repr_html_()
    for part in ("running 0.2 s", "1,234 events", "4,936/s", "3 skipped", "1 transport failures"):
        assert part in text and part in page
    assert "vfs_read" in text and "<table" in page and page.count("<tr") == 3  # header + 2 rows
    lv.close("1234 rows, 0.3s")
    final = display.shown[-1]
    # The caller's summary is the whole final line: no second clock or count to contradict it.
    assert final.final and repr(final).splitlines()[0] == "stapmagic: 1234 rows, 0.3s"
    assert "1234 rows, 0.3s" in final._repr_html_() and "running" not in repr(final)
    assert display.handles == 1


def test_text_mode_prints_a_line_every_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    import stapmagic.live as live

    monkeypatch.setattr(live, "_kernel_display", lambda: None)  # plain python, no kernel
    out, clock = io.StringIO(), FakeClock()
    lv = LiveView(clock=clock, stream=out, text_interval=5.0)
    for second in range(13):
        clock.ms = second * 1000
        feed(lv, events(10), total=10 * (second + 1))
    lv.close("130 rows")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # at 5 s, at 10 s, and the final line
    assert lines[0].startswith("stapmagic: running 5.0 s · 60 events")
    assert lines[-1] == "stapmagic: 130 rows"


def test_text_mode_short_run_stays_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    import stapmagic.live as live

    monkeypatch.setattr(live, "_kernel_display", lambda: None)
    out, clock = io.StringIO(), FakeClock()
    lv = LiveView(clock=clock, stream=out)
    feed(lv, events(3), total=3)
    clock.ms = 900
    lv.close("3 rows")
    assert out.getvalue() == ""


def test_fed_from_the_real_record_parser() -> None:
    from stapmagic.records import RecordParser
    from stapmagic.schema import Column, ProbeSchema

    schema = ProbeSchema(
        "tcp_v4_connect.return", (Column("retval", "int"), Column("errno", "errno")), False
    )
    parser = RecordParser([schema])
    lines = [*PASS_4A[:6]] + [
        f"@@sm1\t0\t{1_700_000_000_000_000_000 + i}\t{100 + i}\t{100 + i}\t0\tcurl\t-111"
        "\tECONNREFUSED\t@@"
        for i in range(20)
    ]
    parser.feed(("\r\n".join(lines) + "\r\n").encode())
    batch = parser.flush()
    lv, _, display = view(tail=3)
    lv.update(
        batch.frame,
        list(batch.messages),
        rows_total=parser.row_count,
        skipped=0,
        transport_failures=0,
    )
    assert [p.pass_no for p in lv.compile_progress] == [1, 2, 3, 4, 5]
    status = display.shown[-1]
    assert "running" in status.status and "20 events" in status.status
    assert status.rows is not None and status.rows["pid"].tolist() == [117, 118, 119]
    assert "ECONNREFUSED" in status._repr_html_()


# -- the end of a run ---------------------------------------------------------------------------

CHILD_FAILED = "WARNING: Child process exited with status 1"
# Verbatim, shared/reference/stap-5.1-linux-6.12/remote_ssh_stapsh_s_a.stderr line 6.
PASS5_FAILED = "Pass 5: run failed.  [man error::pass5]"


def _running(lv: LiveView, clock: FakeClock) -> None:
    feed(lv, None, PASS_4A[:6])
    clock.ms = 1000
    feed(lv, events(400), total=400)
    assert lv.phase == "running" and "/s" in repr(lv.status())


def test_stop_shows_stopping_not_a_stale_rate() -> None:
    lv, clock, display = view(max_rate_hz=4.0)
    _running(lv, clock)
    lv.stopping()
    assert lv.phase == "stopping"
    line = repr(display.shown[-1]).splitlines()[0]  # drawn at once, not at the next batch
    assert line.startswith("stapmagic: stopping") and "400 events" in line, line
    assert "/s" not in line and "running" not in line, line
    for ms in range(1250, 6000, 250):  # stap's end probes and unload: no rows, ticks go on
        clock.ms = ms
        feed(lv, None, total=400)
    drawn = [repr(s).splitlines()[0] for s in display.shown[-10:]]
    assert all(d.startswith("stapmagic: stopping") and "0/s" not in d for d in drawn), drawn
    assert display.shown[-1].hint is None  # the stop hint is done with
    lv.stopping()  # a second stop (escalation) changes nothing drawn
    lv.close("400 rows, interrupted")
    assert repr(display.shown[-1]).splitlines()[0] == "stapmagic: 400 rows, interrupted"


def test_a_failed_command_never_flashes_stap_failed() -> None:
    # stap -c CMD whose CMD fails: "Pass 5: run failed" arrives just before stap exits, and
    # the summary (command exit status) replaces the view; nothing says "stap failed".
    lv, clock, display = view(max_rate_hz=4.0)
    _running(lv, clock)
    clock.ms = 2000
    feed(lv, events(3), [CHILD_FAILED, PASS5_FAILED], total=403, force=True)
    assert lv.phase == "stopping"
    assert not [s for s in display.shown if "stap failed" in repr(s)]
    assert "stopping" in repr(display.shown[-1])


def test_a_compile_failure_is_still_stap_failed() -> None:
    lv, _, display = view()
    feed(lv, None, [*PASS_4A[:3], PASS_4_FAILED])
    assert lv.phase == "failed"
    assert "stap failed: Pass 4: compilation failed." in repr(display.shown[-1])
