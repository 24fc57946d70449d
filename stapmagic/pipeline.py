"""The pure pipeline behind the magics: spec -> script -> run -> records -> DataFrame.

Nothing here knows about IPython: the magic parses options into `ProbeOptions`, calls
`prepare()` and `execute()`, and renders what comes back.
"""

from __future__ import annotations

import dataclasses
import itertools
import shlex
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import (
    btfspec,
    diagnose,
    fieldread,
    fleet,
    frames,
    kbtf,
    ledger,
    options,
    records,
    runner,
    save,
    wire,
)
from .errors import BTFError, OptionError, SpecError, StapMagicError
from .hist import Histogram, Summary
from .schema import ColumnKind, ProbeSchema
from .script import (
    COUNT_KEYS,
    Script,
    ScriptOptions,
    duration_probe,
    generate,
    module_statement_probe,
    schema_for,
)
from .spec import Probe, Spec, parse_spec
from .targets import kallsyms_symbols
from .targets.fleet import FleetTarget

DEFAULT_GRACE = options.DEFAULT_GRACE


@dataclass(frozen=True)
class ProbeOptions:
    """Everything the magic line can say about one run; each field is a row of
    `options.OPTIONS`, which validates it here (OptionError), whoever builds it."""

    count: int | None = None
    duration: float | None = None
    command: str | None = None
    pid: int | None = None
    regs: tuple[str, ...] = ()
    print_regs: bool = False
    guru: bool = False
    defines: tuple[str, ...] = ()
    target: str = "local"
    verbose: int = 1
    grace: float = DEFAULT_GRACE
    string_max: int = 64
    dry_run: bool = False
    latency: bool = False
    hist: str | None = None
    hist_linear: tuple[int, int, int] | None = None
    count_by: str | None = None
    where: str | None = None  # --where EXPR, compiled into the handlers (where.py)
    buffer_mb: int | None = None  # -s MB: stap's buffer size
    command_only: bool = False  # --cmd-only: events of the -c command's process only
    include_self: bool = False  # --include-self: stapmagic's own transport too (selfskip.py)
    stap_spec: tuple[str, ...] = ()  # %%stap --spec: the records the script prints

    def __post_init__(self) -> None:
        options.validate(dataclasses.asdict(self))


_run_ids = itertools.count(1)


