"""Consecutive probe runs in one Python process (one notebook kernel's life), every fifth
stopped from outside while it runs: nothing leaks on the host (processes, pty fds, threads,
memory) or in the guest (modules, stapio/staprun).

Runs go through the pipeline (prepare/start/stop: what the magic calls) so IPython's own
output history does not hold the frames. Each run is as cheap as the lab allows: one cached
module per -c command, one connect. Under TCG a run takes 6-15 s.

$STAPMAGIC_SOAK_RUNS runs (default 15, what CI runs: 2-4 minutes). The full soak is 100 runs,
10-25 minutes: STAPMAGIC_SOAK_RUNS=100 python -m pytest tests/lab/test_soak.py
"""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

from test_faults import (
    assert_guest_clean,
    assert_host_clean,
    guest_leftovers,
    module_hash,
    workload_pid,
)

from stapmagic import pipeline

RUNS = int(os.environ.get("STAPMAGIC_SOAK_RUNS", "15"))
STOP_EVERY = 5
# Host state is taken as the baseline after this run (the first runs warm caches up) and
# compared at the end: run 10 of 100, run 5 of 15.
BASELINE_RUN = min(10, max(1, RUNS // 3))
TAG = f"STAPMAGIC_SOAK_{os.getpid()}"
# What a stopped run's -c command does after its connect: sleep (it stays behind for the
# rest of its 8 s: SystemTap leaves a -c command on a remote target running).
STOPPED_COMMAND = "python3 connect_a_few.py 1; sleep 8"
DONE_COMMAND = "python3 connect_a_few.py 1"


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the directory's own fd, closed by now
    return out


def ptys() -> list[str]:
    return [t for t in fds().values() if t == "/dev/ptmx" or t.startswith("/dev/pts/")]


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def one_run(n: int) -> pipeline.ProbeRun:
    stopped = n % STOP_EVERY == 0
    opts = pipeline.ProbeOptions(
        command=STOPPED_COMMAND if stopped else DONE_COMMAND,
        target="lab",
        verbose=1,
        defines=(TAG,),
    )
    run = pipeline.start(pipeline.prepare("tcp_v4_connect", "", opts))
    if stopped:
        deadline = time.monotonic() + 300
        while not any(m.startswith("did 1 connects") for m in run.messages):
            assert run.running, f"run {n} ended before it was stopped: {run.messages[-8:]}"
            assert time.monotonic() < deadline, f"run {n}: no workload output"
            time.sleep(0.1)
        run.stop(120)
    else:
        run.wait(300)
    assert run.done.is_set(), f"run {n} did not end: {run.messages[-8:]}"
    assert run.thread is not None
    run.thread.join(10)
    assert not run.thread.is_alive()
    assert run.ok, f"run {n}: {run.summary()}: {run.messages[-8:]}"
    assert run.interrupted == stopped, run.summary()
    df = run.df
    assert (df["pid"] == workload_pid(run.messages)).sum() == 1, (n, run.summary())
    return run


def test_repeated_runs_leak_nothing(lab):
    assert RUNS >= 2 * STOP_EVERY, f"STAPMAGIC_SOAK_RUNS={RUNS}: at least {2 * STOP_EVERY} runs"
    # the session's shared ssh connection is up before the first run, as after any earlier
    # cell: its starting thread and ssh are the session's, not leftovers of a run
    lab.ssh_mux(Path(lab._running_state()["root"])).start(wait=True)
    t0 = time.monotonic()
    base_threads = threading.active_count()
    hashes: dict[bool, str] = {}  # the -c command is part of stap's module hash
    base: dict[str, object] = {}
    durations = []
    for n in range(1, RUNS + 1):
        t = time.monotonic()
        run = one_run(n)
        durations.append(time.monotonic() - t)
        stopped = n % STOP_EVERY == 0
        hashes.setdefault(stopped, module_hash(run.messages))
        # one cached module per command for every run
        assert module_hash(run.messages) == hashes[stopped]
        del run
        assert_host_clean()
        assert not ptys(), ptys()
        assert threading.active_count() == base_threads
        if n % 10 == 0:
            # the guest unloads a stopped run's module a moment after stap exits
            for hash_ in hashes.values():
                assert_guest_clean(hash_, timeout=60)
        if n == BASELINE_RUN:
            gc.collect()
            base = {"rss": rss_kib(), "fds": sorted(fds()), "threads": threads()}

    gc.collect()
    assert sorted(fds()) == base["fds"]
    assert threads() == base["threads"]
    grown = rss_kib() - int(base["rss"])  # type: ignore[arg-type]
    # runs of a few rows each: anything kept per run would show; allocator noise will not
    assert grown < 48 * 1024, f"RSS grew by {grown} KiB over {RUNS - BASELINE_RUN} runs"
    for hash_ in hashes.values():
        assert not guest_leftovers(hash_)
    total = time.monotonic() - t0
    print(
        f"\n{RUNS} runs in {total:.0f} s: {min(durations):.1f}-{max(durations):.1f} s each, "
        f"RSS after run {BASELINE_RUN} {base['rss']} KiB, after run {RUNS} {rss_kib()} KiB"
    )
