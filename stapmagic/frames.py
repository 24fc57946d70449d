"""The frames a run's aggregates become: --hist buckets and --count-by counts.

Presentation only: they read a ProbeRun (under its lock where the parser is involved) and
build a new DataFrame each time; `ProbeRun.hist`/`.counts` are these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import records

if TYPE_CHECKING:
    from .pipeline import ProbeRun
    from .spec import Probe

__all__ = ["counts_frame", "enum_names", "hist_frame"]


def hist_frame(run: ProbeRun) -> pd.DataFrame:
    """--hist: the buckets of every probe's histogram (probe, value, low, high, count;
    [low, high) as in hist.py); attrs: kind, of, and the @count/@min/@max/@avg/@sum
    summaries (`summaries` by probe; the fields themselves too when there is one)."""
    frames = [h.frame.assign(probe=h.name) for h in run.histograms]
    cols = ["probe", "value", "low", "high", "count"]
    if frames:
        df = pd.concat(frames, ignore_index=True)[cols]
    else:
        df = pd.DataFrame(
            {
                "probe": pd.array([], dtype="str"),
                "value": pd.array([], dtype="int64"),
                "low": pd.array([], dtype="Int64"),
                "high": pd.array([], dtype="Int64"),
                "count": pd.array([], dtype="int64"),
            }
        )
    df["probe"] = df["probe"].astype("category")
    agg = run.script.aggregate if run.script is not None else None
    df.attrs["kind"] = "linear" if agg and (agg.hist_kind or "").startswith("linear") else "log"
    df.attrs["of"] = agg.of if agg else None
    stats = {s.name: dataclasses.asdict(s) for s in run.summaries}
    df.attrs["summaries"] = stats
    if len(stats) == 1:
        df.attrs.update({k: v for k, v in next(iter(stats.values())).items() if k != "name"})
    df.attrs["kprobe_run"] = run
    return df


def counts_frame(run: ProbeRun) -> pd.DataFrame:
    """--count-by: one row per (probe, key) with its count, most frequent first."""
    agg = run.script.aggregate if run.script is not None else None
    labels = [p.label for p in run.script.probes] if run.script is not None else []
    kinds = dict(zip(labels, agg.key_kinds if agg else (), strict=False))
    with run.lock:
        lines = [t for t in run.parser.tag_counts if t.tag == "smk"]
    used = {kinds.get(t.name, "str") for t in lines} or set(agg.key_kinds if agg else ())

    def key(t: records.TagCount) -> Any:
        kind = kinds.get(t.name, "str")
        if kind == "str":
            return records.unescape_text(t.key.encode())
        return int(t.key, 16 if kind == "hex" else 10)

    keys = [key(t) for t in lines]
    # via numpy: pd.array() of Python ints above 2**63 goes through float64
    if used and used <= {"int"}:
        key_col: Any = np.array(keys, dtype=np.int64)
    elif used and used <= {"uint", "hex"}:
        key_col = np.array(keys, dtype=np.uint64)
    elif used <= {"str"}:
        key_col = pd.array(keys, dtype="str")
    else:
        key_col = pd.array(keys, dtype=object)
    df = pd.DataFrame(
        {
            "probe": pd.Categorical([t.name for t in lines]),
            "key": key_col,
            "count": pd.array([t.value for t in lines], dtype="int64"),
        }
    )
    df = df.sort_values("count", ascending=False, kind="stable", ignore_index=True)
    df.attrs["count_by"] = agg.of if agg else None
    df.attrs["kprobe_run"] = run
    return df


def enum_names(df: pd.DataFrame, probes: Sequence[Probe]) -> pd.DataFrame:
    """Enum columns (BTF) as categorical enumerator names: a value with no name stays
    visible as its number."""
    for probe in probes:
        for column, names in probe.enums:
            if column not in df.columns:
                continue
            by_value = dict(names)
            rows = df["probe"] == probe.label
            values = df.loc[rows, column]
            shown = [by_value.get(int(v), str(v)) if not pd.isna(v) else None for v in values]
            known = list(dict.fromkeys(n for _, n in names))
            extra = sorted({s for s in shown if s is not None and s not in known})
            if column in df.columns and not isinstance(df[column].dtype, pd.CategoricalDtype):
                df[column] = df[column].astype("object")
            df.loc[rows, column] = shown
            df[column] = pd.Categorical(df[column], categories=known + extra)
    return df
