"""Record/replay plumbing: a fake stap for the process side (never proof of probing; the lab
test tests/lab/test_replay_matches_live.py compares a replay with a real run)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time

import pandas as pd
import pytest
from IPython.core.error import UsageError

from stapmagic import pipeline, recording
from stapmagic.errors import ReplayError
from stapmagic.records import format_record

SPEC = "tcp_v4_connect sk:ptr len:uint"


def schema_of(spec_line):
    from stapmagic.script import ScriptOptions, generate
    from stapmagic.spec import parse_spec

    return generate(parse_spec("", first_line=spec_line), ScriptOptions()).probes[0]


def run(ip, text):
    ip.user_ns.pop("_kprobe", None)
    result = ip.run_cell(text)
    return result.result, result.error_before_exec or result.error_in_exec


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A stand-in `stap` on PATH: -V prints a version line; otherwise two parts of output
    (records and messages in the magic's own format) with an optional pause between."""
    schema = schema_of(SPEC)
    part1 = b"Pass 5: starting run.\nWARNING: harmless\n" + format_record(
        0, 1_700_000_000_000_000_000, 42, 42, 1, "python3", [0xFFFF888001, 16], schema=schema
    )
    part2 = b"workload done\n" + format_record(
        0, 1_700_000_000_000_001_000, 42, 43, 0, "py\tthon", [0xFFFF888002, 16], schema=schema
    )
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "p1").write_bytes(part1)
    (tmp_path / "p2").write_bytes(part2)
    stap = bindir / "stap"
    stap.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-V" ]; then echo "Systemtap translator/driver (version fake-9.9)" >&2; '
        "exit 0; fi\n"
        f"cat {tmp_path}/p1\n"
        f'sleep "${{FAKE_PAUSE:-0}}"\n'
        # FAKE_MKDIR: make the recording's destination unusable while the run is on.
        'if [ -n "$FAKE_MKDIR" ]; then mkdir "$FAKE_MKDIR"; fi\n'
        f"cat {tmp_path}/p2\n"
        "exit 0\n"
    )
    stap.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STAPMAGIC_MODE", raising=False)
    return {"bin": bindir, "output": part1 + part2, "tmp": tmp_path}


@pytest.fixture
def no_stap(monkeypatch):
    """PATH without any stap: a replay must not need one."""

    def hide():
        monkeypatch.setenv("PATH", "/usr/bin:/bin")

    return hide


@pytest.fixture
def config(ip):
    """Set KprobeMagics traits for one test, restoring the defaults after it."""

    def set_(**kw):
        for k, v in kw.items():
            ip.run_line_magic("config", f"KprobeMagics.{k} = {v!r}")

    yield set_
    for k, v in (("mode", "live"), ("recordings_dir", "recordings"), ("replay_speed", 0.0)):
        ip.run_line_magic("config", f"KprobeMagics.{k} = {v!r}")


def test_round_trip_same_frame_messages_and_status(ip, fake, no_stap, capsys):
    _, err = run(ip, f"%%kprobe -q --record rec.jsonl -o live {SPEC}")
    assert err is None, err
    live_run = ip.user_ns["_kprobe"]
    assert "recording this run to rec.jsonl" in capsys.readouterr().out
    lines = [json.loads(ln) for ln in (fake["tmp"] / "rec.jsonl").read_text().splitlines()]
    head = lines[0]
    assert head["format"] == "stapmagic-recording" and head["version"] == 1
    assert head["streams"] == "pty-merged"
    assert head["kind"] == "kprobe" and head["spec"] == SPEC
    assert head["kernel_release"] == os.uname().release
    assert head["stap_version"] == "Systemtap translator/driver (version fake-9.9)"
    assert head["script"] == live_run.script_text and head["argv"] == live_run.argv
    assert lines[-1]["end"]["exit_status"] == 0
    # The chunks are the pty's raw bytes: every \n arrived as \r\n.
    raw = b"".join(base64.b64decode(c["data"]) for c in lines[1:-1])
    assert raw == fake["output"].replace(b"\n", b"\r\n")
    assert all(a["t"] <= b["t"] for a, b in zip(lines[1:-2], lines[2:-1], strict=True))

    no_stap()
    _, err = run(ip, f"%%kprobe -q --replay rec.jsonl -o again {SPEC}")
    assert err is None, err
    out = capsys.readouterr().out
    assert "REPLAY of rec.jsonl" in out and os.uname().release in out and "fake-9.9" in out
    replayed = ip.user_ns["_kprobe"]
    pd.testing.assert_frame_equal(ip.user_ns["again"], ip.user_ns["live"])
    assert len(ip.user_ns["again"]) == 2
    assert replayed.messages == live_run.messages
    assert replayed.status.exit_status == 0 and replayed.ok
    assert replayed.argv == live_run.argv


