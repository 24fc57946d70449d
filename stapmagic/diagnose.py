"""Turn SystemTap's failure messages into short, specific diagnoses with the fix.

Pure functions over the message lines of a run (stap's stderr, staprun's messages and
anything else that was not a record). Nothing here runs a process or reads a file.

Every pattern below matches the exact text SystemTap prints; the source of each string
(SystemTap 4.8 .. 5.5, identical in those releases) is named next to it, and the captured
outputs in ``shared/reference/`` exercise the common ones. A diagnosis keeps stap's own
lines in ``detail`` so nothing stap said is hidden behind our summary.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .wire import TAG_PREFIX

__all__ = [
    "Counters",
    "Diagnosis",
    "LostOutput",
    "Severity",
    "command_status",
    "counters",
    "damaged_messages",
    "diagnose",
    "lost_output",
    "render",
]

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Diagnosis:
    """One recognised problem.

    ``code`` is stable (tests and the magic key on it), ``summary`` is the short message
    with the fix, ``detail`` the stap lines that triggered it, verbatim. ``similar`` lists
    the functions of a ``no match (similar functions: ...)``; ``probes`` names the probe
    points or functions involved; ``count`` carries the number stap reported (transport
    failures, registration errors, skipped probes).
    """

    code: str
    summary: str
    detail: tuple[str, ...]
    severity: Severity
    similar: tuple[str, ...] = ()
    probes: tuple[str, ...] = ()
    count: int | None = None

    def __str__(self) -> str:
        return render(self)


@dataclass(frozen=True)
class Counters:
    """Numbers stap reports about a run.

    ``errors``: runtime errors (stap's ``Number of errors: N`` when it printed one,
    otherwise the number of runtime ``ERROR:`` lines); ``skipped_probes``: probe hits
    that did not run (``skipped probes: M``); ``transport_failures``: lost output buffers
    (``There were N transport failures``) and lost relay messages (``There were N lost
    messages``); ``warnings``: ``WARNING:`` lines.
    """

    errors: int = 0
    skipped_probes: int = 0
    transport_failures: int = 0
    warnings: int = 0


@dataclass(frozen=True)
class LostOutput:
    """Output stap reported lost, per kind: ``transport_failures``, kernel-side buffers
    (``There were N transport failures``), and ``lost_messages``, relay messages stapio
    never received (``There were N lost messages and M lost bytes``)."""

    transport_failures: int = 0
    lost_messages: int = 0

    @property
    def total(self) -> int:
        """Both kinds: what Counters.transport_failures counts."""
        return self.transport_failures + self.lost_messages


def render(d: Diagnosis) -> str:
    """Human-readable text: the summary, then stap's own lines indented."""
    head = f"[{d.severity}] {d.summary}"
    if not d.detail:
        return head
    return head + "\n" + "\n".join("    | " + line for line in d.detail)


# --------------------------------------------------------------------------------------
# line cleanup

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _clean(line: str) -> str:
    """One message line as stap wrote it: no pty ``\\r``, no colour escapes, no newline."""
    return _ANSI.sub("", line).rstrip("\r\n").rstrip()


# --------------------------------------------------------------------------------------
# patterns (source file of each string in SystemTap)

# staprun/staprun_funcs.c assert_stap_module_permissions(), session.cxx (stap itself):
#   "You are trying to run systemtap as a normal user."
# staprun_funcs.c assert_uprobes_module_permissions():
#   "You are trying to load the module %s as a normal user."
_NORMAL_USER = re.compile(
    r"You are trying to (?:run systemtap|load the module \S+) as a normal user\."
)
# session.cxx: "For users with the privilege level %s, the module created by compiling your
# script must be signed by a trusted systemtap compile-server.  [man stap-server]"
_PRIV_LEVEL = re.compile(
    r"For users with the privilege level (\S+), the module created by compiling"
)
# client-nss.cxx: "Unable to find a suitable compile server.  [man stap-server]"
_NO_SERVER = re.compile(r"Unable to find a suitable compile server")
# staprun_funcs.c check_groups(): "Your privilege credentials (%s) are insufficient to load
# the module %s (%s required)"
_INSUFFICIENT = re.compile(
    r"Your privilege credentials \(\S+\) are insufficient to load the module"
)

# dwflpp.cxx setup_kernel(): "missing %s kernel/module debuginfo [man warning::debuginfo] under '%s'"
_DEBUGINFO_MISSING = re.compile(r"missing \S+ kernel/module debuginfo")
# dwflpp.cxx get_module_dwarf(): "cannot find " ("kernel" | "module NAME") " debuginfo"
_DEBUGINFO_CANNOT = re.compile(r"cannot find (?:module (\S+)|kernel) debuginfo")

