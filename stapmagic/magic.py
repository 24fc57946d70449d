"""IPython adapter: `%%kprobe`, `%kprobe` and `%%stap`.

Options are parsed here, everything else happens in `pipeline`; domain errors become
`UsageError` so the notebook shows one clear message instead of a traceback.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import sys
import time
from typing import Any

import pandas as pd
from IPython.core.error import UsageError
from IPython.core.magic import (
    Magics,
    cell_magic,
    line_cell_magic,
    line_magic,
    magics_class,
    no_var_expand,
)
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Float, Int, Unicode, default, observe

# plot registers the df.kprobe accessor
from . import (  # noqa: F401
    complete,
    display,
    helptext,
    live,
    pipeline,
    plot,
    recording,
    runner,
    symbols,
)
from .errors import StapMagicError


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def _speed(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


def _reg_list(text: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in text.split(",") if r.strip())


def _linear(text: str) -> tuple[int, int, int]:
    lo, hi, step = (int(v) for v in text.split(","))
    return lo, hi, step


_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_GLOB = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+\Z")

_ASMLINKAGE = "WARNING: Eliding side-effect-free expression : identifier 'asmlinkage'"


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
    lines.append(f"({run.summary()}; the {run.parser.row_count} rows received are in {where}, "
                 "stap's messages in `_kprobe.messages`)")
    return "\n".join(lines)


def worth_showing(messages: list[str]) -> list[str]:
    """stap's messages minus what the live view already showed (Pass lines) and the
    asmlinkage() elision warning (3 lines) that every seed-style script gets on x86_64."""
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
        if msg.startswith("Pass ") or not msg.strip():
            continue
        shown.append(msg)
    return shown


def _common_options(func: Any) -> Any:
    """Options shared by %%kprobe and %%stap (decorators apply bottom-up)."""
    for deco in reversed([
        argument("-o", "--out", metavar="VAR", help="store the DataFrame in VAR"),
        argument("-c", dest="command", metavar="CMD",
                 help="run CMD on the target (stap -c) and stop when it ends"),
        argument("-x", dest="pid", type=_positive_int, metavar="PID",
                 help="only events of process PID (stap -x)"),
        argument("-T", "--duration", type=_positive_float, metavar="SEC",
                 help="stop after SEC seconds"),
        argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                 help="pass -D NAME=VALUE to stap"),
        argument("--guru", action="store_true", help="stap -g (needed for statement probes)"),
        argument("--target", metavar="TARGET",
                 help="where to probe: local, lab or ssh://user@host[:port] "
                      "(default: %%config KprobeMagics.target)"),
        argument("--dry-run", action="store_true",
                 help="print the generated script and the stap command line, run nothing"),
        argument("-q", "--quiet", action="store_true", help="no progress or live view"),
        argument("--bg", action="store_true",
                 help="run in the background: returns the run (.df, .stop(), .wait())"),
        argument("--record", metavar="FILE", help="also save the run (stap's raw output) to FILE"),
        argument("--replay", metavar="FILE",
                 help="run the pipeline from a recording instead of stap"),
        argument("--recording", metavar="NAME",
                 help="this cell's recording, recordings/NAME.jsonl: made in mode record, "
                      "replayed in mode replay (see KprobeMagics.mode)"),
        argument("--replay-speed", type=_speed, metavar="X",
                 help="replay pace: 0 as fast as possible (default), 1 as recorded, 2 twice "
                      "as fast"),
    ]):
        func = deco(func)
    return func


@magics_class
class KprobeMagics(Magics):
    """DWARF-less kernel probes (SystemTap kprobe.*) whose events come back as a DataFrame."""

    target = Unicode("local", help="Default target: local, lab or ssh://user@host[:port].").tag(
        config=True
    )
    grace = Float(
        pipeline.DEFAULT_GRACE,
        help="Seconds stap gets after SIGINT before SIGTERM, then SIGKILL (a remote stap "
        "needs a few: the end probes, the module unload and ssh round trips under TCG).",
    ).tag(
        config=True
    )
    string_max = Int(64, help="Length cap of str/ustr arguments.").tag(config=True)
    show_messages = Bool(True, help="Print stap's messages after each run.").tag(config=True)
    mode = Unicode(help="live: run stap; record: run stap and save cells with --recording NAME; "
                        "replay: replay those recordings; auto: $STAPMAGIC_MODE if set, else "
                        "live where the target can run stap, else replay. Default: "
                        "$STAPMAGIC_MODE or live.").tag(config=True)
    recordings_dir = Unicode("recordings", help="Where --recording NAME lives (relative to "
                                                "the working directory, i.e. the notebook's)."
                             ).tag(config=True)
    replay_speed = Float(0.0, help="Default --replay-speed: 0 as fast as possible, 1 as "
                                   "recorded.").tag(config=True)

    @default("target")
    def _default_target(self) -> str:
        return os.environ.get("STAPMAGIC_TARGET", "").strip() or "local"

    @default("mode")
    def _default_mode(self) -> str:
        env = os.environ.get("STAPMAGIC_MODE", "").strip().lower()
        return env if env in recording.MODES else "live"

    @observe("mode")
    def _mode_changed(self, change: Any) -> None:
        self._resolved.clear()
        try:
            self._action(self.target, announce=True)
        except StapMagicError as exc:
            raise UsageError(str(exc)) from None

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        self._resolved: dict[tuple[str, str], tuple[str, str]] = {}
        super().__init__(shell=shell, **kwargs)
        self.runs: list[pipeline.ProbeRun] = []

    # -- %%kprobe / %kprobe ---------------------------------------------------------

    @no_var_expand
    @magic_arguments()
    @_common_options
    @argument("-n", "--count", type=_positive_int, metavar="N", help="stop after N events")
    @argument("--regs", type=_reg_list, default=(), metavar="LIST",
              help="register columns, e.g. rip,rax,rdi (u_register values)")
    @argument("--print-regs", action="store_true",
              help="a print_regs() dump per event, split into one column per register")
    @argument("--latency", action="store_true",
              help="pair each FUNCTION with its return: one row per call with latency_ns")
    @argument("--hist", metavar="WHAT",
              help="latency, retval or ARG: an in-kernel log2 histogram per probe, printed "
                   "at the end instead of rows (latency implies --latency)")
    @argument("--hist-linear", type=_linear, metavar="MIN,MAX,STEP",
              help="linear buckets for --hist instead of log2")
    @argument("--count-by", metavar="KEY",
              help="comm, pid, cpu, retval or ARG: in-kernel event counts per key")
    @argument("--cmd-only", action="store_true",
              help="with -c: only events of the command's process (target(), like -x)")
    @argument("--list-running", action="store_true",
              help="%%kprobe --list-running: a table of the live (--bg) runs")
    @argument("--stop-all", action="store_true", help="%%kprobe --stop-all: stop every live run")
    @argument("spec", nargs="*", help="[MODULE:]FUNCTION[.return[:TYPE]] [NAME:TYPE ...]")
    @line_cell_magic
    def kprobe(self, line: str, cell: str | None = None) -> Any:
        """Probe kernel functions without debuginfo; returns a DataFrame of events.

        %%kprobe tcp_v4_connect sk:ptr uaddr:ptr len:uint
        """
        args = self._parse(self.kprobe, line)
        if args.list_running or args.stop_all:
            if cell is not None or args.spec:
                raise UsageError("--list-running and --stop-all take no spec: %kprobe --stop-all")
            return self.list_running() if args.list_running else self._stop_all_verbose()
        first_line = " ".join(args.spec)
        opts = self._options(args)
        run, plan = self._prepare("kprobe", args, opts, first_line, cell or "")
        return self._go(run, args, opts, plan)

    # -- %%stap -----------------------------------------------------------------------

    @no_var_expand
    @magic_arguments()
    @_common_options
    @cell_magic
    def stap(self, line: str, cell: str) -> Any:
        """Run a hand-written SystemTap script through the same runner."""
        args = self._parse(self.stap, line)
        opts = self._options(args)
        run, plan = self._prepare("stap", args, opts, "", cell)
        return self._go(run, args, opts, plan)

    # -- shared ------------------------------------------------------------------------

    def _parse(self, func: Any, line: str) -> Any:
        # POSIX splitting: IPython's parse_argstring keeps the quotes in `-c "cmd args"`.
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot split the magic line ({exc}): {line}") from None
        args = func.parser.parse_args(argv)
        if args.out is not None and not _VAR.match(args.out):
            raise UsageError(f"-o/--out needs a Python variable name, not {args.out!r}")
        return args

    def _options(self, args: Any) -> pipeline.ProbeOptions:
        return pipeline.ProbeOptions(
            count=getattr(args, "count", None),
            duration=args.duration,
            command=args.command,
            pid=args.pid,
            regs=tuple(getattr(args, "regs", ()) or ()),
            print_regs=bool(getattr(args, "print_regs", False)),
            guru=args.guru,
            defines=tuple(args.defines),
            target=args.target if args.target is not None else self.target,
            verbose=0 if args.quiet else 1,
            grace=self.grace,
            string_max=self.string_max,
            dry_run=args.dry_run,
            latency=bool(getattr(args, "latency", False)),
            hist=getattr(args, "hist", None),
            hist_linear=getattr(args, "hist_linear", None),
            count_by=getattr(args, "count_by", None),
            command_only=bool(getattr(args, "cmd_only", False)),
        )

    def _action(self, target: str, announce: bool = False) -> tuple[str, str]:
        """What cells do in the current mode on `target` (auto is resolved once per target)."""
        key = (self.mode, target)
        if key not in self._resolved:
            action, why = recording.mode_for(self.mode, runner.parse_target(target))
            self._resolved[key] = (action, why)
            announce = True
        action, why = self._resolved[key]
        if announce:
            rec = f"{self.recordings_dir}/NAME{recording.SUFFIX}"
            head = f"stapmagic: mode {self.mode}" + (f" -> {action}" if self.mode == "auto" else "")
            text = {
                "live": f"every cell runs stap on target {target}; --recording is not written",
                "record": f"cells run stap on target {target}; those with --recording NAME are "
                          f"saved to {rec}",
                "replay": f"cells with --recording NAME REPLAY {rec}, recorded on a real "
                          "kernel; nothing is probed on this machine",
            }[action]
            print(f"{head} ({why}): {text}")
        return action, why

    def _prepare(self, kind: recording.Kind, args: Any, opts: pipeline.ProbeOptions,
                 first_line: str, body: str) -> tuple[pipeline.ProbeRun, recording.Plan]:
        """The run (live, to record, or from a recording) and the cell's recording plan."""
        speed = self.replay_speed if args.replay_speed is None else args.replay_speed
        action, why = "live", ""
        if args.record is None and args.replay is None and self.mode != "live":
            action, why = self._action(opts.target)
        try:
            if action == "replay" and args.recording is None and not args.dry_run:
                # A bad spec is the better message; build it without touching the target.
                offline = pipeline.replace_options(opts, dry_run=True)
                if kind == "kprobe":
                    pipeline.prepare(first_line, body, offline, build=lambda *a: [])
                raise recording.ReplayError(
                    f"mode {self.mode} replays ({why}), but this cell has no --recording NAME, "
                    "so there is nothing to replay")
            plan = recording.plan(kind, first_line, body, record=args.record,
                                  replay=args.replay, name=args.recording, action=action,
                                  speed=speed, directory=self.recordings_dir,
                                  dry_run=args.dry_run)
            if plan.replay is not None:
                run = recording.prepare_replay(plan.replay, kind, first_line, body, opts)
            elif kind == "kprobe":
                run = pipeline.prepare(first_line, body, opts, lookup=plan.kallsyms)
            else:
                run = pipeline.prepare_script(body, opts)
        except StapMagicError as exc:
            raise UsageError(str(exc)) from None
        return run, plan

    def _go(self, run: pipeline.ProbeRun, args: Any, opts: pipeline.ProbeOptions,
            plan: recording.Plan | None = None) -> Any:
        if args.dry_run:
            print(pipeline.dry_run_text(run))
            return None
        plan = plan or recording.Plan()
        recorder: recording.Recorder | None = None
        source: recording.Player | None = None
        note: str | None = None
        if plan.replay is not None:
            pace = ("as fast as possible" if plan.speed <= 0 else
                    "at the recorded pace" if plan.speed == 1 else f"at {plan.speed:g}x speed")
            note = f"{recording.describe(plan.replay)}; {pace}"
            if args.quiet:
                print(f"stapmagic: {note}")
            source = recording.Player(plan.replay, plan.speed)
        elif plan.record is not None:
            try:
                recorder = plan.start_recording(run, opts)
            except StapMagicError as exc:
                raise UsageError(str(exc)) from None
            print(f"stapmagic: recording this run to {plan.record} (kernel "
                  f"{recorder.header.kernel_release}, {recorder.header.stap_version})")
        view = None if args.quiet else live.LiveView(
            hex_columns=display.run_hex_columns(run), duration=opts.duration, count=opts.count,
            note=note)
        not_saved: list[str] = []

        def on_batch(run: pipeline.ProbeRun, batch: Any, final: bool) -> None:
            if view is not None:
                view.update(batch.frame, batch.messages, rows_total=run.parser.row_count,
                            skipped=run.skipped, transport_failures=run.transport_failures,
                            force=final)
            if final:
                if recorder is not None:
                    try:
                        recorder.finish(run.status)
                    except StapMagicError as exc:  # the run and its rows are fine
                        not_saved.append(str(exc))
                        run.notes.append(str(exc))
                        if args.bg:
                            print(f"stapmagic: {exc}", file=sys.stderr)
                self._finish(run, args, view, note)

        self.runs.append(run)
        tap = recorder.chunk if recorder is not None else None
        if args.bg:
            pipeline.start(run, on_batch=on_batch, grace=opts.grace, tap=tap, source=source)
            if args.out:
                self.shell.user_ns[args.out] = run
            self.shell.user_ns["_kprobe"] = run
            return run
        pipeline.execute(run, on_batch=on_batch, grace=opts.grace, tap=tap, source=source)
        df = self._result(run, args)
        if not_saved:
            where = f"`{args.out}` and `_kprobe.df`" if args.out else "`_kprobe.df`"
            raise UsageError(f"{not_saved[0]}\n({run.summary()}; the rows are in {where})")
        return df

    def _finish(self, run: pipeline.ProbeRun, args: Any, view: live.LiveView | None = None,
                note: str | None = None) -> None:
        """Report a finished run: its live view replaced in place by one summary (stap's
        messages collapsed under it); without a view the same, as text on stdout."""
        if run in self.runs:
            self.runs.remove(run)
        shown = worth_showing(run.messages) if self.show_messages else []
        if view is not None:
            view.close(display.run_summary(run, view.timings(), shown, note))
            if view.draws:
                return
        print(repr(display.run_summary(run, None, shown, None)))

    def _result(self, run: pipeline.ProbeRun, args: Any) -> Any:
        """The frame (stored first, even for a failed run), or UsageError if stap failed:
        the events, or with --hist the histogram buckets, with --count-by the counts."""
        df = run.result()
        df.attrs["kprobe_run"] = run
        if args.out:
            self.shell.user_ns[args.out] = df
        self.shell.user_ns["_kprobe"] = run
        if not run.ok:
            raise UsageError(failure_text(run, args.out))
        return df

    # -- %kfind ------------------------------------------------------------------------

    @magic_arguments()
    @argument("pattern", nargs="+", help="function names or globs (tcp_v4_*, *_connect)")
    @argument("--target", metavar="TARGET", help="where to look (default: "
              "%%config KprobeMagics.target)")
    @argument("--refresh", action="store_true", help="fetch the symbols again (the target's "
              "kernel changed)")
    @line_magic
    def kfind(self, line: str) -> Any:
        """Find kernel functions to probe: a DataFrame of name, module and the checks
        in_kallsyms, traceable (available_filter_functions), blacklisted (kprobes refuse)."""
        args = self._parse_plain(self.kfind, line)
        bad = [p for p in args.pattern if not _GLOB.match(p)]
        if bad:
            raise UsageError(f"not a function name or glob: {bad[0]!r} (letters, digits, _ . "
                             "and the glob characters * ? [ ])")
        where = args.target or self.target
        try:
            found = symbols.cached(where, runner.parse_target(where).run, refresh=args.refresh)
        except StapMagicError as exc:
            raise UsageError(f"cannot read the kernel symbols of {where}: {exc}") from None
        return symbols.find(found, args.pattern)

    def _parse_plain(self, func: Any, line: str) -> Any:
        try:
            return func.parser.parse_args(shlex.split(line))
        except ValueError as exc:
            raise UsageError(f"cannot split the magic line ({exc}): {line}") from None

    def function_names(self, target: str | None = None) -> list[str]:
        """The kernel functions of `target` (default: this magic's), cached per target."""
        where = target or self.target
        return symbols.cached(where, runner.parse_target(where).run).names()

    def stop_all(self, timeout: float | None = None) -> list[pipeline.ProbeRun]:
        """Stop every live run (extension unload, interpreter exit): all are asked at once,
        then waited for (each at most `timeout` s past stap's grace and escalation)."""
        live_runs = [run for run in list(self.runs) if run.running]
        for run in live_runs:
            run.stop_event.set()
        wait = timeout if timeout is not None else 3 * self.grace + 30
        for run in live_runs:
            run.wait(wait)
        return live_runs

    def _stop_all_verbose(self) -> None:
        stopped = self.stop_all()
        for run in stopped:
            print(f"stapmagic: run {run.run_id} stopped: {run.summary()}")
        if not stopped:
            print("stapmagic: no run is live")

    def list_running(self) -> Any:
        """The live runs: id, probes, target, elapsed seconds, rows so far."""
        now = time.time()
        live_runs = [run for run in list(self.runs) if run.running]
        return pd.DataFrame({
            "id": pd.array([r.run_id for r in live_runs], dtype="int64"),
            "probes": [", ".join(p.label for p in r.script.probes) if r.script is not None
                       else "%%stap script" for r in live_runs],
            "target": [r.target.url or r.target.kind for r in live_runs],
            "elapsed_s": pd.array([round(now - r.started, 1) for r in live_runs],
                                  dtype="float64"),
            "rows": pd.array([r.parser.row_count for r in live_runs], dtype="int64"),
        })


