"""Benchmark (issue 16): the cost of a second host, `--target lab,lab:b` against `--target lab`,
in one run, alternating single and fleet.

* first row: the cell `%%kprobe -c "python3 connect_a_few.py" tcp_v4_connect sk:ptr` through
  the magic's pipeline, timed from before prepare() to the first batch with rows (module
  cached: one warm-up of each first; both guests run the same kernel, so the fleet run finds
  the single run's module in stap's cache and compiles nothing);
* per hit: `%%kprobe -c "dd if=/dev/zero of=/dev/null bs=1 count=N" ksys_read fd:int`;
  dd's own elapsed time (its "copied, X s" line, one per host) divided by N. On this lab both
  guests are TCG VMs sharing the host's cores, so this includes the guests' contention.

Needs guest b up (python -m stapmagic.lab up --name b); it is not booted here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from bench import labbench as L
from stapmagic import pipeline

SPEC = "tcp_v4_connect sk:ptr"
COMMAND = "python3 connect_a_few.py"
HITS = 20000
HIT_SPEC = "ksys_read fd:int"
HIT_COMMAND = f"dd if=/dev/zero of=/dev/null bs=1 count={HITS}"
REPS = 2
TARGETS = ("lab", "lab,lab:b")
_DD = re.compile(r"copied, ([0-9.]+) s")


class NoGuestB(L.NoLab):
    pass


def require_b() -> None:
    from stapmagic import lab

    if not lab.is_up("b"):
        raise NoGuestB("lab guest b is not up (python -m stapmagic.lab up --name b)")


def first_row(target: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    opts = pipeline.ProbeOptions(command=COMMAND, target=target, verbose=1)
    run = pipeline.prepare(SPEC, "", opts)
    assert run.script is not None
    res = L.run_pipeline(run, run.script.probes, t0=t0)
    hosts = (
        res.frame["host"].value_counts().to_dict()
        if "host" in res.frame.columns
        else {target: len(res.frame)}
    )
    return {
        "first_row": res.first_row,
        "rows": len(res.frame),
        "hosts": hosts,
        "cached": any("Pass 4: using cached" in m for m in res.messages),
        "ok": res.run.ok,
    }


def per_hit(target: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    opts = pipeline.ProbeOptions(command=HIT_COMMAND, target=target, verbose=1, command_only=True)
    run = pipeline.prepare(HIT_SPEC, "", opts)
    assert run.script is not None
    res = L.run_pipeline(run, run.script.probes, t0=t0)
    dd = [float(m.group(1)) for line in res.messages if (m := _DD.search(line))]
    return {
        "dd_s": dd,
        "per_hit_us": [s / HITS * 1e6 for s in dd],
        "rows": len(res.frame),
        "wall": res.wall,
        "ok": res.run.ok,
    }


def run(out: Callable[[str], None] = print, reps: int = REPS) -> dict[str, Any]:
    L.require_lab()
    require_b()
    for target in TARGETS:  # warm stap's cache for both scripts (the fleet one differs)
        first_row(target)
        per_hit(target)
        out(f"warm-up on {target} done")
    res: dict[str, Any] = {t: {"first": [], "hit": []} for t in TARGETS}
    for i in range(reps):
        for target in TARGETS:
            f = first_row(target)
            h = per_hit(target)
            res[target]["first"].append(f)
            res[target]["hit"].append(h)
            out(
                f"rep {i + 1} {target}: first row {L.fmt_s(f['first_row'])} "
                f"(rows {f['hosts']}, cached={f['cached']}); per hit "
                f"{', '.join(f'{x:.1f} us' for x in h['per_hit_us'])} "
                f"({h['rows']} rows in {h['wall']:.1f} s)"
            )
    return res
