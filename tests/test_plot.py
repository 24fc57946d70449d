"""stapmagic.plot: log2 buckets, unit formatting and the df.kprobe plots (Agg backend)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from stapmagic import plot  # noqa: E402
from stapmagic.hist import parse_hist  # noqa: E402
from stapmagic.plot import format_ns, log2_buckets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
T0 = pd.Timestamp("2025-01-01 12:00:00")


@pytest.fixture(autouse=True)
def _close_figures() -> Any:
    yield
    plt.close("all")


def frame(n: int = 8, **columns: Any) -> pd.DataFrame:
    """A %%kprobe-shaped frame with the documented dtypes; `columns` override or add."""
    base: dict[str, Any] = {
        "time": pd.Series(
            T0 + pd.to_timedelta(np.arange(n) * 1_000_000, unit="ns"), dtype="datetime64[ns]"
        ),
        "probe": pd.Categorical(["tcp_v4_connect.return"] * n),
        "pid": np.full(n, 4242, dtype=np.int64),
        "tid": np.full(n, 4242, dtype=np.int64),
        "comm": pd.Categorical(["curl"] * n),
        "cpu": np.zeros(n, dtype=np.int64),
    }
    base.update(columns)
    return pd.DataFrame(base)


def heights(ax: Any) -> list[float]:
    return [p.get_height() for p in ax.patches]


def xlabels(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


# -- pure helpers ------------------------------------------------------------------------------


def test_log2_buckets_known_latencies() -> None:
    got = log2_buckets([100, 150, 3000, 70000])
    assert list(got.columns) == ["low", "high", "count"]
    assert all(got[c].dtype == np.int64 for c in got.columns)
    lows = [64 << i for i in range(11)]  # 64ns .. 64Ki ns, every bucket in between
    assert got["low"].tolist() == lows
    assert got["high"].tolist() == [2 * v for v in lows]
    counts = dict(zip(got["low"], got["count"], strict=True))
    assert counts == {
        64: 1,
        128: 1,
        256: 0,
        512: 0,
        1024: 0,
        2048: 1,
        4096: 0,
        8192: 0,
        16384: 0,
        32768: 0,
        65536: 1,
    }


def test_log2_buckets_edges_zero_negative_and_na() -> None:
    got = log2_buckets(pd.Series([0, 1, 2, 3, 4, -1, -3, None], dtype="Int64"))
    rows = list(got.itertuples(index=False, name=None))
    # -3 is in [-3, -1), -1 in [-1, 0): mirrors of [2, 4) and [1, 2).
    assert rows == [(-3, -1, 1), (-1, 0, 1), (0, 1, 1), (1, 2, 1), (2, 4, 2), (4, 8, 1)]


def test_log2_buckets_exact_at_float_rounding_boundaries() -> None:
    got = log2_buckets([2**53 - 1, 2**53, 2**62 - 1, 2**63 - 1])
    nonzero = got[got["count"] > 0]
    assert nonzero["low"].tolist() == [2**52, 2**53, 2**61, 2**62]
    assert got["high"].iloc[-1] == 2**63 - 1  # clipped to int64


def test_log2_buckets_unsigned_and_empty() -> None:
    got = log2_buckets(np.array([5, 2**64 - 1], dtype=np.uint64))
    assert got["low"].dtype == np.uint64
    assert got["low"].iloc[-1] == 2**63
    empty = log2_buckets([])
    assert list(empty.columns) == ["low", "high", "count"] and empty.empty


@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=50))
def test_log2_buckets_every_value_in_its_bucket(values: list[int]) -> None:
    got = log2_buckets(np.array(values, dtype=np.int64))
    assert int(got["count"].sum()) == len(values)
    lows, highs = got["low"].tolist(), got["high"].tolist()
    assert highs[:-1] == lows[1:]  # contiguous
    for v in values:
        i = np.searchsorted(lows, v, side="right") - 1
        assert lows[i] <= v and (v < highs[i] or highs[i] == 2**63 - 1)


@pytest.mark.parametrize(
    ("ns", "digits", "text"),
    [
        (0, 3, "0ns"),
        (512, 3, "512ns"),
        (999.7, 3, "1us"),
        (16384, 3, "16.4us"),
        (16384, 2, "16us"),
        (1_048_576, 3, "1.05ms"),
        (3e9, 3, "3s"),
        (-2048, 3, "-2.05us"),
        (0.5, 3, "0.5ns"),
    ],
)
def test_format_ns(ns: float, digits: int, text: str) -> None:
    assert format_ns(ns, digits) == text


def test_importing_plot_does_not_import_matplotlib() -> None:
    code = "import sys, stapmagic.plot; sys.exit('matplotlib' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)  # noqa: S603


# -- latency_hist ------------------------------------------------------------------------------


def latency_frame() -> pd.DataFrame:
    return frame(4, latency_ns=np.array([100, 150, 3000, 70000], dtype=np.int64))


def test_latency_hist_draws_the_log2_buckets_on_the_given_axes() -> None:
    _, ax = plt.subplots()
    got = plot.latency_hist(latency_frame(), ax=ax)
    assert got is ax
    assert heights(ax) == [1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    labels = xlabels(ax)
    # Ticks are bucket edges: 64ns .. 131us (64Ki ns * 2), in readable units.
    assert labels[0] == "64ns" and labels[1] == "128ns" and labels[-1] == "131us"
    assert "ns" in ax.get_xlabel() and "count" in ax.get_ylabel()
    assert "median" in ax.get_title() and "70us" in ax.get_title()


def test_in_kernel_histogram_frame_plots_the_same_buckets() -> None:
    raw = plot.latency_hist(latency_frame())
    kernel = log2_buckets([100, 150, 3000, 70000])  # what hist.py hands over: low/high/count
    ax = latency_frame().pipe(lambda _: plot.latency_hist(kernel))
    assert heights(ax) == heights(raw)
    assert xlabels(ax) == xlabels(raw)
    assert ax.get_xlabel() == raw.get_xlabel()


# Verbatim stdout of shared/reference/stap-5.1-linux-6.12/r_h2 (after its two text lines):
# print(@hist_log(tcp_v4_connect latency in ns)).
R_H2 = """\
  value |-------------------------------------------------- count
  32768 |                                                   0
  65536 |                                                   0
 131072 |@                                                  1
 262144 |@                                                  1
 524288 |                                                   0
