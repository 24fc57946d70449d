"""Faults on the lab's real kernel: each ends the run with an error naming its cause, keeps
every row received before it, and leaves no process or module behind (host and guest).

- stap killed with SIGKILL, and stap's ssh transport killed (what a dying VM or network looks
  like from the host: the shared lab itself is never killed), through the magic; the
  transport killed at the handshake, where stap itself exits 0;
- SystemTap's runtime limits (probe overhead, MAXACTION, skipped probes) through the pipeline:
  a %%kprobe spec gives the rows, and one extra probe in the same script provokes the fault
  once the workload has finished (%%kprobe alone cannot express a heavy probe).

The kills happen while the -c command sleeps, so the module is unloaded while no probe is
firing: unloading under a hot kprobe has crashed the TCG guest (shared/reference README).
Each test's script carries a -D tag of this session, so its module name (stap_HASH_...) is
its own even while other runs use the same spec.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import labutil
import pytest
from IPython.core.error import UsageError
from labutil import guest, workload_pid

from stapmagic import diagnose, pipeline, runner
from stapmagic.magic import failure_text

LAB = runner.Target("lab")
TAG = f"STAPMAGIC_FAULTS_{os.getpid()}"


# --------------------------------------------------------------------------------------
# helpers (test_soak.py uses them too)


def module_hash(messages: list[str]) -> str:
    """The run's bare script hash: in the guest its module is stap_HASH_<staprun pid>."""
    return labutil.module_hash(messages)[len("stap_") : -1]


def guest_leftovers(hash_: str) -> list[str]:
    """The run's module and processes (stapio, staprun: their argv names the module)."""
    modules = [
        ln.split()[0]
        for ln in guest("cat", "/proc/modules").splitlines()
        if ln.startswith(f"stap_{hash_}_")
    ]
    procs = [
        ln.strip()
        for ln in guest("ps", "-eo", "pid,comm,args").splitlines()
        if hash_ in ln and " ps -eo " not in ln
    ]
    return modules + procs


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def assert_guest_clean(hash_: str, timeout: float = 60.0) -> None:
    left: list[str] = []

    def clean() -> bool:
        nonlocal left
        left = guest_leftovers(hash_)
        return not left

    assert wait_for(clean, timeout, step=2.0), f"left in the guest after {timeout:.0f} s: {left}"


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    return comm, int(text[text.rindex(")") + 2 :].split()[1])


def host_descendants(root: int | None = None) -> list[tuple[int, str]]:
    """(pid, comm) of every process below `root` (default: this process), from /proc."""
    root = os.getpid() if root is None else root
    table = {
        int(n): st for n in os.listdir("/proc") if n.isdigit() and (st := _stat(int(n))) is not None
    }
    found: list[tuple[int, str]] = []
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, (comm, ppid) in table.items():
            if ppid == pid:
                found.append((child, comm))
                frontier.append(child)
    return found


def assert_host_clean(timeout: float = 15.0) -> None:
    left: list[tuple[int, str]] = []

    def clean() -> bool:
        nonlocal left
        left = host_descendants()
        return not left

    assert wait_for(clean, timeout, step=0.2), f"processes left under this one: {left}"


def execute_bounded(run: pipeline.ProbeRun, timeout: float = 420.0) -> pipeline.ProbeRun:
    """pipeline.execute in its thread, stopped (and failed) if it outlives `timeout`."""
    pipeline.start(run)
    if not run.done.wait(timeout):
        run.stop(60)
        pytest.fail(f"the run did not end within {timeout:.0f} s: {run.messages[-10:]}")
    return run


# --------------------------------------------------------------------------------------
# stap killed, transport killed (through the magic)


