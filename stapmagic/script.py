"""`Spec` -> SystemTap script text plus the column schema of its `@@sm1` records.

Facts the generated code relies on (SystemTap sources, see DESIGN.md and shared/reference):
- printf takes at most 32 value arguments (translate.cxx, PR10750): longer records are split
  into several printf calls; only the last one ends the line, and one handler's output never
  interleaves with another CPU's (per-CPU print buffer, flushed when the handler ends).
- returnval() is zero-extended: an int -97 reads 4294967199, so 32-bit types are re-extended.
- errno_str() returns "" for a code it does not know (tapset/errno.stp, string return values
  start empty), so the errno field is a name or empty.
- Any error in a handler ends the whole run (MAXERRORS 0): string reads are fault-safe.
- kprobe.module(M).function(F) registers nothing on Linux >= 6.4, so module functions are
  probed as kprobe.function(F) (or by absolute address under --guru, module_statement_probe).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from . import btfspec, fieldread, selfskip, wire
from . import where as where_mod
from .errors import OptionError, SpecError

# The schema types live in schema.py (shared with records.py); re-exported here.
from .schema import Column, ColumnKind, ProbeSchema
from .spec import ARG_TYPES, MAX_ARGS, RESERVED_NAMES, RET_TYPES, Arg, Probe, Spec

__all__ = [
    "Column",
    "ProbeSchema",
    "Script",
    "ScriptOptions",
    "generate",
    "module_statement_probe",
    "schema_for",
    "MAX_PRINTF_ARGS",
    "PAIR_SLOTS",
    "REGS_ALLOWED",
    "RECORD_TAG",
    "COUNTER_TAG",
    "FAULT_TEXT",
    "STRING_MAX_LIMIT",
    "HIST_TAG",
    "HIST_END_TAG",
    "SUMMARY_TAG",
    "KEYS_TAG",
    "COUNT_KEYS",
    "HIST_LINEAR_MAX_BUCKETS",
    "Aggregate",
    "pair_up",
    "duration_probe",
]

# The tags are the wire's (wire.py owns them); re-exported for the script's printf formats.
RECORD_TAG = wire.RECORD_TAG
COUNTER_TAG = wire.COUNTER_TAG
HIST_TAG = wire.HIST_TAG
HIST_END_TAG = wire.HIST_END_TAG
SUMMARY_TAG = wire.SUMMARY_TAG
KEYS_TAG = wire.KEYS_TAG
# Distinct keys a --count-by array holds (SystemTap's default MAXMAPENTRIES; the end probe's
# foreach over them stays within MAXACTION_INTERRUPTIBLE). Events with a new key past it are
# counted as `count_overflow` instead of raising "array overflow", which would end the run.
COUNT_KEYS = 2048
# runtime/stat-common.c _stp_stat_calc_buckets: (stop - start) / interval + 3 buckets (the
# two extra are under/overflow) must not exceed STP_MAX_BUCKETS (128); start/stop/interval
# are C ints there.
HIST_LINEAR_MAX_BUCKETS = 125
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
# translate.cxx: `if (e->args.size() > 32) ... "too many arguments to print"`.
MAX_PRINTF_ARGS = 32
# Slots of the wrapping (`%`) arrays that carry .call+return entries to their return: calls in
# flight at once, over all threads. When full, the oldest entry is overwritten (its return is
# then counted as unpaired) instead of raising "array overflow", which would end the run.
PAIR_SLOTS = 16384
# What a str/ustr field holds when the pointer cannot be read (NULL, bad or paged-out).
FAULT_TEXT = "<fault>"
# kernel_string_n clamps its length to MAXSTRINGLEN - 1 (512 - 1 on 64-bit).
STRING_MAX_LIMIT = 511
# -n: stap reads integer literals as signed 64-bit; 2**63 wraps negative (then `k > N` drops
# every event) and 2**63 - 1 makes `k > N` constant-false ("symbol without referent: k").
MAX_COUNT = 10**18
# -T: timer.ms(N) takes 1..86400000 (tapset-timers.cxx: hrtimer max_ns_interval, one day).
MAX_DURATION = 86400.0
# u_register() names (tapset/x86_64/registers.stp) that are also print_regs() columns.
REGS_ALLOWED: tuple[str, ...] = wire.U_REGISTERS


@dataclass(frozen=True)
class Aggregate:
    """What an aggregating script (`--hist`, `--count-by`) prints instead of records.

    mode "hist": per probe one `@@sms` summary and, when it saw events, one `@@smh` block
    of kind `hist_kind` (`log` or `linear:START:STOP:INTERVAL`), named by the probe label.
    mode "count": per probe `@@smk` lines, keys printed as `key_kinds[probe index]`.
    of: what is aggregated (`latency`, `retval`, an argument name; `comm`, `pid`, ...).
    """

    mode: Literal["hist", "count"]
    of: str
    hist_kind: str | None = None
    key_kinds: tuple[ColumnKind, ...] = ()


@dataclass(frozen=True)
class Script:
    """The script text, one schema per `spec.probes` entry, and whether it needs `stap -g`.

    probes: the schemas of the probes as generated (after `--latency` pairing); aggregate:
    set when the script prints aggregates at the end instead of one record per event.
    """

    text: str
    probes: tuple[ProbeSchema, ...]
    guru: bool
    aggregate: Aggregate | None = None


def _check_linear(lin: tuple[int, int, int]) -> None:
    if len(lin) != 3 or any(type(v) is not int for v in lin):
        raise OptionError(f"--hist-linear wants MIN,MAX,STEP integers, got {lin!r}")
    lo, hi, step = lin
    if not (_INT32_MIN <= lo < hi <= _INT32_MAX and 0 < step <= _INT32_MAX):
        raise OptionError(
            f"--hist-linear {lo},{hi},{step}: needs MIN < MAX, STEP > 0, all "
            f"within a C int (SystemTap stores them as int)"
        )
    if (hi - lo) // step > HIST_LINEAR_MAX_BUCKETS:
        raise OptionError(
            f"--hist-linear {lo},{hi},{step}: {(hi - lo) // step} buckets; "
            f"SystemTap allows at most {HIST_LINEAR_MAX_BUCKETS} "
            "((MAX - MIN) / STEP): raise STEP"
        )


@dataclass(frozen=True)
class ScriptOptions:
    """Magic options that change the script (`-c`, `-x PID` itself, `-D` ... go to the runner).

    count: `-n N`, stop after N records in total. duration: `-T SECONDS`.
    regs: `--regs rip,rax`: one uint64 hex column per register, from u_register() (register()
    is the signed 64-bit reading of the same value: rax=-1988929344 vs u_rax=0xffffffff897358c0).
    print_regs: `--print-regs`. filter_pid: `-x PID` or `--cmd-only`, keep only events of
    target() (the -x process, or the -c command's).
    string_max: bytes read per str/ustr argument.
    latency: `--latency`, every FUNCTION entry probe becomes a `.call+return` pair.
    hist: `--hist latency|retval|ARG`, an in-kernel histogram per probe instead of records
    (`latency` implies `latency`); hist_linear: `--hist-linear MIN,MAX,STEP` (else log2).
    count_by: `--count-by comm|pid|cpu|retval|ARG`, in-kernel event counts per key.
    """

    count: int | None = None
    duration: float | None = None
    regs: tuple[str, ...] = ()
    print_regs: bool = False
    filter_pid: bool = False
    skip_self: bool = True  # not --include-self: skip stapmagic's own transport (selfskip.py)
    string_max: int = 64
    latency: bool = False
    hist: str | None = None
    hist_linear: tuple[int, int, int] | None = None
    count_by: str | None = None
    where: str | None = None  # --where EXPR (where.py): events it rejects are not printed
    host_column: bool = False  # several targets: the remote index ends every record (fleet.py)

    def __post_init__(self) -> None:
        if self.count is not None and (
            isinstance(self.count, bool) or not 1 <= self.count <= MAX_COUNT
        ):
            raise OptionError(f"-n needs an event count from 1 to {MAX_COUNT}, got {self.count!r}")
        if self.duration is not None and not (
            math.isfinite(self.duration) and 0 < self.duration <= MAX_DURATION
        ):
            raise OptionError(
                f"-T needs a number of seconds above 0, at most {MAX_DURATION:.0f} "
                f"(one day: SystemTap's timer limit), got {self.duration!r}"
            )
        if not 1 <= self.string_max <= STRING_MAX_LIMIT:
            raise OptionError(
                f"string length must be 1..{STRING_MAX_LIMIT} "
                f"(SystemTap's MAXSTRINGLEN), got {self.string_max}"
            )
        for reg in self.regs:
            if reg not in REGS_ALLOWED:
                raise OptionError(
                    f"--regs: unknown register {reg!r}; valid: "
                    f"{', '.join(REGS_ALLOWED)} (64-bit names: rax, not ax)"
                )
        if len(set(self.regs)) != len(self.regs):
            raise OptionError("--regs: a register is listed twice")
        if self.regs and self.print_regs:
            raise OptionError("--print-regs already gives every register as a column; drop --regs")
        for opt, value, builtin in (
            ("--hist", self.hist, ("latency", "retval")),
            ("--count-by", self.count_by, ("comm", "pid", "cpu", "retval")),
        ):
            if value is None or value in builtin:
                continue
            if not _ARG_NAME.fullmatch(value) or value in RESERVED_NAMES:
                raise OptionError(
                    f"{opt} takes {', '.join(builtin)} or an argument name of "
                    f"the spec, not {value!r}"
                )
        if self.hist is not None and self.count_by is not None:
            raise OptionError("--hist and --count-by: choose one aggregation")
        if self.hist_linear is not None:
            if self.hist is None:
                raise OptionError("--hist-linear needs --hist (what to put in the histogram)")
            _check_linear(self.hist_linear)
        if (self.hist is not None or self.count_by is not None) and (self.regs or self.print_regs):
            raise OptionError(
                "--regs/--print-regs print per-event records; --hist and "
                "--count-by print only aggregates"
            )


# -- the tables ------------------------------------------------------------------------------

_READER = {
    "int": "int_arg",
    "uint": "uint_arg",
    "long": "long_arg",
    "ulong": "ulong_arg",
    "longlong": "longlong_arg",
    "ulonglong": "ulonglong_arg",
    "s32": "s32_arg",
    "s64": "s64_arg",
    "u32": "u32_arg",
    "u64": "u64_arg",
    "ptr": "pointer_arg",
}
# 8/16-bit values: the register's low bits, sign-extended (s) or masked (u)
_NARROW = {
    "s8": "((long_arg({0}) << 56) >> 56)",
    "u8": "(ulong_arg({0}) & 0xff)",
    "s16": "((long_arg({0}) << 48) >> 48)",
    "u16": "(ulong_arg({0}) & 0xffff)",
}
_KIND: dict[str, ColumnKind] = {
    "int": "int",
    "long": "int",
    "longlong": "int",
    "s32": "int",
    "s64": "int",
    "uint": "uint",
    "ulong": "uint",
    "ulonglong": "uint",
    "u32": "uint",
    "u64": "uint",
    "ptr": "hex",
    "str": "str",
    "ustr": "str",
    "cstr": "str",
    "s8": "int",
    "s16": "int",
    "u8": "uint",
    "u16": "uint",
}

_FORMAT: dict[ColumnKind, str] = {
    "int": "%d",
    "uint": "%u",
    "hex": "%x",
    "str": "%s",
    "errno": "%s",
}
# returnval() is the whole of rax, zero-extended from what a 32-bit function left in eax.
_RETVAL = {
    "int": "(r << 32) >> 32",
    "s32": "(r << 32) >> 32",
    "uint": "r & 0xffffffff",
    "u32": "r & 0xffffffff",
    "long": "r",
    "s64": "r",
    "longlong": "r",
    "ulong": "r",
    "u64": "r",
    "ulonglong": "r",
    "ptr": "r",
}
_SIGNED_RET = frozenset(("int", "s32", "long", "s64", "longlong"))
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
assert set(_KIND) == set(ARG_TYPES) and set(_RETVAL) == set(RET_TYPES)


# -- checks before anything is interpolated (defence in depth: spec.py validated already) ----


def _symbol(name: str | None, probe: Probe) -> str:
    if name is None or not _SYMBOL.fullmatch(name):
        raise SpecError(
            f"refusing to put {name!r} into a script: not a kernel symbol name",
            probe.text,
            0,
            max(1, len(probe.text)),
        )
    return name


def _address(address: int, probe: Probe) -> str:
    if type(address) is not int or not 0 < address < 1 << 64:
        raise SpecError(f"refusing address {address!r}: not a 64-bit address", probe.text)
    return f"0x{address:x}"


def _check_probe(probe: Probe) -> None:
    if probe.btf_refs:
        ref = probe.btf_refs[0]
        raise SpecError(
            f"{ref.path!r} was not resolved from BTF",
            ref.source,
            ref.pos,
            len(ref.path),
            ref.lineno,
        )
    if probe.kind not in ("entry", "return", "pair"):
        raise SpecError(f"unknown probe kind {probe.kind!r}", probe.text)
    # rettype None: a void function (BTF), no retval
    if probe.kind != "entry" and probe.rettype is not None and probe.rettype not in _RETVAL:
        raise SpecError(f"unknown return type {probe.rettype!r}", probe.text)
    if probe.address is not None:
        _address(probe.address, probe)
        if probe.kind != "entry":
            raise SpecError("an address probe has no return", probe.text)
    for arg in probe.args:
        if arg.type not in _KIND or type(arg.index) is not int or not 1 <= arg.index <= MAX_ARGS:
            raise SpecError(f"bad argument {arg!r}", probe.text)
        if arg.name is not None and not _ARG_NAME.fullmatch(arg.name):
            raise SpecError(f"bad argument name {arg.name!r}", probe.text)
    fieldread.check(probe.fields, probe.text)
    if probe.fields and probe.kind != "entry":
        raise SpecError("member paths are read at a function's entry only", probe.text)


def module_statement_probe(probe: Probe, address: int) -> Probe:
    """The same probe at an absolute address (the module function's address in the target's
    /proc/kallsyms), generated as kprobe.statement(ADDR).absolute: needs --guru, and is valid
    for this boot and module load only. Entry probes only (statement probes have no .return)."""
    if probe.kind != "entry":
        raise SpecError(
            "only an entry probe can be moved to an absolute address "
            "(kprobe.statement has no .return)",
            probe.text,
            0,
            max(1, len(probe.text)),
        )
    _address(address, probe)
    return dataclasses.replace(probe, address=address)


# -- schema ----------------------------------------------------------------------------------


def schema_for(probe: Probe, opts: ScriptOptions) -> ProbeSchema:
    """The record fields `generate` prints for `probe`, in record order."""
    cols = [Column(a.name, _KIND[a.type]) for a in probe.args if a.name is not None]
    cols += [r.schema_column() for r in probe.fields if r.column is not None]
    if probe.kind != "entry" and probe.rettype is not None:
        cols.append(Column("retval", _KIND[probe.rettype]))
        if probe.rettype in _SIGNED_RET:
            cols.append(Column("errno", "errno"))
    if probe.kind == "pair":
        cols.append(Column("latency_ns", "int"))
    cols.extend(Column(reg, "hex") for reg in opts.regs)
    if opts.host_column:
        if any(c.name == wire.HOST_FIELD for c in cols):
            raise OptionError(
                f"{probe.label}: an argument named {wire.HOST_FIELD!r} would hide the host "
                "column of a run on several targets; rename it"
            )
        cols.append(Column(wire.HOST_FIELD, "int"))
    return ProbeSchema(probe.label, tuple(cols), opts.print_regs)


# -- text ------------------------------------------------------------------------------------


def _str_literal(text: str) -> str:
    """A SystemTap string literal of our own fixed text (formats only: no quotes inside)."""
    assert '"' not in text and "\\" not in text.replace("\\t", "").replace("\\n", "")
    return f'"{text}"'


def _printf(idx: int, fields: list[tuple[str, str]], limit: int = MAX_PRINTF_ARGS) -> list[str]:
    """printf statements for one record: at most `limit` arguments each, newline at the end."""
    head = [
        ("%d", "now"),
        ("%d", "pid()"),
        ("%d", "tid()"),
        ("%d", "cpu()"),
        ("%s", "text_str(execname())"),
    ]
    allf = head + fields
    chunks = [allf[i : i + limit] for i in range(0, len(allf), limit)]
    out = []
    for n, chunk in enumerate(chunks):
        fmt = f"{RECORD_TAG}\\t{idx}" if n == 0 else ""
        fmt += "".join(f"\\t{f}" for f, _ in chunk)
        if n == len(chunks) - 1:
            fmt += "\\t@@\\n"
        args = ", ".join(expr for _, expr in chunk)
        out.append(f"printf({_str_literal(fmt)}, {args})")
    return out


def _reader(arg_type: str, index: int, string_max: int) -> str:
    if arg_type == "str":
        return f"__sm_kstr(pointer_arg({index}), {string_max})"
    if arg_type == "ustr":
        return f"__sm_ustr(pointer_arg({index}), {string_max})"
    if arg_type == "cstr":
        return f"__sm_cstr(pointer_arg({index}), {string_max})"
    if arg_type in _NARROW:
        return _NARROW[arg_type].format(index)
    return f"{_READER[arg_type]}({index})"


_COMMENT = re.compile(r"# [ -~]*")


def _probe_point(probe: Probe, ret: bool) -> tuple[list[str], str]:
    """(comment lines, probe point) for one half of a probe."""
    for line in probe.comments:
        if not _COMMENT.fullmatch(line):  # from BTF's strings: one printable line each
            raise SpecError(f"refusing comment {line!r} in a script", probe.text)
    if probe.address is not None:
        why = (
            "# module function at its absolute address (--guru): valid for this boot and "
            "module load only"
            if probe.module is not None
            else "# absolute address (--guru): valid for this boot only (KASLR)"
        )
        return [why], f"kprobe.statement({_address(probe.address, probe)}).absolute"
    point = f'kprobe.function("{_symbol(probe.function, probe)}")' + (".return" if ret else "")
    comments: list[str] = list(probe.comments)
    if probe.module is not None:
        _symbol(probe.module, probe)
        # The module name itself stays out of the script: names appear only in the point.
        comments += [
            "# module function probed by name: kprobe.module(M).function(F) registers",
            "# nothing on Linux >= 6.4; the runner checked that the module is loaded",
        ]
    return comments, point


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def probe(self, comments: list[str], point: str, body: Iterable[str]) -> None:
        self.add("", *comments, f"probe {point}", "{")
        self.lines.extend(f"\t{line}" if line else "" for line in body)
        self.add("}")


def _guards(opts: ScriptOptions) -> list[str]:
    # stapio's own reads/opens are noise, and a hot probe they hit crashed a test guest.
    g = ["if (pid() == stp_pid()) next  # skip stapio itself"]
    if opts.skip_self:
        g.append(selfskip.guard())
    if opts.filter_pid:
        g.append("if (pid() != target()) next  # -x PID or --cmd-only")
    return g


def _count(opts: ScriptOptions) -> tuple[list[str], list[str]]:
    """(before the record, after it): exit() is asynchronous, so records past N are dropped."""
    if opts.count is None:
        return [], []
    return (["k = ++__sm_n", f"if (k > {opts.count}) next"], [f"if (k == {opts.count}) exit()"])


@dataclass(frozen=True)
class _Agg:
    """How one probe aggregates instead of printing: `value` is the expression (a handler
    local or a tapset call) that goes into the histogram or is the counting key."""

    mode: Literal["hist", "count"]
    value: str
    arg: int | None = None  # the one argument the handler must read
    retval: bool = False  # the handler must compute rv
    latency: bool = False  # the handler must compute lat
    key_kind: ColumnKind = "int"
    key_print: str = "k"  # how `probe end` prints the foreach key k


def _aggregation(probe: Probe, opts: ScriptOptions) -> _Agg | None:
    what = opts.hist if opts.hist is not None else opts.count_by
    if what is None:
        return None
    mode: Literal["hist", "count"] = "hist" if opts.hist is not None else "count"
    opt = f"--{'hist' if mode == 'hist' else 'count-by'} {what}"
    if what == "latency":
        if probe.kind != "pair":
            raise OptionError(
                f"{opt}: {probe.label} has no entry to measure from; probe "
                "FUNCTION (paired with its return) or FUNCTION.call+return"
            )
        return _Agg(mode, "lat", latency=True)
    if what == "retval":
        if probe.kind == "entry":
            raise OptionError(
                f"{opt}: {probe.label} is an entry probe; use "
                "FUNCTION.return:TYPE, FUNCTION.call+return:TYPE or --latency"
            )
        if probe.rettype is None:
            raise OptionError(f"{opt}: {probe.label} returns void (BTF): there is no retval")
        return _Agg(mode, "rv", retval=True, key_kind=_KIND[probe.rettype])
    if what in ("comm", "pid", "cpu"):
        if what == "comm":
            # The raw name is the key (cheaper per event); escaped once, when printed.
            return _Agg(mode, "execname()", key_kind="str", key_print="text_str(k)")
        return _Agg(mode, f"{what}()")
    arg = next((a for a in probe.args if a.name == what), None)
    if arg is None:
        names = ", ".join(a.name for a in probe.args if a.name) or "none"
        raise OptionError(f"{opt}: {probe.label} has no argument {what!r} (its arguments: {names})")
    kind = _KIND[arg.type]
    if mode == "hist" and kind == "str":
        raise OptionError(
            f"{opt}: {what} is a string; a histogram needs a number (--count-by counts strings)"
        )
    # str arguments are text_str-escaped when read (__sm_kstr/__sm_ustr): printed as they are.
    return _Agg(mode, f"a{arg.index}", arg=arg.index, key_kind=kind)


def _reads(probe: Probe, agg: _Agg | None) -> list[Arg]:
    """The arguments a handler reads: all named ones for records, only the aggregated one."""
    named = [a for a in probe.args if a.name is not None]
    if agg is None:
        return named
    return [a for a in named if a.index == agg.arg]


def _retval_fields(probe: Probe) -> tuple[list[str], list[tuple[str, str]]]:
    if probe.rettype is None:  # void
        return [], []
    kind = _KIND[probe.rettype]
    body = ["r = returnval()", f"rv = {_RETVAL[probe.rettype]}"]
    fields = [(_FORMAT[kind], "rv")]
    if probe.rettype in _SIGNED_RET:
        fields.append(("%s", '(rv < 0 && rv >= -4095 ? errno_str(rv) : "")'))
    return body, fields


def _tail(
    idx: int, fields: list[tuple[str, str]], opts: ScriptOptions, agg: _Agg | None
) -> list[str]:
    """The end of a handler: the ledger's count, then the record (and its register dump),
    or the aggregation. Counted here, after every filter, so `fired` is what could reach
    the frame."""
    fired = f"__sm_f{idx} <<< 1"
    if agg is not None and agg.mode == "hist":
        return [fired, f"__sm_h{idx} <<< {agg.value}"]
    if agg is not None:
        c = f"__sm_k{idx}"
        return [
            fired,
            f"key = {agg.value}",
            f"if (key in {c}) {c}[key]++",
            f"else if (__sm_kn{idx} < {COUNT_KEYS}) {{",
            f"\t__sm_kn{idx}++",
            f"\t{c}[key] = 1",
            "} else",
            f"\t__sm_kover{idx}++  # array full: counted, not keyed",
        ]
    fields = fields + [("%x", f'u_register("{reg}")') for reg in opts.regs]
    if opts.host_column:
        fields = fields + [("%d", wire.HOST_EXPR)]
    out = [fired, *_printf(idx, fields)]
    if opts.print_regs:
        out.append("print_regs()")
    return out


def _where(idx: int, probe: Probe, opts: ScriptOptions, agg: _Agg | None) -> list[str]:
    """`if (!(EXPR)) next` for --where, over this probe's names (read into locals first)."""
    if opts.where is None:
        return []
    if agg is not None or probe.kind == "pair":
        raise OptionError(
            "--where filters printed events of entry and .return probes; "
            "it does not combine with --hist, --count-by, --latency or "
            ".call+return yet"
        )
    names: dict[str, where_mod.Operand] = {}
    for a in probe.args:
        if a.name is not None:
            kind: where_mod.OperandKind = "str" if _KIND[a.type] == "str" else "int"
            names[a.name] = where_mod.Operand(f"a{a.index}", kind)
    if probe.kind == "return":
        names["retval"] = where_mod.Operand("rv", "int")
    na_tests: dict[str, str] = {}  # operand -> the test that its member read faulted
    for n, r in _numbered(idx, probe):
        operand, na = fieldread.where_operands(n, r)
        for key in (r.path, r.column):
            if key is not None and key not in names:
                names[key] = operand
        if na is not None:
            na_tests[operand.expr] = na
    used: list[str] = []

    def resolve(text: str, pos: int) -> where_mod.Operand:
        if text in names:
            if names[text].expr in na_tests and names[text].expr not in used:
                used.append(names[text].expr)
            return names[text]
        known = ", ".join([*names, *where_mod.BUILTINS]) or "none"
        what = "a member path" if ("->" in text or "." in text) else "a name"
        raise where_mod.WhereError(
            f"{text} is not {what} {probe.label} reads (its names: {known})",
            "",
            pos,
            len(text),
        )

    test = where_mod.compile_where(opts.where, resolve)
    faulted = [f"if ({na_tests[e]}) next  # --where reads a member that faulted" for e in used]
    return faulted + [f"if (!({test})) next  # --where"]


def _numbered(idx: int, probe: Probe) -> list[tuple[int, fieldread.FieldRead]]:
    """The probe's member reads with their script-wide numbers (`__sm_fieldN`, `fN`)."""
    return [(idx * fieldread.MAX_PER_PROBE + j, r) for j, r in enumerate(probe.fields)]


def _entry(w: _Writer, idx: int, probe: Probe, opts: ScriptOptions, agg: _Agg | None) -> None:
    comments, point = _probe_point(probe, ret=False)
    before, after = _count(opts)
    keep = _where(idx, probe, opts, agg)
    body = _guards(opts) + (["now = gettimeofday_ns()"] if agg is None else [])
    if not keep:
        body += before
    fields: list[tuple[str, str]] = []
    reads = _reads(probe, agg)
    if reads or probe.fields:
        body.append("asmlinkage()")
    for arg in reads:
        body.append(f"a{arg.index} = {_reader(arg.type, arg.index, opts.string_max)}")
        fields.append((_FORMAT[_KIND[arg.type]], f"a{arg.index}"))
    for n, r in _numbered(idx, probe):
        lines, fmt = fieldread.handler(n, idx, r)
        body += lines
        if r.column is not None:
            fields.append((fmt, f"f{n}"))
    if keep:  # -n counts the events the filter keeps
        body += keep + before
    w.probe(comments, point, body + _tail(idx, fields, opts, agg) + after)


def _return(w: _Writer, idx: int, probe: Probe, opts: ScriptOptions, agg: _Agg | None) -> None:
    comments, point = _probe_point(probe, ret=True)
    before, after = _count(opts)
    keep = _where(idx, probe, opts, agg)
    rbody, fields = _retval_fields(probe)
    body = _guards(opts) + (["now = gettimeofday_ns()"] if agg is None else [])
    if not keep:
        body += before
    if agg is None or agg.retval:
        body += rbody
    if keep:
        body += keep + before
    w.probe(comments, point, body + _tail(idx, fields, opts, agg) + after)


def _pair_globals(idx: int, probe: Probe, agg: _Agg | None) -> list[str]:
    names = [f"__sm_p{idx}_depth", f"__sm_p{idx}_t0"]
    names += [f"__sm_p{idx}_a{a.index}" for a in _reads(probe, agg)]
    return [f"global {n}%[{PAIR_SLOTS}]" for n in names] + [f"global __sm_p{idx}_unpaired"]


def _pair(w: _Writer, idx: int, probe: Probe, opts: ScriptOptions, agg: _Agg | None) -> None:
    """Entry stores time and arguments under [tid, depth]; the return pops its own depth, so
    recursion pairs each return with its own entry. A return without a stored entry (the call
    began before the probes, or its slot was overwritten) is counted, never a row."""
    if probe.fields:
        raise OptionError(
            f"{probe.label}: member paths are read at the entry; they do not combine with "
            "--latency or .call+return yet"
        )
    p = f"__sm_p{idx}"
    reads = _reads(probe, agg)
    comments, point = _probe_point(probe, ret=False)
    body = _guards(opts) + ["t = tid()", f"d = {p}_depth[t]++", f"{p}_t0[t, d] = gettimeofday_ns()"]
    if reads:
        body.append("asmlinkage()")
    for arg in reads:
        body.append(f"{p}_a{arg.index}[t, d] = {_reader(arg.type, arg.index, opts.string_max)}")
    w.probe(["# .call+return entry half: remember this call"] + comments, point, body)

    comments, point = _probe_point(probe, ret=True)
    before, after = _count(opts)
    # An aggregate that does not use the latency skips the clock (and an unused local, which
    # stap would warn about).
    timed = agg is None or agg.latency
    body = (
        _guards(opts)
        + (["now = gettimeofday_ns()"] if timed else [])
        + [
            "t = tid()",
            f"d = --{p}_depth[t]",
            f"if (d <= 0) delete {p}_depth[t]",
            f"if (d < 0 || !([t, d] in {p}_t0)) {{",
            f"\t{p}_unpaired++",
            "\tnext",
            "}",
        ]
    )
    if timed:
        body.append(f"lat = now - {p}_t0[t, d]")
    body.append(f"delete {p}_t0[t, d]")
    fields: list[tuple[str, str]] = []
    for arg in reads:
        body += [f"a{arg.index} = {p}_a{arg.index}[t, d]", f"delete {p}_a{arg.index}[t, d]"]
        fields.append((_FORMAT[_KIND[arg.type]], f"a{arg.index}"))
    rbody, rfields = _retval_fields(probe)
    body += before + (rbody if agg is None or agg.retval else [])
    fields += rfields + [("%d", "lat")]
    w.probe(
        [
            "# .call+return return half: one row per completed call"
            if agg is None
            else "# .call+return return half: aggregate each completed call"
        ],
        point,
        body + _tail(idx, fields, opts, agg) + after,
    )


_STRING_HELPERS = (
    "",
    "# String arguments: a bad pointer gives FAULT instead of an error (an error would end the",
    "# run); text_str() escapes TAB, newline, quote and backslash so a record stays one line.",
    "function __sm_kstr:string (addr:long, n:long) {",
    '\ttry { return text_str(kernel_string_n(addr, n)) } catch { return "FAULT" }',
    "}",
    "function __sm_ustr:string (addr:long, n:long) {",
    '\treturn text_str(user_string_n(addr, n, "FAULT"))',
    "}",
)
# cstr: a C string from BTF's `char *`, which may point to kernel or user memory
# (`__user` is not in BTF from a gcc-built kernel); the address picks the reader.
_CSTR_HELPER = (
    "function __sm_cstr:string (addr:long, n:long) {",
    # x86_64 kernel addresses have the top bit set (4- and 5-level paging alike: from
    # 0xffff800000000000 or 0xff00000000000000), user ones never: a negative long in stap.
    "\tif (addr < 0) return __sm_kstr(addr, n)",
    "\treturn __sm_ustr(addr, n)",
    "}",
)


def string_helpers(cstr: bool = True) -> list[str]:
    """The SystemTap functions behind str and ustr (and cstr, which calls both)."""
    return [
        line.replace("FAULT", FAULT_TEXT)
        for line in _STRING_HELPERS + (_CSTR_HELPER if cstr else ())
    ]


_LABEL = re.compile(r"[A-Za-z0-9_.:+]+")


def _label(probe: Probe) -> str:
    """The probe label, checked before it goes into a format string (no `%`, `"`, `\\`)."""
    if not _LABEL.fullmatch(probe.label):
        raise SpecError(f"refusing label {probe.label!r} in a script", probe.text)
    return probe.label


def pair_up(spec: Spec) -> Spec:
    """`--latency`: every FUNCTION entry probe becomes FUNCTION.call+return (the return type
    `long`, as when none is written, or BTF's); return and pair probes stay as they are."""
    probes = []
    for probe in spec.probes:
        if probe.kind == "entry":
            if probe.address is not None:
                raise OptionError(
                    f"--latency: {probe.label} is an address probe, which has no "
                    "return to pair with; drop it or --latency"
                )
            suffix = ".call+return"
            probe = dataclasses.replace(
                probe,
                kind="pair",
                rettype=probe.rettype if probe.ret_typed else "long",
                label=probe.label + suffix,
            )
        probes.append(probe)
    return Spec(tuple(probes))


def _hist_kind(opts: ScriptOptions) -> tuple[str, str]:
    """(kind string of the @@smh tag, the histogram call's extra arguments)."""
    if opts.hist_linear is None:
        return "log", ""
    lo, hi, step = opts.hist_linear
    return f"linear:{lo}:{hi}:{step}", f", {lo}, {hi}, {step}"


def _end_hist(idx: int, name: str, opts: ScriptOptions) -> list[str]:
    """Print one probe's histogram and summary; @min/@max/@avg/@sum and the histogram of an
    empty aggregate are errors in SystemTap, so an empty one prints its count (0) only."""
    h = f"__sm_h{idx}"
    kind, extra = _hist_kind(opts)
    func = "@hist_log" if opts.hist_linear is None else "@hist_linear"
    stats = ", ".join(f"@{op}({h})" for op in ("count", "min", "max", "avg", "sum"))
    head = _str_literal(f"{HIST_TAG}\\t{name}\\t{kind}\\n")
    end = _str_literal(f"{HIST_END_TAG}\\n")
    summary = _str_literal(f"{SUMMARY_TAG}\\t{name}" + "\\t%d" * 5 + "\\t@@\\n")
    empty = _str_literal(f"{SUMMARY_TAG}\\t{name}\\t0" + "\\t" * 5 + "@@\\n")
    return [
        f"if (@count({h}) > 0) {{",
        f"\tprintf({head})",
        f"\tprint({func}({h}{extra}))",
        f"\tprintf({end})",
        f"\tprintf({summary}, {stats})",
        "} else",
        f"\tprintf({empty})",
    ]


def _end_count(idx: int, name: str, agg: _Agg) -> list[str]:
    """Print one probe's counts, most frequent first, one `@@smk` line per key."""
    c = f"__sm_k{idx}"
    line = _str_literal(f"{KEYS_TAG}\\t{name}\\t{_FORMAT[agg.key_kind]}\\t%d\\t@@\\n")
    over = _str_literal(f"{COUNTER_TAG}\\tcount_overflow\\t{idx}\\t%d\\t@@\\n")
    return [
        f"foreach (k in {c}-)",
        f"\tprintf({line}, {agg.key_print}, {c}[k])",
        f"printf({over}, __sm_kover{idx})",
    ]


def duration_probe(seconds: float) -> str:
    """The probe that ends a run after `seconds` (-T), counted from the module's start."""
    w = _Writer()
    w.probe([], f"timer.ms({max(1, round(seconds * 1000))})", ["exit()  # -T"])
    return "\n".join(w.lines[1:])


def generate(spec: Spec, opts: ScriptOptions) -> Script:
    """The SystemTap script for `spec`; its records follow DESIGN.md's `@@sm1` format, or,
    with `--hist`/`--count-by`, only aggregates printed by `probe end` (which also runs on
    SIGINT, -T, -n and the end of -c)."""
    if not spec.probes:
        raise SpecError("no probe given: name a kernel function, e.g. tcp_v4_connect")
    for probe in spec.probes:
        _check_probe(probe)
    if opts.latency or opts.hist == "latency":
        spec = pair_up(spec)
    aggs = [_aggregation(p, opts) for p in spec.probes]
    w = _Writer()
    if opts.hist is not None or opts.count_by is not None:
        w.add("# generated by stapmagic: aggregates only, printed by `probe end` (see DESIGN.md)")
    else:
        w.add(f"# generated by stapmagic: one {RECORD_TAG} record per event (see DESIGN.md)")
    globals_: list[str] = []
    if opts.count is not None:
        globals_.append("global __sm_n")
    pairs = [i for i, p in enumerate(spec.probes) if p.kind == "pair"]
    for i in pairs:
        globals_ += _pair_globals(i, spec.probes[i], aggs[i])
    for i, agg in enumerate(aggs):
        if agg is not None and agg.mode == "hist":
            globals_.append(f"global __sm_h{i}  # statistics (<<<)")
        elif agg is not None:
            globals_ += [
                f"global __sm_k{i}[{COUNT_KEYS}]",
                f"global __sm_kn{i}",
                f"global __sm_kover{i}",
            ]
    # the ledger's per-probe count (a statistic: per-CPU, no lock in the handler)
    globals_ += [f"global __sm_f{i}" for i in range(len(spec.probes))]
    with_fields = [i for i, p in enumerate(spec.probes) if p.fields]
    globals_ += [f"global __sm_faults{i}  # member reads that faulted (<<< 1)" for i in with_fields]
    if opts.skip_self:
        globals_.append(selfskip.global_line())
    w.add("", *globals_)
    if opts.skip_self:
        w.probe(selfskip.begin_comments(), "begin", selfskip.begin_body())
    read_types = {a.type for p, agg in zip(spec.probes, aggs, strict=True) for a in _reads(p, agg)}
    if any(r.field.kind == "string" for p in spec.probes for r in p.fields):
        read_types.add("cstr")
    if read_types & {"str", "ustr", "cstr"}:
        w.add(*string_helpers(cstr="cstr" in read_types))
    for i in with_fields:
        for n, r in _numbered(i, spec.probes[i]):
            w.add("", btfspec.field_function(n, r.field, opts.string_max)[1])
    for idx, probe in enumerate(spec.probes):
        {"entry": _entry, "return": _return, "pair": _pair}[probe.kind](
            w, idx, probe, opts, aggs[idx]
        )
    if opts.duration is not None:
        w.add("", *duration_probe(opts.duration).split("\n"))
    # One end probe per aggregate: each handler has its own MAXACTION_INTERRUPTIBLE budget
    # (10 * MAXACTION), which a foreach over COUNT_KEYS keys needs.
    for idx, agg in enumerate(aggs):
        if agg is None:
            continue
        name = _label(spec.probes[idx])
        w.probe(
            [],
            "end",
            _end_hist(idx, name, opts) if agg.mode == "hist" else _end_count(idx, name, agg),
        )
    if pairs:
        w.probe(
            [],
            "end",
            [
                f'printf("{COUNTER_TAG}\\tunpaired\\t{i}\\t%d\\t@@\\n", __sm_p{i}_unpaired)'
                for i in pairs
            ],
        )
    fired = f"{COUNTER_TAG}\\t{wire.FIRED_COUNTER}\\t%d\\t%%d\\t@@"
    w.probe(
        [
            "# the ledger: events counted in the kernel, for rows to be checked against;",
            "# warn() takes the control channel, which the end of the output cannot lose",
        ],
        "end",
        [f'warn(sprintf("{fired % i}", @count(__sm_f{i})))' for i in range(len(spec.probes))],
    )
    if with_fields:
        counter = fieldread.FAULTS_COUNTER
        w.probe(
            [],
            "end",
            [
                f'printf("{COUNTER_TAG}\\t{counter}\\t{i}\\t%d\\t@@\\n", @count(__sm_faults{i}))'
                for i in with_fields
            ],
        )
    text = "\n".join(w.lines) + "\n"
    schemas = tuple(schema_for(p, opts) for p in spec.probes)
    aggregate = None
    if opts.hist is not None:
        aggregate = Aggregate("hist", opts.hist, hist_kind=_hist_kind(opts)[0])
    elif opts.count_by is not None:
        aggregate = Aggregate(
            "count", opts.count_by, key_kinds=tuple(a.key_kind for a in aggs if a is not None)
        )
    return Script(text, schemas, any(p.address is not None for p in spec.probes), aggregate)
