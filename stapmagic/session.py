"""A cell's lifecycle, without IPython: the mode policy, the replay rules, the recorder and
the player, the live view, the report.

magic.py parses the line into a `Cell` and calls `Session.run`; it keeps the user namespace
and turns StapMagicError into UsageError. Anything else (a script, a test) can drive a
Session the same way.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from . import display, ledger, live, pipeline, recording, runner, save
from .errors import OptionError, ReplayError, StapMagicError
from .options import FIELDS, Magic

__all__ = ["Cell", "Outcome", "Session", "failure_text", "result", "worth_showing"]

_ASMLINKAGE = "WARNING: Eliding side-effect-free expression : identifier 'asmlinkage'"
# stap's messages printed after a run: the last ones (a chatty -c command can print millions).
SHOWN_MESSAGES = 50


@dataclass(frozen=True)
class Cell:
    """One %%kprobe or %%stap cell: its text, its ProbeOptions and what the cell itself does
    with the run (-o, --bg, the recording options)."""

    kind: Magic
    first_line: str
    body: str
    opts: pipeline.ProbeOptions
    out: str | None = None
    bg: bool = False
    record: str | None = None
    replay: str | None = None
    recording: str | None = None
    replay_speed: float = 0.0
    save: str | None = None
    keep: int | None = None

    @classmethod
    def of(cls, kind: Magic, first_line: str, body: str, values: Mapping[str, Any]) -> Cell:
        """From every option's value (options.line_values)."""
        opts = pipeline.ProbeOptions(**{o.name: values[o.name] for o in FIELDS})
        return cls(
            kind,
            first_line,
            body,
            opts,
            out=values["out"],
            bg=values["bg"],
            record=values["record"],
            replay=values["replay"],
            recording=values["recording"],
            replay_speed=values["replay_speed"],
            save=values["save"],
            keep=values["keep"],
        )


def worth_showing(messages: list[str]) -> list[str]:
    """stap's messages minus what the live view already showed (Pass lines) and the
    asmlinkage() elision warning (3 lines) that every seed-style script gets on x86_64, and
    the kernel's event counts for the ledger."""
    shown: list[str] = []
    skip = 0
    for msg in messages:
        if skip:
            skip -= 1
            if msg.startswith(" ") or not msg.strip():
                continue
        if msg.startswith(_ASMLINKAGE):
            skip = 2  # " source: ..." and the caret line under it
            continue
        if msg.startswith("Pass ") or not msg.strip() or ledger.is_fired_line(msg):
            continue
        shown.append(msg)
    return shown


def failure_text(run: pipeline.ProbeRun, out: str | None) -> str:
    """Why the run failed, stap's own lines under it, and where the rows it did send are."""
    errors = [d for d in run.diagnoses if d.severity == "error"]
    head = errors[0].summary if errors else "stap failed."
    lines = [head]
    for d in errors[1:]:
        lines.append(d.summary)
    for d in errors:
        lines.extend("    | " + ln for ln in d.detail)
    if not errors:
        lines.extend("    | " + ln for ln in worth_showing(run.messages)[-15:])
    lines.extend(run.notes)
    where = f"`{out}` and `_kprobe.df`" if out else "`_kprobe.df`"
    lines.append(
        f"({run.summary()}; the {run.parser.row_count} rows received are in {where}, "
        "stap's messages in `_kprobe.messages`)"
    )
    return "\n".join(lines)


_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)


def _has_script(body: str) -> bool:
    """Whether a %%stap body holds anything but blanks and comments (#, //, /* */)."""
    text = _BLOCK_COMMENT.sub("", body)
    return any(ln.strip() and not ln.strip().startswith(("#", "//")) for ln in text.splitlines())


@dataclass
class Outcome:
    """A cell's run, and why its recording could not be saved (the rows are kept)."""

    run: pipeline.ProbeRun
    not_saved: str | None = None


