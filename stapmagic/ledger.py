"""The loss ledger (issue 15): per probe, the events the kernel counted against the rows
that reached the frame, next to stap's own loss counters.

- `fired`: `@count` of the per-CPU statistic each handler feeds right before it prints
  (after the stapio guard, -x/--cmd-only, --where and -n's cut: what could reach the
  frame), sent by `probe end` as a `WARNING: @@smc fired` line (wire.FIRED_COUNTER: over
  stap's control channel, so neither a full buffer nor the end of the output loses it).
  Unknown (NA) until the run has ended (`status` set) and when that line never arrived (a killed run, or
  the end of the output lost on the way).
- `rows`: rows in the frame; with --hist the events the histogram holds (@@sms count),
  with --count-by the counted keys' events plus `count_overflow` (counted, not keyed).
- `lost`: fired - rows (NA when fired is): records the transport dropped or cut (a damaged
  line is not a row).
- `transport_failures`, `lost_messages`, `skipped_probes`: stap's end-of-run warnings
  (runtime/transport/transport.c, staprun/relay.c, translate.cxx; diagnose.py reads them).
  stap counts them per run, not per probe: every row carries the run's numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from . import diagnose, wire

if TYPE_CHECKING:
    from .pipeline import ProbeRun

__all__ = [
    "COLUMNS",
    "ledger_frame",
    "fired_counts",
    "loss",
    "loss_note",
    "UNKNOWN_NOTE",
    "is_fired_line",
]

COLUMNS = (
    "probe",
    "fired",
    "rows",
    "lost",
    "transport_failures",
    "lost_messages",
    "skipped_probes",
)
UNKNOWN_NOTE = "loss unknown: the kernel's event count never arrived"


def _stap_lines(run: ProbeRun) -> list[str]:
    """stap's messages, and those found inside damaged record lines: the pty merges its
    stderr into stdout in chunks, so under a flood a warning can land inside a record."""
    with run.lock:
        damaged = list(run.parser.damaged)
    return run.messages + diagnose.damaged_messages(damaged)


def fired_counts(run: ProbeRun) -> dict[int, int]:
    """The kernel's counts received (`WARNING: @@smc fired` lines), by probe index."""
    with run.lock:
        damaged = list(run.parser.damaged)
    lines = list(run.messages)
    head = wire.WARN_PREFIX + wire.COUNTER_TAG + wire.FIELD_SEP + wire.FIRED_COUNTER
    end = wire.FIELD_SEP + wire.END_TAG
    for raw in damaged:
        text = raw.decode("utf-8", "replace")
        at = text.find(head)
        while at >= 0:
            stop = text.find(end, at)
            if stop < 0:
                break
            lines.append(text[at : stop + len(end)])
            at = text.find(head, stop)
    out: dict[int, int] = {}
    for line in lines:
        found = wire.parse_fired(line)
        if found is not None:
            out[found[0]] = out.get(found[0], 0) + found[1]
    return out


def is_fired_line(line: str) -> bool:
    """A message that carries the kernel's count (not worth showing the user)."""
    return wire.parse_fired(line) is not None


def _rows(run: ProbeRun) -> list[int]:
    assert run.script is not None
    labels = [p.label for p in run.script.probes]
    agg = run.script.aggregate
    if agg is None:
        df = run.df
        counts = df["probe"].value_counts() if "probe" in df.columns else pd.Series(dtype=int)
        return [int(counts.get(label, 0)) for label in labels]
    if agg.mode == "hist":
        with run.lock:
            held = {s.name: s.count for s in run.parser.summaries}
        return [held.get(label, 0) for label in labels]
    with run.lock:
        tags = list(run.parser.tag_counts)
    rows = [0] * len(labels)
    for t in tags:
        if t.tag == "smk" and t.name in labels:
            rows[labels.index(t.name)] += t.value
        elif t.tag == "smc" and t.name == "count_overflow" and t.key.isdigit():
            if int(t.key) < len(rows):
                rows[int(t.key)] += t.value
    return rows


def ledger_frame(run: ProbeRun) -> pd.DataFrame:
    """One row per probe (COLUMNS); empty for a %%stap script (no kernel count)."""
    if run.script is None:
        return pd.DataFrame({c: [] for c in COLUMNS})
    labels = [p.label for p in run.script.probes]
    fired = fired_counts(run) if run.status is not None else {}
    rows = _rows(run)
    lines = _stap_lines(run)
    lost_out = diagnose.lost_output(lines)
    skipped = diagnose.counters(lines).skipped_probes
    fired_col = pd.Series([fired.get(i) for i in range(len(labels))], dtype="Int64")
    lost_col = fired_col - pd.Series(rows, dtype="Int64")
    n = len(labels)
    return pd.DataFrame(
        {
            "probe": labels,
            "fired": fired_col,
            "rows": pd.Series(rows, dtype="int64"),
            "lost": lost_col,
            "transport_failures": [lost_out.transport_failures] * n,
            "lost_messages": [lost_out.lost_messages] * n,
            "skipped_probes": [skipped] * n,
        }
    )


def loss(run: ProbeRun) -> tuple[int, int] | None:
    """(lost, fired) over all probes, or None when some probe's count is unknown."""
    if run.script is None or run.status is None:
        return None
    fired = fired_counts(run)
    n = len(run.script.probes)
    if any(i not in fired for i in range(n)):
        return None
    total = sum(fired[i] for i in range(n))
    return total - sum(_rows(run)), total


def loss_note(lost: int, fired: int) -> str:
    """ "1,204 of 50,000 events lost (2.4 %)"."""
    pct = 100.0 * lost / fired if fired else 0.0
    return f"{lost:,} of {fired:,} events lost ({pct:.1f} %)"


def summary_notes(run: ProbeRun) -> list[str]:
    """What the summary line says about loss: the note when events were lost, that the loss
    is unknown when the kernel's count never arrived, nothing otherwise."""
    if run.script is None or run.status is None:
        return []
    found = loss(run)
    if found is None:
        return [UNKNOWN_NOTE]
    lost, fired = found
    if not lost:
        return []
    notes = [loss_note(lost, fired)]
    reported = diagnose.lost_output(_stap_lines(run)).total + run.damaged
    if lost > reported:
        # stap counts drops in the kernel (transport failures) and sequence gaps in stapio
        # (lost messages); records written to the buffer but never read before stapio
        # stopped (staprun/relay.c close_relayfs: 2 x 200 ms, then its readers quit) are
        # neither: see bench/RESULTS.md, issue 15.
        notes.append(
            f"{lost - reported:,} of them unreported by stap "
            "(left unread in its buffers when the run ended)"
        )
    return notes
