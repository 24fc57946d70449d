"""The one declaration of every option the magics take.

Each row says how the magic line spells the option, how its text is read, how a value is
checked (the same check for the line, `ProbeOptions` through the Python API and the
traitlets), which magics take it, and whether a replay compares it. magic.py generates its
argparse declarations from `OPTIONS`, `ProbeOptions.__post_init__` validates with it, and
`recording.check_match` compares the rows marked `compared`.
"""

from __future__ import annotations

import argparse
import builtins
import keyword
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import OptionError
from .script import MAX_COUNT, MAX_DURATION, STRING_MAX_LIMIT

__all__ = [
    "BY_NAME",
    "DEFAULT_GRACE",
    "OPTIONS",
    "PID_MAX_LIMIT",
    "Option",
    "check_out_name",
    "validate",
]

# Seconds stap gets after SIGINT before SIGTERM, then SIGKILL. A remote stap needs a few:
# the end probes, the module unload and ssh round trips under TCG.
DEFAULT_GRACE = 10.0
# include/linux/threads.h: PID_MAX_LIMIT on 64-bit (4 * 1024 * 1024), the most
# /proc/sys/kernel/pid_max can be set to; a larger -x can never name a process.
PID_MAX_LIMIT = 4 * 1024 * 1024

Magic = Literal["kprobe", "stap"]
BOTH: tuple[Magic, ...] = ("kprobe", "stap")
KPROBE: tuple[Magic, ...] = ("kprobe",)
STAP: tuple[Magic, ...] = ("stap",)


@dataclass(frozen=True)
class Option:
    """One option. `field`: a ProbeOptions field (else the magic or the session uses it);
    `compared`: a replay must match it; `trait`: when not on the line, the value comes from
    KprobeMagics.<name>; `parse` reads the line's text (before `check`)."""

    name: str
    flags: tuple[str, ...]
    default: Any
    help: str
    check: Callable[[Option, Any], None]
    parse: Callable[[str], Any] | None = None
    action: Literal["store", "store_true", "append", "store_const"] = "store"
    const: Any = None
    metavar: str | None = None
    group: str = "run"
    magics: tuple[Magic, ...] = BOTH
    field: bool = True
    compared: bool = False
    trait: bool = False
    spelled: str | None = None

    @property
    def label(self) -> str:
        """How messages name it: its first flag, or the trait that sets it."""
        if self.spelled is not None:
            return self.spelled
        return self.flags[0] if self.flags else f"KprobeMagics.{self.name}"

    def read(self, text: str) -> Any:
        """The line's text as a checked value (argparse `type=`)."""
        try:
            value = self.parse(text) if self.parse is not None else text
            self.check(self, value)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value


# -- checks of Python values ------------------------------------------------------------------