def test_stap_cell_round_trip(ip, fake, no_stap):
    body = 'probe begin { println("hi") exit() }\n'
    _, err = run(ip, f"%%stap -q --record s.jsonl\n{body}")
    assert err is None, err
    live_msgs = ip.user_ns["_kprobe"].messages
    no_stap()
    _, err = run(ip, f"%%stap -q --replay s.jsonl\n{body}")
    assert err is None, err
    assert ip.user_ns["_kprobe"].messages == live_msgs and "workload done" in live_msgs
    _, err = run(ip, "%%stap -q --replay s.jsonl\nprobe begin { exit() }\n")
    assert isinstance(err, UsageError) and "script differs" in str(err)
    _, err = run(ip, f"%%kprobe -q --replay s.jsonl {SPEC}")
    assert isinstance(err, UsageError) and "%%stap cell" in str(err)


@pytest.mark.parametrize(
    "cell, needle",
    [
        (
            "%%kprobe -q --replay rec.jsonl tcp_v4_connect sk:ptr",
            "spec differs from rec.jsonl: recorded `tcp_v4_connect sk:ptr len:uint`, "
            "this cell `tcp_v4_connect sk:ptr`",
        ),
        (f"%%kprobe -q -n 5 --replay rec.jsonl {SPEC}", "option -n differs"),
        (f'%%kprobe -q -c "python3 x.py" --replay rec.jsonl {SPEC}', "option -c differs"),
        (f"%%kprobe -q --regs rip --replay rec.jsonl {SPEC}", "option --regs differs"),
        (f"%%kprobe -q --replay missing.jsonl {SPEC}", "no recording missing.jsonl"),
    ],
)
def test_mismatch_is_a_usage_error_naming_the_difference(ip, fake, no_stap, cell, needle):
    _, err = run(ip, f"%%kprobe -q --record rec.jsonl {SPEC}")
    assert err is None, err
    no_stap()
    _, err = run(ip, cell)
    assert isinstance(err, UsageError), err
    assert needle in str(err)


def test_whitespace_and_comments_do_not_count_as_differences(ip, fake, no_stap):
    _, err = run(ip, f"%%kprobe -q --record rec.jsonl {SPEC}")
    assert err is None, err
    no_stap()
    _, err = run(
        ip, "%%kprobe -q --replay rec.jsonl\n# the seed's probe\ntcp_v4_connect  sk:ptr len:uint\n"
    )
    assert err is None, err


def test_stale_script_is_refused(ip, fake, no_stap):
    _, err = run(ip, f"%%kprobe -q --record rec.jsonl {SPEC}")
    assert err is None, err
    path = fake["tmp"] / "rec.jsonl"
    lines = path.read_text().splitlines()
    head = json.loads(lines[0])
    head["script"] = head["script"].replace("tcp_v4_connect", "tcp_v4_connectX", 1)
    path.write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")
    no_stap()
    _, err = run(ip, f"%%kprobe -q --replay rec.jsonl {SPEC}")
    assert isinstance(err, UsageError) and "re-record" in str(err)


def test_broken_files_are_replay_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n")
    with pytest.raises(ReplayError, match="not a stapmagic recording"):
        recording.load(bad)
    bad.write_text(json.dumps({"format": "stapmagic-recording", "version": 99}) + "\n")
    with pytest.raises(ReplayError, match="version 99"):
        recording.load(bad)


def _write(path, chunks, end=True):
    header = recording.Header(
        kind="kprobe",
        spec=SPEC,
        options={},
        script="x",
        argv=["stap"],
        target="lab",
        kernel_release="6.12.0-test",
        stap_version="v",
        started=0.0,
    )
    rec = recording.Recorder(path, header)
    for data in chunks:
        rec.chunk(data)
    if end:
        rec.close(None)
    return rec


def test_truncated_recording_is_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    rec = _write(path, [b"a\n"], end=False)
    assert not path.exists()  # still being written under .partial
    rec._file.flush()
    os.replace(path.with_name("t.jsonl.partial"), path)
    with pytest.raises(ReplayError, match="truncated"):
        recording.load(path)


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s
        self.slept += s


