"""--hist / --count-by / --latency results and background runs, without a kernel.

The streams fed here are the tag lines script.py's end probes print around SystemTap's own
histogram text: the histogram bodies below are verbatim stap 5.1 output (the lab's r_h2
capture in shared/reference, and a `--hist len --hist-linear 0,64,8` run on the lab).
What these produce on a real kernel is tested in tests/lab/test_watch.py.
"""

from __future__ import annotations

import sys
import time

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from stapmagic import pipeline, plot, records  # noqa: E402, F401  (plot: df.kprobe)

# stap 5.1, print(@hist_log(x)) of three tcp_v4_connect latencies (ns).
LOG_HIST = (
    "  value |-------------------------------------------------- count\n"
    "  32768 |                                                   0\n"
    "  65536 |                                                   0\n"
    " 131072 |@                                                  1\n"
    " 262144 |@                                                  1\n"
    " 524288 |                                                   0\n"
    "1048576 |@                                                  1\n"
    "2097152 |                                                   0\n"
    "4194304 |                                                   0\n"
    "\n"
)
# stap 5.1, print(@hist_linear(x, 0, 64, 8)) of three `len` arguments of 16.
LINEAR_HIST = (
    "value |-------------------------------------------------- count\n"
    "    0 |                                                   0\n"
    "    8 |                                                   0\n"
    "   16 |@@@                                                3\n"
    "   24 |                                                   0\n"
    "   32 |                                                   0\n"
    "\n"
)


def prepared(first_line: str, body: str = "", **kw) -> pipeline.ProbeRun:
    """A run as the magic prepares it (dry_run: no stap, no target needed)."""
    return pipeline.prepare(first_line, body, pipeline.ProbeOptions(dry_run=True, **kw))


def feed(run: pipeline.ProbeRun, text: str, chunk: int = 7) -> None:
    """Feed `text` as the pty delivers it (\\r\\n, arbitrary chunks), batches to the run."""
    data = text.replace("\n", "\r\n").encode()
    for i in range(0, len(data), chunk):
        run.parser.feed(data[i : i + chunk])
    run.note_batch(run.parser.close())


def hist_stream(name: str) -> str:
    return (
        "workload pid=1249\n"
        f"@@smh\t{name}\tlog\n{LOG_HIST}@@smh-end\n"
        f"@@sms\t{name}\t3\t147336\t1048577\t498851\t1496553\t@@\n"
        "@@smc\tunpaired\t0\t2\t@@\n"
    )


def test_hist_latency_stream_end_to_end():
    run = prepared("tcp_v4_connect", hist="latency")
    assert run.script.aggregate.mode == "hist"
    feed(run, hist_stream("tcp_v4_connect.call+return"))
    df = run.result()
    assert list(df.columns) == ["probe", "value", "low", "high", "count"]
    assert set(df["probe"]) == {"tcp_v4_connect.call+return"}
    assert list(df["count"]) == [0, 0, 1, 1, 0, 1, 0, 0]
    assert list(df["low"]) == [32768 << k for k in range(8)]
    assert (df["high"] == 2 * df["low"]).all()
    assert df.attrs["count"] == 3 and df.attrs["min"] == 147336 and df.attrs["sum"] == 1496553
    assert df.attrs["kind"] == "log" and df.attrs["of"] == "latency"
    assert df.kprobe.run is run
    assert run.summaries[0].max == 1048577 and len(run.histograms) == 1
    assert run.unpaired == 2
    assert run.messages == ["workload pid=1249"]  # tags are data, not messages
    assert run.df.empty
    text = run.summary()
    assert text.startswith("histogram of 3 events")
    assert "2 returns without a recorded entry were skipped" in text
    ax = df.kprobe.latency_hist()
    assert sum(p.get_height() for p in ax.patches) == 3
    assert "3 events" in ax.get_title()


