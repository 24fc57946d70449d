"""Shared machinery of the lab benchmarks (2-4): the guest, timed stap runs, bpftrace runs.

Every run here goes to the lab VM (`stapmagic.lab`): stap compiles in the chroot on the host
and runs pass 5 in the guest over `stap --remote=ssh://...`; plain commands (the workload
baseline, bpftrace, file counts) run in the guest over ssh. All times are taken on the host
with `time.perf_counter()`, the same way for stap and for bpftrace.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from stapmagic import diagnose, lab, pipeline, records, runner  # noqa: E402
from stapmagic.schema import ProbeSchema  # noqa: E402

LAB = runner.Target("lab")
GUEST_WORK = "/root/work"  # where the lab keeps its workloads and where `-c` runs


class NoLab(Exception):
    """The lab VM is not usable; the message says why (the dispatcher turns it into a skip)."""


def require_lab() -> None:
    """Raise NoLab unless the lab VM answers over ssh."""
    try:
        up = lab.is_up()
    except Exception as exc:  # a half-written state file, a missing tree...
        raise NoLab(f"the lab VM is not usable ({exc})") from None
    if not up:
        raise NoLab("the lab VM is not up (the lead starts it: python -m stapmagic.lab up)")
    try:
        guest("true", timeout=30)
    except Exception as exc:
        raise NoLab(f"the lab VM does not answer over ssh: {exc}") from None


def guest(*argv: str, timeout: float = 120.0) -> str:
    """Run a plain command in the guest; its stdout."""
    return runner.run_on_target(LAB, list(argv), timeout=timeout)


def guest_full(argv: Sequence[str], timeout: float = 300.0) -> tuple[int, str, str, float]:
    """Run a command in the guest: (exit code, stdout, stderr, host wall seconds)."""
    full = runner.exec_argv(LAB, list(argv))
    t0 = time.perf_counter()
    done = subprocess.run(  # noqa: S603
        full,
        capture_output=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return (
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
        time.perf_counter() - t0,
    )


def versions() -> list[tuple[str, str]]:
    """The guest's kernel, SystemTap and bpftrace versions (what the lab figures were run on)."""
    out: list[tuple[str, str]] = []
    try:
        out.append(("guest kernel", guest("uname", "-r").strip()))
    except Exception as exc:
        out.append(("guest kernel", f"? ({exc})"))
    try:
        first = guest("staprun", "-V", timeout=30)
    except Exception:
        first = ""
    try:
        rc, so, se, _ = guest_full(["stap", "-V"], timeout=60)
        text = (so + se).strip().splitlines()
        out.append(("systemtap", text[0] if text else first.strip() or "?"))
    except Exception as exc:
        out.append(("systemtap", f"? ({exc})"))
    try:
        out.append(("bpftrace", guest("bpftrace", "--version").strip()))
    except Exception as exc:
        out.append(("bpftrace", f"not available ({str(exc).splitlines()[0]})"))
    try:
        cpus = guest("nproc").strip()
        accel = (lab.status() or {}).get("accel", "?")
        out.append(("guest", f"{cpus} vCPUs, accel={accel}"))
    except Exception:
        pass
    return out


def has_bpftrace() -> str | None:
    """None when bpftrace runs in the guest, else why not."""
    try:
        guest("bpftrace", "--version", timeout=60)
    except Exception as exc:
        return str(exc).splitlines()[0]
    return None


# --------------------------------------------------------------------------------------
# stap through the magic's pipeline


class CountingParser(records.RecordParser):
    """The magic's RecordParser, plus what the transport delivered: every `@@sm1` occurrence
    in the raw pty bytes (before any parsing), and arrival times of marker strings."""

    MARKERS = (b"Pass 1:", b"Pass 2:", b"Pass 3:", b"Pass 4:", b"Pass 5:", b"@@sm1")

    def __init__(self, schemas: Sequence[ProbeSchema], t0: float) -> None:
        super().__init__(schemas)
        self.t0 = t0
        self.raw_records = 0
        self.raw_bytes = 0
        self.arrivals: dict[bytes, float] = {}
        self.last_record: float | None = None
        self._tail = b""

    def feed(self, data: bytes) -> None:
        window = self._tail + data
        # the tail is shorter than the tag, so no occurrence is counted twice
        n = window.count(records.RECORD_TAG)
        self.raw_records += n
        if n:
            self.last_record = time.perf_counter() - self.t0
        self._tail = window[-(len(records.RECORD_TAG) - 1) :]
        self.raw_bytes += len(data)
        if len(self.arrivals) < len(self.MARKERS):
            now = time.perf_counter() - self.t0
            for m in self.MARKERS:
                if m not in self.arrivals and m in window:
                    self.arrivals[m] = now
        return super().feed(data)