@dataclass
class ProbeRun:
    """One stap session: what was asked, what ran, and everything that came back.

    Rows and messages accumulate while the run is live; `df` is always the frame of every
    row received so far, so an interrupted or failed run loses nothing.
    """

    spec: Spec | None
    script: Script | None
    argv: list[str]
    target: runner.Target
    parser: records.RecordParser
    status: runner.RunStatus | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    notes: list[str] = field(default_factory=list)
    script_text: str = ""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    stop_event: threading.Event = field(default_factory=threading.Event, repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    thread: threading.Thread | None = field(default=None, repr=False)
    skipped: int = 0
    transport_failures: int = 0
    # --hist: the @@smh blocks and @@sms lines, collected from the batches as they come.
    histograms: list[Histogram] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)
    run_id: int = field(default_factory=lambda: next(_run_ids))
    # How the run ended, when stap's own messages do not say (killed, connection lost).
    end_diagnoses: list[diagnose.Diagnosis] = field(default_factory=list)
    # A replay: the recording it plays (no stap runs; `target` is where it was recorded).
    replay_of: str | None = None
    # --save DIR: the save.Sink its rows stream to.
    saved: save.Sink | None = None

    @property
    def df(self) -> pd.DataFrame:
        """Every row received so far (safe to read while a background run is live)."""
        with self.lock:
            df = self.parser.frame()
        if self.spec is not None and any(p.enums for p in self.spec.probes):
            df = frames.enum_names(df, self.spec.probes)
        if isinstance(self.target, FleetTarget):
            return fleet.label_hosts(df, self.target.remote_names, self.target.hosts)
        return df

    def __repr__(self) -> str:
        # Short: a --bg cell's value is the run itself, and attrs of frames show it too.
        what = (
            ", ".join(p.label for p in self.script.probes)
            if self.script is not None
            else "%%stap script"
        )
        where = self.target.url or self.target.kind
        how = f"replay of {self.replay_of} (recorded on {where})" if self.replay_of else where
        if self.running:
            state = f"running, {self.parser.row_count} rows so far"
        else:
            state = self.summary() if self.status else "not run"
        return f"<ProbeRun {self.run_id}: {what} on {how}: {state}>"

    def __deepcopy__(self, memo: dict[int, Any]) -> ProbeRun:
        # pandas deep-copies df.attrs, where the magic keeps its run: a run is one live
        # session, so copies of the frame share it.
        return self

    def note_batch(self, batch: records.Batch) -> None:
        """Add one batch's counters; per batch, so the cost never grows with the run. The
        last batch comes once `status` is known: it gets the -c command's status then."""
        if batch.messages:
            c = diagnose.counters(batch.messages)
            self.skipped += c.skipped_probes
            self.transport_failures += c.transport_failures
        self.histograms.extend(batch.histograms)
        self.summaries.extend(batch.summaries)
        if self.status is not None and self.status.command_status is None:
            command = diagnose.command_status(self.messages)
            if command is not None:
                self.status = dataclasses.replace(self.status, command_status=command)

    def stop(self, timeout: float | None = None) -> ProbeRun:
        """Ask stap to stop (SIGINT, then escalation) and wait for the end; keeps every row."""
        self.stop_event.set()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> ProbeRun:
        """Block until the run has ended (or `timeout` seconds have passed)."""
        self.done.wait(timeout)
        return self

    @property
    def messages(self) -> list[str]:
        return self.parser.messages

    @property
    def damaged(self) -> int:
        return self.parser.damaged_count

    @property
    def interrupted(self) -> bool:
        return bool(self.status and self.status.interrupted)

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    @property
    def diagnoses(self) -> list[diagnose.Diagnosis]:
        found = diagnose.diagnose(self.messages + diagnose.damaged_messages(self.parser.damaged))
        if self.end_diagnoses:
            # they name the cause the generic "stap failed in pass 5" fallback could not
            found = [d for d in found if d.code != "stap_failed"]
        return self.end_diagnoses + found

    @property
    def counters(self) -> diagnose.Counters:
        return diagnose.counters(self.messages)

    @property
    def ok(self) -> bool:
        """True when stap exited 0 on its own or was stopped by us (and did run: stap exits 0
        when it could not reach a remote target at all)."""
        if self.status is None:
            return False
        if any(d.code == "remote_failed" for d in self.diagnoses):
            return False
        if self.status.exit_status == 0 or self.status.interrupted:
            return True
        # stap exits 1 when its -c command failed (staprun/mainloop.c), however the probes
        # did: the command's result, unless stap also failed for a reason of its own.
        return (
            self.status.exit_status == 1
            and bool(self.status.command_status)
            and not any(d.severity == "error" for d in self.diagnoses)
        )

    def summary(self) -> str:
        """One line: rows, messages, damage, how it ended."""
        parts = [f"{self.parser.row_count} rows"]
        notes = self._aggregate_notes()
        if (
            notes
            and self.script is not None
            and self.script.aggregate is not None
            and not self.parser.row_count
        ):
            parts = []  # an aggregating script prints no rows: "0 rows" says nothing
        parts += notes + ledger.summary_notes(self) + save.notes(self)
        c = self.counters
        if c.skipped_probes:
            parts.append(f"{c.skipped_probes} skipped probes")
        if c.transport_failures:
            parts.append(f"{c.transport_failures} transport failures")
        if self.damaged:
            parts.append(f"{self.damaged} damaged lines kept aside")
        if self.status is not None:
            if self.status.interrupted:
                parts.append("interrupted")
            parts += self.ending_notes()
            parts.append(f"{self.status.duration:.1f}s")
        return ", ".join(parts)

    def ending_notes(self) -> list[str]:
        """How stap and the -c command ended, when not on their own with status 0
        (an interrupt aside: the caller says that its own way)."""
        notes: list[str] = []
        status = self.status
        if status is None or status.interrupted:
            return notes
        if status.signal:
            notes.append(f"stap killed by {_signal_name(status.signal)}")
        elif status.exit_status and not (status.command_status and self.ok):
            notes.append(f"stap exit status {status.exit_status}")
        command = status.command_status
        if command:
            notes.append(
                f"command exited with status {command}"
                if command > 0
                else f"command killed by {_signal_name(-command)}"
            )
        return notes

    # -- aggregates (--latency, --hist, --count-by) ---------------------------------------

    def _tag_total(self, tag: str, name: str) -> int:
        with self.lock:
            return sum(t.value for t in self.parser.tag_counts if t.tag == tag and t.name == name)

    @property
    def unpaired(self) -> int:
        """Returns of .call+return probes without a recorded entry: skipped, never a row."""
        return self._tag_total("smc", "unpaired")

    @property
    def field_faults(self) -> int:
        """Member reads (field paths) that faulted: <NA> (or <fault>) in their rows."""
        return self._tag_total("smc", fieldread.FAULTS_COUNTER)

    @property
    def count_overflow(self) -> int:
        """--count-by events whose key came after the key array was full: not counted."""
        return self._tag_total("smc", "count_overflow")

    def _aggregate_notes(self) -> list[str]:
        notes = []
        agg = self.script.aggregate if self.script is not None else None
        if agg is not None and agg.mode == "hist" and self.summaries:
            notes.append(f"histogram of {sum(s.count for s in self.summaries)} events")
        elif agg is not None and agg.mode == "count":
            with self.lock:
                keys = [t for t in self.parser.tag_counts if t.tag == "smk"]
            if keys:
                notes.append(
                    f"{sum(t.value for t in keys)} events counted by {agg.of} "
                    f"({len(keys)} key{'' if len(keys) == 1 else 's'})"
                )
        if self.unpaired:
            notes.append(f"{self.unpaired} returns without a recorded entry were skipped")
        if self.field_faults:
            notes.append(f"{self.field_faults} member reads faulted (<NA> in those rows)")
        if self.count_overflow:
            notes.append(
                f"{self.count_overflow} events with a key past the first "
                f"{COUNT_KEYS} were not counted"
            )
        return notes

    @property
    def ledger(self) -> pd.DataFrame:
        """Per probe: events counted in the kernel, rows received, lost (ledger.py)."""
        return ledger.ledger_frame(self)

    @property
    def hist(self) -> pd.DataFrame:
        """--hist: the buckets of every probe's histogram (frames.hist_frame)."""
        return frames.hist_frame(self)

    @property
    def counts(self) -> pd.DataFrame:
        """--count-by: one row per (probe, key) with its count (frames.counts_frame)."""
        return frames.counts_frame(self)

    def result(self) -> pd.DataFrame:
        """What the magic returns: the histogram (--hist), the counts (--count-by), or df."""
        agg = self.script.aggregate if self.script is not None else None
        if agg is None:
            return self.df
        return self.hist if agg.mode == "hist" else self.counts