def test_linear_histograms_one_per_probe_and_an_empty_one():
    run = prepared(
        "tcp_v4_connect _ _ len:uint",
        "tcp_v6_connect _ _ len:uint",
        hist="len",
        hist_linear=(0, 64, 8),
    )
    feed(
        run,
        "@@smh\ttcp_v4_connect\tlinear:0:64:8\n" + LINEAR_HIST + "@@smh-end\n"
        "@@sms\ttcp_v4_connect\t3\t16\t16\t16\t48\t@@\n"
        "@@sms\ttcp_v6_connect\t0\t\t\t\t\t@@\n",
        chunk=5,
    )
    df = run.hist
    assert df.attrs["kind"] == "linear"
    assert df[["low", "high", "count"]].astype(int).values.tolist() == [
        [0, 8, 0],
        [8, 16, 0],
        [16, 24, 3],
        [24, 32, 0],
        [32, 40, 0],
    ]
    stats = df.attrs["summaries"]
    assert stats["tcp_v6_connect"]["count"] == 0 and stats["tcp_v6_connect"]["min"] is None
    assert "count" not in df.attrs  # two probes: per probe only
    assert run.summary().startswith("histogram of 3 events")


def test_no_events_gives_an_empty_bucket_frame():
    run = prepared("tcp_v4_connect", hist="latency")
    feed(run, "@@sms\ttcp_v4_connect.call+return\t0\t\t\t\t\t@@\n@@smc\tunpaired\t0\t0\t@@\n")
    df = run.result()
    assert df.empty and list(df.columns) == ["probe", "value", "low", "high", "count"]
    assert df.attrs["count"] == 0 and df.attrs["min"] is None
    assert run.unpaired == 0 and "skipped" not in run.summary()


def test_count_by_comm_keys_are_unescaped_and_sorted():
    run = prepared("tcp_v4_connect", "tcp_v6_connect", count_by="comm")
    assert run.script.aggregate.key_kinds == ("str", "str")
    feed(
        run,
        "@@smk\ttcp_v4_connect\tpython3\t4\t@@\n"
        "@@smk\ttcp_v4_connect\tsh\\tx\\u00E9\t1\t@@\n"
        "@@smc\tcount_overflow\t0\t0\t@@\n"
        "@@smk\ttcp_v6_connect\tcurl\t7\t@@\n"
        "@@smc\tcount_overflow\t1\t5\t@@\n",
    )
    df = run.result()
    assert df.to_dict("records") == [
        {"probe": "tcp_v6_connect", "key": "curl", "count": 7},
        {"probe": "tcp_v4_connect", "key": "python3", "count": 4},
        {"probe": "tcp_v4_connect", "key": "sh\txé", "count": 1},
    ]
    assert df["count"].dtype == "int64" and isinstance(df["probe"].dtype, pd.CategoricalDtype)
    assert df.attrs["count_by"] == "comm"
    assert run.count_overflow == 5
    text = run.summary()
    assert "12 events counted by comm (3 keys)" in text
    assert "5 events with a key past the first 2048 were not counted" in text


@pytest.mark.parametrize(
    "spec,key,printed,expected,dtype",
    [
        ("tcp_v4_connect", "pid", ["1249", "7"], [1249, 7], "int64"),
        (
            "tcp_v4_connect sk:ptr",
            "sk",
            ["ff367c19c5286880", "10"],
            [0xFF367C19C5286880, 16],
            "uint64",
        ),
        ("tcp_v4_connect.return:int", "retval", ["-97", "0"], [-97, 0], "int64"),
    ],
)
def test_count_by_numeric_keys(spec, key, printed, expected, dtype):
    run = prepared(spec, count_by=key)
    label = run.script.probes[0].label
    feed(run, "".join(f"@@smk\t{label}\t{k}\t{9 - i}\t@@\n" for i, k in enumerate(printed)))
    df = run.counts
    assert df["key"].dtype == dtype
    assert list(df["key"]) == expected and list(df["count"]) == [9, 8]


