"""IPython adapter: `%%kprobe`, `%kprobe` and `%%stap`.

The option declarations come from `options.OPTIONS`, the cell's lifecycle is
`session.Session`; this keeps the traitlets, the user namespace and the `UsageError` that a
StapMagicError becomes, so the notebook shows one clear message instead of a traceback.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
from collections.abc import Callable
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
from traitlets import Bool, Float, Int, TraitError, Unicode, default, observe, validate

# plot registers the df.kprobe accessor
from . import (  # noqa: F401
    complete,
    display,
    helptext,
    kbtf,
    options,
    pipeline,
    plot,
    recording,
    runner,
    session,
    symbols,
)
from .errors import OptionError, StapMagicError
from .magic_args import argument, magic_arguments
from .session import failure_text, worth_showing  # noqa: F401  (their home before session.py)

_GLOB = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+\Z")


def _options_of(magic: options.Magic) -> Callable[[Any], Any]:
    """The magic's argparse declarations, from the options table (in its order)."""

    def declare(func: Any) -> Any:
        for opt in reversed([o for o in options.OPTIONS if o.flags and magic in o.magics]):
            func = argument(*opt.flags, **options.argparse_kwargs(opt))(func)
        return func

    return declare


def _trait_help(name: str) -> str:
    return options.BY_NAME[name].help


def _refusal(name: str, value: Any) -> str | None:
    """Why KprobeMagics.<name> cannot be `value`, or None."""
    try:
        if name == "mode":
            if value not in recording.MODES:
                return f"KprobeMagics.mode {value!r}: use one of {', '.join(recording.MODES)}"
        elif name in options.BY_NAME:
            opt = options.BY_NAME[name]
            opt.check(opt, value)
    except OptionError as exc:
        return f"KprobeMagics.{name}: {exc}"
    return None


def _drop_refused_config(config: Any) -> None:
    """%config merges a refused value into the shell's config too, where the next load of
    the extension would trip on it: drop it, saying so."""
    if "KprobeMagics" not in config:
        return
    section = config.KprobeMagics
    for name in list(section):
        why = _refusal(name, section[name])
        if why is not None:
            print(f"stapmagic: ignoring %config {why}")
            del section[name]