def script_options(opts: ProbeOptions) -> ScriptOptions:
    if opts.command_only and opts.command is None:
        raise OptionError("--cmd-only keeps the events of the -c command: give -c CMD")
    fleet.check_options(
        opts.target, pid=opts.pid, aggregate=opts.hist is not None or opts.count_by is not None
    )
    return ScriptOptions(
        count=opts.count,
        duration=opts.duration,
        regs=opts.regs,
        print_regs=opts.print_regs,
        # target() is the -x PID, or the process stap started for -c.
        filter_pid=opts.pid is not None or opts.command_only,
        string_max=opts.string_max,
        latency=opts.latency,
        hist=opts.hist,
        hist_linear=opts.hist_linear,
        count_by=opts.count_by,
        where=opts.where,
        skip_self=not opts.include_self,
        host_column=bool(fleet.host_names(opts.target)),
    )


def build_argv(script_text: str, opts: ProbeOptions, target: runner.Target) -> list[str]:
    return runner.stap_argv(
        target,
        script_text,
        guru=opts.guru,
        defines=opts.defines,
        command=opts.command,
        pid=opts.pid,
        verbose=opts.verbose,
        extra=("-s", str(opts.buffer_mb)) if opts.buffer_mb is not None else (),
        # --dry-run shows the command line even where stap is not installed.
        require_stap=not opts.dry_run,
    )


def kallsyms_lines(target: runner.Target, names: Sequence[str]) -> list[str]:
    """The target's /proc/kallsyms lines for exactly these symbol names."""
    return target.kallsyms_lines(names)


