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

from .errors import OptionError, SpecError
from .spec import ARG_TYPES, MAX_ARGS, RET_TYPES, Probe, Spec

__all__ = [
    "Column", "ProbeSchema", "Script", "ScriptOptions", "generate", "module_statement_probe",
    "schema_for", "MAX_PRINTF_ARGS", "PAIR_SLOTS", "REGS_ALLOWED", "RECORD_TAG",
    "COUNTER_TAG", "FAULT_TEXT", "STRING_MAX_LIMIT",
]

RECORD_TAG = "@@sm1"
COUNTER_TAG = "@@smc"
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
# u_register() names (tapset/x86_64/registers.stp) that are also print_regs() columns.
REGS_ALLOWED: tuple[str, ...] = (
    "rip", "rsp", "eflags", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)

ColumnKind = Literal["int", "uint", "hex", "str", "errno"]


@dataclass(frozen=True)
class Column:
    """One record field after `comm`: `int` %d, `uint` %u, `hex` %x, `str`/`errno` %s."""

    name: str
    kind: ColumnKind


@dataclass(frozen=True)
class ProbeSchema:
    """The fields of one probe's records; `print_regs`: a 10-line dump follows each record."""

    label: str
    columns: tuple[Column, ...]
    print_regs: bool


@dataclass(frozen=True)
class Script:
    """The script text, one schema per `spec.probes` entry, and whether it needs `stap -g`."""

    text: str
    probes: tuple[ProbeSchema, ...]
    guru: bool


@dataclass(frozen=True)
class ScriptOptions:
    """Magic options that change the script (`-c`, `-x PID` itself, `-D` ... go to the runner).

    count: `-n N`, stop after N records in total. duration: `-T SECONDS`.
    regs: `--regs rip,rax`: one uint64 hex column per register, from u_register() (register()
    is the signed 64-bit reading of the same value: rax=-1988929344 vs u_rax=0xffffffff897358c0).
    print_regs: `--print-regs`. filter_pid: `-x PID`, keep only events of target().
    hist: reserved for `--hist` (histograms, `@@smh` blocks); not implemented yet.
    string_max: bytes read per str/ustr argument.
    """

    count: int | None = None
    duration: float | None = None
    regs: tuple[str, ...] = ()
    print_regs: bool = False
    filter_pid: bool = False
    hist: str | None = None
    string_max: int = 64

    def __post_init__(self) -> None:
        if self.count is not None and (isinstance(self.count, bool) or self.count < 1):
            raise OptionError(f"-n needs a positive event count, got {self.count!r}")
        if self.duration is not None and not (math.isfinite(self.duration)
                                              and self.duration > 0):
            raise OptionError(f"-T needs a positive number of seconds, got {self.duration!r}")
        if not 1 <= self.string_max <= STRING_MAX_LIMIT:
            raise OptionError(f"string length must be 1..{STRING_MAX_LIMIT} "
                              f"(SystemTap's MAXSTRINGLEN), got {self.string_max}")
        for reg in self.regs:
            if reg not in REGS_ALLOWED:
                raise OptionError(f"--regs: unknown register {reg!r}; valid: "
                                  f"{', '.join(REGS_ALLOWED)} (64-bit names: rax, not ax)")
        if len(set(self.regs)) != len(self.regs):
            raise OptionError("--regs: a register is listed twice")
        if self.regs and self.print_regs:
            raise OptionError("--print-regs already gives every register as a column; "
                              "drop --regs")
        if self.hist is not None:
            raise OptionError("--hist is not implemented yet")


# -- the tables ------------------------------------------------------------------------------

_READER = {
    "int": "int_arg", "uint": "uint_arg", "long": "long_arg", "ulong": "ulong_arg",
    "longlong": "longlong_arg", "ulonglong": "ulonglong_arg", "s32": "s32_arg",
    "s64": "s64_arg", "u32": "u32_arg", "u64": "u64_arg", "ptr": "pointer_arg",
}
_KIND: dict[str, ColumnKind] = {
    "int": "int", "long": "int", "longlong": "int", "s32": "int", "s64": "int",
    "uint": "uint", "ulong": "uint", "ulonglong": "uint", "u32": "uint", "u64": "uint",
    "ptr": "hex", "str": "str", "ustr": "str",
}
_FORMAT: dict[ColumnKind, str] = {"int": "%d", "uint": "%u", "hex": "%x", "str": "%s",
                                  "errno": "%s"}