def test_bad_tag_lines_are_damaged_not_messages():
    run = prepared("tcp_v4_connect", count_by="comm")
    feed(run, "@@smk\ttcp_v4_connect\tpython3\tmany\t@@\n@@smc\tunpaired\t0\t@@\nok\n")
    assert run.damaged == 2 and run.messages == ["ok"]
    assert run.counts.empty


def test_parse_tag_count():
    t = records.parse_tag_count(b"@@smc\tunpaired\t3\t1\t@@\r")
    assert t == records.TagCount("smc", "unpaired", "3", 1)
    assert records.parse_tag_count(b"@@smk\tf\t-5\t2\t@@", "int").key == "-5"
    for bad in (
        b"@@smc\tunpaired\t3\t1",
        b"@@smx\ta\tb\t1\t@@",
        b"@@smk\ta\tb\t1\t2\t@@",
        b"@@smc\tunpaired\t3\t-1\t@@",
        b"@@smk\ta\tb\t-3\t@@",
        b"@@smk\ta\tb\t9223372036854775808\t@@",
        b"@@smk\ta\tb\t+3\t@@",
        b"@@smk\ta\tb\t 3\t@@",
        b"@@smc\tunpaired\tx\t1\t@@",
        b"@@smk\ta\t\\777\t1\t@@",
        b"@@smk\ta\t\\x41\t1\t@@",
        b"@@smk\ta\tb\xff\t1\t@@",
    ):
        with pytest.raises(ValueError):
            records.parse_tag_count(bad)
    for kind, key in (
        ("int", b"9223372036854775808"),
        ("int", b"-9223372036854775809"),
        ("int", b"1x"),
        ("uint", b"18446744073709551616"),
        ("uint", b"-1"),
        ("hex", b"1ffffffffffffffff"),
        ("hex", b"0x10"),
        ("str", b"\\400"),
    ):
        with pytest.raises(ValueError):
            records.parse_tag_count(b"@@smk\tp\t" + key + b"\t1\t@@", kind)


@pytest.mark.parametrize(
    "kind,key",
    [
        ("int", "9223372036854775808"),
        ("uint", "18446744073709551616"),
        ("hex", "1" * 17),
        ("str", "\\777"),
        ("int", "12a"),
    ],
)
def test_malformed_count_keys_are_damaged_and_the_rest_kept(kind, key):
    """A key the script cannot have printed for its kind: that line is DAMAGED, the other
    counts stay, and nothing raises."""
    p = records.RecordParser([], key_kinds={"f": kind})
    good = {"int": "-7", "uint": "7", "hex": "ff", "str": "sh"}[kind]
    data = (
        f"@@smk\tf\t{good}\t3\t@@\n@@smk\tf\t{key}\t2\t@@\n"
        f"@@smk\tf\t{good}\t-3\t@@\n@@smk\tf\t{good}\tlots\t@@\n"
    ).encode()
    p.feed(data)
    p.close()
    assert [(t.key, t.value) for t in p.tag_counts] == [(good, 3)]
    assert p.damaged_count == 3


@pytest.mark.parametrize(
    "text",
    [
        "@@smh\tf\tlog\nvalue |---- count\n    1 |@ 99999999999999999999\n@@smh-end\n",
        "@@smh\tf\tlinear:0:x:1\nvalue |---- count\n    1 |@ 1\n@@smh-end\n",
        "@@smh\tf\nvalue |---- count\n    1 |@ 1\n@@smh-end\n",
    ],
)
def test_malformed_hist_block_is_damaged_not_a_traceback(text):
    run = prepared("tcp_v4_connect", hist="latency")
    feed(
        run,
        text + "@@sms\ttcp_v4_connect.call+return\t1\t5\t5\t5\t5\t@@\n"
        "@@sms\tg\t1\t1\t99999999999999999999\t1\t1\t@@\n",
    )
    assert run.histograms == [] and run.damaged == 3
    assert "value |---- count" in run.messages
    assert run.result().attrs["summaries"]["tcp_v4_connect.call+return"]["max"] == 5


