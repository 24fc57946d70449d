"""Issue 16 on two lab guests: `--target lab,lab:b` is one stap with two --remote, rows carry
the host they came from, and a guest killed mid-run costs only its own rows.

Guest b boots here (python -m stapmagic.lab up --name b, a qcow2 overlay on the lab's image,
about a minute under TCG) and is brought down at the end of this module.
"""

from __future__ import annotations

import os
import signal
import threading
import time

FLEET = "lab,lab:b"


def _on(labmod, name: str, command: str) -> None:
    import subprocess

    argv = labmod.exec_argv(["sh", "-c", command], **({} if name == "lab" else {"name": name}))
    subprocess.run(argv, check=True, capture_output=True, timeout=60)  # noqa: S603


def test_both_hosts_rows_arrive_with_their_host(cell, guest_b, capsys):
    # The same -c runs on every host; each guest's own file says how many connects to make,
    # so the row counts per host prove each row's host.
    _on(guest_b, "lab", "echo 2 > /tmp/stapmagic-fleet-n")
    _on(guest_b, "b", "echo 5 > /tmp/stapmagic-fleet-n")
    value, err, run = cell(
        f"%%kprobe --target {FLEET} -c \"bash -c 'for i in $(seq $(cat /tmp/stapmagic-fleet-n)); "
        "do (echo > /dev/tcp/127.0.0.1/9) 2>/dev/null; done; true'\" "
        "tcp_v4_connect sk:ptr uaddr:ptr len:uint"
    )
    printed = capsys.readouterr()
    print(printed.out + printed.err)
    assert err is None, err
    assert str(value["host"].dtype) == "category"
    assert list(value["host"].cat.categories) == ["lab", "lab:b"]
    ours = value[value["comm"] == "bash"]
    assert ours.groupby("host", observed=False).size().to_dict() == {"lab": 2, "lab:b": 5}
    assert "--remote=ssh://stapmagic-lab-b" in run.argv


def test_a_host_down_at_the_start_is_left_out_and_named(cell, capsys):
    """Guest zz was never booted: pre-flight leaves it out, lab runs, the cell says why."""
    value, err, run = cell(
        "%%kprobe --target lab,lab:zz -c \"bash -c '(echo > /dev/tcp/127.0.0.1/9) 2>/dev/null; "
        "true'\" tcp_v4_connect sk:ptr uaddr:ptr len:uint"
    )
    printed = capsys.readouterr()
    print(printed.out + printed.err)
    assert err is None, err
    assert list(value["host"].cat.categories) == ["lab", "lab:zz"]
    assert (value[value["comm"] == "bash"]["host"] == "lab").sum() == 1
    assert (value["host"] == "lab:zz").sum() == 0
    assert "--remote=ssh://stapmagic-lab-zz" not in run.argv
    (note,) = [d.summary for d in run.diagnoses if "lab:zz" in d.summary]
    assert "did not answer before the run" in note and "lab guest zz is not up" in note
    assert "lab:zz did not answer" in printed.out + printed.err


def test_a_guest_killed_mid_run_costs_only_its_own_rows(cell, guest_b, live_run, capsys):
    n = 30
    killed: dict[str, float] = {}

    def kill_b_once_its_rows_come() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            run = live_run.get("run")
            if run is not None:
                df = run.df
                if "host" in df.columns and (df["host"] == "lab:b").any():
                    state = guest_b.last_state("b")
                    os.kill(int(state["pid"]), signal.SIGKILL)
                    killed["at"] = time.monotonic()
                    return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_b_once_its_rows_come, daemon=True)
    killer.start()
    value, err, run = cell(
        f"%%kprobe --target {FLEET} -c \"bash -c 'for i in $(seq {n}); do "
        "(echo > /dev/tcp/127.0.0.1/9) 2>/dev/null; sleep 0.5; done; true'\" "
        "tcp_v4_connect sk:ptr uaddr:ptr len:uint"
    )
    killer.join(5)
    printed = capsys.readouterr()
    print(printed.out + printed.err)
    print(run.status, run.notes, run.messages[-10:])
    assert "at" in killed, "guest b never produced a row"
    # stap ends with "Pass 5: run failed" (exit 1): the cell fails, naming the dead host and
    # its cause, and keeps every row (lab's complete) in _kprobe.df.
    assert err is not None and type(err).__name__ == "UsageError"
    assert "lab:b does not answer" in str(err) and "lab:b stopped answering" in str(err)
    value = run.df
    ours = value[value["comm"] == "bash"]
    per_host = ours.groupby("host", observed=False).size().to_dict()
    assert per_host["lab"] == n  # complete: every connect of lab's command
    assert 1 <= per_host["lab:b"] < n
    assert any(n.startswith("lab:b stopped answering during the run") for n in run.notes)
