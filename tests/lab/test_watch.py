"""Latency pairing, in-kernel aggregation and background runs on the lab's real kernel.

Other engineers' workloads may connect at the same time in the shared guest, so counts that
must be exact are taken with --cmd-only (only the -c command's process, in the kernel) or
from the workload's own rows.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from labutil import LAB, loaded, module_hash, wait_for, workload_pid  # noqa: E402

from stapmagic import pipeline, runner  # noqa: E402


def end_workload(run: pipeline.ProbeRun) -> None:
    """Kill the run's -c workload if it outlived the run: after SIGINT, stap --remote leaves
    it running in the guest, re-parented to init (seen on the lab; a runner issue)."""
    for msg in run.messages:
        m = re.search(r"workload pid=(\d+)", msg)
        if m:
            runner.run_on_target(LAB, ["kill", m.group(1)], ok_codes=(0, 1))


def sigint_once(ready, delay: float = 0.0) -> threading.Event:
    """Press Jupyter's stop button (SIGINT to this process) `delay` s after `ready()` holds."""
    fired = threading.Event()

    def press() -> None:
        try:
            wait_for(ready, what="the run to be ready for SIGINT")
            time.sleep(delay)
        finally:
            fired.set()
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press, daemon=True).start()
    return fired


def test_a_latency_pairs_each_call(cell):
    df, err, run = cell('%%kprobe -q --latency -c "python3 connect_a_few.py 5" tcp_v4_connect')
    assert err is None, err
    mine = df[df["pid"] == workload_pid(run)]
    assert len(mine) == 5
    assert set(df["probe"]) == {"tcp_v4_connect.call+return"}
    assert df["latency_ns"].dtype == "int64"
    assert ((mine["latency_ns"] > 0) & (mine["latency_ns"] < 10_000_000_000)).all()
    assert list(mine["retval"]) == [0] * 5
    assert mine["errno"].isna().all()
    # one row per completed call, stamped at the return: in call order
    assert mine["time"].is_monotonic_increasing
    # the end probe's counter arrived (and no return went unpaired)
    assert [(t.name, t.key, t.value) for t in run.parser.tag_counts] == [("unpaired", "0", 0)]
    assert run.unpaired == 0


def test_b_hist_latency_counts_every_call(cell):
    df, err, run = cell(
        '%%kprobe -q --hist latency --cmd-only -c "python3 connect_a_few.py 5" tcp_v4_connect'
    )
    assert err is None, err
    assert run.df.empty  # no per-event lines
    assert list(df.columns) == ["probe", "value", "low", "high", "count"]
    assert int(df["count"].sum()) == 5
    assert df.attrs["count"] == 5 and df.attrs["kind"] == "log"
    (summary,) = run.summaries
    assert summary.name == "tcp_v4_connect.call+return" and summary.count == 5
    assert 0 < summary.min <= summary.avg <= summary.max < 10_000_000_000
    assert summary.sum == pytest.approx(5 * summary.avg, abs=5)
    # every sample lies in a bucket with a count, and the buckets are log2 ones
    occupied = df[df["count"] > 0]
    assert int(occupied["low"].min()) <= summary.min < int(occupied["high"].min())
    assert int(occupied["low"].max()) <= summary.max < int(occupied["high"].max())
    assert (df["high"] == 2 * df["low"]).all()
    ax = df.kprobe.latency_hist()
    assert "5 events" in ax.get_title()
    assert sum(p.get_height() for p in ax.patches) == 5


def test_c_hist_retval_negative_buckets(cell):
    df, err, run = cell(
        '%%kprobe -q --hist retval --cmd-only -c "python3 connect_fail.py" '
        "tcp_v4_connect.return:int"
    )
    assert err is None, err

    def count_of(value: int) -> int:
        hit = df[(df["low"] <= value) & (value < df["high"])]
        assert len(hit) == 1, (value, df)
        return int(hit["count"].iloc[0])

    assert count_of(-97) == 1  # EAFNOSUPPORT: bucket -64 holds -127..-64
    assert count_of(-22) == 1  # EINVAL: bucket -16 holds -31..-16
    assert count_of(0) == 2
    assert int(df["count"].sum()) == 4
    assert df.attrs["min"] == -97 and df.attrs["max"] == 0 and df.attrs["sum"] == -119


def test_d_count_by_comm(cell):
    df, err, run = cell(
        '%%kprobe -q --count-by comm --cmd-only -c "python3 connect_a_few.py 4" tcp_v4_connect'
    )
    assert err is None, err
    assert list(df.columns) == ["probe", "key", "count"]
    assert df.to_dict("records") == [{"probe": "tcp_v4_connect", "key": "python3", "count": 4}]
    assert run.count_overflow == 0
    assert "4 events counted by comm (1 key)" in run.summary()