@pytest.fixture
def cell(ip, lab, monkeypatch):
    """Run a cell against the lab; returns (error, run). `live["run"]` is the run while it is
    live (pipeline.execute is watched), for a thread that injects the fault."""
    ip.run_line_magic("config", 'KprobeMagics.target = "lab"')
    live: dict[str, pipeline.ProbeRun] = {}
    original = pipeline.execute

    def spy(run, **kw):
        live["run"] = run
        return original(run, **kw)

    monkeypatch.setattr(pipeline, "execute", spy)

    def go(text: str):
        ip.user_ns.pop("_kprobe", None)
        result = ip.run_cell(text)
        return result.error_before_exec or result.error_in_exec, ip.user_ns.get("_kprobe")

    go.live = live  # type: ignore[attr-defined]
    yield go
    ip.run_line_magic("config", 'KprobeMagics.target = "local"')


# 5 connects, then a quiet stretch in which the fault is injected.
KILL_CELL = f'%%kprobe -D {TAG} -c "python3 connect_a_few.py 5; sleep 14.5" tcp_v4_connect'


def inject_when_quiet(
    live: dict[str, pipeline.ProbeRun], victim: Callable[[], int], fired: dict[str, object]
) -> threading.Thread:
    """Once the workload reported its 5 connects, SIGKILL the process victim() names."""

    def go() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            run = live.get("run")
            if run is not None and any(m.startswith("did 5 connects") for m in run.messages):
                time.sleep(0.5)
                pid = victim()
                fired["rows_before"] = run.parser.row_count
                os.kill(pid, signal.SIGKILL)
                fired["pid"] = pid
                return
            time.sleep(0.2)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


@pytest.fixture(autouse=True)
def _shared_ssh_up(request):
    """The session's shared ssh connection (targets/sshmux.py) is up before a run starts, as
    after any earlier cell: while it starts, its ssh is this process's child, and it is
    neither stap's transport nor a leftover of the run."""
    if "lab" in request.fixturenames or "cell" in request.fixturenames:
        labmod = request.getfixturevalue("lab")  # skips or fails first when the lab is down
        labmod.ssh_mux(Path(labmod._running_state()["root"])).start(wait=True)


def stap_process() -> int:
    stap = [pid for pid, comm in host_descendants() if comm == "stap"]
    assert len(stap) == 1, host_descendants()
    return stap[0]


def stap_ssh_process() -> int:
    """The ssh client `stap --remote` started (its child, in the lab's chroot)."""
    ssh = [pid for pid, comm in host_descendants(stap_process()) if comm == "ssh"]
    assert len(ssh) == 1, host_descendants()
    return ssh[0]


def check_rows_kept(run: pipeline.ProbeRun, text: str, workload_rows: int) -> None:
    df = run.df
    assert len(df) == run.parser.row_count  # every row received is in the frame
    wpid = workload_pid(run.messages)
    assert (df["pid"] == wpid).sum() == workload_rows, df
    assert f"The {run.parser.row_count} rows received before are kept" in text
    assert f"the {run.parser.row_count} rows received are in" in text


def test_stap_killed_keeps_rows_names_the_signal_leaves_nothing(cell):
    fired: dict[str, object] = {}
    thread = inject_when_quiet(cell.live, stap_process, fired)
    err, run = cell(KILL_CELL)
    thread.join(5)
    assert "pid" in fired, f"the fault was never injected: {run and run.messages}"
    assert isinstance(err, UsageError), err
    text = str(err)
    assert text.startswith("stap was killed by SIGKILL (signal 9)"), text
    assert run.status.signal == signal.SIGKILL and not run.interrupted
    assert [d.code for d in run.diagnoses][0] == "stap_killed"
    assert "stap killed by SIGKILL" in run.summary()
    check_rows_kept(run, text, workload_rows=5)
    assert run.parser.row_count >= fired["rows_before"]
    assert_host_clean()
    assert_guest_clean(module_hash(run.messages))