def resolve_modules(
    spec: Spec,
    target: runner.Target,
    *,
    guru: bool,
    lookup: Callable[[runner.Target, Sequence[str]], list[str]] = kallsyms_lines,
) -> Spec:
    """Check each MODULE:FUNCTION against the target's /proc/kallsyms; under --guru move it to
    its absolute address.

    kprobe.module("M").function("F") compiles and then silently registers nothing on kernels
    >= 6.4 (shared/reference r_e), so script.py emits kprobe.function("F") instead; this makes
    sure F really is a function of the loaded module M, so the row labels do not lie.
    """
    wanted = [p for p in spec.probes if p.module is not None and p.function is not None]
    if not wanted:
        return spec
    lines = lookup(target, sorted({p.function for p in wanted if p.function}))
    where: dict[str, list[tuple[int, str]]] = {}
    for sym in kallsyms_symbols(lines):  # malformed lines are skipped, never a traceback
        if sym.is_text:  # data symbols are no probe points
            where.setdefault(sym.name, []).append((sym.address, sym.module))
    probes = []
    for probe in spec.probes:
        if probe not in wanted:
            probes.append(probe)
            continue
        assert probe.function is not None and probe.module is not None
        found = where.get(probe.function, [])
        in_module = [addr for addr, mod in found if mod == probe.module]
        if not in_module:
            if found:
                homes = ", ".join(sorted({m or "the kernel itself" for _, m in found}))
                why = f"{probe.function} belongs to {homes}, not to module {probe.module}"
            else:
                why = (
                    f"no function {probe.function} in the target's /proc/kallsyms: is module "
                    f"{probe.module} loaded (lsmod; modprobe {probe.module})?"
                )
            raise SpecError(why, probe.text, 0, len(probe.text))
        if guru and probe.kind == "entry":
            if not in_module[0]:
                raise SpecError(
                    "the target's /proc/kallsyms shows zero addresses (kptr_restrict, or not "
                    "root): cannot place an absolute probe; drop --guru to probe it by name",
                    probe.text,
                    0,
                    len(probe.text),
                )
            probes.append(module_statement_probe(probe, in_module[0]))
        else:
            probes.append(probe)
    return dataclasses.replace(spec, probes=tuple(probes))


ArgvBuilder = Callable[[str, ProbeOptions, runner.Target], list[str]]
# Plays the role of runner.run: (argv, on_chunk, *, stop, grace, tick) -> RunStatus.
Source = Callable[..., runner.RunStatus]


def target_btf(target: runner.Target, modules: Sequence[str]) -> kbtf.KernelBTF:
    """The target kernel's BTF (vmlinux and `modules`), over its channel, cached per build."""
    return kbtf.kernel_btf(target, modules)


BTFLookup = Callable[[runner.Target, Sequence[str]], kbtf.KernelBTF]


# The BTF each target gave this process: a cell that only has NAME:TYPE to check against it
# (information, never needed) uses it rather than paying another round trip to the target.
_BTF_SEEN: dict[tuple[str, tuple[str, ...]], kbtf.KernelBTF] = {}


def resolve_btf(
    spec: Spec,
    target: runner.Target,
    btf_lookup: BTFLookup | None = None,
    exists: Callable[[Probe], bool] | None = None,
) -> Spec:
    """Arguments named the kernel's way, resolved from the target's BTF (SpecError at the
    word when the BTF is missing or does not have them). What only may use BTF (a bare
    function, a .return without a type, NAME:TYPE to check) is left as written when the
    target has none or cannot say. A bare form whose function BTF lacks is refused only when
    `exists(probe)` says the target has that function (in that module): a misspelt name or a
    wrong module is left to the checks that name it (similar names, the module it is in)."""
    needing = [p for p in spec.probes if p.btf_refs]
    wanting = [
        p
        for p in spec.probes
        if p.function is not None and (p.all_params or p.ret_from_btf or p.args)
    ]
    if not needing and not wanting:
        return spec
    modules = tuple(sorted({p.module for p in needing + wanting if p.module}))
    key = (str(target), modules)
    checks_only = not needing and not any(p.all_params or p.ret_from_btf for p in wanting)
    try:
        kb = _BTF_SEEN.get(key) if checks_only else None
        if kb is None:
            kb = (btf_lookup or target_btf)(target, modules)
            _BTF_SEEN[key] = kb
    except StapMagicError as exc:
        if not needing:
            return spec
        if not isinstance(exc, BTFError):
            raise
        ref = needing[0].btf_refs[0]
        raise SpecError(
            f"{ref.path} needs the kernel's BTF: {exc}",
            ref.source,
            ref.pos,
            len(ref.path),
            ref.lineno,
        ) from None
    resolved: list[Probe] = []
    for p in spec.probes:
        try:
            resolved.append(btfspec.resolve_probe(kb, p))
        except SpecError:
            try:
                in_btf = bool(kb.functions(p.function or "", p.module))
            except BTFError:
                in_btf = False
            if p.btf_refs or in_btf or exists is None or exists(p):
                raise
            resolved.append(p)
    return Spec(tuple(resolved))