def _fail(opt: Option, want: str, value: Any) -> OptionError:
    return OptionError(f"{opt.label} needs {want}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_in(lo: int, hi: int, want: str) -> Callable[[Option, Any], None]:
    def check(opt: Option, value: Any) -> None:
        if value is not None and not (_is_int(value) and lo <= value <= hi):
            raise _fail(opt, f"{want} from {lo} to {hi}", value)

    return check


def _seconds(lo_open: bool, hi: float | None, want: str) -> Callable[[Option, Any], None]:
    def check(opt: Option, value: Any) -> None:
        if value is None:
            return
        ok = _is_number(value) and math.isfinite(value) and (value > 0 if lo_open else value >= 0)
        if not ok or (hi is not None and value > hi):
            raise _fail(opt, want, value)

    return check


def _flag(opt: Option, value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(opt, "True or False", value)


def _text(opt: Option, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise _fail(opt, "a string", value)
    if "\x00" in value:
        raise OptionError(f"{opt.label} contains a NUL byte")
    if not value.strip():
        raise OptionError(f"{opt.label} needs a value, got an empty string")


def _str(opt: Option, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise _fail(opt, "a string", value)


def _texts(opt: Option, value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise _fail(opt, "a tuple of strings", value)
    for v in value:
        _text(opt, v)


def _target(opt: Option, value: Any) -> None:
    from .runner import parse_target

    if not isinstance(value, str):
        raise _fail(opt, "a target string", value)
    parse_target(value)  # OptionError names the problem (NUL, empty...) and the accepted forms


def _linear(opt: Option, value: Any) -> None:
    if value is not None and not (
        isinstance(value, tuple) and len(value) == 3 and all(_is_int(v) for v in value)
    ):
        raise _fail(opt, "a tuple of three integers (MIN, MAX, STEP)", value)


def _verbose(opt: Option, value: Any) -> None:
    if not (_is_int(value) and value >= 0):
        raise _fail(opt, "a non-negative integer", value)


# -- reading the line's text ------------------------------------------------------------------

# ASCII only: int() and float() also take "１２", "1_0", " 5" and "+5".
_UINT = re.compile(r"[0-9]+")
_SINT = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _ascii_int(text: str) -> int:
    if not _UINT.fullmatch(text):
        raise OptionError(f"{text!r} is not a whole number (ASCII digits 0-9 only)")
    return int(text)


def _ascii_decimal(text: str) -> float:
    if not _DECIMAL.fullmatch(text):
        raise OptionError(f"{text!r} is not a decimal number (ASCII digits and one '.')")
    return float(text)


def _reg_list(text: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in text.split(",") if r.strip())


def _linear_text(text: str) -> tuple[int, ...]:
    parts = text.split(",")
    if len(parts) != 3 or not all(_SINT.fullmatch(p.strip()) for p in parts):
        raise OptionError(f"--hist-linear wants MIN,MAX,STEP integers, got {text!r}")
    return tuple(int(p) for p in parts)


# -- -o VAR -----------------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# What IPython keeps in the namespace itself (history, In/Out, get_ipython) and what the
# magic writes there (_kprobe).
_SHELL_NAMES = frozenset(
    {"In", "Out", "get_ipython", "exit", "quit", "_ih", "_oh", "_dh", "_kprobe"}
)
_HISTORY = re.compile(r"_+\Z|_i+\Z|_i?[0-9]+\Z")


def check_out_name(name: str, hidden: Mapping[str, Any] | Sequence[str] = ()) -> None:
    """OptionError unless `name` is a plain variable the cell may overwrite: no keyword, no
    dunder, nothing the shell keeps there (its `hidden` names too), no builtin."""
    why = None
    if not isinstance(name, str) or not _IDENT.match(name):
        why = "is not a Python variable name"
    elif keyword.iskeyword(name):
        why = "is a Python keyword"
    elif name.startswith("__") and name.endswith("__"):
        why = "is a special (dunder) name"
    elif name in _SHELL_NAMES or _HISTORY.match(name) or name in hidden:
        why = "is kept by the shell itself (history, In/Out, get_ipython, _kprobe)"
    elif hasattr(builtins, name):
        why = f"would hide Python's builtin {name}()"
    if why is not None:
        raise OptionError(f"-o/--out {name!r} {why}: give another variable name, e.g. -o events")


def _out(opt: Option, value: Any) -> None:
    if value is not None:
        check_out_name(value)


# -- the table --------------------------------------------------------------------------------

OPTIONS: tuple[Option, ...] = (
    # where and how stap runs
    Option(
        "command",
        ("-c",),
        None,
        "run CMD on the target (stap -c) and stop when it ends; with several targets it runs "
        "on every host",
        _text,
        metavar="CMD",
        compared=True,
    ),
    Option(
        "pid",
        ("-x",),
        None,
        "only events of process PID (stap -x)",
        _int_in(1, PID_MAX_LIMIT, "a process id"),
        parse=_ascii_int,
        metavar="PID",
        compared=True,
    ),
    Option(
        "duration",
        ("-T", "--duration"),
        None,
        "stop after SEC seconds (%%stap too: a timer probe added to the script ends it)",
        _seconds(
            True,
            MAX_DURATION,
            f"a number of seconds above 0, at most "
            f"{MAX_DURATION:.0f} (one day: SystemTap's timer limit)",
        ),
        parse=_ascii_decimal,
        metavar="SEC",
        compared=True,
    ),
    Option(
        "defines",
        ("-D",),
        (),
        "pass -D NAME=VALUE to stap",
        _texts,
        action="append",
        metavar="NAME=VALUE",
        compared=True,
    ),
    Option(
        "buffer_mb",
        ("-s",),
        None,
        "stap's output buffer in MB (stap -s, 1-4095; stap's default 16); what a run lost "
        "is in _kprobe.ledger",
        _int_in(1, 4095, "a buffer size in MB from 1 to 4095 (stap's limit)"),
        parse=_ascii_int,
        metavar="MB",
        compared=True,
    ),
    Option(
        "guru",
        ("--guru",),
        False,
        "stap -g (needed for statement probes)",
        _flag,
        action="store_true",
        compared=True,
    ),
    Option(
        "include_self",
        ("--include-self",),
        False,
        "also record stapmagic's own transport (stapio, staprun, stapsh and the ssh "
        "session carrying them), skipped by default",
        _flag,
        action="store_true",
        magics=KPROBE,
        compared=True,
    ),
    Option(
        "target",
        ("--target",),
        "local",
        "where to probe: local, lab, lab:NAME or ssh://user@host[:port], or several "
        "separated by commas (rows get a host column) "
        "(default: %%config KprobeMagics.target)",
        _target,
        metavar="TARGET",
        trait=True,
    ),
    Option(
        "dry_run",
        ("--dry-run",),
        False,
        "print the generated script and the stap command line, run nothing",
        _flag,
        action="store_true",
        group="output",
    ),
    Option(
        "verbose",
        ("-q", "--quiet"),
        1,
        "no progress or live view",
        _verbose,
        action="store_const",
        const=0,
        group="output",
        spelled="verbose",
    ),
    Option(
        "grace",
        (),
        DEFAULT_GRACE,
        "Seconds stap gets after SIGINT before SIGTERM, then SIGKILL (a remote stap "
        "needs a few: the end probes, the module unload and ssh round trips under TCG).",
        _seconds(False, None, "a finite number of seconds, 0 or more"),
        trait=True,
    ),
    Option(
        "string_max",
        (),
        64,
        "Length cap of str/ustr arguments.",
        _int_in(1, STRING_MAX_LIMIT, "a string length (SystemTap's MAXSTRINGLEN - 1)"),
        trait=True,
        compared=True,
    ),
    # what the probes record (%%kprobe)
    Option(
        "count",
        ("-n", "--count"),
        None,
        "stop after N events",
        _int_in(1, MAX_COUNT, "an event count"),
        parse=_ascii_int,
        metavar="N",
        magics=KPROBE,
        compared=True,
    ),
    Option(
        "regs",
        ("--regs",),
        (),
        "register columns, e.g. rip,rax,rdi (u_register values)",
        _texts,
        parse=_reg_list,
        metavar="LIST",
        magics=KPROBE,
        compared=True,
    ),
    Option(
        "print_regs",
        ("--print-regs",),
        False,
        "a print_regs() dump per event, split into one column per register",
        _flag,
        action="store_true",
        magics=KPROBE,
        compared=True,
    ),
    Option(
        "latency",
        ("--latency",),
        False,
        "pair each FUNCTION with its return: one row per call with latency_ns",
        _flag,
        action="store_true",
        magics=KPROBE,
        compared=True,
    ),
    Option(
        "hist",
        ("--hist",),
        None,
        "latency, retval or ARG: an in-kernel log2 histogram per probe, printed at the end "
        "instead of rows (latency implies --latency)",
        _text,
        metavar="WHAT",
        group="aggregate",
        magics=KPROBE,
        compared=True,
    ),
    Option(
        "hist_linear",
        ("--hist-linear",),
        None,
        "linear buckets for --hist instead of log2",
        _linear,
        parse=_linear_text,
        metavar="MIN,MAX,STEP",
        group="aggregate",
        magics=KPROBE,
        compared=True,
    ),
    Option(
        "count_by",
        ("--count-by",),
        None,
        "comm, pid, cpu, retval or ARG: in-kernel event counts per key",
        _text,
        metavar="KEY",
        group="aggregate",
        magics=KPROBE,
        compared=True,
    ),
    Option(
        "where",
        ("--where",),
        None,
        "a filter evaluated in the probe: == != < <= > >=, && || !, parentheses, numbers, "
        '"strings", the spec\'s names, member paths (sk->a.b), retval, pid tid comm cpu',
        _text,
        metavar="EXPR",
        magics=KPROBE,
        compared=True,
    ),
    Option(
        "command_only",
        ("--cmd-only",),
        False,
        "with -c: only events of the command's process (target(), like -x)",
        _flag,
        action="store_true",
        magics=KPROBE,
        compared=True,
    ),
    Option(
        "stap_spec",
        ("--spec",),
        (),
        "the records the script prints, as %%kprobe specs (one --spec per probe index, "
        "in order): they become rows instead of messages",
        _texts,
        action="append",
        metavar="SPEC",
        magics=STAP,
        compared=True,
    ),
    # the cell (not ProbeOptions)
    Option(
        "out",
        ("-o", "--out"),
        None,
        "store the DataFrame in VAR",
        _out,
        metavar="VAR",
        group="output",
        field=False,
    ),
    Option(
        "bg",
        ("--bg",),
        False,
        "run in the background: returns the run (.df, .stop(), .wait())",
        _flag,
        action="store_true",
        group="output",
        field=False,
    ),
    # recording.plan checks the file names (NUL, directories) and says what is wrong
    Option(
        "record",
        ("--record",),
        None,
        "also save the run (stap's raw output) to FILE",
        _str,
        metavar="FILE",
        group="recording",
        field=False,
    ),
    Option(
        "replay",
        ("--replay",),
        None,
        "run the pipeline from a recording instead of stap",
        _str,
        metavar="FILE",
        group="recording",
        field=False,
    ),
    Option(
        "recording",
        ("--recording",),
        None,
        "this cell's recording, recordings/NAME.jsonl: made in mode record, replayed in "
        "mode replay (see KprobeMagics.mode)",
        _str,
        metavar="NAME",
        group="recording",
        field=False,
    ),
    Option(
        "replay_speed",
        ("--replay-speed",),
        0.0,
        "replay pace: 0 as fast as possible (default), 1 as recorded, 2 twice as fast",
        _seconds(False, None, "a finite speed, 0 or more"),
        parse=_ascii_decimal,
        metavar="X",
        group="recording",
        field=False,
        trait=True,
    ),
    Option(
        "list_running",
        ("--list-running",),
        False,
        "%%kprobe --list-running: a table of the live (--bg) runs",
        _flag,
        action="store_true",
        group="control",
        magics=KPROBE,
        field=False,
    ),
    Option(
        "stop_all",
        ("--stop-all",),
        False,
        "%%kprobe --stop-all: stop every live run",
        _flag,
        action="store_true",
        group="control",
        magics=KPROBE,
        field=False,
    ),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
FIELDS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.field)


def validate(values: Mapping[str, Any]) -> None:
    """OptionError for the first value its row refuses (ProbeOptions.__post_init__)."""
    for name, value in values.items():
        opt = BY_NAME[name]
        opt.check(opt, value)


class _Once(argparse.Action):
    """Store a value, refusing a second one (`-c a -c b` would silently keep b)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given: set[str] = namespace.__dict__.setdefault("_given", set())
        if self.dest in given:
            parser.error(f"{'/'.join(self.option_strings)} given twice: give it once")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def argparse_kwargs(opt: Option) -> dict[str, Any]:
    """The keyword arguments of `opt`'s argparse declaration."""
    kw: dict[str, Any] = {"dest": opt.name, "help": opt.help.replace("%", "%%")}
    if opt.action == "store":
        kw.update(action=_Once, type=opt.read, metavar=opt.metavar, default=None)
    elif opt.action == "append":
        kw.update(
            action="append",
            type=opt.read if opt.parse else _one_text(opt),
            metavar=opt.metavar,
            default=[],
        )
    elif opt.action == "store_const":
        kw.update(action="store_const", const=opt.const, default=None)
    else:
        kw.update(action="store_true", default=None)
    return kw


def _one_text(opt: Option) -> Callable[[str], str]:
    def read(text: str) -> str:
        try:
            _text(opt, text)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return read


def line_values(
    args: argparse.Namespace, magic: Magic, traits: Mapping[str, Any]
) -> dict[str, Any]:
    """Every row's value for one cell: the line's, else the trait's, else the default."""
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        given = getattr(args, opt.name, None) if magic in opt.magics else None
        if given is None or given == []:
            value = traits[opt.name] if opt.trait else opt.default
        elif opt.action == "append":
            value = tuple(given)
        else:
            value = given
        values[opt.name] = value
    return values


def markdown_table() -> str:
    """README.md's options table (scripts/options_table.py writes it; a test compares)."""
    rows = ["| option | magics | meaning |", "| --- | --- | --- |"]
    for opt in OPTIONS:
        if not opt.flags:
            continue
        spelled = ", ".join(
            f"`{f} {opt.metavar}`" if opt.metavar and opt.action != "store_const" else f"`{f}`"
            for f in opt.flags
        )
        where = ", ".join(f"%%{m}" for m in opt.magics)
        meaning = opt.help.replace("|", "\\|")
        rows.append(f"| {spelled} | {where} | {meaning} |")
    return "\n".join(rows) + "\n"