# session.cxx parse_kernel_functions():
#   "Kernel function symbol table missing [man warning::symbols]"
_SYMTAB_MISSING = re.compile(r"Kernel function symbol table missing")

# tapsets.cxx (kprobe/dwarf builders): "no match (similar functions: %s)"; elaborate.cxx: "no match"
_NO_MATCH_SIMILAR = re.compile(r"semantic error: no match \(similar functions: ([^)]*)\)")
_NO_MATCH = re.compile(r"semantic error: no match\s*$")

# tapsets.cxx: "absolute statement probe in unprivileged script; need stap -g";
# parse.cxx, tapsets.cxx, tapset-netfilter.cxx: "...; need stap -g"
_NEED_GURU = re.compile(r"; need stap -g")
_ABSOLUTE = re.compile(r"absolute statement probe in unprivileged script")

# tapsets.cxx common_probe_entryfn_epilogue():
#   "probe overhead (%lld cycles) exceeded threshold (%lld cycles) in last %lld cycles"
_OVERHEAD = re.compile(r"probe overhead \((\d+) cycles\) exceeded threshold \((\d+) cycles\)")

# translate.cxx STAP_T_04 "MAXACTION exceeded" (printed by _stp_softerror "%s near %s")
_MAXACTION = re.compile(r"MAXACTION exceeded")
# translate.cxx STAP_T_02 "MAXNESTING exceeded"
_MAXNESTING = re.compile(r"MAXNESTING exceeded")

# tapsets.cxx, runtime/linux/uprobes-common.c:
#   "Skipped too many probes, check MAXSKIPPED or try again with stap -t for more details."
_SKIPPED_TOO_MANY = re.compile(r"Skipped too many probes")

# runtime/transport/transport.c:
#   "There were %d transport failures. Try stap -s to increase the buffer size from %d."
_TRANSPORT = re.compile(
    r"There were (\d+) transport failures?\.(?: Try stap -s to increase the buffer size from (\d+)\.)?"
)
# staprun/relay.c (serialized output; seen in a real lab run under load):
#   "WARNING: There were %u lost messages and %u lost bytes."
# relay messages (one per probe handler's output) that stapio never received: lost records.
# stapio also prints "0 ... and 0": its counters are unsigned long printed with %u, and a late
# message ("unexpected sequence") adds 2**32 - k to it, the skip before it k (relay.c).
_LOST_MESSAGES = re.compile(
    r"There were (?!0 lost messages and 0 lost)(\d+) lost messages and (\d+) lost bytes"
)

# translate.cxx emit_module_exit(): "Number of errors: %d, skipped probes: %d"
_NUM_ERRORS = re.compile(r"Number of errors: (\d+), skipped probes: (\d+)")

# main.cxx: "Pass 4: compilation failed.  [man error::pass4]"
_PASS4_FAILED = re.compile(r"Pass 4: compilation failed")
# gcc/kbuild: "FILE:LINE:COL: error: MESSAGE", "FILE:LINE: error: ...", "error: ...", and
# "<command-line>: error: ..." where the error is in a macro defined on gcc's command line:
# stap hands each -D NAME=VALUE to kbuild as is (seen on the lab: a -D value that is no
# valid C, tests/fixtures/captures/bad_define_*), followed by gcc's note naming the macro.
_GCC_ERROR = re.compile(r"(?:^|:\d+(?::\d+)?: |^<command-line>: )(?:fatal )?error: ")
_CMDLINE_ERROR = re.compile(r"^<command-line>: (?:fatal )?error: ")
_MACRO_EXPANSION = re.compile(r"note: in expansion of macro '([A-Za-z_][A-Za-z0-9_]*)'")
# session.cxx / buildrun.cxx: 'Checking "%s" failed with error: %s'
_HEADERS = re.compile(r"Checking \"\s*(\S+)\s*\" failed with error: (.*)")

# runtime/linux/kprobes.c: "probe %s (%s+%u) registration error [man warning::pass5] (rc %d)"
#                          "probe %s (address 0x%lx) registration error [man warning::pass5] (rc %d)"
# translate.cxx:           "probe %s registration error [man warning::pass5] (rc %d)" (fatal, ERROR:)
_REGISTRATION = re.compile(
    r"^(WARNING|ERROR): probe (.+?)(?: \((?:(\S+?)\+\d+|address 0x[0-9a-fA-F]+)\))? "
    r"registration error(?: \[man warning::pass5\])? \(rc (-?\d+)\)"
)

# runtime/transport/transport.c: "Can't resolve uprobe_unregister!"
_UPROBE_UNREGISTER = re.compile(r"Can't resolve uprobe_unregister")