# returnval() is the whole of rax, zero-extended from what a 32-bit function left in eax.
_RETVAL = {
    "int": "(r << 32) >> 32", "s32": "(r << 32) >> 32",
    "uint": "r & 0xffffffff", "u32": "r & 0xffffffff",
    "long": "r", "s64": "r", "longlong": "r",
    "ulong": "r", "u64": "r", "ulonglong": "r", "ptr": "r",
}
_SIGNED_RET = frozenset(("int", "s32", "long", "s64", "longlong"))
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
assert set(_KIND) == set(ARG_TYPES) and set(_RETVAL) == set(RET_TYPES)


# -- checks before anything is interpolated (defence in depth: spec.py validated already) ----

def _symbol(name: str | None, probe: Probe) -> str:
    if name is None or not _SYMBOL.fullmatch(name):
        raise SpecError(f"refusing to put {name!r} into a script: not a kernel symbol name",
                        probe.text, 0, max(1, len(probe.text)))
    return name


def _address(address: int, probe: Probe) -> str:
    if type(address) is not int or not 0 < address < 1 << 64:
        raise SpecError(f"refusing address {address!r}: not a 64-bit address", probe.text)
    return f"0x{address:x}"


def _check_probe(probe: Probe) -> None:
    if probe.kind not in ("entry", "return", "pair"):
        raise SpecError(f"unknown probe kind {probe.kind!r}", probe.text)
    if probe.kind != "entry" and probe.rettype not in _RETVAL:
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


def module_statement_probe(probe: Probe, address: int) -> Probe:
    """The same probe at an absolute address (the module function's address in the target's
    /proc/kallsyms), generated as kprobe.statement(ADDR).absolute: needs --guru, and is valid
    for this boot and module load only. Entry probes only (statement probes have no .return)."""
    if probe.kind != "entry":
        raise SpecError("only an entry probe can be moved to an absolute address "
                        "(kprobe.statement has no .return)", probe.text, 0,
                        max(1, len(probe.text)))
    _address(address, probe)
    return dataclasses.replace(probe, address=address)


# -- schema ----------------------------------------------------------------------------------

def schema_for(probe: Probe, opts: ScriptOptions) -> ProbeSchema:
    """The record fields `generate` prints for `probe`, in record order."""
    cols = [Column(a.name, _KIND[a.type]) for a in probe.args if a.name is not None]
    if probe.kind != "entry":
        assert probe.rettype is not None
        cols.append(Column("retval", _KIND[probe.rettype]))
        if probe.rettype in _SIGNED_RET:
            cols.append(Column("errno", "errno"))
    if probe.kind == "pair":
        cols.append(Column("latency_ns", "int"))
    cols.extend(Column(reg, "hex") for reg in opts.regs)
    return ProbeSchema(probe.label, tuple(cols), opts.print_regs)


# -- text ------------------------------------------------------------------------------------

def _str_literal(text: str) -> str:
    """A SystemTap string literal of our own fixed text (formats only: no quotes inside)."""
    assert '"' not in text and "\\" not in text.replace("\\t", "").replace("\\n", "")
    return f'"{text}"'


def _printf(idx: int, fields: list[tuple[str, str]], limit: int = MAX_PRINTF_ARGS) -> list[str]:
    """printf statements for one record: at most `limit` arguments each, newline at the end."""
    head = [("%d", "now"), ("%d", "pid()"), ("%d", "tid()"), ("%d", "cpu()"),
            ("%s", "text_str(execname())")]
    allf = head + fields
    chunks = [allf[i:i + limit] for i in range(0, len(allf), limit)]
    out = []
    for n, chunk in enumerate(chunks):
        fmt = (f"{RECORD_TAG}\\t{idx}" if n == 0 else "")
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
    return f"{_READER[arg_type]}({index})"


