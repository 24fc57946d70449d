"""SystemTap histogram text (`print(@hist_log(x))`, `print(@hist_linear(x, lo, hi, step))`)
and the `@@sms` aggregate summary lines -> pandas.

The text format is `_stp_stat_print_histogram_buf` in SystemTap's runtime/stat-common.c::

     value |-------------------------------------------------- count
        -2 |@                                                  1
        -1 |                                                   0
           ~
       128 |@@                                                 2
      <250 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@   680
     >1000 |@@@@@@@                                            102

A header line, one line per bucket (`value |@@@ count`, the bar is scaled and ignored here),
`~` where runs of zero buckets were elided (HIST_ELISION, default 2 zero rows kept on each
side of a non-zero one), and a blank line at the end. Log buckets: 0, +-1, +-2, +-4, ...
A positive bucket v holds [v, 2v), 0 holds [0, 1), a negative bucket v holds [2v+1, v+1)
(e.g. -4 holds -7..-4). Linear buckets v hold [v, v+interval); `<start` holds values below
start and `>stop` values from stop+interval on (SystemTap prints the overflow bucket with
the lower bound of the last regular bucket).

`parse_hist` returns a DataFrame with columns value (the number printed), low, high
(the half-open range [low, high) of values the bucket counts; NA where unbounded or not
representable in int64) and count. Elided buckets are put back with count 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from .wire import END_TAG, SUMMARY_TAG

__all__ = [
    "Histogram",
    "Summary",
    "parse_hist",
    "split_hists",
    "parse_summary",
    "hist_kind",
    "parse_hist_block",
]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

_HEADER_RE = re.compile(r"^ *value \|-+ count\s*$")
_ROW_RE = re.compile(r"^ *([<>]?)(-?[0-9]+) \|(@*) *([0-9]+)\s*$")
_INT_RE = re.compile(r"-?[0-9]+")
# SystemTap prints at most STP_MAX_BUCKETS (128) buckets; filling `~` gaps stops well past it.
_MAX_ROWS = 1024
_ELIDE_RE = re.compile(r"^ *~\s*$")

HistKind = Literal["log", "linear"]


@dataclass(frozen=True, eq=False)
class Histogram:
    """A histogram block (`@@smh` tag): its name, kind, parsed frame and the text."""

    name: str
    kind: HistKind
    frame: pd.DataFrame
    text: str


@dataclass(frozen=True)
class Summary:
    """An aggregate summary line `@@sms <TAB> name <TAB> count <TAB> min <TAB> max <TAB> avg
    <TAB> sum <TAB> @@`; an empty field (e.g. @min of nothing) is None."""

    name: str
    count: int
    min: int | None
    max: int | None
    avg: int | None
    sum: int | None


def parse_summary(line: str) -> Summary:
    """Parse one `@@sms` line (a trailing ``\\r``/``\\n`` is ignored); ValueError for what the
    script cannot have printed: the count is a non-negative int64, the other four are int64
    when the count is not 0 and empty when it is."""
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) != 8 or parts[0] != SUMMARY_TAG or parts[7] != END_TAG:
        raise ValueError(f"not an @@sms line: {line!r}")

    def num(s: str) -> int | None:
        if s == "":
            return None
        return _int64(s, f"not an int64 in @@sms line: {s!r}")

    count = num(parts[2])
    if count is None or count < 0:
        raise ValueError(f"@@sms line without a count: {line!r}")
    rest = [num(p) for p in parts[3:7]]
    if (count == 0) != all(v is None for v in rest) or (count and None in rest):
        raise ValueError(f"@@sms line with values that do not go with its count: {line!r}")
    return Summary(parts[1], count, *rest)


def _int64(s: str, what: str) -> int:
    """An ASCII `-?[0-9]+` within int64 (int() alone also takes `+1`, ` 1`, `1_0`, `١`)."""
    if not _INT_RE.fullmatch(s):
        raise ValueError(what)
    v = int(s)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise ValueError(what)
    return v


def hist_kind(kind: str | None) -> tuple[HistKind | None, int | None, int | None, int | None]:
    """`log`, `linear` or `linear:START:STOP:INTERVAL` (also `hist_log`, `@hist_linear`...)
    -> (kind, start, stop, interval); None for what is not given."""
    if not kind:
        return None, None, None, None
    parts = kind.split(":")
    base = parts[0].lstrip("@")
    if base.startswith("hist_"):
        base = base[5:]
    if base == "log":
        return "log", None, None, None
    if base != "linear":
        raise ValueError(f"unknown histogram kind {kind!r}")
    nums = [_int64(p, f"not a number in histogram kind {kind!r}") for p in parts[1:]]
    if len(nums) not in (0, 3):
        raise ValueError(f"linear histogram kind wants linear:START:STOP:INTERVAL, got {kind!r}")
    if nums:
        if nums[2] <= 0:
            raise ValueError("histogram interval must be positive")
        return "linear", nums[0], nums[1], nums[2]
    return "linear", None, None, None


def split_hists(text: str) -> list[str]:
    """Split text holding several printed histograms (and other lines) into one text per
    histogram (header to the last bucket row)."""
    out: list[list[str]] = []
    cur: list[str] | None = None
    for ln in text.splitlines():
        if _HEADER_RE.match(ln):
            cur = [ln]
            out.append(cur)
        elif cur is not None and (_ROW_RE.match(ln) or _ELIDE_RE.match(ln)):
            cur.append(ln)
        else:
            cur = None
    return ["\n".join(h) + "\n" for h in out]


def _is_log_value(v: int) -> bool:
    a = abs(v)
    return v == 0 or (a & (a - 1)) == 0


def _next_log(v: int) -> int:
    if v == 0:
        return 1
    if v > 0:
        return 2 * v
    return 0 if v == -1 else v // 2


def _log_range(v: int) -> tuple[int | None, int | None]:
    if v == 0:
        return 0, 1
    if v > 0:
        hi = 2 * v
        return v, hi if hi <= _INT64_MAX else None
    return max(2 * v + 1, _INT64_MIN), v + 1


def parse_hist(
    text: str, kind: str | None = None, *, interval: int | None = None, fill_elided: bool = True
) -> pd.DataFrame:
    """Parse one printed histogram (lines before the header are skipped; parsing stops at
    the first line after it that is neither a bucket row nor `~`).

    kind: "log", "linear" or "linear:START:STOP:INTERVAL"; None guesses (a `<`/`>` row or
    values that are not log buckets mean linear; ambiguous text such as buckets 0, 1, 2 is
    taken as log). interval: the linear bucket width, when known; otherwise it is the
    smallest step between two adjacent (not elided) rows.
    """
    lines = text.splitlines()
    start_i = next((i for i, ln in enumerate(lines) if _HEADER_RE.match(ln)), None)
    if start_i is None:
        raise ValueError("no histogram header ('value |---...--- count')")
    # rows: (prefix, value, count, elided_before)
    rows: list[tuple[str, int, int, bool]] = []
    elided = False
    for ln in lines[start_i + 1 :]:
        m = _ROW_RE.match(ln)
        if m:
            rows.append(
                (
                    m.group(1),
                    _int64(m.group(2), f"bucket value out of range: {ln!r}"),
                    _int64(m.group(4), f"bucket count out of range: {ln!r}"),
                    elided,
                )
            )
            elided = False
        elif _ELIDE_RE.match(ln):
            elided = True
        else:
            break
    k, start, stop, step = hist_kind(kind)
    if interval is not None:
        step = interval
    regular = [(v, e) for p, v, _, e in rows if not p]
    if k is None:
        if any(p for p, _, _, _ in rows):
            k = "linear"
        else:
            # adjacent rows (no `~` between) must be neighbouring log buckets
            log_ok = all(_is_log_value(v) for v, _ in regular) and all(
                regular[i + 1][1] or regular[i + 1][0] == _next_log(regular[i][0])
                for i in range(len(regular) - 1)
            )
            k = "log" if log_ok else "linear"
    if k == "linear" and step is None:
        diffs = [
            regular[i + 1][0] - regular[i][0]
            for i in range(len(regular) - 1)
            if not regular[i + 1][1]
        ]
        # rows separated by `~` only bound the step from above: not used
        if diffs and min(diffs) > 0:
            step = min(diffs)

    values: list[int] = []
    lows: list[int | None] = []
    highs: list[int | None] = []
    counts: list[int] = []

    def add(v: int, lo: int | None, hi: int | None, c: int) -> None:
        if len(values) >= _MAX_ROWS:
            raise ValueError(f"more than {_MAX_ROWS} buckets: not a SystemTap histogram")
        values.append(v)
        lows.append(lo if lo is None or _INT64_MIN <= lo <= _INT64_MAX else None)
        highs.append(hi if hi is None or _INT64_MIN <= hi <= _INT64_MAX else None)
        counts.append(c)

    prev: int | None = None
    for prefix, v, c, was_elided in rows:
        if k == "log":
            if fill_elided and was_elided and prev is not None:
                z = _next_log(prev)
                while z != v and len(values) < 256:
                    lo, hi = _log_range(z)
                    add(z, lo, hi, 0)
                    z = _next_log(z)
            lo, hi = _log_range(v)
            add(v, lo, hi, c)
            prev = v
            continue
        if prefix == "<":
            add(v, None, v if start is None else start, c)
            prev = v - step if step is not None else None
            continue
        if prefix == ">":
            if fill_elided and was_elided and prev is not None and step:
                z = prev + step
                while z <= v:
                    add(z, z, z + step, 0)
                    z += step
            lo2 = v + step if step is not None else None
            if lo2 is not None and lo2 > _INT64_MAX:
                lo2 = None
            add(v, lo2, None, c)
            continue
        if fill_elided and was_elided and prev is not None and step:
            z = prev + step
            while z < v:
                add(z, z, z + step, 0)
                z += step
        add(v, v, v + step if step is not None else None, c)
        prev = v
    df = pd.DataFrame(
        {
            "value": pd.array(values, dtype="int64"),
            "low": pd.array(lows, dtype="Int64"),
            "high": pd.array(highs, dtype="Int64"),
            "count": pd.array(counts, dtype="int64"),
        }
    )
    df.attrs["kind"] = k
    return df


def parse_hist_block(text: str, name: str = "", kind: str | None = None) -> Histogram:
    """A `@@smh` block's text -> Histogram (kind as in parse_hist)."""
    df = parse_hist(text, kind)
    hk: HistKind = "linear" if df.attrs.get("kind") == "linear" else "log"
    return Histogram(name=name, kind=hk, frame=df, text=text)