def _timed(tmp_path):
    """A recording with chunks at t = 0, 0.5 and 1.0 s (hand-set times; plumbing only)."""
    path = tmp_path / "timed.jsonl"
    header = recording.Header(
        kind="kprobe",
        spec=SPEC,
        options={},
        script="x",
        argv=["stap"],
        target="lab",
        kernel_release="k",
        stap_version="v",
        started=0.0,
    )
    clock = FakeClock()
    rec = recording.Recorder(path, header, clock=clock)
    for t in (0.0, 0.5, 1.0):
        clock.now = t
        rec.chunk(f"at {t}\n".encode())
    rec.close(None)
    return recording.load(path)


@pytest.mark.parametrize("speed, expected", [(0, 0.0), (1, 1.0), (2, 0.5), (0.5, 2.0)])
def test_replay_speed(tmp_path, speed, expected):
    rec = _timed(tmp_path)
    assert [c.t for c in rec.chunks] == [0.0, 0.5, 1.0]
    clock = FakeClock()
    got = []
    status = recording.Player(rec, speed, clock=clock, sleep=clock.sleep)(["stap"], got.append)
    assert got == [b"at 0.0\n", b"at 0.5\n", b"at 1.0\n"]
    assert clock.slept == pytest.approx(expected)
    assert not status.interrupted


def test_replay_speed_option_really_waits(ip, fake, no_stap, monkeypatch):
    monkeypatch.setenv("FAKE_PAUSE", "0.8")
    _, err = run(ip, f"%%kprobe -q --record rec.jsonl {SPEC}")
    assert err is None, err
    rec = recording.load(fake["tmp"] / "rec.jsonl")
    assert rec.chunks[-1].t - rec.chunks[0].t >= 0.7
    no_stap()
    t0 = time.monotonic()
    _, err = run(ip, f"%%kprobe -q --replay rec.jsonl --replay-speed 1 {SPEC}")
    slow = time.monotonic() - t0
    assert err is None, err
    t0 = time.monotonic()
    _, err = run(ip, f"%%kprobe -q --replay rec.jsonl {SPEC}")
    fast = time.monotonic() - t0
    assert err is None, err
    assert slow >= 0.7 and fast < 0.5, (slow, fast)


def test_stopping_a_replay_keeps_what_arrived(tmp_path):
    rec = _timed(tmp_path)
    stop = threading.Event()
    clock = FakeClock()
    got = []

    def on_chunk(data):
        got.append(data)
        stop.set()

    status = recording.Player(rec, 1, clock=clock, sleep=clock.sleep)(["stap"], on_chunk, stop=stop)
    assert got == [b"at 0.0\n"] and status.interrupted


def test_background_replay(ip, fake, no_stap):
    _, err = run(ip, f"%%kprobe -q --record rec.jsonl {SPEC}")
    assert err is None, err
    no_stap()
    value, err = run(ip, f"%%kprobe -q --bg --replay rec.jsonl {SPEC}")
    assert err is None, err
    assert isinstance(value, pipeline.ProbeRun)
    assert len(value.wait(10).df) == 2


def test_mode_record_then_replay_by_name(ip, fake, no_stap, config, capsys):
    config(mode="record")
    out = capsys.readouterr().out
    assert "mode record" in out and "recordings/NAME.jsonl" in out
    _, err = run(ip, f"%%kprobe -q --recording first -o a {SPEC}")
    assert err is None, err
    assert (fake["tmp"] / "recordings" / "first.jsonl").exists()
    no_stap()
    config(mode="replay")
    _, err = run(ip, f"%%kprobe -q --recording first -o b {SPEC}")
    assert err is None, err
    assert "REPLAY of recordings/first.jsonl" in capsys.readouterr().out
    pd.testing.assert_frame_equal(ip.user_ns["a"], ip.user_ns["b"])
    _, err = run(ip, f"%%kprobe -q {SPEC}")
    assert isinstance(err, UsageError) and "no --recording NAME" in str(err)
    _, err = run(ip, f"%%kprobe -q --recording ../x {SPEC}")
    assert isinstance(err, UsageError) and "plain name" in str(err)


def test_mode_live_writes_no_recording(ip, fake, config):
    config(mode="live")
    _, err = run(ip, f"%%kprobe -q --recording first {SPEC}")
    assert err is None, err
    assert not (fake["tmp"] / "recordings").exists()