def _probe_point(probe: Probe, ret: bool) -> tuple[list[str], str]:
    """(comment lines, probe point) for one half of a probe."""
    if probe.address is not None:
        why = ("# module function at its absolute address (--guru): valid for this boot and "
               "module load only" if probe.module is not None else
               "# absolute address (--guru): valid for this boot only (KASLR)")
        return [why], f"kprobe.statement({_address(probe.address, probe)}).absolute"
    point = f'kprobe.function("{_symbol(probe.function, probe)}")' + (".return" if ret else "")
    comments: list[str] = []
    if probe.module is not None:
        _symbol(probe.module, probe)
        # The module name itself stays out of the script: names appear only in the point.
        comments = ["# module function probed by name: kprobe.module(M).function(F) registers",
                    "# nothing on Linux >= 6.4; the runner checked that the module is loaded"]
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
    if opts.filter_pid:
        g.append("if (pid() != target()) next  # -x PID")
    return g


def _count(opts: ScriptOptions) -> tuple[list[str], list[str]]:
    """(before the record, after it): exit() is asynchronous, so records past N are dropped."""
    if opts.count is None:
        return [], []
    return (["k = ++__sm_n", f"if (k > {opts.count}) next"],
            [f"if (k == {opts.count}) exit()"])


def _retval_fields(probe: Probe) -> tuple[list[str], list[tuple[str, str]]]:
    assert probe.rettype is not None
    kind = _KIND[probe.rettype]
    body = ["r = returnval()", f"rv = {_RETVAL[probe.rettype]}"]
    fields = [(_FORMAT[kind], "rv")]
    if probe.rettype in _SIGNED_RET:
        fields.append(("%s", '(rv < 0 && rv >= -4095 ? errno_str(rv) : "")'))
    return body, fields


def _tail(idx: int, fields: list[tuple[str, str]], opts: ScriptOptions) -> list[str]:
    fields = fields + [("%x", f'u_register("{reg}")') for reg in opts.regs]
    out = _printf(idx, fields)
    if opts.print_regs:
        out.append("print_regs()")
    return out


def _entry(w: _Writer, idx: int, probe: Probe, opts: ScriptOptions) -> None:
    comments, point = _probe_point(probe, ret=False)
    before, after = _count(opts)
    body = _guards(opts) + ["now = gettimeofday_ns()"] + before
    fields: list[tuple[str, str]] = []
    reads = [a for a in probe.args if a.name is not None]
    if reads:
        body.append("asmlinkage()")
    for arg in reads:
        body.append(f"a{arg.index} = {_reader(arg.type, arg.index, opts.string_max)}")
        fields.append((_FORMAT[_KIND[arg.type]], f"a{arg.index}"))
    w.probe(comments, point, body + _tail(idx, fields, opts) + after)


def _return(w: _Writer, idx: int, probe: Probe, opts: ScriptOptions) -> None:
    comments, point = _probe_point(probe, ret=True)
    before, after = _count(opts)
    rbody, fields = _retval_fields(probe)
    body = _guards(opts) + ["now = gettimeofday_ns()"] + before + rbody
    w.probe(comments, point, body + _tail(idx, fields, opts) + after)


def _pair_globals(idx: int, probe: Probe) -> list[str]:
    names = [f"__sm_p{idx}_depth", f"__sm_p{idx}_t0"]
    names += [f"__sm_p{idx}_a{a.index}" for a in probe.args if a.name is not None]
    return [f"global {n}%[{PAIR_SLOTS}]" for n in names] + [f"global __sm_p{idx}_unpaired"]