1048576 |@                                                  1
2097152 |                                                   0
4194304 |                                                   0
"""


def test_real_stap_log_histogram_plots_like_raw_latencies() -> None:
    kernel = plot.latency_hist(parse_hist(R_H2))
    assert heights(kernel) == [0, 0, 1, 1, 0, 1, 0, 0]
    assert xlabels(kernel) == [
        "33us",
        "66us",
        "131us",
        "262us",
        "524us",
        "1ms",
        "2.1ms",
        "4.2ms",
        "8.4ms",
    ]
    assert kernel.get_xlabel() == "latency, log2 buckets (ns/us/ms/s)"
    # The same three connects as raw rows: the same buckets, without stap's zero margins.
    raw = plot.latency_hist(frame(3, latency_ns=np.array([200_000, 300_000, 1_500_000])))
    assert heights(raw) == [1, 1, 0, 1]
    assert xlabels(raw) == xlabels(kernel)[2:7]
    assert raw.get_xlabel() == kernel.get_xlabel()


def test_linear_histogram_with_open_buckets_labels_bars_as_stap_does() -> None:
    text = """\
value |-------------------------------------------------- count
 <100 |@@@@                                               4
  100 |@@                                                 2
  200 |                                                   0
      ~
  600 |@                                                  1
  700 |                                                   0
 >700 |@@@                                                3
