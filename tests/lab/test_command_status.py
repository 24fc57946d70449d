"""Issue 11 §1 on the lab's kernel: a -c command that exits non-zero is the command's result.

stapio exits 1 when its -c child failed (staprun/mainloop.c) and stap then says "Pass 5: run
failed."; the cell below used to end with "the connection to the target (the lab VM) was lost
during the run". It must return its rows, with the command's status in the result.
"""

from __future__ import annotations

# port 9 (discard) refuses in the guest, so the last connect fails and bash exits 1
CELL = (
    "%%kprobe --target lab -c \"bash -c 'for i in 1 2 3; do (echo > /dev/tcp/127.0.0.1/9) "
    "2>/dev/null; done'\" tcp_v4_connect sk:ptr uaddr:ptr len:uint"
)


def test_failing_command_returns_rows_and_its_status(cell, capsys):
    value, err, run = cell(CELL)
    printed = capsys.readouterr()
    print(printed.out + printed.err)  # the cell's own output, kept in the test log
    assert err is None, err
    assert run.status.exit_status == 1  # stap's, for the command
    assert run.status.command_status == 1
    assert "WARNING: Child process exited with status 1" in run.messages
    assert run.ok
    # the three connects of the command's subshells (comm bash); any other connect in the
    # guest during the run would be a row too
    assert (value["comm"] == "bash").sum() == 3, value
    assert (value["len"] == 16).all()
    assert "command exited with status 1" in run.summary()
    assert [d.code for d in run.diagnoses if d.severity != "info"] == []
    # the cell's one summary line says it, on stdout: a command that failed is not an error
    final = [ln for ln in printed.out.splitlines() if ln.startswith("stapmagic: 3 rows in ")]
    assert final and final[-1].endswith("; command exited with status 1"), printed.out
    assert printed.err == ""


def test_command_killed_by_a_signal_returns_rows_and_its_status(cell):
    """stapio's other form: "Child process exited with signal 9 (Killed)"."""
    value, err, run = cell(
        "%%kprobe --target lab -q -c \"bash -c '(echo > /dev/tcp/127.0.0.1/9) "
        "2>/dev/null; kill -9 $$'\" tcp_v4_connect sk:ptr uaddr:ptr len:uint"
    )
    assert err is None, err
    assert "WARNING: Child process exited with signal 9 (Killed)" in run.messages
    assert run.status.exit_status == 1 and run.status.command_status == -9
    assert run.ok and (value["comm"] == "bash").sum() == 1
    assert "command killed by SIGKILL" in run.summary()
