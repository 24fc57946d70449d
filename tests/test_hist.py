"""hist.py against SystemTap's own histogram output: its testsuite's expected outputs
(tests/fixtures/hist/, copied from testsuite/systemtap.maps/*.exp) and real runs
(tests/fixtures/reference/stap-5.1-linux-6.12/r_h*.stdout)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from stapmagic.hist import (
    Summary,
    hist_kind,
    parse_hist,
    parse_hist_block,
    parse_summary,
    split_hists,
)

FIX = Path(__file__).parent / "fixtures" / "hist"
R51 = "stap-5.1-linux-6.12"  # real captures: the `reference` fixture (tests/conftest.py)
INT64_MAX = (1 << 63) - 1


def fixture(name: str) -> str:
    return (FIX / name).read_text()


def bucket_of(df: pd.DataFrame, v: int) -> int:
    """Index of the row whose [low, high) holds v (NA bounds are unbounded)."""
    hits = [
        i
        for i, (lo, hi) in enumerate(zip(df["low"], df["high"], strict=True))
        if (pd.isna(lo) or lo <= v) and (pd.isna(hi) or v < hi)
    ]
    assert len(hits) == 1, (v, hits)
    return hits[0]


def counts_from(df: pd.DataFrame, values: list[int]) -> list[int]:
    out = [0] * len(df)
    for v in values:
        out[bucket_of(df, v)] += 1
    return out


def assert_contiguous(df: pd.DataFrame) -> None:
    for i in range(len(df) - 1):
        hi, lo = df["high"].iloc[i], df["low"].iloc[i + 1]
        if pd.notna(hi) and pd.notna(lo):
            assert hi == lo, (i, df)


# ---- SystemTap's testsuite --------------------------------------------------------------


def test_log_edge() -> None:
    """log_edge.stp: foo <<< -1, 1; then 0; then 0x7fffffffffffffff; then 1, 2, 3, 4."""
    hists = split_hists(fixture("log_edge.txt"))
    assert len(hists) == 4
    data = [[-1, 1], [0], [0x7FFFFFFFFFFFFFFF], [1, 2, 3, 4]]
    for text, values in zip(hists, data, strict=True):
        df = parse_hist(text)
        assert df.attrs["kind"] == "log"
        assert list(df["count"]) == counts_from(df, values)
        assert_contiguous(df)
    first = parse_hist(hists[0])
    assert list(first["value"]) == [-4, -2, -1, 0, 1, 2, 4]
    # a negative bucket v holds [2v+1, v]: -4 holds -7..-4
    assert list(first["low"]) == [-7, -3, -1, 0, 1, 2, 4]
    assert list(first["high"]) == [-3, -1, 0, 1, 2, 4, 8]
    top = parse_hist(hists[2])
    assert list(top["value"]) == [1 << 60, 1 << 61, 1 << 62]
    assert pd.isna(top["high"].iloc[-1])  # 2**63 is not an int64
    assert top["count"].tolist() == [0, 0, 1]
    assert top["low"].dtype == "Int64" and top["count"].dtype == "int64"


def test_linear_overunder() -> None:
    """linear_overunder.stp: key * m for key < 100, m in 1..12, 12, 13, 14, 15;
    @hist_linear(agg, 250, 1000, 50)."""
    text = fixture("linear_overunder.txt")
    values = [
        key * m
        for key in range(100)
        for m in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 12, 13, 14, 15)
    ]
    assert len(values) == 1600 and sum(values) == 653400  # count= and sum= lines
    df = parse_hist(text)
    assert df.attrs["kind"] == "linear"
    assert df["value"].iloc[0] == 250 and pd.isna(df["low"].iloc[0])  # <250
    assert df["high"].iloc[0] == 250
    # the overflow row is printed ">1000" but counts from 1050 on (1000 is a regular bucket)
    assert df["value"].iloc[-1] == 1000 and df["low"].iloc[-1] == 1050
    assert pd.isna(df["high"].iloc[-1])
    assert list(df["count"]) == counts_from(df, values)
    assert df["count"].sum() == 1600
    assert_contiguous(df)
    # with the kind spelled out (what an @@smh block's kind can say) the same
    same = parse_hist(text, "linear:250:1000:50")
    pd.testing.assert_frame_equal(df, same)


ELISION_LEVELS = ["none", "0", "1", "2", "3"]
# elision.stp: (data, kind) per printed histogram
ELISION_DATA: list[tuple[list[int], str]] = [
    ([444, 999], "linear:0:1500:50"),
    ([444, 500], "linear:0:1500:50"),
    ([0], "linear:0:1500:50"),
    ([50], "linear:0:1500:50"),
    ([1450], "linear:0:1500:50"),
    ([1500], "linear:0:1500:50"),
    ([-10], "linear:-100:100:10"),
    ([0], "linear:-100:100:10"),
    ([128], "log"),
    ([0], "log"),
    ([-2, -4096], "log"),
]


@pytest.mark.parametrize("level", ELISION_LEVELS)
def test_elision(level: str) -> None:
    hists = split_hists(fixture(f"elision_{level}.txt"))
    assert len(hists) == len(ELISION_DATA)
    full = split_hists(fixture("elision_none.txt"))
    for text, full_text, (values, kind) in zip(hists, full, ELISION_DATA, strict=True):
        df = parse_hist(text, kind)
        ref = parse_hist(full_text, kind)
        # every value falls in a bucket with the right count
        for v in set(values):
            assert df["count"].iloc[bucket_of(df, v)] == values.count(v)
        assert df["count"].sum() == len(values)
        assert_contiguous(df)
        # elided rows come back as zero buckets: every row matches the unelided output
        merged = df.merge(ref, on=["value", "low", "high"], how="left", suffixes=("", "_ref"))
        assert merged["count_ref"].notna().all(), (level, text)
        assert (merged["count"] == merged["count_ref"]).all()


def test_elision_guesses_kind() -> None:
    """Without the kind: log buckets are recognized, linear steps inferred."""
    hists = split_hists(fixture("elision_none.txt"))
    kinds = [parse_hist(h).attrs["kind"] for h in hists]
    assert kinds[:8] == ["linear"] * 8 and kinds[8] == "log" and kinds[10] == "log"
    df = parse_hist(hists[0])
    assert df["high"].iloc[0] - df["low"].iloc[0] == 50
    # only `~`-separated rows: the step is not known, so no upper bound is made up
    lone = parse_hist(split_hists(fixture("elision_0.txt"))[0])
    assert lone["value"].tolist() == [400, 950]
    assert lone["high"].isna().all()


# ---- real runs ------------------------------------------------------------------------


def test_real_hist_log_r_h(reference: Callable[[str], Path]) -> None:
    text = reference(f"{R51}/r_h.stdout").read_text()
    df = parse_hist(text)  # the lines before the header are skipped
    assert df.attrs["kind"] == "log"
    assert df["count"].sum() == 577  # "reads=577 min=1 max=262144"
    assert df["value"].iloc[0] == 0 and df["value"].iloc[-1] == 1048576
    assert df.loc[df["value"] == 1, "count"].item() == 321
    assert df.loc[df["value"] == 4096, "count"].item() == 205
    assert df.loc[df["count"] > 0, "low"].min() == 1  # min=1
    assert df.loc[df["count"] > 0, "high"].max() > 262144  # max=262144
    assert_contiguous(df)


def test_real_hist_latency_r_h2(reference: Callable[[str], Path]) -> None:
    df = parse_hist(reference(f"{R51}/r_h2.stdout").read_text())
    assert df["count"].sum() == 3  # "count=3"
    assert df["value"].tolist() == [1 << k for k in range(15, 23)]
    assert df.loc[df["count"] > 0, "value"].tolist() == [131072, 262144, 1048576]


def test_block_and_errors() -> None:
    h = parse_hist_block(fixture("linear_overunder.txt"), "agg", "linear")
    assert h.name == "agg" and h.kind == "linear" and len(h.frame) == 18
    with pytest.raises(ValueError):
        parse_hist("no histogram here\n")
    with pytest.raises(ValueError):
        hist_kind("pie")
    assert hist_kind("@hist_log") == ("log", None, None, None)
    assert hist_kind("linear:0:100:10") == ("linear", 0, 100, 10)


def test_summary() -> None:
    s = parse_summary("@@sms\treads\t577\t1\t262144\t5078\t2930006\t@@\r\n")
    assert s == Summary("reads", 577, 1, 262144, 5078, 2930006)
    assert parse_summary("@@sms\tx\t0\t\t\t\t\t@@") == Summary("x", 0, None, None, None, None)
    assert parse_summary("@@sms\tneg\t2\t-5\t-1\t-3\t-6\t@@").min == -5
    for bad in (
        "@@sms\tx\t1\t2\t3\t4\t@@",
        "@@sms\tx\tone\t1\t1\t1\t1\t@@",
        "@@smsx\t1\t1\t1\t1\t1\t@@",
        "@@sms\tx\t\t1\t1\t1\t1\t@@",
        # what the script never prints: a negative count, numbers past int64, a
        # count of 0 with values or a count without them, signs and spaces
        "@@sms\tx\t-1\t1\t1\t1\t1\t@@",
        "@@sms\tx\t9223372036854775808\t1\t1\t1\t1\t@@",
        "@@sms\tx\t1\t-9223372036854775809\t1\t1\t1\t@@",
        "@@sms\tx\t1\t1\t1\t1\t99999999999999999999\t@@",
        "@@sms\tx\t0\t1\t1\t1\t1\t@@",
        "@@sms\tx\t2\t\t\t\t\t@@",
        "@@sms\tx\t1\t+1\t1\t1\t1\t@@",
        "@@sms\tx\t1\t 1\t1\t1\t1\t@@",
    ):
        with pytest.raises(ValueError):
            parse_summary(bad)


@pytest.mark.parametrize(
    "body",
    [
        "value |---- count\n    1 |@ 99999999999999999999\n",
        "value |---- count\n99999999999999999999 |@ 1\n",
        "value |---- count\n9223372036854775807 |@ 1\n",
    ],
)
def test_hist_numbers_past_int64_are_a_value_error(body: str) -> None:
    """Only ValueError (the parser's "not a histogram"), never OverflowError or a frame
    with wrapped numbers."""
    for kind in ("log", "linear:0:10:1", None):
        try:
            df = parse_hist(body, kind)
        except ValueError:
            continue
        assert int(df["count"].max()) < 1 << 63 and df["high"].isna().any()


def test_linear_fill_is_bounded() -> None:
    """A `~` between two rows far apart in a linear histogram cannot make millions of
    zero buckets (SystemTap prints at most 128)."""
    body = "value |---- count\n    0 |@ 1\n    ~\n1000000000 |@ 1\n"
    with pytest.raises(ValueError):
        parse_hist(body, "linear:0:1000000000:1")