@dataclass
class PipelineResult:
    run: pipeline.ProbeRun
    parser: CountingParser
    wall: float  # spawn to the end of execute()
    first_row: float | None  # first on_batch with rows (what the user sees)
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    batches: list[tuple[float, frozenset[int]]] = field(default_factory=list)

    def first_row_of(self, pid: int) -> float | None:
        """When the first row of process `pid` reached on_batch."""
        return next((t for t, pids in self.batches if pid in pids), None)

    @property
    def messages(self) -> list[str]:
        return self.run.messages


def run_pipeline(
    run: pipeline.ProbeRun,
    schemas: Sequence[ProbeSchema],
    t0: float | None = None,
    track_pids: bool = False,
) -> PipelineResult:
    """Execute `run` exactly as the magic does (pipeline.execute, its tick, its parser), with
    a CountingParser in place of the run's own; times from `t0` (default: now).
    `track_pids`: note which pids each batch's rows have (small runs only)."""
    t0 = time.perf_counter() if t0 is None else t0
    parser = CountingParser(schemas, t0)
    run.parser = parser
    first: list[float] = []
    batches: list[tuple[float, frozenset[int]]] = []

    def on_batch(r: pipeline.ProbeRun, batch: records.Batch, final: bool) -> None:
        if batch.rows:
            now = time.perf_counter() - t0
            if not first:
                first.append(now)
            if track_pids and batch.frame is not None:
                batches.append((now, frozenset(int(p) for p in batch.frame["pid"].unique())))

    pipeline.execute(run, on_batch=on_batch)
    wall = time.perf_counter() - t0
    return PipelineResult(run, parser, wall, first[0] if first else None, run.df, batches)


def script_run(
    text: str,
    *,
    command: str | None = None,
    extra: Sequence[str] = (),
    defines: Sequence[str] = (),
    verbose: int = 1,
) -> pipeline.ProbeRun:
    """A ProbeRun of a hand-written script (like %%stap), with extra stap argv items."""
    argv = runner.stap_argv(
        LAB, text, command=command, extra=extra, defines=defines, verbose=verbose
    )
    return pipeline.ProbeRun(None, None, argv, LAB, records.RecordParser(()), script_text=text)


def stap_to_file(
    text: str,
    guest_file: str,
    *,
    command: str | None = None,
    extra: Sequence[str] = (),
    defines: Sequence[str] = (),
    timeout: float = 600.0,
) -> tuple[int, str, float]:
    """`stap -o FILE` on the lab: stap (staprun in the guest) writes the probe output straight
    to `guest_file` in the guest. Returns (exit code, stap's stdout+stderr, wall seconds)."""
    argv = runner.stap_argv(
        LAB, text, command=command, defines=defines, verbose=1, extra=[*extra, "-o", guest_file]
    )
    t0 = time.perf_counter()
    done = subprocess.run(  # noqa: S603
        argv,
        capture_output=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        env=runner.stap_env(),
    )
    wall = time.perf_counter() - t0
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace"), wall


# The magic's own cell on a hot function, in benchmarks 2 and 4 (dd as -c).
KSYS_READ_SPEC = "ksys_read fd:int buf:ptr count:ulong"


def damaged_text(parser: records.RecordParser) -> str:
    """The damaged lines kept by a parser: stap's stderr can land inside a record line on the
    pty (stdout and stderr share it), and then an ERROR hides there."""
    return "\n".join(b.decode(errors="replace") for b in parser.damaged)


def transport_failures(text: str) -> int:
    """Kernel-side transport failures stap reported in `text` (diagnose owns the pattern)."""
    return diagnose.lost_output(text.splitlines()).transport_failures


def lost_messages(text: str) -> int:
    """Relay messages stapio reported lost in `text`."""
    return diagnose.lost_output(text.splitlines()).lost_messages


def overloaded(text: str) -> bool:
    """Whether stap stopped the run for probe overhead."""
    return any(d.code == "probe_overhead" for d in diagnose.diagnose(text.splitlines()))