def test_count_by_with_a_damaged_tag_line_keeps_its_result():
    run = prepared("tcp_v4_connect", count_by="comm")
    feed(
        run,
        "@@smk\ttcp_v4_connect\tpython3\t4\t@@\n"
        "@@smk\ttcp_v4_connect\tsh\\777\t1\t@@\n"
        "@@smk\ttcp_v4_connect\tcurl\t-3\t@@\n"
        "@@smk\ttcp_v4_connect\tcurl\t99999999999999999999\t@@\n",
    )
    assert run.counts.to_dict("records") == [
        {"probe": "tcp_v4_connect", "key": "python3", "count": 4}
    ]
    assert run.damaged == 3


def test_latency_option_reaches_the_script():
    run = prepared("tcp_v4_connect", latency=True)
    assert [p.label for p in run.script.probes] == ["tcp_v4_connect.call+return"]
    assert 'kprobe.function("tcp_v4_connect").return' in run.script_text
    run = prepared("tcp_v4_connect", command="true", command_only=True)
    assert "if (pid() != target()) next" in run.script_text


def test_cmd_only_needs_a_command():
    with pytest.raises(Exception, match="--cmd-only"):
        prepared("tcp_v4_connect", command_only=True)


# -- through the magic ----------------------------------------------------------------------


def run_cell(ip, text):
    result = ip.run_cell(text)
    return result.result, result.error_before_exec or result.error_in_exec


def fake_stap(tmp_path, monkeypatch, body: str) -> None:
    """A stand-in `stap` (process plumbing only): a Python script with this body."""
    fake = tmp_path / "stap"
    fake.write_text(f"#!{sys.executable}\nimport signal, sys, time\n{body}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")


