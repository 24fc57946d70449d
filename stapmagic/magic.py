"""IPython adapter: `%%kprobe`, `%kprobe` and `%%stap`.

Options are parsed here, everything else happens in `pipeline`; domain errors become
`UsageError` so the notebook shows one clear message instead of a traceback.
"""

from __future__ import annotations

import re
import shlex
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Float, Int, Unicode

from . import display, live, pipeline, plot  # noqa: F401  (plot registers the df.kprobe accessor)
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


def _reg_list(text: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in text.split(",") if r.strip())


_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

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
    ]):
        func = deco(func)
    return func


@magics_class
class KprobeMagics(Magics):
    """DWARF-less kernel probes (SystemTap kprobe.*) whose events come back as a DataFrame."""

    target = Unicode("local", help="Default target: local, lab or ssh://user@host[:port].").tag(
        config=True
    )
    grace = Float(5.0, help="Seconds stap gets after SIGINT before SIGTERM, then SIGKILL.").tag(
        config=True
    )
    string_max = Int(64, help="Length cap of str/ustr arguments.").tag(config=True)
    show_messages = Bool(True, help="Print stap's messages after each run.").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
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
    @argument("spec", nargs="*", help="[MODULE:]FUNCTION[.return[:TYPE]] [NAME:TYPE ...]")
    @line_cell_magic
    def kprobe(self, line: str, cell: str | None = None) -> Any:
        """Probe kernel functions without debuginfo; returns a DataFrame of events.

        %%kprobe tcp_v4_connect sk:ptr uaddr:ptr len:uint
        """
        args = self._parse(self.kprobe, line)
        first_line = " ".join(args.spec)
        opts = self._options(args)
        try:
            run = pipeline.prepare(first_line, cell or "", opts)
        except StapMagicError as exc:
            raise UsageError(str(exc)) from None
        return self._go(run, args, opts)

    # -- %%stap -----------------------------------------------------------------------

    @no_var_expand
    @magic_arguments()
    @_common_options
    @cell_magic
    def stap(self, line: str, cell: str) -> Any:
        """Run a hand-written SystemTap script through the same runner."""
        args = self._parse(self.stap, line)
        opts = self._options(args)
        try:
            run = pipeline.prepare_script(cell, opts)
        except StapMagicError as exc:
            raise UsageError(str(exc)) from None
        return self._go(run, args, opts)

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
            target=args.target or self.target,
            verbose=0 if args.quiet else 1,
            grace=self.grace,
            string_max=self.string_max,
            dry_run=args.dry_run,
        )

    def _go(self, run: pipeline.ProbeRun, args: Any, opts: pipeline.ProbeOptions) -> Any:
        if args.dry_run:
            print(pipeline.dry_run_text(run))
            return None
        view = None if args.quiet else live.LiveView()

        def on_batch(run: pipeline.ProbeRun, batch: Any, final: bool) -> None:
            if view is not None:
                view.update(batch.frame, batch.messages, rows_total=run.parser.row_count,
                            skipped=run.skipped, transport_failures=run.transport_failures,
                            force=final)
                if final:
                    view.close(run.summary())
            if final:
                self._finish(run, args)

        self.runs.append(run)
        if args.bg:
            pipeline.start(run, on_batch=on_batch, grace=opts.grace)
            return run
        pipeline.execute(run, on_batch=on_batch, grace=opts.grace)
        return self._result(run, args)

    def _finish(self, run: pipeline.ProbeRun, args: Any) -> None:
        """Report a finished run: stap's messages worth reading, diagnoses, one summary."""
        if run in self.runs:
            self.runs.remove(run)
        self._report(run)

    def _result(self, run: pipeline.ProbeRun, args: Any) -> Any:
        """The frame (stored first, even for a failed run), or UsageError if stap failed."""
        df = run.df
        df.attrs["kprobe_run"] = run
        if args.out:
            self.shell.user_ns[args.out] = df
        self.shell.user_ns["_kprobe"] = run
        if not run.ok:
            raise UsageError(failure_text(run, args.out))
        return df

    def _report(self, run: pipeline.ProbeRun) -> None:
        out = sys.stderr
        if self.show_messages:
            for msg in worth_showing(run.messages):
                print(msg, file=out)
        for d in run.diagnoses:
            if d.severity != "info":
                print(f"stapmagic: {d.summary}", file=out)
        print(f"stapmagic: {run.summary()}", file=out)

    def stop_all(self) -> None:
        """Stop every live run (extension unload, interpreter exit)."""
        for run in list(self.runs):
            if run.running:
                run.stop()


def register(ipython: Any) -> None:
    """Register the magics and the one-line `%%kprobe` input transformer."""
    from . import one_line_cell

    ipython.register_magics(KprobeMagics)
    display.install(ipython)
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
    transforms = ipython.input_transformer_manager.line_transforms
    if one_line_cell in transforms:
        transforms.remove(one_line_cell)
    display.uninstall(ipython)
    for kind in ("line", "cell"):
        for name in ("kprobe", "stap"):
            ipython.magics_manager.magics[kind].pop(name, None)
    ipython.magics_manager.registry.pop("KprobeMagics", None)