def test_d_count_by_pid_everywhere(cell):
    """Without a filter: every process that connected, the workload with its 3 connects."""
    df, err, run = cell('%%kprobe -q --count-by pid -c "python3 connect_a_few.py 3" tcp_v4_connect')
    assert err is None, err
    assert df["key"].dtype == "int64"
    assert int(df.loc[df["key"] == workload_pid(run), "count"].sum()) == 3
    assert df["count"].is_monotonic_decreasing


def test_e_background_run_grows_and_stop_keeps_rows(cell, ip):
    value, err, _ = cell('%%kprobe --bg -o r -c "python3 connect_a_few.py 100000" tcp_v4_connect')
    assert err is None, err
    r = ip.user_ns["r"]
    assert value is r and ip.user_ns["_kprobe"] is r
    try:
        wait_for(lambda: len(r.df) >= 3 or not r.running, what="3 rows")
        assert r.running, r.summary()
        first = len(r.df)
        wait_for(lambda: len(r.df) > first, timeout=60, what="the frame to grow")
        module = module_hash(r)
        assert loaded(module)
        table = ip.run_line_magic("kprobe", "--list-running")
        row = table[table["id"] == r.run_id]
        assert len(row) == 1 and row["probes"].iloc[0] == "tcp_v4_connect"
        assert row["target"].iloc[0] == "lab" and int(row["rows"].iloc[0]) >= 3
    finally:
        r.stop()
        end_workload(r)
    assert not r.running and r.interrupted
    rows = len(r.df)
    assert rows >= 3 and rows == r.parser.row_count
    assert not loaded(module)
    table = ip.run_line_magic("kprobe", "--list-running")
    assert r.run_id not in set(table["id"])


def test_e_stop_all_ends_every_background_run(cell, ip):
    _, err, _ = cell('%%kprobe -q --bg -o r1 -c "python3 connect_a_few.py 100000" tcp_v4_connect')
    assert err is None, err
    _, err, _ = cell("%%kprobe -q --bg -o r2 tcp_v4_connect")
    assert err is None, err
    r1, r2 = ip.user_ns["r1"], ip.user_ns["r2"]
    try:
        # r2 probes every process: r1's workload gives it rows once it runs
        wait_for(
            lambda: (len(r1.df) >= 1 and len(r2.df) >= 1) or not (r1.running and r2.running),
            what="rows in both runs",
        )
        assert r1.running and r2.running
    finally:
        ip.run_line_magic("kprobe", "--stop-all")
        end_workload(r1)
    assert not r1.running and not r2.running
    assert r1.interrupted and r2.interrupted
    assert len(r1.df) >= 1 and len(r2.df) >= 1


def test_f_hist_survives_sigint(cell, live_run):
    """probe end runs on interrupt: the histogram of what was seen still comes back."""

    def started() -> bool:
        run = live_run.get("run")
        return run is not None and any("workload pid=" in m for m in run.messages)

    fired = sigint_once(started, delay=3.0)
    df, err, run = cell(
        '%%kprobe -q --hist latency --cmd-only -c "python3 connect_a_few.py 100000" tcp_v4_connect'
    )
    end_workload(run)
    assert fired.is_set()
    assert err is None, err
    assert run.interrupted
    (summary,) = run.summaries
    assert summary.count > 0
    assert int(df["count"].sum()) == summary.count == df.attrs["count"]


def test_h_linear_histograms_one_per_probe_and_empty_one(cell):
    """--hist ARG with linear buckets, two probes; the unused one reports count 0."""
    df, err, run = cell(
        "%%kprobe -q --hist len --hist-linear 0,64,8 --cmd-only "
        '-c "python3 connect_a_few.py 3" tcp_v4_connect _ _ len:uint\n'
        "tcp_v6_connect _ _ len:uint\n"
    )
    assert err is None, err
    assert set(df["probe"]) == {"tcp_v4_connect"}
    assert df.attrs["kind"] == "linear"
    hit = df[df["count"] > 0]
    assert hit[["low", "high", "count"]].astype(int).values.tolist() == [[16, 24, 3]]
    stats = df.attrs["summaries"]
    assert stats["tcp_v4_connect"]["count"] == 3 and stats["tcp_v4_connect"]["min"] == 16
    assert stats["tcp_v6_connect"] == {
        "name": "tcp_v6_connect",
        "count": 0,
        "min": None,
        "max": None,
        "avg": None,
        "sum": None,
    }
