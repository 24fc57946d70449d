"""Plots of kprobe frames: latency and retval histograms, timeline, rate, counts per value.

`df.kprobe.latency_hist()` (the pandas accessor registered here) and `latency_hist(df)` are
the same code. matplotlib is imported inside the plotting functions only, so importing this
module (which the extension does to register the accessor) stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "KprobeAccessor",
    "by",
    "format_ns",
    "is_hist_frame",
    "latency_hist",
    "log2_buckets",
    "pick_unit",
    "rate",
    "retval_hist",
    "timeline",
]

# (name, nanoseconds per unit), largest first.
_UNITS: tuple[tuple[str, int], ...] = (("s", 10**9), ("ms", 10**6), ("us", 10**3), ("ns", 1))
_HIST_COLUMNS = ("low", "high", "count")
_MAX_TICK_LABELS = 24


# -- pure helpers -----------------------------------------------------------------------------


def pick_unit(ns: float) -> tuple[str, int]:
    """The largest of s/ms/us/ns in which `ns` is at least 1, as (name, ns per unit)."""
    mag = abs(ns)
    for name, scale in _UNITS:
        if mag >= scale:
            return name, scale
    return "ns", 1


def format_ns(ns: float, digits: int = 3) -> str:
    """`ns` nanoseconds as e.g. "512ns", "16.4us", "1.05ms", "3s" (`digits` significant)."""
    if not math.isfinite(ns):
        return str(ns)
    if ns == 0:
        return "0ns"
    index = next((i for i, (_, s) in enumerate(_UNITS) if abs(ns) >= s), len(_UNITS) - 1)
    while True:
        name, scale = _UNITS[index]
        value = ns / scale
        whole = len(str(int(abs(value))))
        rounded = round(value, max(digits - whole, 0))
        # 999.7us rounds to 1000us: say 1ms instead.
        if abs(rounded) >= 1000 and index > 0:
            index -= 1
            continue
        text = f"{rounded:.{max(digits - whole, 0)}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return text + name


def _integer_values(values: pd.Series | np.ndarray | Sequence[float]) -> np.ndarray:
    """Values as an int64/uint64 array without NA; floats are floored."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    series = series.dropna()
    if series.empty:
        return np.empty(0, dtype=np.int64)
    dtype = series.dtype
    if pd.api.types.is_unsigned_integer_dtype(dtype):
        return series.to_numpy(dtype=np.uint64)
    if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        return series.to_numpy(dtype=np.int64)
    if pd.api.types.is_timedelta64_dtype(dtype):
        return series.to_numpy(dtype="timedelta64[ns]").view(np.int64)
    floats = series.to_numpy(dtype=np.float64)
    floats = floats[np.isfinite(floats)]
    return np.asarray(np.floor(floats), dtype=np.int64)


def _bucket_edges(index: int) -> tuple[int, int]:
    """[low, high) of log2 bucket `index`: 0 is [0, 1), k > 0 is [2**(k-1), 2**k), k < 0 mirrors."""
    if index == 0:
        return 0, 1
    if index > 0:
        return 1 << (index - 1), 1 << index
    m = -index - 1
    # -v in [2**m, 2**(m+1)) <=> v in [-(2**(m+1)) + 1, -(2**m) + 1) for integers.
    return -(1 << (m + 1)) + 1, -(1 << m) + 1