# elaborate.cxx void_statement_reducer: print_warning("Eliding side-effect-free expression ", tok)
_ELIDING = re.compile(r"^WARNING: Eliding side-effect-free expression\s*: identifier '([^']*)'")
_ELIDING_ASMLINKAGE = re.compile(
    r"^WARNING: Eliding side-effect-free expression\s*: identifier 'asmlinkage'"
)

# staprun/staprun.c: "Couldn't insert module '%s': %s" (moderror(): staprun_funcs.c)
_INSERT = re.compile(r"Couldn't insert module \S*?'([^']*)': (.*)")

# staprun/mainloop.c chld_proc(), stapio's SIGCHLD handler for the -c command (warn(): with
# "WARNING: "): "Child process exited with signal %d (%s)" (strsignal) and "Child process
# exited with status %d" (nothing for status 0). Either sets target_pid_failed_p, and
# cleanup_and_exit() then exits 1 however the probes did, so stap says "Pass 5: run failed."
_CHILD_SIGNAL = re.compile(r"Child process exited with signal (\d+) \(([^)]*)\)")
_CHILD_STATUS = re.compile(r"Child process exited with status (\d+)")

# remote.cxx remote::create(): `cerr << e.what() << " on remote '" << uri << "'"`, e.g.
# "error receiving hello from stapsh on remote 'ssh://host'", "error establishing ssh
# connection on remote '...'". stap then runs passes 1-4 for no target and exits 0 (main.cxx
# overwrites that rc), so this line is the only sign that nothing ran.
_REMOTE_FAILED = re.compile(r"^(\S.*) on remote '([^']*)'$")

# main.cxx: "Pass 2: analysis failed.", "Pass 5: run failed." ...: the generic fallback
_PASS_FAILED = re.compile(r"^Pass (\d): \w+ failed")
_ERROR_LINE = re.compile(r"^(?:semantic error|parse error|ERROR):")

# the probe point named in a "source:" line of a semantic error
_PROBE_POINT = re.compile(
    r"\b(kprobe|kernel|module\(\"[^\"]*\"\))\.(?:function|statement)\(\"?([^\")]+)\"?\)"
)

_RC_MEANING = {
    -22: (
        "EINVAL: the kernel refuses kprobes on these functions (__init code already freed, "
        "notrace/blacklisted functions); leave them out of the spec or narrow the wildcard"
    ),
    -2: (
        "ENOENT: the symbol is not in the running kernel (a module that is not loaded, or the "
        "function was inlined/renamed); check /proc/kallsyms"
    ),
    4: (
        "the symbol could not be resolved when the probes started - usually a function in a "
        "module that was not loaded yet; load the module before starting the run"
    ),
    -16: "EBUSY: another kprobe user owns this address; try again after it is gone",
    -84: "EILSEQ: the address is not at an instruction boundary (statement/address probe)",
    -95: "EOPNOTSUPP: this function cannot be probed on this kernel",
}


# --------------------------------------------------------------------------------------
# the message structure: a block is one message line plus its indented continuation lines
# (stap prints "        source: ..." and a caret line under each semantic error)


@dataclass(frozen=True)
class _Block:
    start: int  # index of the first line
    lines: tuple[str, ...]

    @property
    def head(self) -> str:
        return self.lines[0]


def _blocks(lines: Sequence[str]) -> list[_Block]:
    blocks: list[_Block] = []
    cur: list[str] = []
    start = 0
    for i, line in enumerate(lines):
        if cur and line[:1] in (" ", "\t") and line.strip():
            cur.append(line)
            continue
        if cur:
            blocks.append(_Block(start, tuple(cur)))
        cur, start = [line], i
    if cur:
        blocks.append(_Block(start, tuple(cur)))
    return [b for b in blocks if b.head.strip()]


def _probe_names(block: _Block) -> tuple[str, ...]:
    names: list[str] = []
    for line in block.lines[1:]:
        if "source:" in line:
            for m in _PROBE_POINT.finditer(line):
                if m.group(2) not in names:
                    names.append(m.group(2))
    return tuple(names)


def _context(blocks: Sequence[_Block], idx: int) -> tuple[list[str], tuple[str, ...]]:
    """The lines of block ``idx`` preceded by the "while resolving probe point" block that
    stap prints right before a probe-point error, and the probe names it shows."""
    lines: list[str] = []
    names: tuple[str, ...] = ()
    if idx > 0 and "while resolving probe point" in blocks[idx - 1].head:
        lines.extend(blocks[idx - 1].lines)
        names = _probe_names(blocks[idx - 1])
    lines.extend(blocks[idx].lines)
    return lines, names


# --------------------------------------------------------------------------------------
# the diagnoses

_Adder = Callable[[int, "Diagnosis"], None]