def test_auto_mode(ip, fake, no_stap, config, capsys, monkeypatch):
    # STAPMAGIC_MODE decides when set...
    monkeypatch.setenv("STAPMAGIC_MODE", "record")
    config(mode="auto")
    assert "mode auto -> record (STAPMAGIC_MODE=record)" in capsys.readouterr().out
    _, err = run(ip, f"%%kprobe -q --recording r1 {SPEC}")
    assert err is None, err
    # ...else where stap cannot run, auto replays and says why.
    monkeypatch.delenv("STAPMAGIC_MODE")
    no_stap()
    config(mode="live")
    config(mode="auto")
    out = capsys.readouterr().out
    assert "mode auto -> replay (stap cannot run here: no `stap` on PATH)" in out
    _, err = run(ip, f"%%kprobe -q --recording r1 {SPEC}")
    assert err is None, err
    assert len(ip.user_ns["_kprobe"].df) == 2


def test_mode_for_rules(monkeypatch, tmp_path):
    from stapmagic import runner

    local = runner.Target("local")
    assert recording.mode_for("replay", local, env={}) == ("replay", "mode replay")
    assert recording.mode_for("auto", local, env={"STAPMAGIC_MODE": "live"})[0] == "live"
    monkeypatch.setenv("PATH", str(tmp_path))
    assert recording.mode_for("auto", local, env={})[0] == "replay"
    with pytest.raises(ReplayError):
        recording.mode_for("sometimes", local, env={})


def test_env_sets_defaults(monkeypatch):
    from stapmagic.magic import KprobeMagics

    monkeypatch.setenv("STAPMAGIC_TARGET", "lab")
    monkeypatch.setenv("STAPMAGIC_MODE", "replay")
    m = KprobeMagics(shell=None)
    assert m.target == "lab" and m.mode == "replay"
    monkeypatch.delenv("STAPMAGIC_TARGET")
    monkeypatch.delenv("STAPMAGIC_MODE")
    m = KprobeMagics(shell=None)
    assert m.target == "local" and m.mode == "live"


def test_replay_never_touches_the_recorded_target(ip, fake, no_stap, monkeypatch):
    """A failed lab run, replayed where there is no lab (Binder): nothing may ask the lab
    (no post-mortem, no reachability check, no kallsyms, no stap command line)."""
    _, err = run(ip, f"%%kprobe -q --record rec.jsonl {SPEC}")
    assert err is None, err
    path = fake["tmp"] / "rec.jsonl"
    lines = [json.loads(ln) for ln in path.read_text().splitlines()]
    lines[0]["target"] = "lab"
    lines[-1]["end"]["exit_status"] = 1
    path.write_text("".join(json.dumps(obj) + "\n" for obj in lines))

    from stapmagic import lab, runner

    def forbidden(*a, **kw):
        raise AssertionError("a replay asked the target")

    for mod, name in (
        (lab, "is_up"),
        (lab, "status"),
        (lab, "stap_argv"),
        (lab, "exec_argv"),
        (runner, "run_on_target"),
        (runner, "run"),
    ):
        monkeypatch.setattr(mod, name, forbidden)
    no_stap()
    _, err = run(ip, f"%%kprobe -q --replay rec.jsonl {SPEC}")
    assert isinstance(err, UsageError), err
    replayed = ip.user_ns["_kprobe"]
    assert replayed.status.exit_status == 1 and len(replayed.df) == 2
    assert str(replayed.target) == "lab" and not replayed.notes


# -- a recording that cannot be written (issue 11 §3) ----------------------------------------


def _partials(tmp):
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*.partial"))


@pytest.mark.parametrize(
    "dest, needle",
    [
        ("adir", "adir is a directory"),
        ("nodir/rec.jsonl", "directory nodir does not exist"),
        ("afile/rec.jsonl", "afile is not a directory"),
        ("a\x00b.jsonl", "NUL"),
    ],
)
def test_unusable_record_path_is_refused_before_the_run(ip, fake, dest, needle):
    (fake["tmp"] / "adir").mkdir()
    (fake["tmp"] / "afile").write_text("x")
    _, err = run(ip, f"%%kprobe -q --record {dest} {SPEC}")
    assert isinstance(err, UsageError), repr(err)
    assert needle in str(err)
    assert "_kprobe" not in ip.user_ns  # refused before stap ran
    assert _partials(fake["tmp"]) == []
    assert not (fake["tmp"] / "nodir").exists()