class Session:
    """The cells of one notebook: the runs still live, and how each cell runs (`mode`,
    `recordings_dir`, `show_messages`, set by the magic from its traits)."""

    def __init__(
        self, mode: str = "live", recordings_dir: str = "recordings", show_messages: bool = True
    ) -> None:
        self.mode = mode
        self.recordings_dir = recordings_dir
        self.show_messages = show_messages
        self.runs: list[pipeline.ProbeRun] = []
        self._resolved: dict[tuple[str, str], tuple[str, str]] = {}
        self._peeked: dict[tuple[str, str], tuple[str, str]] = {}  # replays(), quietly

    # -- the mode ------------------------------------------------------------------------------

    def set_mode(self, mode: str, target: str) -> None:
        """A new mode: resolved again (auto) and announced."""
        self.mode = mode
        self._resolved.clear()
        self._peeked.clear()
        self.action(target, announce=True)

    def action(self, target: str, announce: bool = False) -> tuple[str, str]:
        """What cells do in the current mode on `target` (auto is resolved once per target)."""
        key = (self.mode, target)
        if key not in self._resolved:
            self._resolved[key] = recording.mode_for(self.mode, runner.parse_target(target))
            announce = True
        action, why = self._resolved[key]
        if announce:
            rec = f"{self.recordings_dir}/NAME{recording.SUFFIX}"
            # auto says why it chose; an explicit mode's reason would only repeat it
            head = (
                f"stapmagic: mode auto -> {action} ({why})"
                if self.mode == "auto"
                else f"stapmagic: mode {self.mode}"
            )
            text = {
                "live": f"every cell runs stap on target {target}; --recording is not written",
                "record": f"cells run stap on target {target}; those with --recording NAME are "
                f"saved to {rec}",
                "replay": f"cells with --recording NAME REPLAY {rec}, recorded on a real "
                "kernel; nothing is probed on this machine",
            }[action]
            print(f"{head}: {text}")
        return action, why

    def replays(self, target: str) -> bool:
        """Whether a cell on `target` replays in this mode (auto resolved quietly here: the
        first cell still announces it)."""
        if self.mode in ("live", "record", "replay"):
            return self.mode == "replay"
        key = (self.mode, target)
        found = self._resolved.get(key) or self._peeked.get(key)
        if found is None:  # kept apart from _resolved, which announces on first use
            found = self._peeked[key] = recording.mode_for(self.mode, runner.parse_target(target))
        return found[0] == "replay"

    # -- one cell ------------------------------------------------------------------------------

    def run(self, cell: Cell) -> Outcome | None:
        """Run the cell: None after --dry-run; with --bg the live run, else the ended one
        (failed or not: the caller shows `failure_text` when not `run.ok`). StapMagicError
        for a cell that cannot run."""
        if cell.keep is not None and cell.save is None:
            raise OptionError(
                "--keep N bounds the frame of a --save run (every row is in the dataset): "
                "add --save DIR, or drop --keep to keep every row in memory"
            )
        run, plan = self.prepare(cell)
        for note in run.spec.notes if run.spec is not None else ():
            print(f"stapmagic: {note}")
        if cell.opts.dry_run:
            print(pipeline.dry_run_text(run))
            return None
        if cell.save is not None:
            if run.script is not None and run.script.aggregate is not None:
                raise OptionError(
                    "--save streams rows, and --hist/--count-by runs print none: drop --save"
                )
            run.saved = save.ParquetDataset(cell.save, host=cell.opts.target)
            run.parser.keep_last(cell.keep or save.DEFAULT_KEEP)
        return self._go(run, cell, plan)

    def prepare(self, cell: Cell) -> tuple[pipeline.ProbeRun, recording.Plan]:
        """The run (live, to record, or from a recording) and the cell's recording plan."""
        opts = cell.opts
        if cell.kind == "stap" and not _has_script(cell.body):
            raise OptionError(
                "no script below %%stap: write a SystemTap script in the cell, "
                'e.g. probe begin { println("hi") exit() }'
            )
        action: str = "live"
        why = ""
        if cell.record is None and cell.replay is None and self.mode != "live":
            action, why = self.action(opts.target)
        if action == "replay" and cell.recording is None and not opts.dry_run:
            # A bad spec is the better message; build it without touching the target.
            offline = pipeline.replace_options(opts, dry_run=True)
            if cell.kind == "kprobe":
                pipeline.prepare(cell.first_line, cell.body, offline, build=lambda *a: [])
            raise ReplayError(
                f"mode {self.mode} replays ({why}), but this cell has no --recording NAME, "
                "so there is nothing to replay"
            )
        plan = recording.plan(
            cell.kind,
            cell.first_line,
            cell.body,
            record=cell.record,
            replay=cell.replay,
            name=cell.recording,
            action=action,
            speed=cell.replay_speed,
            directory=self.recordings_dir,
            dry_run=opts.dry_run,
        )
        if plan.replay is not None:
            run = recording.prepare_replay(plan.replay, cell.kind, cell.first_line, cell.body, opts)
        elif cell.kind == "kprobe":
            run = pipeline.prepare(cell.first_line, cell.body, opts, lookup=plan.kallsyms)
        else:
            run = pipeline.prepare_script(cell.body, opts)
        return run, plan

    def _go(self, run: pipeline.ProbeRun, cell: Cell, plan: recording.Plan) -> Outcome:
        opts = cell.opts
        recorder: recording.Recorder | None = None
        source: recording.Player | None = None
        note: str | None = None
        if plan.replay is not None:
            pace = (
                "as fast as possible"
                if plan.speed <= 0
                else "at the recorded pace"
                if plan.speed == 1
                else f"at {plan.speed:g}x speed"
            )
            note = f"{recording.describe(plan.replay)}; {pace}"
            if opts.verbose == 0:
                print(f"stapmagic: {note}")
            source = recording.Player(plan.replay, plan.speed)
        elif plan.record is not None:
            recorder = plan.start_recording(run, opts)
            print(
                f"stapmagic: recording this run to {plan.record} (kernel "
                f"{recorder.header.kernel_release}, {recorder.header.stap_version})"
            )
        view = (
            None
            if opts.verbose == 0
            else live.LiveView(
                hex_columns=display.run_hex_columns(run),
                duration=opts.duration,
                count=opts.count,
                note=note,
            )
        )
        outcome = Outcome(run)

        def on_batch(run: pipeline.ProbeRun, batch: Any, final: bool) -> None:
            if run.saved is not None:
                save.take(run, run.saved, batch, final)
            if view is not None:
                if run.stop_event.is_set() and not final:
                    view.stopping()
                view.update(
                    batch.frame,
                    batch.messages,
                    rows_total=run.parser.row_count,
                    skipped=run.skipped,
                    transport_failures=run.transport_failures,
                    force=final,
                )
            if final:
                if recorder is not None:
                    try:
                        recorder.finish(run.status)
                    except StapMagicError as exc:  # the run and its rows are fine
                        outcome.not_saved = str(exc)
                        run.notes.append(str(exc))
                        if cell.bg:
                            print(f"stapmagic: {exc}", file=sys.stderr)
                self._finish(run, view, note)

        self.runs.append(run)
        tap = recorder.chunk if recorder is not None else None
        if cell.bg:
            pipeline.start(run, on_batch=on_batch, grace=opts.grace, tap=tap, source=source)
        else:
            pipeline.execute(run, on_batch=on_batch, grace=opts.grace, tap=tap, source=source)
        return outcome

    def _finish(
        self, run: pipeline.ProbeRun, view: live.LiveView | None = None, note: str | None = None
    ) -> None:
        if run in self.runs:
            self.runs.remove(run)
        self.report(run, view, note)

    def report(
        self, run: pipeline.ProbeRun, view: live.LiveView | None = None, note: str | None = None
    ) -> None:
        """A finished run: its live view replaced in place by one summary line, with the
        warnings visible and the last of stap's messages worth reading collapsed under it;
        without a view, the same as text on stdout (stderr is for errors)."""
        messages: list[str] = []
        if self.show_messages:
            shown = worth_showing(run.messages)
            kept = max(0, len(shown) - SHOWN_MESSAGES)
            dropped = run.parser.messages_dropped  # the parser keeps a bounded log
            if kept or dropped:
                lost = f", {dropped} not kept" if dropped else ""
                messages.append(
                    f"({kept + dropped} earlier lines not shown ({kept} of them in "
                    f"_kprobe.messages{lost}); the last "
                    f"{min(len(shown), SHOWN_MESSAGES)}:)"
                )
            messages += shown[-SHOWN_MESSAGES:]
        if view is not None:
            view.close(display.run_summary(run, view.timings(), messages, note))
            if view.draws:
                return
        print(repr(display.run_summary(run, None, messages, note)))

    # -- live runs -----------------------------------------------------------------------------

    def stop_all(self, wait: float) -> list[pipeline.ProbeRun]:
        """Stop every live run: all are asked at once, then waited for (each at most `wait`
        seconds)."""
        live_runs = [run for run in list(self.runs) if run.running]
        for run in live_runs:
            run.stop_event.set()
        for run in live_runs:
            run.wait(wait)
        return live_runs

    def list_running(self) -> pd.DataFrame:
        """The live runs: id, probes, target, elapsed seconds, rows so far."""
        now = time.time()
        live_runs = [run for run in list(self.runs) if run.running]
        return pd.DataFrame(
            {
                "id": pd.array([r.run_id for r in live_runs], dtype="int64"),
                "probes": [
                    ", ".join(p.label for p in r.script.probes)
                    if r.script is not None
                    else "%%stap script"
                    for r in live_runs
                ],
                "target": [r.target.url or r.target.kind for r in live_runs],
                "elapsed_s": pd.array(
                    [round(now - r.started, 1) for r in live_runs], dtype="float64"
                ),
                "rows": pd.array([r.parser.row_count for r in live_runs], dtype="int64"),
            }
        )


def result(run: pipeline.ProbeRun) -> pd.DataFrame:
    """The cell's value: the events, or with --hist the buckets, with --count-by the counts
    (attrs["kprobe_run"] is the run)."""
    df = run.result()
    df.attrs["kprobe_run"] = run
    return df