def test_transport_lost_keeps_rows_says_connection_lost_leaves_nothing(cell):
    fired: dict[str, object] = {}
    thread = inject_when_quiet(cell.live, stap_ssh_process, fired)
    err, run = cell(KILL_CELL)
    thread.join(5)
    assert "pid" in fired, f"the fault was never injected: {run and run.messages}"
    assert isinstance(err, UsageError), err
    text = str(err)
    assert text.startswith("the connection to the target (the lab VM) was lost during the run"), (
        text
    )
    assert "The target answers again now" in text
    assert [d.code for d in run.diagnoses][0] == "connection_lost"
    assert run.status.exit_status not in (0, None) and not run.interrupted
    check_rows_kept(run, text, workload_rows=5)
    assert_host_clean()
    assert_guest_clean(module_hash(run.messages))


def test_transport_lost_at_the_handshake_is_an_error_not_an_empty_result(lab):
    """stap exits 0 when it cannot start its remote session (main.cxx overwrites the rc):
    without its one message line this would be an empty frame that looks like "no events"."""
    opts = pipeline.ProbeOptions(command="python3 connect_a_few.py 1", target="lab", defines=(TAG,))
    run = pipeline.start(pipeline.prepare("tcp_v4_connect", "", opts))
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and run.running and time.monotonic() < deadline:
        # stap's own ssh (not the shared connection's master while it starts)
        stap = [pid for pid, comm in host_descendants() if comm == "stap"]
        ssh = [pid for pid, comm in host_descendants(stap[0]) if comm == "ssh"] if stap else []
        if ssh:
            os.kill(ssh[0], signal.SIGKILL)
            killed = ssh[0]
        time.sleep(0.005)
    run.wait(300)
    assert killed is not None, "stap started no ssh"
    assert run.status.exit_status == 0  # what stap says, wrongly
    assert not run.ok
    (first, *_) = run.diagnoses
    assert first.code == "remote_failed"
    assert "ssh://stapmagic-lab" in first.summary and "nothing ran there" in first.summary
    assert run.df.empty
    text = failure_text(run, None)
    assert text.startswith("stap could not start its session on the target ssh://stapmagic-lab")
    assert_host_clean()


# --------------------------------------------------------------------------------------
# SystemTap's runtime limits (through the pipeline)

# Fires in the -c command's `sleep`, i.e. after the workload's 20 connects.
AFTER_WORKLOAD = (
    'probe kprobe.function("do_nanosleep") {\n'
    '\tif (execname() != "sleep" || (ppid() != target() && pid() != target())) next\n'
)


# A hit that runs long: counted iterations, not a clock (under nested TCG the guest's clocks
# jump by host scheduling stalls, so a busy-wait on them ends at random).
def busy(iterations: int) -> str:
    return (
        f"\tc0 = get_cycles()\n\tfor (i = 0; i < {iterations}; i++) {{ x += i }}\n"
        '\tprintf("busy: %d iterations, %d cycles on cpu %d\\n", i, get_cycles() - c0, '
        "cpu())\n}\n"
    )


FAULTS = {
    # an unbounded loop: 100000 iterations against MAXACTION_INTERRUPTIBLE's default 10000
    "maxaction": (
        (),
        AFTER_WORKLOAD + "\tfor (i = 0; i < 100000; i++) { }\n}\n",
        "python3 connect_a_few.py 20; sleep 10",
    ),
    # one hit of 10M loop iterations (~4 10^8 cycles here); every hit checks its own last
    # 1M cycles against 50M
    "probe_overhead": (
        (
            "MAXACTION=100000000",
            "STP_OVERLOAD_THRESHOLD=50000000LL",
            "STP_OVERLOAD_INTERVAL=1000000LL",
        ),
        AFTER_WORKLOAD + busy(10_000_000),
        "python3 connect_a_few.py 20; sleep 10",
    ),
    # the sleep's hit holds a global's write lock while busy (stap takes it at the first use
    # and drops it after the last, hence a use at each end); timer.profile reads it on the
    # other CPU (a spinner keeps that one ticking), gives up after MAXTRYLOCK tries (1 ms)
    # and skips (once: perf then throttles the slow handler); one skip is more than
    # MAXSKIPPED=0. Only one probe writes the global,
    # so nothing contends before the workload is done.
    "skipped_too_many": (
        ("MAXACTION=100000000", "STP_NO_OVERLOAD", "MAXSKIPPED=0"),
        "global __sm7_g\n"
        + AFTER_WORKLOAD
        + "\t__sm7_g = 1\n"
        + busy(50_000_000)[:-2]
        + "\t__sm7_g = 2\n}\n"
        + "probe timer.profile {\n\tif (__sm7_g) next\n}\n",
        # the spinner gets going while python3 waits (not a `sleep`: that would arm it)
        "python3 connect_a_few.py 20; timeout 5 sh -c 'while :; do :; done' & "
        "python3 -c 'import time; time.sleep(0.8)'; sleep 1; wait",
    ),
}