def log2_buckets(values: pd.Series | np.ndarray | Sequence[float]) -> pd.DataFrame:
    """Power-of-two histogram of integer values: columns low, high (exclusive), count.

    Buckets are [0, 1), [1, 2), [2, 4), [4, 8) ... (negative values mirror them), contiguous
    from the lowest to the highest occupied bucket, empty ones included, as SystemTap's
    @hist_log shows them. NA is dropped and floats are floored. low/high are uint64 for
    unsigned input, int64 otherwise (the outer edges clipped to the dtype's range); count is
    int64. No values gives an empty frame.
    """
    arr = _integer_values(values)
    if arr.size == 0:
        return pd.DataFrame(
            {
                "low": np.empty(0, dtype=np.int64),
                "high": np.empty(0, dtype=np.int64),
                "count": np.empty(0, dtype=np.int64),
            }
        )
    if arr.dtype == np.uint64:
        negative = np.zeros(arr.shape, dtype=bool)
        magnitude = arr
    else:
        negative = arr < 0
        # ~v + 1 == -v without overflowing at the int64 minimum.
        magnitude = np.where(
            negative, (~arr).astype(np.uint64) + np.uint64(1), arr.astype(np.uint64)
        )
    # floor(log2) through frexp; float rounding can push a value just below a power of two
    # up into the next bucket, which the integer comparison corrects.
    _, exponent = np.frexp(magnitude.astype(np.float64))
    k = np.clip(exponent.astype(np.int64) - 1, 0, 63)
    too_big = np.left_shift(np.uint64(1), k.astype(np.uint64)) > magnitude
    k = k - too_big.astype(np.int64)
    index = np.where(magnitude == 0, 0, np.where(negative, -(k + 1), k + 1))
    lo_i, hi_i = int(index.min()), int(index.max())
    counts = np.bincount((index - lo_i).astype(np.intp), minlength=hi_i - lo_i + 1)
    edges = [_bucket_edges(i) for i in range(lo_i, hi_i + 1)]
    info = np.iinfo(arr.dtype)
    floor, limit = int(info.min), int(info.max)
    return pd.DataFrame(
        {
            "low": np.array([max(low, floor) for low, _ in edges], dtype=arr.dtype),
            "high": np.array([min(high, limit) for _, high in edges], dtype=arr.dtype),
            "count": counts.astype(np.int64),
        }
    )


# -- validation -------------------------------------------------------------------------------


def _no_rows(what: str) -> ValueError:
    return ValueError(f"no rows to plot: {what}")