def stap_to_host(
    text: str,
    *,
    command: str | None = None,
    extra: Sequence[str] = (),
    defines: Sequence[str] = (),
    timeout: float = 600.0,
) -> tuple[int, bytes, str, float, tuple[float, float] | None]:
    """stap on the lab with its stdout read from a plain pipe on the host, nothing parsed:
    the transport alone. Returns (exit code, stdout bytes, stderr text, wall seconds,
    arrival times of the first and the last `@@sm1` chunk)."""
    import os
    import threading

    argv = runner.stap_argv(
        LAB, text, command=command, defines=defines, verbose=1, extra=list(extra)
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(  # noqa: S603
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=runner.stap_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    err: list[bytes] = []
    stderr = proc.stderr

    def drain_stderr() -> None:  # a full stderr pipe would stall stap
        err.append(stderr.read())

    reader = threading.Thread(target=drain_stderr, daemon=True)
    reader.start()
    chunks: list[bytes] = []
    tail = b""
    first = last = None
    fd = proc.stdout.fileno()
    while True:
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            break
        data = os.read(fd, 1 << 20)
        if not data:
            break
        chunks.append(data)
        window = tail + data
        if records.RECORD_TAG in window:
            last = time.perf_counter() - t0
            first = last if first is None else first
        tail = window[-(len(records.RECORD_TAG) - 1) :]
    rc = proc.wait()
    reader.join(timeout=30)
    wall = time.perf_counter() - t0
    span = (first, last) if first is not None and last is not None else None
    return rc, b"".join(chunks), b"".join(err).decode(errors="replace"), wall, span


# --------------------------------------------------------------------------------------
# bpftrace in the guest


@dataclass
class LineTimes:
    """A command's output lines with their arrival times (host seconds since spawn)."""

    rc: int | None
    lines: list[tuple[float, str]] = field(default_factory=list)
    wall: float = 0.0

    def first(self, pattern: str) -> float | None:
        rx = re.compile(pattern)
        return next((t for t, ln in self.lines if rx.search(ln)), None)

    def text(self) -> str:
        return "\n".join(ln for _, ln in self.lines)


def timed_lines(argv: Sequence[str], timeout: float = 300.0) -> LineTimes:
    """Run `argv` on the host under a pty (as the magic runs stap), timestamping each line."""
    t0 = time.perf_counter()
    out = LineTimes(rc=None)
    buf = b""
    proc = runner.StapProcess(list(argv))
    try:
        while True:
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                break
            chunk = proc.read(0.01)
            if chunk is None:
                break
            if not chunk:
                continue
            now = time.perf_counter() - t0
            buf += chunk
            *whole, buf = buf.split(b"\n")
            out.lines += [(now, ln.rstrip(b"\r").decode(errors="replace")) for ln in whole]
        if buf:
            out.lines.append((time.perf_counter() - t0, buf.decode(errors="replace")))
    finally:
        proc.close()
    out.rc = proc.exitstatus
    out.wall = time.perf_counter() - t0
    return out


def bpftrace(program: str, command: str | None = None, timeout: float = 300.0) -> LineTimes:
    """bpftrace PROGRAM [-c COMMAND] in the guest, output timed line by line on the host.

    The remote side has no tty, so bpftrace's stdout is a pipe: `-B line` makes it flush each
    line, as stap does."""
    argv = ["bpftrace", "-B", "line"]
    if command is not None:
        argv += ["-c", command]
    argv += ["-e", program]
    return timed_lines(runner.exec_argv(LAB, argv), timeout=timeout)


# A timer that runs in the guest: argv[1] is the line prefix that marks an event; the rest
# is the command. Prints when the first such line of the workload came (its pid is in the
# line's fields; the workload prints "workload pid=P"), measured inside the guest.
_GUEST_TIMER = """
import re, subprocess, sys, time
pat = sys.argv[1].encode()
t0 = time.monotonic()
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
seen = []
for line in p.stdout:
    seen.append((time.monotonic() - t0, line))
p.wait()
total = time.monotonic() - t0
m = re.search(rb"workload pid=(\\d+)", b"".join(ln for _, ln in seen))
pid = m.group(1) if m else None
ev = [t for t, ln in seen if ln.startswith(pat) and (pid is None or pid in ln.split())]
print("guest-timer first=%s total=%.3f events=%d rc=%d" % (
    "%.3f" % ev[0] if ev else "-", total, len(ev), p.returncode))
"""
_GUEST_TIMER_OUT = re.compile(r"guest-timer first=(\S+) total=(\S+) events=(\d+) rc=(-?\d+)")


def guest_timed(
    prefix: str, argv: Sequence[str], timeout: float = 300.0
) -> dict[str, float | int | None]:
    """Run `argv` in the guest; seconds (guest clock) to its first line starting with
    `prefix` and to its end, measured in the guest (no ssh in the figure)."""
    out = guest("python3", "-c", _GUEST_TIMER, prefix, *argv, timeout=timeout)
    m = _GUEST_TIMER_OUT.search(out)
    if not m:
        raise RuntimeError(f"guest timer printed nothing useful: {out[-500:]}")
    return {
        "first": None if m.group(1) == "-" else float(m.group(1)),
        "total": float(m.group(2)),
        "events": int(m.group(3)),
        "rc": int(m.group(4)),
    }


def push_to_guest(local: Path, guest_path: str) -> None:
    """Copy a host file into the guest (ssh, stdin)."""
    full = runner.exec_argv(LAB, ["tee", guest_path])
    with open(local, "rb") as f:
        subprocess.run(  # noqa: S603
            full,
            stdin=f,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=True,
            timeout=120,
        )


def cached_module(messages: Sequence[str]) -> Path | None:
    """The host path of the module stap said it used from its cache (Pass 4 line)."""
    for m in messages:
        hit = re.search(r"Pass 4: using cached (\S+\.ko)", m)
        if hit:
            state = lab.status() or {}
            root = state.get("root")
            if root:
                return Path(root) / hit.group(1).lstrip("/")
    return None


# --------------------------------------------------------------------------------------
# numbers


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.2f} s"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or a != a or b != b:
        return "-"
    return f"{a / b:.2f}x"
