"""Benchmark 3 (issue 6): time to first event, stapmagic (cold and warm) vs bpftrace.

One cell, `%%kprobe -c "python3 connect_a_few.py" tcp_v4_connect sk:ptr`, run through the
magic's pipeline (`pipeline.prepare` + `pipeline.execute`, as the magic does; the clock
starts before prepare) on the lab:

* cold: the cell with a fresh `-D STAPMAGIC_BENCH_NONCE=...` define, so stap's cache misses
  and passes 3-4 compile (the script text is exactly what the magic generates);
* warm: the same cell again, which must report `Pass 4: using cached`.

The first event is the first `on_batch` call carrying rows (what the user sees: the live
view updates there, every 0.2 s); the arrival of the first `@@sm1` byte at the pty and of
stap's `Pass N:` lines are timed too, which splits the warm time into its parts.

Beside it, in the same run, alternating with the warm runs: bpftrace in the guest on the
same probe and workload (`bpftrace -B line -c CMD -e 'kprobe:tcp_v4_connect {...}'` over
ssh, under a host pty like stap), timed on the host the same way to its first event line.
And the floor both pay: one ssh round trip to the guest (`ssh lab true`).
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import labbench as L
from stapmagic import lab, pipeline

SPEC = "tcp_v4_connect sk:ptr"
COMMAND = "python3 connect_a_few.py"
BPF_PROGRAM = 'kprobe:tcp_v4_connect { printf("@@bt %d %d\\n", pid, tid); }'
BPF_COMMAND = f"python3 {L.GUEST_WORK}/connect_a_few.py"
WARM_REPS = 3


def stap_once(nonce: str) -> dict[str, Any]:
    """The cell once, timed from before prepare() to the first row."""
    t0 = time.perf_counter()
    opts = pipeline.ProbeOptions(
        command=COMMAND, target="lab", verbose=1, defines=(f"STAPMAGIC_BENCH_NONCE={nonce}",)
    )
    run = pipeline.prepare(SPEC, "", opts)
    assert run.script is not None
    res = L.run_pipeline(run, run.script.probes, t0=t0, track_pids=True)
    a = res.parser.arrivals
    msgs = res.messages
    pid = workload_pid("\n".join(msgs))
    return {
        "first_row": res.first_row_of(pid) if pid is not None else None,
        "first_any": res.first_row,
        "module": L.cached_module(msgs),
        "first_record": a.get(b"@@sm1"),
        "pass1": a.get(b"Pass 1:"),
        "pass4": a.get(b"Pass 4:"),
        "pass5": a.get(b"Pass 5:"),
        "wall": res.wall,
        "rows": len(res.frame),
        "ok": res.run.ok,
        "cached": any("Pass 4: using cached" in m for m in msgs),
        "compiled": any("Pass 4: compiled" in m for m in msgs),
    }


def workload_pid(text: str) -> int | None:
    m = re.search(r"workload pid=(\d+)", text)
    return int(m.group(1)) if m else None


def bpftrace_once() -> dict[str, Any]:
    lt = L.bpftrace(BPF_PROGRAM, BPF_COMMAND)
    pid = workload_pid(lt.text())
    return {
        # the guest is shared: count only the workload's own connects
        "first_event": lt.first(rf"^@@bt {pid} ") if pid is not None else None,
        "first_any": lt.first(r"^@@bt "),
        "attached": lt.first(r"^Attaching"),
        "wall": lt.wall,
        "events": sum(1 for _, ln in lt.lines if ln.startswith("@@bt ")),
        "rc": lt.rc,
        "text": lt.text(),
    }


def guest_side(module: Any) -> dict[str, Any]:
    """Both tools started inside the guest (no ssh, no host in the figure): the cached stap
    module with staprun, and bpftrace, each to its first event line."""
    out: dict[str, Any] = {}
    if module is not None and module.exists():
        ko = f"/tmp/{module.name}"  # staprun takes the module name from the file name
        L.push_to_guest(module, ko)
        # -R: a unique module name, in case someone else runs the same module right now
        out["staprun"] = L.guest_timed("@@sm1", ["staprun", "-R", "-c", BPF_COMMAND, ko])
        L.guest("rm", "-f", ko)
    if L.has_bpftrace() is None:
        out["bpftrace"] = L.guest_timed(
            "@@bt", ["bpftrace", "-B", "line", "-c", BPF_COMMAND, "-e", BPF_PROGRAM]
        )
    return out


def ssh_once() -> float:
    """`ssh lab true` over the shared connection (what every command of the session uses)."""
    rc, _, _, wall = L.guest_full(["true"])
    return wall


def ssh_fresh_once() -> float:
    """`ssh lab true` on a connection of its own (the chroot's plain ssh: a full handshake)."""
    root = Path(lab._running_state()["root"])
    t0 = time.perf_counter()
    subprocess.run(  # noqa: S603 (argv list, no shell)
        lab._chroot_argv(root, ["ssh", lab.HOST_ALIAS, "true"]),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return time.perf_counter() - t0


def shared_ssh(up: bool) -> None:
    """Bring this process's shared ssh connection to the guest up (as any earlier command of
    the session does) or end it (a session's first cell)."""
    mux = lab.ssh_mux(Path(lab._running_state()["root"]))
    if up:
        mux.start(wait=True)
    else:
        mux.stop("exit")


def run(out: Callable[[str], None] = print, warm_reps: int = WARM_REPS) -> dict[str, Any]:
    ssh = [ssh_fresh_once() for _ in range(3)]
    out(f"ssh round trip, fresh connection: {', '.join(f'{x:.2f}' for x in ssh)} s")
    shared_ssh(False)
    first_cell = stap_once(f"{int(time.time())}_{secrets.token_hex(4)}")
    out(
        f"stap cold, first cell of the session (no shared ssh yet): first row "
        f"{L.fmt_s(first_cell['first_row'])} (compiled: {first_cell['compiled']})"
    )
    shared_ssh(True)
    ssh_shared = [ssh_once() for _ in range(3)]
    out(f"ssh round trip, shared connection: {', '.join(f'{x:.2f}' for x in ssh_shared)} s")
    nonce = f"{int(time.time())}_{secrets.token_hex(4)}"
    cold = stap_once(nonce)
    out(
        f"stap cold: first row {L.fmt_s(cold['first_row'])} (compiled: {cold['compiled']}, "
        f"rows {cold['rows']}; Pass 1 {L.fmt_s(cold['pass1'])}, Pass 4 {L.fmt_s(cold['pass4'])}, "
        f"Pass 5 {L.fmt_s(cold['pass5'])}, first record {L.fmt_s(cold['first_record'])})"
    )
    warm: list[dict[str, Any]] = []
    bpf: list[dict[str, Any]] = []
    bpf_missing = L.has_bpftrace()
    for i in range(warm_reps):
        w = stap_once(nonce)
        warm.append(w)
        out(
            f"stap warm #{i + 1}: first row {L.fmt_s(w['first_row'])} (cached: {w['cached']}, "
            f"first record at the pty {L.fmt_s(w['first_record'])}, rows {w['rows']})"
        )
        if bpf_missing is None:
            b = bpftrace_once()
            bpf.append(b)
            out(
                f"bpftrace #{i + 1}: first event {L.fmt_s(b['first_event'])} (attached "
                f"{L.fmt_s(b['attached'])}, events {b['events']}, exit {b['rc']})"
            )
    inside: list[dict[str, Any]] = []
    for i in range(2):
        g = guest_side(warm[-1]["module"] if warm else None)
        inside.append(g)
        out(
            f"inside the guest #{i + 1}: staprun to first record "
            f"{L.fmt_s((g.get('staprun') or {}).get('first'))}, bpftrace to first event "
            f"{L.fmt_s((g.get('bpftrace') or {}).get('first'))}"
        )
    return {
        "ssh": ssh,
        "ssh_shared": ssh_shared,
        "first_cell": first_cell,
        "cold": cold,
        "warm": warm,
        "bpftrace": bpf,
        "bpftrace_missing": bpf_missing,
        "inside": inside,
    }
