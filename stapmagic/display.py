"""How a probe's output looks in a notebook: pointers and registers in hex, and the one
summary a finished run leaves in place of its live view.

The columns stay uint64 (so arithmetic and comparisons work); only the rendering changes,
and only for frames the magic made (they carry their run in `df.attrs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from . import ledger
from .live import RunSummary, hex_text, summary_line
from .spec import REGISTER_COLUMNS


def run_hex_columns(run: Any) -> tuple[str, ...]:
    """The run's columns shown in hex: its schema's pointers (kind "hex"), its registers."""
    probes = getattr(getattr(run, "script", None), "probes", ()) or ()
    declared = [c.name for p in probes for c in p.columns if c.kind == "hex"]
    return tuple(dict.fromkeys([*declared, *REGISTER_COLUMNS]))


def hex_columns(df: pd.DataFrame) -> list[str]:
    """Columns shown in hex: the schema's pointers (kind "hex") and register columns."""
    run = df.attrs.get("kprobe_run")
    if run is None:
        return []
    shown = set(run_hex_columns(run))
    return [c for c in df.columns if c in shown and pd.api.types.is_integer_dtype(df[c])]


def run_summary(
    run: Any,
    timings: tuple[float, float, float] | None,
    messages: Sequence[str],
    note: str | None = None,
) -> RunSummary:
    """What a finished run shows in place of its live view: one summary line (`timings`
    from the live view, else the run's own clock), the warnings and errors stapmagic
    diagnosed (visible), `messages` collapsed."""
    if timings is None:
        total = float(getattr(run.status, "duration", 0.0) or 0.0)
        timings = (total, 0.0, total)
    total, compile_s, run_s = timings
    counters = run.counters
    lost = int(counters.skipped_probes) + int(counters.transport_failures) + int(run.damaged)
    known = ledger.loss(run)  # the kernel's count against the rows, when it arrived
    if known is not None:
        lost = known[0]
    notes = [*run._aggregate_notes(), *ledger.summary_notes(run), *run.ending_notes()]
    aggregate = getattr(getattr(run, "script", None), "aggregate", None)
    rows = int(run.parser.row_count)
    line = summary_line(
        rows,
        total,
        compile_s,
        run_s,
        lost,
        interrupted=bool(run.interrupted),
        notes=notes,
        rows_word=not (aggregate is not None and notes and not rows),
    )
    warnings = tuple(d.summary for d in run.diagnoses if d.severity != "info")
    return RunSummary(line, warnings, tuple(messages), note)


_hex = hex_text


def _options() -> dict[str, Any]:
    return {
        "max_rows": pd.get_option("display.max_rows"),
        "min_rows": pd.get_option("display.min_rows"),
        "max_cols": pd.get_option("display.max_columns"),
        "show_dimensions": pd.get_option("display.show_dimensions"),
    }


def to_html(df: pd.DataFrame) -> str | None:
    """HTML with hex pointers; any other frame is pandas' own HTML."""
    cols = hex_columns(df)
    if not cols:
        # A for_type printer that returns None means "no HTML" to IPython, not "fall back to
        # _repr_html_": every frame would lose its table after %load_ext.
        own: str | None = getattr(df, "_repr_html_")()  # noqa: B009 (untyped in pandas-stubs)
        return own
    opts = _options()
    opts.pop("min_rows")  # to_html truncates to max_rows only
    html: str = df.to_html(formatters={c: _hex for c in cols}, notebook=True, **opts)
    return html


def to_text(df: pd.DataFrame, p: Any, cycle: bool) -> None:
    """IPython's text/plain printer hook with hex pointers."""
    cols = hex_columns(df)
    if not cols:
        p.text(repr(df))
        return
    opts = _options()
    opts["max_colwidth"] = pd.get_option("display.max_colwidth")
    opts["line_width"] = pd.get_option("display.width")
    p.text(df.to_string(formatters={c: _hex for c in cols}, **opts))


def install(ipython: Any) -> None:
    formatters = ipython.display_formatter.formatters
    formatters["text/html"].for_type(pd.DataFrame, to_html)
    formatters["text/plain"].for_type(pd.DataFrame, to_text)


def uninstall(ipython: Any) -> None:
    formatters = ipython.display_formatter.formatters
    for kind in ("text/html", "text/plain"):
        try:
            formatters[kind].pop(pd.DataFrame)
        except KeyError:
            pass