def test_recording_that_cannot_be_saved_after_the_run_keeps_the_rows(ip, fake, monkeypatch):
    # The destination turns into a directory while stap runs: only closing the file can fail.
    monkeypatch.setenv("FAKE_MKDIR", "rec.jsonl")
    _, err = run(ip, f"%%kprobe -q --record rec.jsonl -o got {SPEC}")
    assert isinstance(err, UsageError), repr(err)
    assert "recording rec.jsonl was not saved" in str(err) and "directory" in str(err)
    assert "2 rows" in str(err)
    assert len(ip.user_ns["got"]) == 2
    done = ip.user_ns["_kprobe"]
    assert not done.running and done.status.exit_status == 0
    assert _partials(fake["tmp"]) == []
    assert ip.run_line_magic("kprobe", "--list-running").empty


def test_background_run_whose_recording_fails_still_ends(ip, fake, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_MKDIR", "rec.jsonl")
    value, err = run(ip, f"%%kprobe -q --bg --record rec.jsonl {SPEC}")
    assert err is None, err
    value.wait(20)
    assert not value.running and len(value.df) == 2
    assert "recording rec.jsonl was not saved" in capsys.readouterr().err
    assert ip.run_line_magic("kprobe", "--list-running").empty
    t0 = time.monotonic()
    ip.run_line_magic("kprobe", "--stop-all")
    assert time.monotonic() - t0 < 5
    assert _partials(fake["tmp"]) == []


def _replayable(tmp_path, **opts):
    run_ = pipeline.prepare_script(
        "probe begin { exit() }\n",
        pipeline.ProbeOptions(**opts),
        build=lambda *a: ["stap", "-e", "x"],
    )
    return run_, recording.Player(_timed(tmp_path))


def test_execute_marks_the_run_done_whatever_fails_after_it(tmp_path):
    r, player = _replayable(tmp_path)
    finals = []

    def on_batch(run_, batch, final):
        if final:
            finals.append(run_.status)
            raise RuntimeError("the final batch's consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        pipeline.execute(r, on_batch=on_batch, source=player)
    assert r.done.is_set() and not r.running and r.finished is not None
    assert len(finals) == 1 and finals[0].exit_status is None
    assert r.messages == ["at 0.0", "at 0.5", "at 1.0"]


def test_a_failing_post_mortem_is_a_note_not_a_lost_run(tmp_path, monkeypatch):
    from stapmagic import lab, runner
    from stapmagic.errors import LabError

    r = pipeline.prepare_script(
        "probe begin { exit() }\n", pipeline.ProbeOptions(target="lab"), build=lambda *a: ["stap"]
    )

    def failed_run(argv, on_chunk, **kw):
        on_chunk(b"ERROR: something\n")
        return runner.RunStatus(
            exit_status=1,
            signal=None,
            interrupted=False,
            escalated=None,
            duration=0.1,
            argv=tuple(argv),
        )

    def broken(*a, **kw):
        raise LabError("lab state unreadable")

    monkeypatch.setattr(runner, "run", failed_run)
    monkeypatch.setattr(lab, "is_up", broken)
    finals = []
    pipeline.execute(r, on_batch=lambda run_, b, final: finals.append(final))
    assert r.done.is_set() and finals == [True]
    assert any("lab state unreadable" in n for n in r.notes)


# -- a tampered recording (issue 11 §4) ------------------------------------------------------


def _set(line, *path_value):
    *path, value = path_value

    def edit(objs):
        obj = objs[line]
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return edit


def _drop_end(objs):
    objs.pop()


@pytest.mark.parametrize(
    "edit, line, needle",
    [
        (_set(1, "data", "not base64!"), 2, "`data` is not valid base64"),
        (_set(1, "t", "abc"), 2, '`t` must be a number of seconds from 0, not "abc"'),
        (_set(1, "t", None), 2, "`t` must be a number of seconds"),
        (_set(1, "t", float("nan")), 2, "not NaN"),
        (_set(1, "t", -1), 2, "not -1"),
        (_set(1, "data", 123), 2, "`data` must be a base64 string, not 123"),
        (
            _set(0, "options", "count", "5"),
            1,
            'option `count` must be a whole number or null, not "5"',
        ),
        (_set(0, "options", "regs", "rip"), 1, "option `regs` must be a list of (a string)"),
        (_set(0, "options", []), 1, "`options` must be an object"),
        (_set(0, "started", 1e300), 1, "`started` must be a number of seconds from 0 to"),
        (_set(0, "argv", "stap -e x"), 1, "`argv` must be a list of strings"),
        (_set(0, "target", "ssh://-oProxyCommand=x"), 1, "`target`"),
        (_set(0, "version", 2), 1, "made by a newer stapmagic"),
        (
            _set(-1, "end", "exit_status", "0"),
            "end",
            '`exit_status` must be null or a whole number 0-255, not "0"',
        ),
        (_set(-1, "end", "exit_status", 0.0), "end", "`exit_status`"),
        (
            _set(-1, "end", "interrupted", "yes"),
            "end",
            '`interrupted` must be true or false, not "yes"',
        ),
        (_set(-1, "end", "duration", float("inf")), "end", "`duration`"),
    ],
)
def test_tampered_recording_is_one_usage_error_naming_the_line(
    ip, fake, no_stap, edit, line, needle
):
    _, err = run(ip, f"%%kprobe -q --record rec.jsonl {SPEC}")
    assert err is None, err
    path = fake["tmp"] / "rec.jsonl"
    objs = [json.loads(ln) for ln in path.read_text().splitlines()]
    # header, the output in as many chunks as the pty delivered it (one or more), end
    assert len(objs) >= 3 and "end" in objs[-1]
    if line == "end":
        line = len(objs)
    edit(objs)
    path.write_text("".join(json.dumps(obj) + "\n" for obj in objs))
    no_stap()
    _, err = run(ip, f"%%kprobe -q --replay rec.jsonl {SPEC}")
    assert isinstance(err, UsageError), repr(err)
    assert f"rec.jsonl, line {line}: " in str(err) and needle in str(err), str(err)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "rec.jsonl is empty"),
        ("\n\n", "rec.jsonl is empty"),
        ("hello\nworld\n", "rec.jsonl, line 1: not a stapmagic recording (not JSON"),
        ("[1, 2]\n", "rec.jsonl, line 1: not a stapmagic recording"),
        (
            '{"format": "stapmagic-recording", "version": true}\n',
            "`version` must be a whole number",
        ),
    ],
)
def test_not_a_recording_is_one_usage_error(ip, fake, no_stap, text, needle):
    (fake["tmp"] / "rec.jsonl").write_text(text)
    no_stap()
    _, err = run(ip, f"%%kprobe -q --replay rec.jsonl {SPEC}")
    assert isinstance(err, UsageError), repr(err)
    assert needle in str(err), str(err)


