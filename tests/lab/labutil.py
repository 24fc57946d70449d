"""Helpers shared by the lab tests: commands in the guest, facts stap printed."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from stapmagic import pipeline, runner

LAB = runner.Target("lab")
ROWS_TIMEOUT = 300.0  # a cold compile under TCG on a busy host can take minutes
_MODULE = re.compile(r"(stap_[0-9a-f]{32}_)")


def guest(*argv: str, ok_codes: tuple[int, ...] = (0,)) -> str:
    """stdout of a command run in the guest."""
    return runner.run_on_target(LAB, list(argv), ok_codes=ok_codes)


def _messages(run_or_messages: pipeline.ProbeRun | Iterable[str]) -> list[str]:
    if isinstance(run_or_messages, pipeline.ProbeRun):
        return run_or_messages.messages
    return list(run_or_messages)


def workload_pid(run_or_messages: pipeline.ProbeRun | Iterable[str]) -> int:
    """The pid the lab workloads print first (`workload pid=P`)."""
    messages = _messages(run_or_messages)
    for msg in messages:
        m = re.search(r"workload pid=(\d+)", msg)
        if m:
            return int(m.group(1))
    raise AssertionError(f"the workload printed no pid: {messages}")


def module_hash(run_or_messages: pipeline.ProbeRun | Iterable[str]) -> str:
    """`stap_HASH_`: the run's module, from stap's Pass 3/4 line (needs -v, i.e. no -q).

    staprun loads it as stap_HASH_PID, so the hash is what identifies it in the guest while
    other runs may share it."""
    messages = _messages(run_or_messages)
    for msg in messages:
        if msg.startswith(("Pass 3:", "Pass 4:")):
            m = _MODULE.search(msg)
            if m:
                return m.group(1)
    raise AssertionError(f"no Pass 3/4 line naming the module: {messages[:12]}")


def loaded(prefix: str) -> list[str]:
    """The guest's modules whose name starts with `prefix`."""
    return [
        line.split()[0]
        for line in guest("cat", "/proc/modules").splitlines()
        if line.startswith(prefix)
    ]


def wait_for(
    cond: Callable[[], bool], timeout: float = ROWS_TIMEOUT, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
