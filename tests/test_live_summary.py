"""The live view as issue 13 asks: pointers in hex, the stop hint, the -T countdown and -n
progress, one summary line replacing the view in place, messages collapsed."""

from __future__ import annotations

import pandas as pd

from stapmagic.live import STOP_HINT, LiveView, RunSummary, summary_line

PASS_5 = [
    "Pass 1: parsed user script and 484 library scripts using 1virt/1res/1shr/1data kb,"
    " in 10usr/0sys/1800real ms.",
    "Pass 5: starting run.",
]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Display:
    def __init__(self) -> None:
        self.shown: list = []
        self.handles = 0

    def __call__(self, obj, display_id=True):
        self.handles += 1
        self.shown.append(obj)
        return self

    def update(self, obj) -> None:
        self.shown.append(obj)


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pid": pd.array(range(n), dtype="int64"),
            "sk": pd.array([0xFF45CB2288356880 + i for i in range(n)], dtype="uint64"),
        }
    )


def make(**kw) -> tuple[LiveView, Clock, Display]:
    clock, display = Clock(), Display()
    return LiveView(clock=clock, display=display, **kw), clock, display


def test_live_rows_show_pointers_in_hex() -> None:
    lv, clock, display = make(hex_columns=("sk",))
    clock.t = 1.0
    lv.update(frame(3), PASS_5, rows_total=3, skipped=0, transport_failures=0, force=True)
    page, text = display.shown[-1]._repr_html_(), repr(display.shown[-1])
    assert "0xff45cb2288356882" in page and "0xff45cb2288356882" in text
    assert str(0xFF45CB2288356882) not in page


def test_running_view_says_the_stop_button_keeps_the_rows_and_counts_down() -> None:
    lv, clock, display = make(duration=60.0, count=100)
    lv.update(None, PASS_5, rows_total=0, skipped=0, transport_failures=0, force=True)
    clock.t = 15.0
    lv.update(frame(10), [], rows_total=10, skipped=0, transport_failures=0, force=True)
    status = display.shown[-1]
    assert STOP_HINT in repr(status) and STOP_HINT in status._repr_html_()
    assert "45 s left of 60" in status.status
    assert "10/100 events" in status.status
    assert "<progress value='10' max='100'>" in status._repr_html_()
    # zero counters are not shown on every line (issue 13, item 4)
    assert "skipped" not in status.status and "transport" not in status.status


def test_close_replaces_the_view_in_place_with_the_summary() -> None:
    lv, clock, display = make()
    clock.t = 1.8
    lv.update(None, PASS_5, rows_total=0, skipped=0, transport_failures=0)
    clock.t = 4.9
    lv.update(frame(3), [], rows_total=3, skipped=0, transport_failures=0, force=True)
    total, compile_s, run_s = lv.timings()
    assert (round(total, 1), round(compile_s, 1), round(run_s, 1)) == (4.9, 1.8, 3.1)
    line = summary_line(3, total, compile_s, run_s, 0)
    assert line == "3 rows in 4.9 s: compile 1.8 s, run 3.1 s, 0 lost"
    lv.close(RunSummary(line, messages=("workload pid=475", "did 3 connects")))
    assert display.handles == 1  # the same display, updated
    final = display.shown[-1]
    page = final._repr_html_()
    assert line in page and "<table" not in page and "running" not in page
    assert "<details><summary>messages (2)</summary>" in page
    assert repr(final).splitlines() == [f"stapmagic: {line}", "workload pid=475", "did 3 connects"]


def test_summary_of_a_stopped_run_says_the_rows_are_kept() -> None:
    line = summary_line(9, 10.2, 0.8, 9.4, 0, interrupted=True)
    assert line.endswith("stopped: the 9 rows received are kept")
    agg = summary_line(0, 2.0, 1.0, 1.0, 0, notes=["histogram of 50 events"], rows_word=False)
    assert agg.startswith("histogram of 50 events in 2.0 s")


def test_progress_line_names_each_pass_once() -> None:
    lv, clock, display = make()
    lv.update(
        None,
        [*PASS_5, "Pass 5: run completed in 10usr/0sys/20187real ms."],
        rows_total=0,
        skipped=0,
        transport_failures=0,
        force=True,
    )
    assert display.shown[-1].progress_line().count("Pass 5") == 1