def test_recording_without_its_end_line_is_one_usage_error(ip, fake, no_stap):
    _, err = run(ip, f"%%kprobe -q --record rec.jsonl {SPEC}")
    assert err is None, err
    path = fake["tmp"] / "rec.jsonl"
    path.write_text("".join(ln + "\n" for ln in path.read_text().splitlines()[:-1]))
    no_stap()
    _, err = run(ip, f"%%kprobe -q --replay rec.jsonl {SPEC}")
    assert isinstance(err, UsageError) and "rec.jsonl is truncated" in str(err), repr(err)


# -- names and directories (issue 11 §4) -----------------------------------------------------


@pytest.mark.parametrize(
    "cell, needle",
    [
        (f"%%kprobe -q --replay a\x00b.jsonl {SPEC}", "contains a NUL character"),
        (
            f"%%kprobe -q --replay nodir/rec.jsonl {SPEC}",
            "no recording nodir/rec.jsonl (make it with --record, or in mode record); "
            "directory nodir does not exist",
        ),
    ],
)
def test_bad_replay_names_are_usage_errors(ip, fake, no_stap, cell, needle):
    no_stap()
    _, err = run(ip, cell)
    assert isinstance(err, UsageError), repr(err)
    assert needle in str(err), str(err)


@pytest.mark.parametrize("mode", ["record", "replay"])
def test_recordings_dir_that_is_a_file_is_a_usage_error(ip, fake, config, mode):
    (fake["tmp"] / "afile").write_text("x")
    config(mode=mode, recordings_dir="afile")
    _, err = run(ip, f"%%kprobe -q --recording r1 {SPEC}")
    assert isinstance(err, UsageError), repr(err)
    assert "KprobeMagics.recordings_dir 'afile' is a file, not a directory" in str(err)
    assert "_kprobe" not in ip.user_ns and _partials(fake["tmp"]) == []


def test_mode_record_creates_a_missing_recordings_dir(ip, fake, config):
    config(mode="record", recordings_dir="new/dir")
    _, err = run(ip, f"%%kprobe -q --recording r1 {SPEC}")
    assert err is None, err
    assert recording.load(fake["tmp"] / "new" / "dir" / "r1.jsonl").end.exit_status == 0
