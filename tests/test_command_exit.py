"""A -c command that fails is the command's result, not a failed run (issue 11 §1).

stapio reports the end of its -c child (staprun/mainloop.c chld_proc: "Child process exited
with status N" / "... with signal N (NAME)") and then exits 1, so stap prints "Pass 5: run
failed." although every probe ran. The fake stap (tests/fakestap) prints exactly those lines
after running the command for real; it proves the process handling, never probing (the lab
test tests/lab/test_command_status.py runs the same cell on a kernel).
"""

from __future__ import annotations

import signal
import sys

import pytest
from IPython.core.error import UsageError

from stapmagic import pipeline, runner
from stapmagic.records import format_record

SPEC = "tcp_v4_connect sk:ptr uaddr:ptr len:uint"
# port 9 (discard) refuses, so the last connect fails and bash exits 1 (the cell)
REFUSED = "bash -c 'for i in 1 2 3; do (echo > /dev/tcp/127.0.0.1/9) 2>/dev/null; done'"
CELL = f'%%kprobe -c "{REFUSED}" {SPEC}'


def schema():
    from stapmagic.script import ScriptOptions, generate
    from stapmagic.spec import parse_spec

    return generate(parse_spec("", first_line=SPEC), ScriptOptions()).probes[0]


@pytest.fixture
def fake(fake_stap_path, monkeypatch, tmp_path):
    """The fake stap runs the -c command and prints three records first."""
    recs = b"".join(
        format_record(
            0,
            1_700_000_000_000_000_000 + i,
            40 + i,
            40 + i,
            0,
            "bash",
            [0xFFFF888000000000 + i, 0xFFFFC90000000000 + i, 16],
            schema=schema(),
        )
        for i in range(3)
    )
    path = tmp_path / "records.bin"
    path.write_bytes(recs)
    monkeypatch.setenv("FAKESTAP_PYTHON", sys.executable)
    monkeypatch.setenv("FAKESTAP_RECORDS", str(path))
    monkeypatch.setenv("FAKESTAP_RUN_COMMAND", "1")
    asked: list[runner.Target] = []

    def reachable(target: runner.Target) -> str | None:
        asked.append(target)
        return None  # "the target answers": what makes a lost connection the diagnosis

    monkeypatch.setattr(pipeline, "_target_problem", reachable)
    return asked


def run_cell(ip, text):
    ip.user_ns.pop("_kprobe", None)
    result = ip.run_cell(text)
    return (
        result.result,
        result.error_before_exec or result.error_in_exec,
        ip.user_ns.get("_kprobe"),
    )


@pytest.mark.parametrize("target", [None, "ssh://root@vm"])
def test_failing_command_returns_its_rows_and_its_status(ip, fake, capsys, target):
    cell = CELL if target is None else CELL.replace("%%kprobe", f"%%kprobe --target {target}")
    value, err, run = run_cell(ip, cell)
    assert err is None, err
    assert len(value) == 3 and list(value["comm"]) == ["bash"] * 3
    assert run.status.exit_status == 1  # what stap said
    assert run.status.command_status == 1
    assert run.ok
    assert "command exited with status 1" in run.summary()
    assert "stap exit status" not in run.summary()
    assert [d.code for d in run.diagnoses] == ["command_failed"]
    assert run.diagnoses[0].severity == "info"
    assert not fake  # no reachability round trip: stap said how the run ended
    said = capsys.readouterr()
    assert "stapmagic: 3 rows in " in said.out and "command exited with status 1" in said.out
    assert said.err == ""  # normal output is not drawn as an error (issue 13)


def test_command_killed_by_a_signal_is_its_status_too(ip, fake):
    value, err, run = run_cell(ip, f"%%kprobe -q -c \"sh -c 'kill -9 $$'\" {SPEC}")
    assert err is None, err
    assert len(value) == 3
    assert run.status.command_status == -signal.SIGKILL
    assert "command killed by SIGKILL" in run.summary()
    assert [d.code for d in run.diagnoses] == ["command_killed"]


def test_command_that_succeeds_has_no_status_line(ip, fake):
    value, err, run = run_cell(ip, f'%%kprobe -q -c "true" {SPEC}')
    assert err is None and len(value) == 3
    assert run.status.exit_status == 0 and run.status.command_status is None
    assert "command" not in run.summary()