@magics_class
class KprobeMagics(Magics):
    """DWARF-less kernel probes (SystemTap kprobe.*) whose events come back as a DataFrame."""

    target = Unicode("local", help="Default target: local, lab or ssh://user@host[:port].").tag(
        config=True
    )
    grace = Float(options.DEFAULT_GRACE, help=_trait_help("grace")).tag(config=True)
    string_max = Int(options.BY_NAME["string_max"].default, help=_trait_help("string_max")).tag(
        config=True
    )
    show_messages = Bool(True, help="Print stap's messages after each run.").tag(config=True)
    mode = Unicode(
        help="live: run stap; record: run stap and save cells with --recording NAME; "
        "replay: replay those recordings; auto: $STAPMAGIC_MODE if set, else "
        "live where the target can run stap, else replay. Default: "
        "$STAPMAGIC_MODE or live."
    ).tag(config=True)
    recordings_dir = Unicode(
        "recordings",
        help="Where --recording NAME lives (relative to "
        "the working directory, i.e. the notebook's).",
    ).tag(config=True)
    replay_speed = Float(
        0.0, help="Default --replay-speed: 0 as fast as possible, 1 as recorded."
    ).tag(config=True)

    @default("target")
    def _default_target(self) -> str:
        return os.environ.get("STAPMAGIC_TARGET", "").strip() or "local"

    @default("mode")
    def _default_mode(self) -> str:
        env = os.environ.get("STAPMAGIC_MODE", "").strip().lower()
        return env if env in recording.MODES else "live"

    # A refused value keeps the old one (traitlets rolls back on TraitError; %config prints it).
    @validate("target", "grace", "string_max", "replay_speed", "mode")
    def _valid(self, proposal: Any) -> Any:
        why = _refusal(proposal["trait"].name, proposal["value"])
        if why is not None:
            raise TraitError(why)
        return proposal["value"]

    @observe("mode")
    def _mode_changed(self, change: Any) -> None:
        try:
            self.session.set_mode(change["new"], self.target)
        except StapMagicError as exc:
            raise UsageError(str(exc)) from None

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        self.session = session.Session()
        if shell is not None:
            _drop_refused_config(shell.config)
        super().__init__(shell=shell, **kwargs)
        # Resolve the dynamic default now: a refused %config rolls back to the value before it.
        self.session.mode = self.mode

    @property
    def runs(self) -> list[pipeline.ProbeRun]:
        return self.session.runs

    # -- %%kprobe / %kprobe ---------------------------------------------------------

    @no_var_expand
    @magic_arguments()
    @_options_of("kprobe")
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
        return self._cell("kprobe", args, " ".join(args.spec), cell or "")

    # -- %%stap -----------------------------------------------------------------------

    @no_var_expand
    @magic_arguments()
    @_options_of("stap")
    @cell_magic
    def stap(self, line: str, cell: str) -> Any:
        """Run a hand-written SystemTap script through the same runner (with --spec, the
        records it prints in the magic's format become rows)."""
        return self._cell("stap", self._parse(self.stap, line), "", cell)

    # -- shared ------------------------------------------------------------------------

    def _parse(self, func: Any, line: str) -> Any:
        # POSIX splitting: IPython's parse_argstring keeps the quotes in `-c "cmd args"`.
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot split the magic line ({exc}): {line}") from None
        return func.parser.parse_args(argv)

    def _cell(self, kind: options.Magic, args: Any, first_line: str, body: str) -> Any:
        """Run one cell through the session; store its run and frame in the namespace."""
        if self.shell is None:
            raise UsageError("stapmagic's magics run in an IPython shell")
        ns = self.shell.user_ns
        traits = {
            "target": self.target,
            "grace": self.grace,
            "string_max": self.string_max,
            "replay_speed": self.replay_speed,
        }
        self.session.mode = self.mode
        self.session.recordings_dir = self.recordings_dir
        self.session.show_messages = self.show_messages
        try:
            values = options.line_values(args, kind, traits)
            if values["out"] is not None:
                options.check_out_name(values["out"], self.shell.user_ns_hidden)
            cell = session.Cell.of(kind, first_line, body, values)
            outcome = self.session.run(cell)
        except StapMagicError as exc:
            raise UsageError(str(exc)) from None
        if outcome is None:
            return None
        run = outcome.run
        if cell.bg:
            if cell.out:
                ns[cell.out] = run
            ns["_kprobe"] = run
            return run
        # stored first, even for a failed run
        df = session.result(run)
        if cell.out:
            ns[cell.out] = df
        ns["_kprobe"] = run
        if not run.ok:
            raise UsageError(failure_text(run, cell.out))
        if outcome.not_saved:
            where = f"`{cell.out}` and `_kprobe.df`" if cell.out else "`_kprobe.df`"
            raise UsageError(f"{outcome.not_saved}\n({run.summary()}; the rows are in {where})")
        return df

    # -- %kfind ------------------------------------------------------------------------

    @magic_arguments()
    @argument("pattern", nargs="+", help="function names or globs (tcp_v4_*, *_connect)")
    @argument(
        "--target", metavar="TARGET", help="where to look (default: %%config KprobeMagics.target)"
    )
    @argument(
        "--refresh",
        action="store_true",
        help="fetch the symbols again (the target's kernel changed)",
    )
    @line_magic
    def kfind(self, line: str) -> Any:
        """Find kernel functions to probe: a DataFrame of name, module, the checks
        in_kallsyms, traceable (available_filter_functions), blacklisted (kprobes refuse),
        in_btf, and the C prototype from the target's BTF."""
        args = self._parse(KprobeMagics.kfind, line)
        bad = [p for p in args.pattern if not _GLOB.match(p)]
        if bad:
            raise UsageError(
                f"not a function name or glob: {bad[0]!r} (letters, digits, _ . "
                "and the glob characters * ? [ ])"
            )
        where = args.target or self.target
        try:
            target = runner.parse_target(where)
            found = symbols.cached(where, target.run, refresh=args.refresh)
        except StapMagicError as exc:
            raise UsageError(f"cannot read the kernel symbols of {where}: {exc}") from None
        mods = symbols.modules_of(found, symbols.matching(found, args.pattern))
        kb = symbols.cached_btf(where, mods, lambda m: _kfind_btf(target, m), refresh=args.refresh)
        return symbols.find(found, args.pattern, btf=kb)

    def function_names(self, target: str | None = None) -> list[str]:
        """The kernel functions of `target` (default: this magic's), cached per target."""
        where = target or self.target
        return symbols.cached(where, runner.parse_target(where).run).names()

    def completion_names(self, cell: str) -> list[str]:
        """The functions Tab offers in `cell`: its target's; in a replay the ones its
        recording holds or probes (with no recording named, those of every recording in
        recordings_dir), never this host's as the target's."""
        target = complete.line_target(cell) or self.target
        replay = complete.line_option(cell, "--replay")
        name = complete.line_option(cell, "--recording")
        if replay is None and not self.session.replays(target):
            return self.function_names(target)
        if replay is None and name is None:
            return symbols.replayable(self.recordings_dir)
        try:
            path = replay or recording.recording_path(name or "", self.recordings_dir)
            return symbols.recorded(path)
        except StapMagicError:
            return []

    def stop_all(self, timeout: float | None = None) -> list[pipeline.ProbeRun]:
        """Stop every live run (extension unload, interpreter exit): all are asked at once,
        then waited for (each at most `timeout` s past stap's grace and escalation)."""
        return self.session.stop_all(timeout if timeout is not None else 3 * self.grace + 30)

    def _stop_all_verbose(self) -> None:
        stopped = self.stop_all()
        for run in stopped:
            print(f"stapmagic: run {run.run_id} stopped: {run.summary()}")
        if not stopped:
            print("stapmagic: no run is live")

    def list_running(self) -> pd.DataFrame:
        """The live runs: id, probes, target, elapsed seconds, rows so far."""
        return self.session.list_running()