def _pair(w: _Writer, idx: int, probe: Probe, opts: ScriptOptions) -> None:
    """Entry stores time and arguments under [tid, depth]; the return pops its own depth, so
    recursion pairs each return with its own entry. A return without a stored entry (the call
    began before the probes, or its slot was overwritten) is counted, never a row."""
    p = f"__sm_p{idx}"
    reads = [a for a in probe.args if a.name is not None]
    comments, point = _probe_point(probe, ret=False)
    body = _guards(opts) + ["t = tid()", f"d = {p}_depth[t]++", f"{p}_t0[t, d] = gettimeofday_ns()"]
    if reads:
        body.append("asmlinkage()")
    for arg in reads:
        body.append(f"{p}_a{arg.index}[t, d] = {_reader(arg.type, arg.index, opts.string_max)}")
    w.probe(["# .call+return entry half: remember this call"] + comments, point, body)

    comments, point = _probe_point(probe, ret=True)
    before, after = _count(opts)
    body = _guards(opts) + [
        "now = gettimeofday_ns()",
        "t = tid()",
        f"d = --{p}_depth[t]",
        f"if (d <= 0) delete {p}_depth[t]",
        f"if (d < 0 || !([t, d] in {p}_t0)) {{",
        f"\t{p}_unpaired++",
        "\tnext",
        "}",
        f"lat = now - {p}_t0[t, d]",
        f"delete {p}_t0[t, d]",
    ]
    fields: list[tuple[str, str]] = []
    for arg in reads:
        body += [f"a{arg.index} = {p}_a{arg.index}[t, d]", f"delete {p}_a{arg.index}[t, d]"]
        fields.append((_FORMAT[_KIND[arg.type]], f"a{arg.index}"))
    rbody, rfields = _retval_fields(probe)
    body += before + rbody
    fields += rfields + [("%d", "lat")]
    w.probe(["# .call+return return half: one row per completed call"], point,
            body + _tail(idx, fields, opts) + after)


_STRING_HELPERS = (
    "",
    "# String arguments: a bad pointer gives FAULT instead of an error (an error would end the",
    "# run); text_str() escapes TAB, newline, quote and backslash so a record stays one line.",
    "function __sm_kstr:string (addr:long, n:long) {",
    "\ttry { return text_str(kernel_string_n(addr, n)) } catch { return \"FAULT\" }",
    "}",
    "function __sm_ustr:string (addr:long, n:long) {",
    "\treturn text_str(user_string_n(addr, n, \"FAULT\"))",
    "}",
)


def generate(spec: Spec, opts: ScriptOptions) -> Script:
    """The SystemTap script for `spec`; its records follow DESIGN.md's `@@sm1` format."""
    if not spec.probes:
        raise SpecError("no probe given: name a kernel function, e.g. tcp_v4_connect")
    for probe in spec.probes:
        _check_probe(probe)
    w = _Writer()
    w.add(f"# generated by stapmagic: one {RECORD_TAG} record per event (see DESIGN.md)")
    globals_: list[str] = []
    if opts.count is not None:
        globals_.append("global __sm_n")
    pairs = [i for i, p in enumerate(spec.probes) if p.kind == "pair"]
    for i in pairs:
        globals_ += _pair_globals(i, spec.probes[i])
    if globals_:
        w.add("", *globals_)
    if any(a.type in ("str", "ustr") and a.name is not None
           for p in spec.probes for a in p.args):
        w.add(*(line.replace("FAULT", FAULT_TEXT) for line in _STRING_HELPERS))
    for idx, probe in enumerate(spec.probes):
        {"entry": _entry, "return": _return, "pair": _pair}[probe.kind](w, idx, probe, opts)
    if opts.duration is not None:
        ms = max(1, round(opts.duration * 1000))
        w.probe([], f"timer.ms({ms})", ["exit()  # -T"])
    # Extension point: --hist adds its globals above and prints @@smh blocks from here.
    if pairs:
        w.probe([], "end", [
            f'printf("{COUNTER_TAG}\\tunpaired\\t{i}\\t%d\\t@@\\n", __sm_p{i}_unpaired)'
            for i in pairs])
    text = "\n".join(w.lines) + "\n"
    schemas = tuple(schema_for(p, opts) for p in spec.probes)
    return Script(text, schemas, any(p.address is not None for p in spec.probes))