def _in_kallsyms(
    target: runner.Target, lookup: Callable[[runner.Target, Sequence[str]], list[str]]
) -> Callable[[Probe], bool]:
    """Whether the target's /proc/kallsyms has the probe's function (in its module, if any)."""

    def exists(probe: Probe) -> bool:
        if probe.function is None:
            return False
        try:
            lines = lookup(target, [probe.function])
        except StapMagicError:
            return True  # cannot tell: BTF's refusal stands
        return any(
            s.is_text and s.name == probe.function and probe.module in (None, s.module)
            for s in kallsyms_symbols(lines)
        )

    return exists


def prepare(
    first_line: str,
    body: str,
    opts: ProbeOptions,
    *,
    lookup: Callable[[runner.Target, Sequence[str]], list[str]] = kallsyms_lines,
    build: ArgvBuilder = build_argv,
    btf_lookup: BTFLookup | None = None,
    resolve: Callable[[Spec], Spec] | None = None,
    preflight: Callable[[runner.Target], runner.Target] = fleet.preflight,
) -> ProbeRun:
    """Parse, generate and build the command line; raises SpecError/OptionError early.
    `resolve` replaces the BTF resolution (a replay: the recorded one)."""
    target = runner.parse_target(opts.target)
    spec = parse_spec(body, guru=opts.guru, first_line=first_line)
    if not opts.dry_run:
        target = preflight(target)  # several hosts: each asked before anything runs
    spec = fieldread.where_refs(spec, opts.where)
    if resolve is not None:
        spec = resolve(spec)
    else:
        # A dry run does not ask the target's kallsyms: a MODULE:FUNCTION BTF lacks is left
        # as written (the run checks its module), a plain function is refused.
        exists = (lambda p: p.module is None) if opts.dry_run else _in_kallsyms(target, lookup)
        spec = resolve_btf(spec, target, btf_lookup, exists)
    if not opts.dry_run:
        spec = resolve_modules(spec, target, guru=opts.guru, lookup=lookup)
    if not spec.probes:
        raise SpecError(
            "no probe given: write a spec such as `tcp_v4_connect sk:ptr uaddr:ptr len:uint` "
            "after %%kprobe or on the lines below it"
        )
    script = generate(spec, script_options(opts))
    # The script says whether it needs -g (a statement probe at an absolute address).
    argv = build(script.text, dataclasses.replace(opts, guru=True) if script.guru else opts, target)
    parser = records.RecordParser(script.probes, key_kinds=count_key_kinds(script))
    return ProbeRun(spec, script, argv, target, parser, script_text=script.text)


def count_key_kinds(script: Script) -> dict[str, ColumnKind]:
    """--count-by: each probe's `@@smk` key kind by label, so the parser refuses a key its
    kind cannot hold (an int past int64 is DAMAGED, not an error in `ProbeRun.counts`)."""
    agg = script.aggregate
    if agg is None or agg.mode != "count":
        return {}
    return dict(zip((p.label for p in script.probes), agg.key_kinds, strict=False))


def prepare_script(
    text: str,
    opts: ProbeOptions,
    *,
    build: ArgvBuilder = build_argv,
) -> ProbeRun:
    """A hand-written SystemTap script (%%stap) through the same runner."""
    target = runner.parse_target(opts.target)
    schemas = stap_schemas(opts)
    if opts.duration is not None:
        text = with_duration(text, opts.duration)
    argv = build(text, opts, target)
    return ProbeRun(None, None, argv, target, records.RecordParser(schemas), script_text=text)


