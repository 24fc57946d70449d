"""Benchmark 4 (issue 6): per-hit cost on a hot function, records vs in-kernel aggregation.

Workload: `dd if=/dev/zero of=/dev/null bs=1 count=N` in the guest (N read() calls through
ksys_read, N writes to /dev/null); dd reports its own elapsed time ("copied, X s"), which is
the figure: measured inside the guest, so no ssh, compile or module load is in it.

Side by side in each repetition (order rotated per repetition):

* base:     dd alone (over ssh, nothing probed);
* records:  the magic's own `%%kprobe ksys_read fd:int buf:ptr count:ulong` (one `@@sm1` record per
            hit through the pty into the DataFrame), dd as `-c`;
* rec->file: the same script with `stap -o FILE` (staprun writes to a guest file: no ssh,
            no pty; the probe's and stapio's own cost);
* rec->pipe: the same script over the same transport as the magic (stapsh, ssh), read from
            a plain pipe on the host: no pty, no parser (the transport's cost without the magic);
* hist:     a `%%stap`-style script: `h <<< count` per hit, `@hist_log(h)` printed once at
            the end in the magic's `@@smh` block (the magic has no `--hist` yet);
* bpftrace: `kprobe:ksys_read { @ = hist(arg2); }` with dd as `-c`;
* bt-print: bpftrace printing one line per hit (bpftrace's counterpart of `records`).

Slowdown = median dd time with the probe / median dd time alone; the per-hit cost is the
extra time over N (dd's own reads; other processes' hits are not in dd's time).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any

from bench import labbench as L
from stapmagic import pipeline

N_READS = 200_000
REPS = 3
GUEST_FILE = "/tmp/stapmagic_bench_aggregation.out"

HIST_SCRIPT = r"""# stapmagic bench: in-kernel histogram of ksys_read's count argument
global h
probe kprobe.function("ksys_read") {
	if (pid() == stp_pid()) next  # skip stapio itself (see the crash note)
	h <<< ulong_arg(3)
}
probe end {
	printf("@@smh\tcount\tlog\n")
	if (@count(h)) print(@hist_log(h))
	printf("@@smh-end\n")
	printf("bench: hits=%d\n", @count(h))
}
"""
BPF_HIST = "kprobe:ksys_read { @ = hist(arg2); }"
BPF_PRINT = 'kprobe:ksys_read { printf("@@bt %d %d\\n", pid, arg2); }'

_DD = re.compile(r"copied, ([0-9.]+) s")
_HITS = re.compile(r"bench: hits=(\d+)")


def dd_command(n: int) -> str:
    return f"dd if=/dev/zero of=/dev/null bs=1 count={n}"


def dd_seconds(text: str) -> float | None:
    m = _DD.search(text)
    return float(m.group(1)) if m else None


def base(n: int) -> dict[str, Any]:
    rc, so, se, wall = L.guest_full(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={n}"])
    return {"dd": dd_seconds(se), "rc": rc}


def records(n: int) -> dict[str, Any]:
    opts = pipeline.ProbeOptions(command=dd_command(n), target="lab")
    run = pipeline.prepare(L.KSYS_READ_SPEC, "", opts)
    assert run.script is not None
    res = L.run_pipeline(run, run.script.probes)
    # dd's stderr shares the pty with the records and can land inside one (a damaged line)
    msgs = "\n".join(res.messages) + "\n" + L.damaged_text(res.parser)
    df = res.frame
    return {
        "dd": dd_seconds(msgs),
        "ok": res.run.ok,
        "rows": len(df),
        "rows_dd": int((df["comm"] == "dd").sum()) if len(df) else 0,
        "pty_loss": res.parser.raw_records - len(df) - res.run.damaged,
        "damaged": res.run.damaged,
        "lost": L.lost_messages(msgs),
        "tf": L.transport_failures(msgs),
    }


def records_file(n: int) -> dict[str, Any]:
    """The same script as `records`, written by staprun straight to a guest file (`-o`):
    the probe's own cost without the ssh transport and the host's share of the guest CPU."""
    opts = pipeline.ProbeOptions(command=dd_command(n), target="lab")
    run = pipeline.prepare(L.KSYS_READ_SPEC, "", opts)
    L.guest("rm", "-f", GUEST_FILE)
    rc, text, wall = L.stap_to_file(run.script_text, GUEST_FILE, command=dd_command(n))
    _, lines, _, _ = L.guest_full(["grep", "-c", "^@@sm1", GUEST_FILE])  # exit 1: none
    L.guest("rm", "-f", GUEST_FILE)
    return {
        "dd": dd_seconds(text),
        "rc": rc,
        "lines": int(lines.strip() or 0),
        "lost": L.lost_messages(text),
        "tf": L.transport_failures(text),
    }


def records_pipe(n: int) -> dict[str, Any]:
    """The same script as `records` over the same transport (stap --remote: stapsh, ssh),
    its stdout read from a plain pipe on the host: no pty, nothing parsed. What the magic
    adds over it is the magic's own cost; what this adds over `rec->file` is the transport's."""
    opts = pipeline.ProbeOptions(command=dd_command(n), target="lab")
    run = pipeline.prepare(L.KSYS_READ_SPEC, "", opts)
    rc, out, err, wall, _ = L.stap_to_host(run.script_text, command=dd_command(n))
    return {
        "dd": dd_seconds(err),
        "rc": rc,
        "lines": out.count(b"@@sm1"),
        "lost": L.lost_messages(err),
        "tf": L.transport_failures(err),
    }


def hist(n: int) -> dict[str, Any]:
    run = L.script_run(HIST_SCRIPT, command=dd_command(n))
    res = L.run_pipeline(run, ())
    # dd's stderr shares the pty with the records and can land inside one (a damaged line)
    msgs = "\n".join(res.messages) + "\n" + L.damaged_text(res.parser)
    hits = _HITS.search(msgs)
    return {
        "dd": dd_seconds(msgs),
        "ok": res.run.ok,
        "hits": int(hits.group(1)) if hits else None,
        "histograms": len(res.parser.histograms),
    }


def bpf(n: int, program: str) -> dict[str, Any]:
    lt = L.bpftrace(program, dd_command(n))
    text = lt.text()
    return {
        "dd": dd_seconds(text),
        "rc": lt.rc,
        "lines": sum(1 for _, ln in lt.lines if ln.startswith("@@bt ")),
        "lost": sum(int(x) for x in re.findall(r"Lost (\d+) events", text)),
    }


VARIANTS: dict[str, Callable[[int], dict[str, Any]]] = {
    "base": base,
    "records": records,
    "rec->file": records_file,
    "rec->pipe": records_pipe,
    "hist": hist,
    "bpftrace": lambda n: bpf(n, BPF_HIST),
    "bt-print": lambda n: bpf(n, BPF_PRINT),
}


def run(
    out: Callable[[str], None] = print,
    n: int | None = None,
    reps: int = REPS,
) -> dict[str, Any]:
    """`STAPMAGIC_BENCH_AGG_N` (dd's reads, default N_READS) and `STAPMAGIC_BENCH_AGG_ONLY`
    (comma-separated variant names; base is always run) narrow a run, e.g. the per-hit
    comparison alone: STAPMAGIC_BENCH_AGG_ONLY=records,rec-file,rec-pipe."""
    n = n if n is not None else int(os.environ.get("STAPMAGIC_BENCH_AGG_N", N_READS))
    names = list(VARIANTS)
    only = os.environ.get("STAPMAGIC_BENCH_AGG_ONLY")
    if only:
        wanted = {
            w.strip().replace("-", "->", 1) if w.strip().startswith("rec-") else w.strip()
            for w in only.split(",")
        }
        unknown = wanted - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
        names = [x for x in names if x in wanted or x == "base"]
    if L.has_bpftrace() is not None:
        names = [x for x in names if not x.startswith("b") or x == "base"]
    # warm-up: compile the stap scripts once (small N), so no repetition pays a compile
    records(1000)
    if "hist" in names:
        hist(1000)
    got: dict[str, list[dict[str, Any]]] = {x: [] for x in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t = time.perf_counter()
            res = VARIANTS[name](n)
            got[name].append(res)
            extra = {k: v for k, v in res.items() if k not in ("dd",)}
            out(f"rep {r + 1} {name}: dd {res['dd']} s {extra} ({time.perf_counter() - t:.0f} s)")
    return {"n": n, "reps": reps, "runs": got}


def summarize(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant: median dd seconds, slowdown vs base, extra microseconds per hit."""
    n = res["n"]
    runs = res["runs"]
    b = L.med([x["dd"] for x in runs["base"] if x["dd"] is not None])
    rows = []
    for name, xs in runs.items():
        ds = [x["dd"] for x in xs if x["dd"] is not None]
        m = L.med(ds)
        rows.append(
            {
                "name": name,
                "median": m,
                "n_ok": len(ds),
                "slowdown": m / b if b else None,
                "us_per_hit": (m - b) / n * 1e6 if name != "base" else 0.0,
            }
        )
    return rows