def _kfind_btf(target: runner.Target, modules: list[str]) -> kbtf.KernelBTF | None:
    """The BTF %kfind shows prototypes from: vmlinux's and `modules`'; vmlinux's alone when
    a module has none; None (in_btf unknown) when the kernel has none."""
    for mods in (modules, []) if modules else ([],):
        try:
            return pipeline.target_btf(target, mods)
        except StapMagicError:
            continue
    return None


_KPROBE_PARSER = KprobeMagics.kprobe.parser
# IPython's MagicHelpFormatter prefixes one more "%": the usage reads %%kprobe.
_KPROBE_PARSER.prog = "%kprobe"
KprobeMagics.kprobe.__doc__ = helptext.kprobe_help(
    _KPROBE_PARSER._actions,
    "Probe kernel functions without debuginfo (SystemTap kprobe.*); the events come back as "
    "a typed DataFrame.",
    {o.name: o.group for o in options.OPTIONS},
)


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
        matcher = complete.ipython_matcher(
            complete.value_flags(magics.kprobe.parser), magics.completion_names
        )
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
    from .targets import sshmux

    sshmux.stop_all()  # the shared ssh connections (runs in flight keep theirs)
    for kind in ("line", "cell"):
        for name in ("kprobe", "stap", "kfind"):
            ipython.magics_manager.magics[kind].pop(name, None)
    ipython.magics_manager.registry.pop("KprobeMagics", None)