def diagnose(lines: Sequence[str]) -> list[Diagnosis]:
    """Recognise SystemTap's failures in a run's message lines.

    Returns the diagnoses in the order their first line appeared. Lines may carry the
    pty's trailing ``\\r`` and colour escapes; both are ignored.
    """
    clean = [_clean(x) for x in lines]
    blocks = _blocks(clean)
    found: list[tuple[int, Diagnosis]] = []

    def add(at: int, d: Diagnosis) -> None:
        found.append((at, d))

    heads = [b.head for b in blocks]
    root_cause_no_match = any(
        _SYMTAB_MISSING.search(h) or _DEBUGINFO_MISSING.search(h) or _DEBUGINFO_CANNOT.search(h)
        for h in heads
    )

    _diagnose_privilege(blocks, add)
    _diagnose_resolution(blocks, add, root_cause_no_match)
    _diagnose_runtime(blocks, add)
    _diagnose_build(clean, blocks, add)

    found.sort(key=lambda t: t[0])
    result: list[Diagnosis] = []
    for _, d in found:
        if d not in result:
            result.append(d)
    if not any(d.severity == "error" for d in result):
        fallback = _fallback(blocks, command_ended=command_status(clean) is not None)
        if fallback is not None:
            result.append(fallback)
    return result


# stapio's err()/warn() prefixes (staprun/staprun.h); where one starts inside a damaged
# record line, stap's stderr landed in the middle of a record on the shared pty.
_EMBEDDED = re.compile(r"(?:ERROR|WARNING): ")