# --------------------------------------------------------------------------------------
# stap that failed for its own reason stays a failure, whatever the command did


def ended(
    messages: list[str],
    *,
    exit_status: int | None = 1,
    command_status: int | None = 1,
    target: str = "lab",
) -> pipeline.ProbeRun:
    run = pipeline.prepare_script(
        "probe begin {}", pipeline.ProbeOptions(target=target, dry_run=True)
    )
    run.status = runner.RunStatus(
        exit_status=exit_status,
        signal=None,
        interrupted=False,
        escalated=None,
        duration=1.0,
        command_status=command_status,
    )
    run.parser.messages.extend(messages)
    run.parser.row_count = 3
    return run


CHILD = "WARNING: Child process exited with status 1"
PASS5 = "Pass 5: run failed.  [man error::pass5]"


@pytest.mark.parametrize(
    ("own", "code"),
    [
        ("ERROR: MAXACTION exceeded near identifier 'x' at <input>:1:2", "maxaction"),
        ("ERROR: something stapmagic has never seen", "stap_failed"),
    ],
)
def test_stap_failure_with_a_failed_command_is_still_an_error(own, code):
    run = ended(["Pass 5: starting run.", own, CHILD, PASS5])
    asked: list[runner.Target] = []
    run.end_diagnoses = pipeline.ending_diagnoses(run, reachable=lambda t: asked.append(t))
    assert not run.ok
    errors = [d.code for d in run.diagnoses if d.severity == "error"]
    assert errors == [code]
    assert "command_failed" in [d.code for d in run.diagnoses]


def test_failed_command_but_stap_killed_is_an_error():
    run = ended([CHILD, PASS5], exit_status=None)
    run.status = runner.RunStatus(
        exit_status=None,
        signal=9,
        interrupted=False,
        escalated=None,
        duration=1.0,
        command_status=1,
    )
    run.end_diagnoses = pipeline.ending_diagnoses(run, reachable=lambda t: None)
    assert not run.ok and run.diagnoses[0].code == "stap_killed"


def test_exit_status_other_than_1_is_not_explained_by_the_command():
    # stapio's cleanup_and_exit exits 1 for a failed child; anything else is stap's own
    run = ended([CHILD, PASS5], exit_status=2)
    assert not run.ok


def test_lost_connection_still_diagnosed_without_the_child_line():
    run = ended(["Pass 5: starting run.", PASS5], command_status=None)
    run.end_diagnoses = pipeline.ending_diagnoses(run, reachable=lambda t: None)
    assert not run.ok
    assert [d.code for d in run.diagnoses] == ["connection_lost"]


def test_failure_text_of_a_failed_run_still_raises(ip, fake, monkeypatch, tmp_path):
    """Through the magic: the command failed and stap printed an ERROR of its own."""
    extra = tmp_path / "stap"
    extra.write_text(
        "#!/bin/sh\n"
        f"echo 'ERROR: MAXACTION exceeded near identifier x at <input>:1:2' >&2\n"
        f"echo '{CHILD}' >&2\necho '{PASS5}' >&2\nexit 1\n"
    )
    extra.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    _, err, run = run_cell(ip, f'%%kprobe -q -c "false" {SPEC}')
    assert isinstance(err, UsageError), err
    assert str(err).startswith("A probe handler ran more statements than MAXACTION")
    assert run.status.command_status == 1


def test_a_replay_gets_the_command_status_from_the_recorded_output():
    """A replay's source (recording.Player) returns the recorded RunStatus, which has no
    command_status: execute() derives it from the output, as for a live run."""
    run = pipeline.prepare("tcp_v4_connect", "", pipeline.ProbeOptions(dry_run=True))

    def source(argv, on_chunk, **kw):
        on_chunk(
            b"Pass 5: starting run.\r\n"
            + format_record(0, 1, 7, 7, 0, "bash", [], schema=run.script.probes[0]).replace(
                b"\n", b"\r\n"
            )
        )
        kw["tick"]()
        on_chunk(f"{CHILD}\r\n{PASS5}\r\n".encode())
        return runner.RunStatus(
            exit_status=1,
            signal=None,
            interrupted=False,
            escalated=None,
            duration=1.0,
            argv=tuple(argv),
        )

    pipeline.execute(run, source=source)
    assert run.status.command_status == 1
    assert run.ok and len(run.df) == 1
    assert "command exited with status 1" in run.summary()