"""
    ax = plot.latency_hist(parse_hist(text, "linear:100:700:100"), ns=False)
    assert heights(ax) == [4, 2, 0, 0, 0, 0, 1, 0, 3]
    assert xlabels(ax) == ["<100", "100", "200", "300", "400", "500", "600", "700", "≥800"]
    assert ax.get_xlabel() == "value, linear buckets"


def test_in_kernel_histogram_with_gaps_and_unsorted_rows() -> None:
    kernel = pd.DataFrame({"low": [1024, 8], "high": [2048, 16], "count": [3, 5]})
    ax = plot.latency_hist(kernel)
    assert heights(ax) == [5, 3]
    assert xlabels(ax) == ["8ns", "1us"]


def test_latency_hist_by_probe_groups_bars() -> None:
    df = frame(
        4,
        probe=pd.Categorical(["a", "a", "b", "b"]),
        latency_ns=np.array([100, 150, 3000, 3001], dtype=np.int64),
    )
    ax = df.kprobe.latency_hist(by="probe")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["a (2)", "b (2)"]
    # Both groups on the shared, gap-free axis 64ns .. 4.1us (6 buckets each).
    assert heights(ax) == [1, 1, 0, 0, 0, 0] + [0, 0, 0, 0, 0, 2]
    assert xlabels(ax)[0] == "64ns" and xlabels(ax)[-1] == "4.1us"


def test_latency_hist_of_a_non_ns_column_uses_plain_numbers() -> None:
    ax = plot.latency_hist(frame(3, len=np.array([1, 2, 70_000], dtype=np.uint64)), column="len")
    assert xlabels(ax)[:3] == ["1", "2", "4"]
    assert xlabels(ax)[-2:] == ["64Ki", "128Ki"]
    assert "ns" not in ax.get_xlabel()


# -- the other plots ---------------------------------------------------------------------------


def test_retval_hist_labels_errno_names_sorted_by_value() -> None:
    df = frame(
        5,
        retval=np.array([0, -97, -111, -97, 0], dtype=np.int64),
        errno=pd.Series([None, "EAFNOSUPPORT", "ECONNREFUSED", "EAFNOSUPPORT", None], dtype="str"),
    )
    ax = df.kprobe.retval_hist()
    assert xlabels(ax) == ["-111 ECONNREFUSED", "-97 EAFNOSUPPORT", "0"]
    assert heights(ax) == [1, 2, 2]
    assert "tcp_v4_connect.return" in ax.get_title()


def test_retval_hist_skips_rows_without_retval() -> None:
    df = frame(3, retval=pd.array([None, 3, 3], dtype="Int64"))
    ax = plot.retval_hist(df)
    assert xlabels(ax) == ["3"] and heights(ax) == [2]


def test_timeline_one_marker_per_event_with_time_units() -> None:
    n = 6
    df = frame(
        n,
        probe=pd.Categorical(["open", "close"] * 3),
        time=pd.Series(T0 + pd.to_timedelta(np.arange(n) * 50, unit="ms"), dtype="datetime64[ns]"),
    )
    _, ax = plt.subplots()
    assert plot.timeline(df, ax=ax) is ax
    (line,) = ax.get_lines()
    assert np.asarray(line.get_xdata()).tolist() == [0, 50, 100, 150, 200, 250]
    assert ax.get_xlabel() == "time since first event (ms)"
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == ["close", "open"]


def test_timeline_numeric_column() -> None:
    df = frame(
        3,
        len=np.array([5, 6, 7], dtype=np.uint64),
        latency_ns=np.array([5000, 6000, 7000], dtype=np.int64),
    )
    ax = df.kprobe.timeline(y="len")
    assert list(ax.get_lines()[0].get_ydata()) == [5, 6, 7]
    assert ax.get_ylabel() == "len"
    ax = df.kprobe.timeline(y="latency_ns")
    assert list(ax.get_lines()[0].get_ydata()) == [5, 6, 7]
    assert ax.get_ylabel() == "latency (us)"


def test_rate_counts_events_per_second_in_bins() -> None:
    offsets_ms = [0, 10, 20, 150, 160, 390]  # 3 events in [0, 100ms), 2 in [100, 200), 1 later
    df = frame(
        6, time=pd.Series(T0 + pd.to_timedelta(offsets_ms, unit="ms"), dtype="datetime64[ns]")
    )
    ax = df.kprobe.rate(freq="100ms")
    stairs = ax.patches[-1]
    assert list(stairs.get_data().values) == [30.0, 20.0, 0.0, 10.0]
    assert ax.get_ylabel() == "events/s"
    assert ax.get_xlabel() == "time since first event (ms)"
    assert "100ms" in ax.get_title()


def test_rate_default_bin_width_from_span() -> None:
    df = frame(
        1000,
        time=pd.Series(
            T0 + pd.to_timedelta(np.arange(1000) * 10, unit="ms"), dtype="datetime64[ns]"
        ),
    )  # 10 s span
    ax = plot.rate(df)
    assert "100ms" in ax.get_title()  # <= 100 bins of a 1-2-5 width
    assert ax.get_xlabel() == "time since first event (s)"


def test_by_top_values_largest_first() -> None:
    df = frame(
        6, comm=pd.Categorical(["a", "b", "b", "c", "c", "c"], categories=["a", "b", "c", "z"])
    )
    ax = df.kprobe.by("comm", top=2)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["c", "b"]
    assert [p.get_width() for p in ax.patches] == [3, 2]
    assert "top 2 of 3" in ax.get_title()
    assert ax.get_xlabel() == "events (count)"


def test_by_shows_pointer_columns_in_hex() -> None:
    df = frame(2, sk=np.array([0xFFFF888003A1B2C0] * 2, dtype=np.uint64))
    schema = SimpleNamespace(columns=(SimpleNamespace(name="sk", kind="hex"),))
    df.attrs["kprobe_run"] = SimpleNamespace(script=SimpleNamespace(probes=(schema,)))
    ax = df.kprobe.by("sk")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0xffff888003a1b2c0"]


# -- errors and the accessor -------------------------------------------------------------------


EMPTY = frame(0, latency_ns=np.empty(0, dtype=np.int64), retval=np.empty(0, dtype=np.int64))


@pytest.mark.parametrize(
    "call",
    [
        lambda df: df.kprobe.latency_hist(),
        lambda df: df.kprobe.retval_hist(),
        lambda df: df.kprobe.timeline(),
        lambda df: df.kprobe.rate(),
        lambda df: df.kprobe.by("comm"),
    ],
)
def test_empty_frames_are_an_error_not_an_empty_plot(call: Any) -> None:
    with pytest.raises(ValueError, match="no rows to plot"):
        call(EMPTY)


def test_all_na_column_and_zero_histogram_are_errors() -> None:
    with pytest.raises(ValueError, match="no rows to plot"):
        plot.latency_hist(frame(2, latency_ns=pd.array([None, None], dtype="Int64")))
    with pytest.raises(ValueError, match="no rows to plot"):
        plot.latency_hist(pd.DataFrame({"low": [0], "high": [1], "count": [0]}))


def test_missing_column_names_the_columns() -> None:
    with pytest.raises(ValueError, match="no column 'latency_ns'.*pid"):
        plot.latency_hist(frame(2))


def test_accessor_run() -> None:
    df = frame(1)
    assert df.kprobe.run is None
    run = object()
    df.attrs["kprobe_run"] = run
    assert df.kprobe.run is run


def test_saved_figure_is_a_real_picture(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    df = frame(
        5000,
        latency_ns=rng.lognormal(9, 1.5, 5000).astype(np.int64),
        comm=pd.Categorical(rng.choice(["curl", "sshd", "python3"], 5000, p=[0.6, 0.3, 0.1])),
    )
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), layout="constrained")
    assert df.kprobe.latency_hist(ax=axes[0, 0]) is axes[0, 0]
    df.kprobe.rate(ax=axes[0, 1])
    df.kprobe.timeline(ax=axes[1, 0], y="latency_ns")
    df.kprobe.by("comm", ax=axes[1, 1])
    out = tmp_path / "plots.png"
    fig.savefig(out, dpi=80)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000


def test_plots_of_a_real_record_parser_frame() -> None:
    from stapmagic.records import RecordParser
    from stapmagic.schema import Column, ProbeSchema

    entry = ProbeSchema("tcp_v4_connect", (Column("sk", "hex"), Column("len", "uint")), False)
    ret = ProbeSchema(
        "tcp_v4_connect.return",
        (Column("retval", "int"), Column("errno", "errno"), Column("latency_ns", "int")),
        False,
    )
    parser = RecordParser([entry, ret])
    t = 1_700_000_000_000_000_000
    lines = []
    for i, (rv, name, lat) in enumerate(
        [(0, "", 3000), (-111, "ECONNREFUSED", 70000), (-111, "ECONNREFUSED", 150)]
    ):
        lines.append(f"@@sm1\t0\t{t + 2000 * i}\t7\t7\t1\tcurl\tffff888003a1b2c0\t16\t@@")
        lines.append(f"@@sm1\t1\t{t + 2000 * i + lat}\t7\t7\t1\tcurl\t{rv}\t{name}\t{lat}\t@@")
    parser.feed(("\n".join(lines) + "\n").encode())
    parser.close()
    df = parser.frame()
    df.attrs["kprobe_run"] = SimpleNamespace(script=SimpleNamespace(probes=(entry, ret)))
    assert heights(df.kprobe.retval_hist()) == [2, 1]
    assert xlabels(df.kprobe.retval_hist()) == ["-111 ECONNREFUSED", "0"]
    assert sum(heights(df.kprobe.latency_hist())) == 3
    assert [t.get_text() for t in df.kprobe.by("sk").get_yticklabels()] == ["0xffff888003a1b2c0"]
    assert len(df.kprobe.timeline().get_lines()[0].get_xdata()) == 6
    assert df.kprobe.rate().get_ylabel() == "events/s"


@pytest.mark.parametrize(
    "call",
    ["timeline()", "rate()", "by('comm')", "retval_hist()", "latency_hist()"],
)
def test_a_plot_as_the_cells_last_line_echoes_no_axes_repr(ip, capsys, call: str) -> None:
    # Like `df.plot()` users adding `;`: the figure is the output, `<Axes: ...>` under it is
    # noise. The value is still the Axes (`ax = df.kprobe.timeline()` keeps working).
    ip.user_ns["df"] = frame(
        retval=np.arange(8, dtype=np.int64), latency_ns=np.arange(1, 9, dtype=np.int64) * 1000
    )
    capsys.readouterr()
    result = ip.run_cell(f"df.kprobe.{call}")
    assert result.error_in_exec is None, result.error_in_exec
    assert isinstance(result.result, matplotlib.axes.Axes)
    assert "<Axes" not in capsys.readouterr().out
    # what ipykernel sends as the cell's execute_result: nothing, so no Out[] under the figure
    assert ip.display_formatter.format(result.result) == ({}, {})
    ip.run_cell("import matplotlib.pyplot as _plt; _fig, _ax = _plt.subplots()")
    capsys.readouterr()
    ip.run_cell("_ax")  # an Axes the user made keeps matplotlib's repr
    assert "<Axes" in capsys.readouterr().out
