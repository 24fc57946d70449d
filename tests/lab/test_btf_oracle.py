"""The BTF reader on the guest's own /sys/kernel/btf, with bpftrace in the same guest as the
oracle: 50 functions sampled from the BTF, each prototype as ``bpftrace -lv`` prints it."""

from __future__ import annotations

import random
import subprocess
import time

from labutil import LAB

from stapmagic import btf, runner

SAMPLE = 50


def _guest_bytes(argv: list[str]) -> bytes:
    # bpftrace parses all of BTF before it lists: minutes under TCG on a busy host
    done = subprocess.run(  # noqa: S603
        runner.exec_argv(LAB, argv),
        capture_output=True,
        timeout=900,
        check=True,
    )
    return done.stdout


def test_fifty_sampled_prototypes_equal_bpftrace(lab):
    vmlinux = btf.BTF.parse(_guest_bytes(["cat", "/sys/kernel/btf/vmlinux"]))
    traceable = {
        line.split()[0]
        for line in _guest_bytes(["cat", "/sys/kernel/tracing/available_filter_functions"])
        .decode()
        .splitlines()
        if line and "[" not in line
    }
    candidates = sorted(
        n
        for n in vmlinux.function_names()
        if n in traceable and all(len(f.params) <= 6 for f in vmlinux.functions(n))
    )
    assert len(candidates) > 30_000
    seed = int(time.time())
    names = random.Random(seed).sample(candidates, SAMPLE)
    probes = ",".join(f"fentry:vmlinux:{n}" for n in names)
    # a program, not a search argument: bpftrace stats a long search as a file name first
    theirs = _guest_bytes(["bpftrace", "-lv", "-e", probes + " {}"]).decode()
    # -lv over a program lists its attach points in order, each with its own libbpf dumper
    mine = "".join(vmlinux.bpftrace_listing([n]) for n in names)
    listed = {line.split(":", 2)[2] for line in theirs.splitlines() if line.startswith("fentry:")}
    assert listed == set(names), (seed, sorted(set(names) - listed))
    assert mine == theirs, f"seed {seed}"