@pytest.mark.parametrize("code", list(FAULTS))
def test_runtime_limit_keeps_rows_and_is_diagnosed(lab, code):
    defines, extra, command = FAULTS[code]
    opts = pipeline.ProbeOptions(command=command, target="lab", verbose=1, defines=(TAG, *defines))
    run = pipeline.prepare("tcp_v4_connect", "", opts)
    run.script_text += "\n" + extra
    run.argv = pipeline.build_argv(run.script_text, opts, LAB)
    execute_bounded(run)

    # information (e.g. stap eliding asmlinkage(), now that the bare function reads its
    # parameters) is no cause: the first error is
    errors = [d for d in run.diagnoses if d.severity == "error"]
    codes = [d.code for d in errors]
    assert codes and codes[0] == code, ([d.code for d in run.diagnoses], run.messages)
    assert not run.ok and run.status.exit_status not in (0, None)
    text = failure_text(run, None)
    first = errors[0]
    assert text.startswith(first.summary)
    assert any(line in text for line in first.detail)  # stap's own line is shown
    df = run.df
    assert len(df) == run.parser.row_count
    mine = int((df["pid"] == workload_pid(run.messages)).sum())
    if code == "skipped_too_many":
        # The skip comes from a race (timer.profile vs the lock); once in 6 lab runs it came
        # before the workload's 20th connect. Rows up to the fault are what must be kept.
        assert 1 <= mine <= 20, mine
    else:
        assert mine == 20  # these faults are provoked after the workload is done
    assert f"the {run.parser.row_count} rows received are in" in text
    assert_host_clean()
    assert_guest_clean(module_hash(run.messages))


# --------------------------------------------------------------------------------------
# the ending diagnoses without a lab (pure decisions)


def _ended(
    status: runner.RunStatus, messages: list[str], target: str = "lab", rows: int = 0
) -> pipeline.ProbeRun:
    # No stap command line: these decisions must not need a running lab (or stap) at all.
    run = pipeline.prepare_script(
        "probe begin {}",
        pipeline.ProbeOptions(target=target, dry_run=True),
        build=lambda text, opts, tgt: ["stap", "-e", text],
    )
    run.status = status
    run.parser.messages.extend(messages)
    run.parser.row_count = rows  # the count alone: no frame is built here
    return run


def _status(
    exit_status: int | None = 1, sig: int | None = None, interrupted: bool = False
) -> runner.RunStatus:
    return runner.RunStatus(
        exit_status=exit_status, signal=sig, interrupted=interrupted, escalated=None, duration=1.0
    )


def test_remote_session_failure_is_an_error_despite_exit_0():
    line = "error receiving hello from stapsh on remote 'ssh://stapmagic-lab'"
    run = _ended(_status(0), [line])
    assert not run.ok
    assert [d.code for d in run.diagnoses] == ["remote_failed"]
    assert run.diagnoses[0].detail == (line,)
    run = _ended(_status(0), ["error establishing ssh connection on remote 'ssh://u@h:22'"])
    assert "ssh://u@h:22" in run.diagnoses[0].summary and not run.ok
    assert _ended(_status(0), ["WARNING: x"]).ok  # and a clean run stays ok