def damaged_messages(damaged: Iterable[bytes | str]) -> list[str]:
    """stap's messages found inside damaged record lines (``RecordParser.damaged``): each
    from its ``ERROR:``/``WARNING:`` up to the end of the line or the next record tag."""
    found: list[str] = []
    for raw in damaged:
        line = _clean(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
        m = _EMBEDDED.search(line)
        if m is None:
            continue
        text = line[m.start() :]
        cut = text.find(TAG_PREFIX)
        text = (text[:cut] if cut >= 0 else text).rstrip()
        if text:
            found.append(text)
    return found


def command_status(lines: Iterable[str]) -> int | None:
    """How the ``-c`` command ended, when stap reported that it failed: its exit status, or
    ``-signal`` (subprocess's convention). None when stap reported nothing: the command
    exited 0, was not given, or was still running when stap ended."""
    status: int | None = None
    for raw in lines:
        line = _clean(raw)
        m = _CHILD_STATUS.search(line)
        if m:
            status = int(m.group(1))
            continue
        m = _CHILD_SIGNAL.search(line)
        if m:
            status = -int(m.group(1))
    return status


def _diagnose_privilege(blocks: Sequence[_Block], add: _Adder) -> None:
    first: int | None = None
    detail: list[str] = []
    level: str | None = None
    for b in blocks:
        h = b.head
        hit = False
        if _NORMAL_USER.search(h) or _NO_SERVER.search(h) or _INSUFFICIENT.search(h):
            hit = True
        m = _PRIV_LEVEL.search(h)
        if m:
            hit, level = True, m.group(1).rstrip(",")
        if hit:
            first = b.start if first is None else first
            detail.extend(b.lines)
        elif detail and h.startswith("You should either be root"):
            detail.extend(b.lines)
    if first is None:
        return
    who = f" (you have only {level})" if level else ""
    add(
        first,
        Diagnosis(
            code="not_privileged",
            summary=(
                f"SystemTap needs root to compile and load a kernel module{who}: members of "
                "'stapusr' can only load pre-signed modules, 'stapdev' is needed to build them. "
                "Run the Jupyter kernel as root, add yourself to stapdev and stapusr "
                "(`sudo usermod -aG stapdev,stapusr $USER`, then log in again), or use --target lab."
            ),
            detail=tuple(detail),
            severity="error",
        ),
    )


def _diagnose_resolution(blocks: Sequence[_Block], add: _Adder, root_cause: bool) -> None:

    def no_match(i: int, b: _Block, advice: str, similar: tuple[str, ...] = ()) -> None:
        # Both forms of stap's "no match": the same diagnosis, the advice differs.
        lines, names = _context(blocks, i)
        what = f"'{names[0]}'" if len(names) == 1 else "this probe point"
        add(
            blocks[i - 1].start if len(lines) > len(b.lines) else b.start,
            Diagnosis(
                code="no_match",
                summary=f"No kernel function matches {what}. {advice}",
                detail=tuple(lines),
                severity="error",
                similar=similar,
                probes=names,
            ),
        )

    for i, b in enumerate(blocks):
        h = b.head
        if _SYMTAB_MISSING.search(h):
            add(
                b.start,
                Diagnosis(
                    code="symbols_missing",
                    summary=(
                        "stap found no kernel symbol table, so every kprobe.function() fails with "
                        "'no match'. Debian ships a placeholder /boot/System.map; copy the live one: "
                        "`cp /proc/kallsyms /boot/System.map-$(uname -r)` as root (Debian's "
                        "SystemTap 5.x reads /usr/lib/debug/boot/System.map-$(uname -r) instead; for "
                        "module functions drop kallsyms' [module] column: "
                        "`awk '{print $1, $2, $3}' /proc/kallsyms`)."
                    ),
                    detail=b.lines,
                    severity="error",
                ),
            )
            continue
        if _DEBUGINFO_MISSING.search(h) or _DEBUGINFO_CANNOT.search(h):
            lines = list(b.lines)
            names: tuple[str, ...] = ()
            # the "semantic error" lines stap prints right after it belong to it
            for nb in blocks[i + 1 : i + 5]:
                if not nb.head.startswith("semantic error:"):
                    break
                lines.extend(nb.lines)
                names = names or _probe_names(nb)
                if _NO_MATCH.search(nb.head) or _NO_MATCH_SIMILAR.search(nb.head):
                    break
            add(
                b.start,
                Diagnosis(
                    code="debuginfo_missing",
                    summary=(
                        "kernel.function()/module().function() probes need the kernel's DWARF "
                        "debuginfo, which is not installed. %%kprobe does not need it: its "
                        "kprobe.function() probes use only the symbol table, so write the probe "
                        'as a %%kprobe spec (or kprobe.function("...") in %%stap). Installing '
                        "debuginfo also works (Debian: linux-image-$(uname -r)-dbg; Fedora: "
                        "debuginfo-install kernel)."
                    ),
                    detail=tuple(lines),
                    severity="error",
                    probes=names,
                ),
            )
            continue
        m = _NO_MATCH_SIMILAR.search(h)
        if m:
            similar = tuple(s.strip() for s in m.group(1).split(",") if s.strip())
            no_match(
                i,
                b,
                f"Similar names: {', '.join(similar)}. Check the spelling against "
                "/proc/kallsyms; a function of a module needs the module loaded and its "
                "symbols in the System.map stap reads.",
                similar,
            )
            continue
        if _NO_MATCH.search(h) and not root_cause:
            no_match(
                i,
                b,
                "Check the name in /proc/kallsyms (static functions may be inlined or "
                "renamed, e.g. name.isra.0).",
            )
            continue
        if _NEED_GURU.search(h):
            lines, names = _context(blocks, i)
            if _ABSOLUTE.search(h):
                summary = (
                    "An address probe (kprobe.statement(0x...).absolute) is only allowed in "
                    "guru mode: rerun with --guru (stap -g). The address is valid for the "
                    "current boot only (KASLR)."
                )
            else:
                summary = "This script needs guru mode: rerun with --guru (stap -g)."
            add(
                blocks[i - 1].start if len(lines) > len(b.lines) else b.start,
                Diagnosis(
                    code="need_guru",
                    summary=summary,
                    detail=tuple(lines),
                    severity="error",
                    probes=names,
                ),
            )


# The runtime messages: one rule per message kind, tried in this order on each block's first
# line; the first rule that matches the line decides (the order only matters for a line that
# two patterns would match). A rule's summary builder gets the match.


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    code: str
    severity: Severity
    # None: the rule's lines are collected and summed up after the loop (one
    # errors_skipped for all "Number of errors" lines, one registration_error per rc)
    summary: Callable[[re.Match[str]], str] | None
    count: Callable[[re.Match[str]], int] | None = None


def _insert_summary(m: re.Match[str]) -> str:
    why = m.group(2).strip()
    if "not permitted" in why or "Key was rejected" in why or "Required key" in why:
        fix = (
            "the kernel refused to load it: run as root, and check for Secure Boot / "
            "kernel lockdown (cat /sys/kernel/security/lockdown), which forbids "
            "unsigned modules"
        )
    elif "Invalid module format" in why or "wrong symbol version" in why or "Unknown symbol" in why:
        fix = (
            "it was built for another kernel: install the headers of the running kernel "
            "(linux-headers-$(uname -r)) and clear the cache (~/.systemtap/cache)"
        )
    elif "File exists" in why:
        fix = "a module of that name is still loaded: staprun -d NAME removes it"
    else:
        fix = "see stap's message below"
    return f"staprun could not load the probe module ({why}): {fix}."


def _transport_summary(m: re.Match[str]) -> str:
    size = m.group(2)
    bigger = f" from {size} MB" if size else ""
    return (
        f"{m.group(1)} output buffer(s) were lost on the way from the kernel: some records "
        "are missing and lines around the gaps may be damaged. Give stap bigger "
        f"buffers (stap -s 64: MB per CPU{bigger}) or print less."
    )


def _first_number(m: re.Match[str]) -> int:
    return int(m.group(1))


_RUNTIME_RULES: tuple[_Rule, ...] = (
    _Rule(
        _ELIDING_ASMLINKAGE,
        "asmlinkage_elided",
        "info",
        lambda m: (
            "Harmless: asmlinkage() does nothing on x86_64, so stap drops it "
            "(the seed scripts call it out of habit)."
        ),
    ),
    _Rule(
        _ELIDING,
        "elided_expression",
        "warning",
        lambda m: (
            f"stap dropped an expression with no effect ('{m.group(1)}'); if you meant "
            "it to do something, assign or print its value."
        ),
    ),
    _Rule(
        _OVERHEAD,
        "probe_overhead",
        "error",
        lambda m: (
            "stap stopped the run: the probes used more CPU than its safety limit "
            f"({m.group(1)} > {m.group(2)} cycles per interval). Probe a less hot "
            "function, filter (e.g. by pid) or print less; -D STP_NO_OVERLOAD "
            "disables the check (at your own risk)."
        ),
    ),
    _Rule(
        _MAXACTION,
        "maxaction",
        "error",
        lambda m: (
            "A probe handler ran more statements than MAXACTION allows (default "
            "1000) and stap stopped the run; raise it with -D MAXACTION=10000 or "
            "do less per hit."
        ),
    ),
    _Rule(
        _MAXNESTING,
        "maxnesting",
        "error",
        lambda m: "Functions nested deeper than MAXNESTING; raise it with -D MAXNESTING=N.",
    ),
    _Rule(
        _SKIPPED_TOO_MANY,
        "skipped_too_many",
        "error",
        lambda m: (
            "stap stopped the run: more than MAXSKIPPED (default 100) probe hits were "
            "skipped (reentrancy, lock contention or too many concurrent .return "
            "probes). Raise the limit with -D MAXSKIPPED=N, for .return probes also "
            "-D KRETACTIVE=N; stap -t shows the reasons."
        ),
    ),
    _Rule(_TRANSPORT, "transport_failures", "warning", _transport_summary, _first_number),
    _Rule(
        _LOST_MESSAGES,
        "transport_failures",
        "warning",
        lambda m: (
            f"{m.group(1)} output message(s) were lost between the kernel and stapio (it did "
            "not keep up): some records are missing. Print less or filter (e.g. -x "
            "PID); bigger buffers (stap -s 64: MB per CPU) absorb longer bursts."
        ),
        _first_number,
    ),
    _Rule(_NUM_ERRORS, "errors_skipped", "warning", None),
    _Rule(_REGISTRATION, "registration_error", "warning", None),
    _Rule(
        _UPROBE_UNREGISTER,
        "uprobe_unregister",
        "error",
        lambda m: (
            "This SystemTap (5.1) cannot find uprobe_unregister, which Linux 6.12 "
            "renamed, so the module refuses to start. Add -D "
            "STAPCONF_UPROBE_UNREGISTER_EXPORTED (the lab target does; enough for "
            "kprobe scripts) or use SystemTap >= 5.2."
        ),
    ),
    _Rule(_INSERT, "module_insert_failed", "error", _insert_summary),
    _Rule(
        _REMOTE_FAILED,
        "remote_failed",
        "error",
        lambda m: (
            f"stap could not start its session on the target {m.group(2)} "
            f"({m.group(1)}), so nothing ran there: check that the target answers "
            "(ssh HOST true) and has stapsh; stap itself reports success here."
        ),
    ),
    _Rule(
        _CHILD_SIGNAL,
        "command_killed",
        "info",
        lambda m: (
            f"The -c command was killed by signal {m.group(1)} ({m.group(2)}); stap "
            "kills it when the run ends or fails before it finished."
        ),
    ),
    _Rule(
        _CHILD_STATUS,
        "command_failed",
        "info",
        lambda m: (
            f"The -c command exited with status {m.group(1)}, and stap ended the run with it: "
            "every probe hit until then is in the result. stap reports its run as failed "
            "whenever the command fails; that alone is not a stap failure."
        ),
    ),
)


def _diagnose_runtime(blocks: Sequence[_Block], add: _Adder) -> None:
    collected: dict[str, list[tuple[_Block, re.Match[str]]]] = {
        r.code: [] for r in _RUNTIME_RULES if r.summary is None
    }
    for b in blocks:
        for rule in _RUNTIME_RULES:
            m = rule.pattern.search(b.head)
            if m is None:
                continue
            if rule.summary is None:
                collected[rule.code].append((b, m))
            else:
                add(
                    b.start,
                    Diagnosis(
                        code=rule.code,
                        summary=rule.summary(m),
                        detail=b.lines,
                        severity=rule.severity,
                        count=rule.count(m) if rule.count else None,
                    ),
                )
            break
    _registration_diagnoses(collected["registration_error"], add)
    _errors_skipped_diagnosis(collected["errors_skipped"], add)


def _registration_diagnoses(hits: Sequence[tuple[_Block, re.Match[str]]], add: _Adder) -> None:
    """One diagnosis per registration rc, naming the probes (stap prints one line each)."""
    registrations: dict[int, list[_Block]] = {}
    reg_names: dict[int, list[str]] = {}
    reg_fatal: dict[int, bool] = {}
    for b, m in hits:
        rc = int(m.group(4))
        registrations.setdefault(rc, []).append(b)
        name = m.group(3) or _strip_pp(m.group(2))
        reg_names.setdefault(rc, [])
        if name not in reg_names[rc]:
            reg_names[rc].append(name)
        reg_fatal[rc] = reg_fatal.get(rc, False) or m.group(1) == "ERROR"
    for rc, bl in registrations.items():
        names = reg_names[rc]
        meaning = _RC_MEANING.get(rc, "see [man warning::pass5]")
        fatal = reg_fatal[rc]
        lead = "stap could not start: " if fatal else ""
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        add(
            bl[0].start,
            Diagnosis(
                code="registration_error",
                summary=(
                    f"{lead}{len(bl)} probe(s) could not be registered (rc {rc}): {shown}. "
                    f"{meaning[0].upper()}{meaning[1:]}."
                    + ("" if fatal else " The other probes ran.")
                ),
                detail=tuple(line for b in bl for line in b.lines),
                severity="error" if fatal else "warning",
                probes=tuple(names),
                count=len(bl),
            ),
        )


def _errors_skipped_diagnosis(hits: Sequence[tuple[_Block, re.Match[str]]], add: _Adder) -> None:
    """stap's "Number of errors: N, skipped probes: M" lines, summed into one warning."""
    if not hits:
        return
    errors_total = sum(int(m.group(1)) for _, m in hits)
    skipped_total = sum(int(m.group(2)) for _, m in hits)
    if not (skipped_total or errors_total):
        return
    parts = []
    if skipped_total:
        parts.append(
            f"{skipped_total} probe hit(s) were skipped and recorded nothing (reentrancy, "
            "contention, or .return probes beyond KRETACTIVE); rows are missing"
        )
    if errors_total:
        parts.append(f"{errors_total} runtime error(s) occurred in probe handlers")
    add(
        hits[0][0].start,
        Diagnosis(
            code="errors_skipped",
            summary="; ".join(parts) + ". stap -t shows per-probe reasons.",
            detail=tuple(line for b, _ in hits for line in b.lines),
            severity="warning",
            count=skipped_total,
        ),
    )


def _strip_pp(pp: str) -> str:
    m = re.search(r"\.function\(\"([^\"]+)\"\)", pp)
    return m.group(1) if m else pp


def _diagnose_build(lines: Sequence[str], blocks: Sequence[_Block], add: _Adder) -> None:
    for b in blocks:
        m = _HEADERS.search(b.head)
        if m:
            add(
                b.start,
                Diagnosis(
                    code="kernel_headers_missing",
                    summary=(
                        f"The running kernel's build tree is missing ({m.group(1)}: "
                        f"{m.group(2).strip()}): install its headers, e.g. `apt-get install "
                        "linux-headers-$(uname -r)` or `dnf install kernel-devel-$(uname -r)`."
                    ),
                    detail=b.lines,
                    severity="error",
                ),
            )
            break
    for i, line in enumerate(lines):
        if not _PASS4_FAILED.search(line):
            continue
        first_error: str | None = None
        error_at = -1
        for j in range(i):
            if _GCC_ERROR.search(lines[j]):
                first_error, error_at = lines[j], j
                break
        detail: list[str] = []
        if first_error is not None:
            # the "In function" line before the error says where; keep it too
            if error_at > 0 and "In function" in lines[error_at - 1]:
                detail.append(lines[error_at - 1])
            detail.append(first_error)
        at = i if first_error is None else max(0, error_at - 1)
        if first_error is not None and _CMDLINE_ERROR.search(first_error):
            add(at, _bad_define(first_error, lines[error_at + 1 : i], detail, line))
            break
        detail.append(line)
        what = _gcc_message(first_error) if first_error else "see the compiler output above"
        add(
            at,
            Diagnosis(
                code="pass4_failed",
                summary=(
                    f"The probe module did not compile: {what}. This usually means the "
                    "SystemTap runtime is older than the kernel's headers; use a stap/kernel "
                    "pairing that agree (or --target lab)."
                ),
                detail=tuple(detail),
                severity="error",
            ),
        )
        break


def _bad_define(error: str, after: Sequence[str], detail: list[str], failed: str) -> Diagnosis:
    """Pass 4 failed in a macro from the command line: a -D value that is no valid C."""
    name: str | None = None
    for line in after:
        if _GCC_ERROR.search(line):
            break  # the next error: its notes are not about this one
        m = _MACRO_EXPANSION.search(line)
        if m:
            name = m.group(1)
            detail.append(line)
            break
    detail.append(failed)
    which = f"the value given with -D {name}" if name else "a -D value"
    return Diagnosis(
        code="bad_define",
        summary=(
            f"The probe module did not compile: {which} is not valid C where the "
            f"SystemTap runtime uses it ({_gcc_message(error)}). stap pastes -D NAME=VALUE "
            "into the module's C source as is; SystemTap's limits (MAXACTION, MAXSKIPPED, "
            "...) take a plain number, e.g. -D MAXACTION=10000."
        ),
        detail=tuple(detail),
        severity="error",
    )


def _gcc_message(line: str) -> str:
    m = re.search(r"(?:fatal )?error: (.*)$", line)
    text = m.group(1) if m else line
    text = re.sub(r"\s*\[-W[^\]]*\]$", "", text)  # gcc's " [-Werror=...]" tag
    return text if len(text) <= 200 else text[:197] + "..."


def _fallback(blocks: Sequence[_Block], *, command_ended: bool = False) -> Diagnosis | None:
    """stap failed for a reason not recognised above: say which pass and keep its errors.

    ``command_ended``: stap reported that the -c command failed; a pass 5 failure with no
    error line is then that and nothing else (staprun/mainloop.c exits 1 for it)."""
    failed: _Block | None = None
    errors: list[str] = []
    first = -1
    for b in blocks:
        if _PASS_FAILED.search(b.head):
            failed = failed or b
        elif _ERROR_LINE.search(b.head) and "while resolving probe point" not in b.head:
            errors.extend(b.lines)
            first = b.start if first < 0 else first
    if failed is None and not errors:
        return None
    if command_ended and not errors and failed is not None and failed.head.startswith("Pass 5:"):
        return None
    if failed is None:
        return Diagnosis(
            code="stap_error",
            summary="stap reported an error: " + _first_error_text(errors),
            detail=tuple(errors),
            severity="error",
        )
    lines = errors + list(failed.lines)
    what = _first_error_text(errors) if errors else "see stap's messages"
    m = _PASS_FAILED.search(failed.head)
    n = m.group(1) if m else "?"
    stage = {
        "1": "parsing",
        "2": "analysis",
        "3": "translation",
        "4": "compilation",
        "5": "the run",
    }.get(n, "a pass")
    return Diagnosis(
        code="stap_failed",
        summary=f"stap failed in pass {n} ({stage}): {what}",
        detail=tuple(lines),
        severity="error",
    )


def _first_error_text(lines: Iterable[str]) -> str:
    for line in lines:
        for prefix in ("semantic error:", "parse error:", "ERROR:"):
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
    return "see stap's messages"


# --------------------------------------------------------------------------------------
# counters


def counters(lines: Sequence[str]) -> Counters:
    """Count what stap reports: runtime errors, skipped probes, transport failures, warnings."""
    reported_errors: int | None = None
    error_lines = 0
    skipped = 0
    transport = 0
    warnings = 0
    for raw in lines:
        line = _clean(raw)
        if line.startswith("WARNING:"):
            warnings += 1
        elif line.startswith("ERROR:"):
            error_lines += 1
        m = _NUM_ERRORS.search(line)
        if m:
            reported_errors = (reported_errors or 0) + int(m.group(1))
            skipped += int(m.group(2))
            continue
        transport += _lost_in(line).total
    errors = reported_errors if reported_errors is not None else error_lines
    return Counters(
        errors=errors,
        skipped_probes=skipped,
        transport_failures=transport,
        warnings=warnings,
    )


def _lost_in(line: str) -> LostOutput:
    m = _TRANSPORT.search(line)
    n = _LOST_MESSAGES.search(line)
    return LostOutput(int(m.group(1)) if m else 0, int(n.group(1)) if n else 0)


def lost_output(lines: Iterable[str]) -> LostOutput:
    """Lost output stap reported in these lines, per kind (summed over the lines)."""
    transport = lost = 0
    for raw in lines:
        one = _lost_in(_clean(raw))
        transport += one.transport_failures
        lost += one.lost_messages
    return LostOutput(transport, lost)