def with_duration(text: str, seconds: float) -> str:
    """%%stap -T SEC: stap has no -T, so the script gets the timer probe %%kprobe -T generates.
    Counted from the module's start, it ends the run with exit() (end probes run, rows
    kept); an interrupt from the host after SEC s could land while a slow target (the lab
    under TCG takes seconds) is still loading the module, and fail the run."""
    return f"{text.rstrip()}\n{duration_probe(seconds)}\n"


def stap_schemas(opts: ProbeOptions) -> tuple[ProbeSchema, ...]:
    """%%stap --spec SPEC...: the record schemas of the probes the script prints, probe index
    0 first, as `generate` would make them (the script itself is the user's)."""
    schemas: list[ProbeSchema] = []
    for text in opts.stap_spec:
        try:
            spec = parse_spec("", guru=opts.guru, first_line=text)
        except SpecError as exc:
            raise SpecError(
                f"--spec: {exc.message}", exc.source, exc.pos, exc.length, exc.line
            ) from None
        schemas += [schema_for(p, ScriptOptions(string_max=opts.string_max)) for p in spec.probes]
    return tuple(schemas)


FIRST_ROWS_TAG = wire.TAG_PREFIX.encode()
FIRST_ROWS_TRIES = 5


def execute(
    run: ProbeRun,
    *,
    on_batch: Callable[[ProbeRun, records.Batch, bool], None] | None = None,
    grace: float = DEFAULT_GRACE,
    tap: Callable[[bytes], None] | None = None,
    source: Source | None = None,
) -> ProbeRun:
    """Run stap to the end (or to an interrupt) feeding the parser; never raises on stap failure.

    `on_batch(run, batch, final)` sees every batch; `final` is True once, at the end.
    `tap(chunk)` sees stap's raw output first (the recorder); `source` replaces runner.run
    (a replay: recording.Player), so a replay goes through exactly this code.
    """

    # Until the first rows are out, a chunk that completes a line after a record tag is
    # flushed at once instead of at the next 0.2 s tick (up to 0.2 s off the time to the
    # first row); at most FIRST_ROWS_TRIES times, so tagged lines that never parse (damage)
    # are not flushed per chunk.
    first_pending, tag_seen, tries = True, False, 0

    def on_chunk(data: bytes) -> None:
        nonlocal tag_seen, tries
        if tap is not None:
            tap(data)
        with run.lock:
            run.parser.feed(data)
        if first_pending and tries < FIRST_ROWS_TRIES:
            tag_seen = tag_seen or FIRST_ROWS_TAG in data
            if tag_seen and b"\n" in data:
                tries += 1
                tick()

    def tick() -> None:
        nonlocal first_pending
        with run.lock:
            batch = run.parser.flush()
        if batch.rows:
            first_pending = False
        run.note_batch(batch)
        if on_batch is not None:
            on_batch(run, batch, False)

    try:
        if source is None:
            run.status = runner.run(
                run.argv, on_chunk, stop=run.stop_event, grace=grace, tick=tick, target=run.target
            )
        else:
            run.status = source(run.argv, on_chunk, stop=run.stop_event, grace=grace, tick=tick)
    finally:
        # Whatever fails from here on, the run is marked done (or --list-running shows it
        # forever and --stop-all waits on it) and its rows stay in the parser; the first
        # failure of the closing steps is raised once that is so.
        failures: list[Exception] = []
        try:
            batch = records.Batch()
            try:
                with run.lock:
                    batch = run.parser.close()
                run.note_batch(batch)
            except Exception as exc:  # noqa: BLE001 - raised below, after the run is done
                failures.append(exc)
            run.finished = time.time()
            if run.status is None:
                # runner.run itself failed (e.g. could not spawn): keep what we have.
                run.status = runner.RunStatus(
                    exit_status=None,
                    signal=None,
                    interrupted=False,
                    escalated=None,
                    duration=run.finished - run.started,
                    argv=run.argv,
                )
            elif source is None:
                try:
                    run.end_diagnoses = ending_diagnoses(run)
                except Exception as exc:  # noqa: BLE001 - a check that failed is not the run
                    run.notes.append(f"stapmagic could not check how the run ended: {exc}")
            if source is None and isinstance(run.target, FleetTarget):
                failed = bool(run.status.exit_status or run.status.signal)
                try:
                    said = fleet.host_report(run.target, run.df, failed=failed)
                    # a failed run lists them under its error; a good one shows them as warnings
                    if failed:
                        run.notes.extend(said)
                    else:
                        run.end_diagnoses.extend(fleet.warnings(said))
                except Exception as exc:  # noqa: BLE001 - a check that failed is not the run
                    run.notes.append(f"stapmagic could not check the hosts after the run: {exc}")
            if not run.ok and source is None:  # a replay: no target to look at
                try:
                    run.notes.extend(run.target.post_mortem())
                except Exception as exc:  # noqa: BLE001 - a check that failed is not the run
                    run.notes.append(
                        f"stapmagic could not check {run.target.where} after the run: {exc}"
                    )
            if on_batch is not None:
                try:
                    on_batch(run, batch, True)
                except Exception as exc:  # noqa: BLE001 - raised below, after the run is done
                    failures.append(exc)
        finally:
            run.done.set()
        if failures:
            raise failures[0]
    return run


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def ending_diagnoses(
    run: ProbeRun,
    *,
    reachable: Callable[[runner.Target], str | None] | None = None,
) -> list[diagnose.Diagnosis]:
    """What ended a run when stap's messages do not say: stap killed from outside, or (on a
    remote target) stap's ssh connection lost mid-run. `reachable(target)` returns None when
    the target answers, else why not (default: one `true` over ssh)."""
    status = run.status
    if status is None or status.interrupted or status.exit_status == 0:
        return []
    rows = run.parser.row_count
    kept = f"The {rows} rows received before are kept."
    if status.signal is not None:
        name = _signal_name(status.signal)
        return [
            diagnose.Diagnosis(
                code="stap_killed",
                summary=(
                    f"stap was killed by {name} (signal {status.signal}) before the run "
                    f"ended, by something other than stapmagic (kill -9, the OOM killer...). "
                    f"{kept}"
                ),
                detail=(),
                severity="error",
            )
        ]
    if not run.target.remote:
        return []
    if status.command_status is not None:
        return []  # stapio reported the -c command's end: the session lasted to the end
    said = run.messages + diagnose.damaged_messages(run.parser.damaged)
    if any(d.severity == "error" and d.code != "stap_failed" for d in diagnose.diagnose(said)):
        return []  # stap said what went wrong
    passes = [m for m in run.messages if m.startswith("Pass ")]
    if not rows and not any(m.startswith("Pass 5: starting run") for m in passes):
        return []  # it did not get to the run: not a lost session
    why = (reachable or _target_problem)(run.target)
    where = run.target.where
    detail = tuple(m for m in passes if "failed" in m)
    if why is None:
        summary = (
            f"the connection to the target ({where}) was lost during the run: stap's ssh "
            f"session ended without a word from stap (the ssh client died or the network "
            f"dropped). The target answers again now. {kept}"
        )
        code = "connection_lost"
    else:
        summary = (
            f"the connection to the target ({where}) was lost during the run, and the "
            f"target does not answer now: is it down?{run.target.down_hint} ({why}). "
            f"{kept}"
        )
        code = "target_unreachable"
    return [diagnose.Diagnosis(code=code, summary=summary, detail=detail, severity="error")]


def _target_problem(target: runner.Target) -> str | None:
    return target.problem()


def start(
    run: ProbeRun,
    *,
    on_batch: Callable[[ProbeRun, records.Batch, bool], None] | None = None,
    grace: float = DEFAULT_GRACE,
    tap: Callable[[bytes], None] | None = None,
    source: Source | None = None,
) -> ProbeRun:
    """`execute` in a background thread; the run's `df` grows while it runs."""
    thread = threading.Thread(
        target=execute,
        args=(run,),
        kwargs={"on_batch": on_batch, "grace": grace, "tap": tap, "source": source},
        name=f"stapmagic-run-{id(run):x}",
        daemon=True,
    )
    run.thread = thread
    thread.start()
    return run


def dry_run_text(run: ProbeRun) -> str:
    """The script and the stap command line, with the script argument shown by reference."""
    argv = [("<the script above>" if arg == run.script_text else arg) for arg in run.argv]
    return f"{run.script_text.rstrip()}\n# stap command line:\n{shlex.join(argv)}"


def replace_options(opts: ProbeOptions, **changes: Any) -> ProbeOptions:
    return dataclasses.replace(opts, **changes)


def lines_of(run: ProbeRun) -> Sequence[str]:
    return run.messages