def test_magic_returns_the_histogram(ip, tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    out.write_text(hist_stream("tcp_v4_connect.call+return"))
    fake_stap(tmp_path, monkeypatch, f"sys.stdout.write(open({str(out)!r}).read())")
    df, err = run_cell(ip, "%%kprobe -q --hist latency -o h tcp_v4_connect")
    assert err is None, err
    assert ip.user_ns["h"] is df and int(df["count"].sum()) == 3
    run = ip.user_ns["_kprobe"]
    assert df.kprobe.run is run and run.histograms and run.summaries[0].count == 3
    assert run.unpaired == 2


def test_magic_returns_the_counts(ip, tmp_path, monkeypatch):
    fake_stap(
        tmp_path,
        monkeypatch,
        r"print('@@smk\ttcp_v4_connect\tpython3\t4\t@@\n@@smk\ttcp_v4_connect\tsh\t1\t@@')",
    )
    df, err = run_cell(ip, "%%kprobe -q --count-by comm tcp_v4_connect")
    assert err is None, err
    assert list(df["key"]) == ["python3", "sh"] and list(df["count"]) == [4, 1]


def test_count_by_int_key_out_of_range_is_damaged_not_a_traceback(ip, tmp_path, monkeypatch):
    """prepare() gives the parser the key kinds: an int key past int64 is one DAMAGED line,
    the other counts stay (it used to reach ProbeRun.counts and raise OverflowError)."""
    fake_stap(
        tmp_path,
        monkeypatch,
        r"print('@@smk\ttcp_v4_connect\t1249\t4\t@@\n"
        r"@@smk\ttcp_v4_connect\t9223372036854775808\t2\t@@')",
    )
    df, err = run_cell(ip, "%%kprobe -q --count-by pid tcp_v4_connect")
    assert err is None, err
    assert list(df["key"]) == [1249] and list(df["count"]) == [4]
    assert df["key"].dtype == "int64"
    assert ip.user_ns["_kprobe"].damaged == 1


def test_prepare_gives_the_parser_the_count_key_kinds():
    run = prepared("tcp_v4_connect.return:int", "tcp_v6_connect.return:ulong", count_by="retval")
    assert run.parser.key_kinds == {"tcp_v4_connect.return": "int", "tcp_v6_connect.return": "uint"}
    run = prepared("tcp_v4_connect sk:ptr", count_by="sk")
    assert run.parser.key_kinds == {"tcp_v4_connect": "hex"}
    assert prepared("tcp_v4_connect").parser.key_kinds == {}


@pytest.mark.parametrize(
    "line,needle",
    [
        ("%kprobe --hist-linear 1,2 --hist latency tcp_v4_connect", "hist-linear"),
        ("%kprobe --cmd-only tcp_v4_connect", "--cmd-only"),
        ("%kprobe --hist retval tcp_v4_connect", "entry probe"),
        ("%kprobe --list-running tcp_v4_connect", "take no spec"),
    ],
)
def test_magic_option_errors(ip, line, needle, capsys):
    _, err = run_cell(ip, line)
    assert err is not None
    assert needle in str(err) or needle in capsys.readouterr().err


BG_STAP = r"""
import json
stop = []
signal.signal(signal.SIGINT, lambda s, f: stop.append(1))
print("Pass 5: starting run.", flush=True)
i = 0
while not stop and i < 3000:
    i += 1
    print(f"@@sm1\t0\t{1700000000000000000 + i}\t42\t42\t0\tpython3\t@@", flush=True)
    time.sleep(0.01)
print("@@smc\tunpaired\t0\t0\t@@", flush=True)
"""


def test_background_runs_list_and_stop_all(ip, tmp_path, monkeypatch):
    """Process plumbing only: two background runs, listed, then all stopped (SIGINT)."""
    fake_stap(tmp_path, monkeypatch, BG_STAP)
    r1, err = run_cell(ip, "%%kprobe -q --bg -o a tcp_v4_connect")
    assert err is None, err
    r2, err = run_cell(ip, "%%kprobe -q --bg tcp_v4_connect")
    assert err is None, err
    assert ip.user_ns["a"] is r1 and ip.user_ns["_kprobe"] is r2
    try:
        deadline = time.monotonic() + 20
        while (len(r1.df) < 3 or len(r2.df) < 3) and time.monotonic() < deadline:
            time.sleep(0.05)
        grown = len(r1.df)
        assert grown >= 3
        table = ip.run_line_magic("kprobe", "--list-running")
        assert list(table.columns) == ["id", "probes", "target", "elapsed_s", "rows"]
        assert set(table["id"]) >= {r1.run_id, r2.run_id}
        assert set(table.loc[table["id"] == r1.run_id, "probes"]) == {"tcp_v4_connect"}
        assert "running" in repr(r1) and "tcp_v4_connect" in repr(r1)
    finally:
        ip.run_line_magic("kprobe", "--stop-all")
    for r in (r1, r2):
        assert not r.running and r.interrupted
        assert len(r.df) == r.parser.row_count >= 3
        assert r.unpaired == 0 and any("unpaired" == t.name for t in r.parser.tag_counts)
    assert len(r1.df) >= grown
    assert ip.run_line_magic("kprobe", "--list-running").empty


def test_atexit_stops_runs(ip, monkeypatch):
    import stapmagic.magic as magic

    registered: list = []
    monkeypatch.setattr(magic.atexit, "register", registered.append)
    monkeypatch.setattr(
        magic.atexit, "unregister", lambda f: registered.remove(f) if f in registered else None
    )
    ip.run_line_magic("unload_ext", "stapmagic")
    ip.run_line_magic("load_ext", "stapmagic")
    magics = ip.magics_manager.registry["KprobeMagics"]
    assert registered == [magics.stop_all]
    ip.run_line_magic("unload_ext", "stapmagic")
    assert registered == []
    ip.run_line_magic("load_ext", "stapmagic")  # for the fixture's own unload
