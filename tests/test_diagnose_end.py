"""diagnose.py on what SystemTap prints at a run's end and around it (issue 11 §1, §6;
issue 12 §5): the -c command's end, messages inside damaged record lines, lost output per
kind, and a -D value that is no valid C.

The lines are verbatim from real runs: the reference captures (the `reference` fixture),
the lab captures of scripts/capture_bad_define.py in
tests/fixtures/captures/, or single lines built from SystemTap's format strings (the source
file is named next to each).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stapmagic.diagnose import (
    LostOutput,
    command_status,
    counters,
    damaged_messages,
    diagnose,
    lost_output,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CAPTURES = FIXTURES / "captures"


def codes(ds):
    return [d.code for d in ds]


# --------------------------------------------------------------------------------------
# the -c command's end (staprun/mainloop.c chld_proc; stapio then exits 1)

CHILD_STATUS = "WARNING: Child process exited with status 1"
PASS5_FAILED = "Pass 5: run failed.  [man error::pass5]"


def test_failed_command_alone_is_no_stap_failure():
    lines = ["Pass 5: starting run.", CHILD_STATUS, PASS5_FAILED]
    ds = diagnose(lines)
    assert codes(ds) == ["command_failed"]
    assert ds[0].severity == "info" and "status 1" in ds[0].summary
    assert ds[0].detail == (CHILD_STATUS,)
    assert command_status(lines) == 1
    assert command_status([line + "\r" for line in lines]) == 1  # as the pty delivers it


def test_command_killed_by_stap_after_its_own_error(reference):
    # the module failed to start, stapio SIGKILLed the waiting command: stap's error stays
    lines = reference("stap-5.1-linux-6.12/remote_ssh_stapsh_s_a.stderr").read_text().splitlines()
    assert command_status(lines) == -9
    ds = diagnose(lines)
    assert [d.code for d in ds if d.severity == "error"] == ["uprobe_unregister"]
    assert "command_killed" in codes(ds)


@pytest.mark.parametrize(
    "own",
    [
        "ERROR: division by 0 near operator '/' at <input>:1:30",  # a runtime error: fallback
        "semantic error: no match",  # any pass's own error
    ],
)
def test_failed_command_does_not_hide_stap_s_own_error(own):
    ds = diagnose([own, CHILD_STATUS, PASS5_FAILED])
    assert any(d.severity == "error" for d in ds), codes(ds)


def test_other_pass_failures_are_not_explained_by_the_command():
    ds = diagnose([CHILD_STATUS, "Pass 4: compilation failed.  [man error::pass4]"])
    assert [d.code for d in ds if d.severity == "error"] == ["pass4_failed"]


def test_no_command_status_without_stap_s_line():
    assert command_status(["Pass 5: run failed.  [man error::pass5]", "Child process"]) is None
    assert command_status([]) is None


# --------------------------------------------------------------------------------------
# stap's messages inside damaged record lines (stdout and stderr share the pty)

MAXACTION_LINE = "ERROR: MAXACTION exceeded near identifier 'x' at <input>:1:2"


@pytest.mark.parametrize(
    "damaged",
    [
        f"@@sm1\t0\t12{MAXACTION_LINE}".encode(),  # stderr inside a record
        f"{MAXACTION_LINE}@@sm1\t0\t1700000000\t42\t@@".encode(),  # a record glued after it
        f"@@sm1\t0\t12{MAXACTION_LINE}\r".encode(),  # as the pty delivers it
    ],
)
def test_error_inside_a_damaged_line_is_found(damaged):
    assert damaged_messages([damaged]) == [MAXACTION_LINE]
    assert codes(diagnose(damaged_messages([damaged]))) == ["maxaction"]


def test_damaged_lines_without_a_message_give_nothing():
    assert damaged_messages([b"@@sm1\t0\t12\t34", b"@@sm1\t0\t@@sm1\t1\t@@", b""]) == []


def test_damaged_error_reaches_the_run_s_diagnoses():
    from stapmagic import pipeline, runner

    run = pipeline.prepare("tcp_v4_connect", "", pipeline.ProbeOptions(dry_run=True, target="lab"))
    run.parser.feed(
        f"Pass 5: starting run.\n@@sm1\t0\t12{MAXACTION_LINE}\n"
        "Pass 5: run failed.  [man error::pass5]\n".encode()
    )
    run.parser.close()
    run.status = runner.RunStatus(
        exit_status=1, signal=None, interrupted=False, escalated=None, duration=1.0
    )
    assert run.damaged == 1 and MAXACTION_LINE not in run.messages
    assert [d.code for d in run.diagnoses] == ["maxaction"]
    assert not run.ok
    # stap said what ended the run: no "connection lost", no ssh round trip to ask
    assert pipeline.ending_diagnoses(run, reachable=lambda t: "asked") == []


# --------------------------------------------------------------------------------------
# lost output per kind (bench/labbench.py reads these instead of its own patterns)

TRANSPORT_LINE = (
    "WARNING: There were 12 transport failures. Try stap -s to increase the buffer size from 16."
)
LOST_LINE = "WARNING: There were 2054 lost messages and 0 lost bytes."


def test_lost_output_counts_each_kind_apart():
    lines = [TRANSPORT_LINE, LOST_LINE, TRANSPORT_LINE + "\r", "There were 3 lost messages"]
    lost = lost_output(lines)
    assert lost == LostOutput(transport_failures=24, lost_messages=2054)
    assert lost.total == counters(lines).transport_failures == 2078
    assert lost_output([]) == LostOutput() and LostOutput().total == 0


def test_lost_output_finds_them_inside_damaged_lines():
    damaged = [f"@@sm1\t0\t12{LOST_LINE}".encode()]
    assert lost_output(damaged_messages(damaged)).lost_messages == 2054


# --------------------------------------------------------------------------------------
# a -D value that passes the option check but is no valid C where the runtime uses it
# (captured on the lab by scripts/capture_bad_define.py)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("MAXSKIPPED", 'invalid suffix "x" on integer constant'),
        ("MAXACTION", "'abc' undeclared"),
    ],
)
def test_bad_define_value_is_named_not_blamed_on_the_headers(name, error):
    lines = (CAPTURES / f"bad_define_{name}.stderr").read_text().splitlines()
    ds = diagnose(lines)
    assert [d.code for d in ds if d.severity == "error"] == ["bad_define"]
    (d,) = ds
    assert f"-D {name}" in d.summary and error in d.summary
    assert "older than the kernel" not in d.summary and "headers" not in d.summary
    assert any(line.startswith("<command-line>: error:") for line in d.detail)
    assert any(f"in expansion of macro '{name}'" in line for line in d.detail)
    assert d.detail[-1] == "Pass 4: compilation failed.  [man error::pass4]"