def _require_column(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        raise ValueError(
            f"the frame has no column {column!r} (columns: {', '.join(map(str, df.columns))})"
        )
    return df[column]


def _require_rows(df: pd.DataFrame, what: str) -> None:
    if len(df) == 0:
        raise _no_rows(f"{what}: the frame is empty")


def is_hist_frame(df: pd.DataFrame) -> bool:
    """True for an in-kernel histogram frame (hist.parse_hist): columns low, high, count."""
    return all(c in df.columns for c in _HIST_COLUMNS)


def _relative_ns(df: pd.DataFrame) -> np.ndarray:
    """Nanoseconds since the first event (float64), NaT rows dropped."""
    times = pd.to_datetime(_require_column(df, "time")).dropna()
    if times.empty:
        raise _no_rows("the time column has no values")
    return ((times - times.min()) / pd.Timedelta(1, "ns")).to_numpy(dtype=np.float64)


# -- drawing ----------------------------------------------------------------------------------


def _axes(ax: Axes | None, figsize: tuple[float, float] = (8.0, 4.0)) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, new_ax = plt.subplots(figsize=figsize, layout="constrained")
    return new_ax


def _plain(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _plain_tick(value: float) -> str:
    """Short tick text: 512, 4096, then powers of two as 64Ki, 1Mi, 4Gi (log2 edges)."""
    if not float(value).is_integer():
        return f"{value:g}"
    v = int(value)
    if abs(v) < 10_000:
        return str(v)
    a = abs(v)
    if a & (a - 1) == 0:
        for prefix, shift in (
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ):
            if a >= 1 << shift:
                return f"{'-' if v < 0 else ''}{a >> shift}{prefix}"
    return f"{v:,}"


def _integer_counts(ax: Axes, axis: str = "y") -> None:
    """Counts are whole numbers: no 2.5-event ticks."""
    from matplotlib.ticker import MaxNLocator

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_locator(MaxNLocator(integer=True))


def _set_tick_labels(ax: Axes, positions: Sequence[float], labels: Sequence[str]) -> None:
    # Thin the labels (not the ticks) so that wide histograms stay legible.
    step = max(1, math.ceil(len(labels) / _MAX_TICK_LABELS))
    shown = [label if i % step == 0 else "" for i, label in enumerate(labels)]
    ax.set_xticks(list(positions))
    # About 90 characters fit side by side across an 8-inch axis.
    rotate = len(shown) * (max((len(s) for s in shown), default=0) + 2) > 90
    ax.set_xticklabels(shown, rotation=45 if rotate else 0, ha="right" if rotate else "center")


def _bucket_key(low: Any, high: Any) -> tuple[int, int]:
    """Sort key of a bucket: an underflow bucket (no low) first, then by low."""
    if pd.notna(low):
        return (1, int(low))
    if pd.notna(high):
        return (0, int(high))
    return (2, 0)


def _bucket_label(value: Any, low: Any, high: Any, fmt: Callable[[float], str]) -> str:
    """A bar's own label: what stap prints for it ("<250", "1000"), "≥1010" for overflow."""
    if pd.isna(low):
        return f"<{fmt(int(high))}" if pd.notna(high) else "?"
    if pd.isna(high):
        return f"≥{fmt(int(low))}"
    return fmt(int(value if pd.notna(value) else low))


def _draw_buckets(
    ax: Axes,
    groups: Sequence[tuple[str | None, pd.DataFrame]],
    fmt: Callable[[float], str],
) -> None:
    """Bars for (label, low/high/count[/value]) groups on one shared bucket axis, one slot
    per bucket; low/high may be NA for the open under/overflow buckets of @hist_linear."""
    buckets: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
    for _, g in groups:
        values = g["value"] if "value" in g.columns else g["low"]
        for value, low, high in zip(values, g["low"], g["high"], strict=True):
            buckets.setdefault(_bucket_key(low, high), (value, low, high))
    keys = sorted(buckets)
    slot = {key: i for i, key in enumerate(keys)}
    width = 1.0 if len(groups) == 1 else 0.9 / len(groups)
    for n, (label, g) in enumerate(groups):
        offset = 0.0 if len(groups) == 1 else -0.45 + width * (n + 0.5)
        x = [slot[_bucket_key(lo, hi)] + offset for lo, hi in zip(g["low"], g["high"], strict=True)]
        ax.bar(
            x,
            g["count"].to_numpy(dtype=np.int64),
            width=width,
            label=label,
            edgecolor="white",
            linewidth=0.5,
        )
    edges = [(buckets[k][1], buckets[k][2]) for k in keys]
    closed = all(pd.notna(lo) and pd.notna(hi) for lo, hi in edges)
    if closed and all(int(a[1]) == int(b[0]) for a, b in zip(edges, edges[1:], strict=False)):
        # Histogram style: the ticks are bucket edges, so "64ns|128ns" brackets its bar.
        positions = [i - 0.5 for i in range(len(keys) + 1)]
        labels = [fmt(int(lo)) for lo, _ in edges] + [fmt(int(edges[-1][1]))]
    else:
        positions = [float(i) for i in range(len(keys))]
        labels = [_bucket_label(*buckets[k], fmt) for k in keys]
    _set_tick_labels(ax, positions, labels)
    ax.set_xlim(-0.5, len(keys) - 0.5)
    ax.set_ylabel("events (count)")
    _integer_counts(ax)
    if len(groups) > 1:
        ax.legend(fontsize="small")


def _hist_groups(df: pd.DataFrame, by: str | None) -> list[tuple[str | None, pd.DataFrame]]:
    """(label, buckets in axis order) per group of a histogram frame; empty groups dropped."""
    if by is None:
        frames: list[tuple[str | None, pd.DataFrame]] = [(None, df)]
    else:
        _require_column(df, by)
        frames = [(str(key), g) for key, g in df.groupby(by, observed=True, sort=True)]
    out = []
    for label, g in frames:
        keep = [c for c in ("value", *_HIST_COLUMNS) if c in g.columns]
        buckets = g.loc[g["count"].notna(), keep]
        order = sorted(
            range(len(buckets)),
            key=lambda i: _bucket_key(buckets["low"].iloc[i], buckets["high"].iloc[i]),
        )
        buckets = buckets.iloc[order].reset_index(drop=True)
        if int(buckets["count"].sum()) > 0:
            out.append((label, buckets))
    return out


def _ns_ticks(value: float) -> str:
    return format_ns(value, 2)


def latency_hist(
    df: pd.DataFrame,
    ax: Axes | None = None,
    column: str = "latency_ns",
    by: str | None = None,
    *,
    ns: bool | None = None,
) -> Axes:
    """Log2 histogram of `column` (one bar per power-of-two bucket), or of an in-kernel
    histogram frame (hist.py: low/high/count, optional value) drawn the same way; `by`
    splits into bar groups.

    Ticks are bucket edges (bar labels where buckets are not adjacent or are open-ended),
    in ns/us/ms/s when the values are nanoseconds: `ns`, or by default when the column name
    ends in `_ns` or the frame is an in-kernel histogram; plain numbers otherwise.
    """
    if column not in df.columns and is_hist_frame(df):
        groups = _hist_groups(df, by)
        if not groups:
            raise _no_rows("the histogram has no counts")
        total = sum(int(g["count"].sum()) for _, g in groups)
        in_ns = True if ns is None else ns
        kind = "linear buckets" if df.attrs.get("kind") == "linear" else "log2 buckets"
        title = f"in-kernel histogram: {total:,} events"
        name = "latency" if in_ns else "value"
    else:
        _require_column(df, column)
        _require_rows(df, column)
        if by is None:
            groups = [(None, log2_buckets(df[column]))]
        else:
            _require_column(df, by)
            # Every group on the whole column's buckets, so that the axis has no gaps.
            edges = log2_buckets(df[column]).loc[:, ["low", "high"]]
            groups = []
            for key, g in df.groupby(by, observed=True, sort=True):
                counts = log2_buckets(g[column]).loc[:, ["low", "count"]]
                shared = edges.merge(counts, on="low", how="left")
                shared["count"] = shared["count"].fillna(0).astype(np.int64)
                groups.append((f"{key} ({int(g[column].notna().sum()):,})", shared))
        groups = [(label, g) for label, g in groups if len(g)]
        if not groups:
            raise _no_rows(f"column {column!r} has no values")
        ints = _integer_values(df[column])
        in_ns = column.endswith("_ns") if ns is None else ns
        stat = format_ns if in_ns else _plain
        title = (
            f"{column}: {ints.size:,} events, median {stat(float(np.median(ints)))}, "
            f"max {stat(float(ints.max()))}"
        )
        name = "latency" if in_ns else column
        kind = "log2 buckets"
    ax = _axes(ax)
    _draw_buckets(ax, groups, _ns_ticks if in_ns else _plain_tick)
    ax.set_xlabel(f"{name}, {kind} (ns/us/ms/s)" if in_ns else f"{name}, {kind}")
    ax.set_title(title)
    return ax


def retval_hist(df: pd.DataFrame, ax: Axes | None = None, top: int = 40) -> Axes:
    """One bar per distinct retval, sorted by value, labelled "-97 EAFNOSUPPORT" where the
    errno column names it; beyond `top` distinct values only the most frequent are shown."""
    retvals = _require_column(df, "retval")
    _require_rows(df, "retval")
    present = df.loc[retvals.notna()]
    if present.empty:
        raise _no_rows("column 'retval' has no values")
    counts = present["retval"].value_counts()
    distinct = len(counts)
    counts = counts.head(top).sort_index()
    names: dict[int, str] = {}
    if "errno" in present.columns:
        named = present.loc[
            present["errno"].notna() & (present["errno"] != ""), ["retval", "errno"]
        ]
        for value, errno_name in named.drop_duplicates("retval").itertuples(index=False):
            names[int(value)] = str(errno_name)
    labels = [f"{int(v)} {names[int(v)]}" if int(v) in names else f"{int(v)}" for v in counts.index]
    ax = _axes(ax)
    positions = list(range(len(counts)))
    ax.bar(positions, counts.to_numpy(dtype=np.int64), width=0.8)
    _set_tick_labels(ax, positions, labels)
    _integer_counts(ax)
    ax.set_xlabel("return value (errno name where negative)" if names else "return value")
    ax.set_ylabel("events (count)")
    shown = "" if distinct <= top else f", top {top} of {distinct} values"
    ax.set_title(f"{_probe_names(present)}return values: {len(present):,} events{shown}")
    return ax


def _probe_names(df: pd.DataFrame) -> str:
    if "probe" not in df.columns:
        return ""
    probes = [str(p) for p in pd.unique(df["probe"].dropna())]
    return f"{', '.join(probes)} " if 0 < len(probes) <= 3 else ""


def timeline(df: pd.DataFrame, ax: Axes | None = None, y: str = "probe") -> Axes:
    """One marker per event: x = time since the first event, y = `y` (categorical rows for
    probe/comm/str columns, values for a numeric column)."""
    _require_rows(df, "timeline")
    sub = df.loc[_require_column(df, "time").notna() & _require_column(df, y).notna()]
    rel = _relative_ns(sub)
    unit, scale = pick_unit(float(rel.max()) if rel.size else 0.0)
    ax = _axes(ax)
    x = rel / scale
    yvals = sub[y]
    if pd.api.types.is_numeric_dtype(yvals.dtype) and not pd.api.types.is_bool_dtype(yvals.dtype):
        ydata = yvals.to_numpy(dtype=np.float64)
        label = y
        if y.endswith("_ns"):
            yunit, yscale = pick_unit(float(np.abs(ydata).max()))
            ydata, label = ydata / yscale, f"{y[:-3]} ({yunit})"
        ax.plot(x, ydata, linestyle="none", marker=".", markersize=3, rasterized=len(sub) > 10_000)
        ax.set_ylabel(label)
    else:
        cats = yvals.astype("category").cat.remove_unused_categories()
        codes = cats.cat.codes.to_numpy()
        ax.plot(x, codes, linestyle="none", marker="|", markersize=12, rasterized=len(sub) > 10_000)
        ax.set_yticks(range(len(cats.cat.categories)))
        ax.set_yticklabels([str(c) for c in cats.cat.categories])
        ax.set_ylim(-0.5, len(cats.cat.categories) - 0.5)
        ax.set_ylabel(y)
    ax.set_xlabel(f"time since first event ({unit})")
    span = format_ns(float(rel.max())) if rel.size else "0ns"
    ax.set_title(f"timeline: {len(sub):,} events over {span}")
    return ax


# Bin widths for rate(), in ns: 1-2-5 steps from 1us to 1h.
_NICE_BINS: list[int] = [m * int(10**e) for e in range(3, 12) for m in (1, 2, 5)] + [
    60 * 10**9,
    300 * 10**9,
    600 * 10**9,
    1800 * 10**9,
    3600 * 10**9,
]


def _bin_width(span_ns: float, target_bins: int = 100) -> int:
    """The smallest nice width giving at most `target_bins` bins over `span_ns`."""
    if span_ns <= 0:
        return 10**9
    for width in _NICE_BINS:
        if span_ns / width <= target_bins:
            return width
    return _NICE_BINS[-1]


def rate(df: pd.DataFrame, ax: Axes | None = None, freq: str | pd.Timedelta | None = None) -> Axes:
    """Events per second over time, counted in bins of `freq` (e.g. "100ms"; default: a
    1-2-5 width giving about 100 bins over the span)."""
    _require_rows(df, "rate")
    rel = _relative_ns(df)
    span = float(rel.max())
    width = (
        int(pd.Timedelta(freq) / pd.Timedelta(1, "ns")) if freq is not None else _bin_width(span)
    )
    if width <= 0:
        raise ValueError(f"rate: freq must be positive, not {freq!r}")
    bins = (rel // width).astype(np.int64)
    counts = np.bincount(bins)
    per_second = counts * (1e9 / width)
    unit, scale = pick_unit(span if span > 0 else width)
    starts = np.arange(len(counts) + 1) * width / scale
    ax = _axes(ax)
    # A step over each bin's [start, end) so that the last bin keeps its width.
    ax.stairs(per_second, starts, fill=True, alpha=0.35, color="C0")
    ax.stairs(per_second, starts, color="C0")
    ax.set_xlabel(f"time since first event ({unit})")
    ax.set_ylabel("events/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"event rate: {len(rel):,} events, bins of {format_ns(width)}")
    return ax


def _hex_columns(df: pd.DataFrame) -> set[str]:
    from .display import hex_columns

    return set(hex_columns(df))


def by(df: pd.DataFrame, column: str, ax: Axes | None = None, top: int = 20) -> Axes:
    """Horizontal bars: events per value of `column` (comm, pid, cpu, an argument), the
    `top` most frequent, largest first."""
    values = _require_column(df, column)
    _require_rows(df, f"events by {column}")
    counts = values.value_counts(dropna=True)
    counts = counts[counts > 0]  # unobserved categories
    if counts.empty:
        raise _no_rows(f"column {column!r} has no values")
    distinct = len(counts)
    counts = counts.head(top)
    hexed = column in _hex_columns(df)
    labels = [f"0x{int(v):x}" if hexed else str(v) for v in counts.index]
    ax = _axes(ax, figsize=(8.0, max(2.5, 0.3 * len(counts) + 1.0)))
    positions = list(range(len(counts)))
    ax.barh(positions, counts.to_numpy(dtype=np.int64), height=0.8)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    _integer_counts(ax, "x")
    ax.set_xlabel("events (count)")
    ax.set_ylabel(column)
    shown = (
        f"top {top} of {distinct}"
        if distinct > top
        else f"{distinct} value{'s' if distinct > 1 else ''}"
    )
    ax.set_title(f"events by {column}: {int(values.notna().sum()):,} events, {shown}")
    return ax


# -- accessor ---------------------------------------------------------------------------------


def _no_echo(ax: Axes) -> Axes:
    """`ax`, which IPython no longer echoes as `<Axes: ...>` when it is a cell's value.

    The figure is the output (Jupyter's inline backend draws it when the cell ends); the text
    repr under it is what pandas users hide with `;`. IPython calls `_ipython_display_`
    instead of its formatters when the object has one: on this instance only, so an Axes the
    user made keeps its repr."""
    vars(ax)["_ipython_display_"] = _displayed_by_the_backend
    return ax


def _displayed_by_the_backend() -> None:
    return None


@pd.api.extensions.register_dataframe_accessor("kprobe")
class KprobeAccessor:
    """`df.kprobe`: the run behind a %%kprobe frame and its plots."""

    def __init__(self, pandas_obj: pd.DataFrame) -> None:
        self._df = pandas_obj

    @property
    def run(self) -> Any:
        """The ProbeRun that produced this frame (`df.attrs["kprobe_run"]`), or None."""
        return self._df.attrs.get("kprobe_run")

    def latency_hist(
        self,
        ax: Axes | None = None,
        column: str = "latency_ns",
        by: str | None = None,
        *,
        ns: bool | None = None,
    ) -> Axes:
        """See `stapmagic.plot.latency_hist`."""
        return _no_echo(latency_hist(self._df, ax=ax, column=column, by=by, ns=ns))

    def retval_hist(self, ax: Axes | None = None, top: int = 40) -> Axes:
        """See `stapmagic.plot.retval_hist`."""
        return _no_echo(retval_hist(self._df, ax=ax, top=top))

    def timeline(self, ax: Axes | None = None, y: str = "probe") -> Axes:
        """See `stapmagic.plot.timeline`."""
        return _no_echo(timeline(self._df, ax=ax, y=y))

    def rate(self, ax: Axes | None = None, freq: str | pd.Timedelta | None = None) -> Axes:
        """See `stapmagic.plot.rate`."""
        return _no_echo(rate(self._df, ax=ax, freq=freq))

    def by(self, column: str, ax: Axes | None = None, top: int = 20) -> Axes:
        """See `stapmagic.plot.by`."""
        return _no_echo(by(self._df, column, ax=ax, top=top))