def test_ending_diagnoses_unreachable_target_is_named():
    run = _ended(_status(1), ["Pass 5: starting run.", "Pass 5: run failed.  [man error::pass5]"])
    found = pipeline.ending_diagnoses(run, reachable=lambda t: "ssh: connect: Connection refused")
    assert [d.code for d in found] == ["target_unreachable"]
    assert "does not answer now" in found[0].summary
    assert "Connection refused" in found[0].summary
    assert "python -m stapmagic.lab status" in found[0].summary


@pytest.mark.parametrize(
    "status, messages, target",
    [
        (_status(0), ["Pass 5: starting run."], "lab"),  # a clean end
        (_status(None, 2, interrupted=True), ["Pass 5: starting run."], "lab"),  # our stop
        (_status(1), ["Pass 5: starting run.", "ERROR: MAXACTION exceeded near x"], "lab"),
        (_status(1), ["Pass 5: starting run."], "local"),  # no transport
        (_status(1), ["semantic error: no match", "Pass 2: analysis failed."], "lab"),
    ],
)
def test_ending_diagnoses_stay_out_of_the_way(status, messages, target):
    asked: list[runner.Target] = []

    def reachable(t: runner.Target) -> str | None:
        asked.append(t)
        return None

    run = _ended(status, messages, target)
    assert pipeline.ending_diagnoses(run, reachable=reachable) == []
    assert not asked  # no ssh round trip where stap already said what happened


def test_killed_by_signal_is_named_on_every_target():
    for target in ("local", "lab", "ssh://root@vm"):
        run = _ended(_status(None, signal.SIGKILL), [], target, rows=7)
        (d,) = pipeline.ending_diagnoses(run, reachable=lambda t: None)
        assert d.code == "stap_killed" and d.severity == "error"
        assert d.summary.startswith("stap was killed by SIGKILL (signal 9)")
        assert "The 7 rows received before are kept" in d.summary


def test_ending_diagnosis_replaces_the_generic_fallback():
    run = _ended(_status(1), ["Pass 5: starting run.", "Pass 5: run failed.  [man error::pass5]"])
    assert [d.code for d in run.diagnoses] == ["stap_failed"]
    run.end_diagnoses = pipeline.ending_diagnoses(run, reachable=lambda t: None)
    assert [d.code for d in run.diagnoses] == ["connection_lost"]
    assert run.diagnoses[0].detail == ("Pass 5: run failed.  [man error::pass5]",)
    assert isinstance(run.diagnoses[0], diagnose.Diagnosis)


# --------------------------------------------------------------------------------------
# the lab VM itself dies mid-run (last in this file: it boots the lab again)


def test_lab_vm_killed_mid_run_keeps_rows_and_names_the_cause(cell, lab):
    """qemu SIGKILLed while the probe runs (what a host OOM kill or a guest crash look like):
    the error says the VM is gone, the rows received before are kept, nothing stays on the
    host; then the lab is booted again for the tests after this one."""
    state = lab.last_state()
    assert state is not None
    qemu = int(state["pid"])
    fired: dict[str, object] = {}
    thread = inject_when_quiet(cell.live, lambda: qemu, fired)
    try:
        err, run = cell(KILL_CELL)
        thread.join(5)
        assert "pid" in fired, f"the fault was never injected: {run and run.messages}"
        assert isinstance(err, UsageError), err
        text = str(err)
        assert "the lab VM is no longer running" in text, text
        assert "python -m stapmagic.lab up" in text
        assert not run.interrupted and not run.ok
        check_rows_kept(run, text, workload_rows=5)
        assert_host_clean()
    finally:
        lab.up(log=lambda *a: None)
    assert lab.is_up()