_KPROBE_PARSER = KprobeMagics.kprobe.parser  # type: ignore[attr-defined]
# IPython's MagicHelpFormatter prefixes one more "%": the usage reads %%kprobe.
_KPROBE_PARSER.prog = "%kprobe"
KprobeMagics.kprobe.__doc__ = helptext.kprobe_help(
    _KPROBE_PARSER._actions,
    "Probe kernel functions without debuginfo (SystemTap kprobe.*); the events come back as "
    "a typed DataFrame.")


def register(ipython: Any) -> None:
    """Register the magics and the one-line `%%kprobe` input transformer."""
    from . import one_line_cell

    ipython.register_magics(KprobeMagics)
    magics = ipython.magics_manager.registry.get("KprobeMagics")
    if magics is not None:
        # Background runs hold a stap session (a kernel module) each: end them at exit.
        atexit.register(magics.stop_all)
    display.install(ipython)
    if magics is not None:
        matcher = complete.ipython_matcher(complete.value_flags(magics.kprobe.parser),
                                           magics.function_names)
        ipython.Completer.custom_matchers.append(matcher)
        magics._matcher = matcher
    transforms = ipython.input_transformer_manager.line_transforms
    if one_line_cell not in transforms:
        # Before IPython's own cell_magic transform, which would see an empty body.
        transforms.insert(0, one_line_cell)


def unregister(ipython: Any) -> None:
    """Stop live probes and remove what `register` added."""
    from . import one_line_cell

    magics = ipython.magics_manager.registry.get("KprobeMagics")
    if magics is not None:
        magics.stop_all()
        atexit.unregister(magics.stop_all)
        matcher = getattr(magics, "_matcher", None)
        if matcher in ipython.Completer.custom_matchers:
            ipython.Completer.custom_matchers.remove(matcher)
    transforms = ipython.input_transformer_manager.line_transforms
    if one_line_cell in transforms:
        transforms.remove(one_line_cell)
    display.uninstall(ipython)
    for kind in ("line", "cell"):
        for name in ("kprobe", "stap", "kfind"):
            ipython.magics_manager.magics[kind].pop(name, None)
    ipython.magics_manager.registry.pop("KprobeMagics", None)
