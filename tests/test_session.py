"""session.Session runs a cell without IPython (issue 12 §4): the magic is only its adapter."""

from __future__ import annotations

import sys

import pytest

from stapmagic import options, session
from stapmagic.errors import OptionError, ReplayError


class _Args:
    """What argparse would give for a line with no options."""


def cell(kind, first_line="", body="", **given):
    values = options.line_values(
        _Args(), kind, {"target": "local", "grace": 1.0, "string_max": 64, "replay_speed": 0.0}
    )
    values.update(given)
    return session.Cell.of(kind, first_line, body, values)


def test_dry_run_without_ipython(capsys):
    s = session.Session()
    assert s.run(cell("kprobe", "tcp_v4_connect sk:ptr", dry_run=True)) is None
    assert 'kprobe.function("tcp_v4_connect")' in capsys.readouterr().out


def test_session_module_does_not_import_ipython():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(session))
    names = {
        a.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    } | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any("IPython" in n or "traitlets" in n for n in names)


def test_a_run_and_its_report(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "stap"
    fake.write_text(f"#!{sys.executable}\nprint('hello from stap')\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    s = session.Session()
    outcome = s.run(cell("stap", body="probe begin { exit() }\n", verbose=0))
    assert outcome is not None and outcome.run.ok and outcome.not_saved is None
    assert outcome.run.messages == ["hello from stap"] and s.runs == []
    seen = capsys.readouterr()
    # normal output on stdout: a notebook draws stderr as an error (issue 13)
    assert "hello from stap" in seen.out and "0 rows" in seen.out and seen.err == ""


def test_mode_replay_needs_a_recording():
    s = session.Session(mode="replay")
    with pytest.raises(ReplayError, match="no --recording NAME"):
        s.run(cell("kprobe", "tcp_v4_connect"))


def test_cell_options_are_checked_by_the_table():
    with pytest.raises(OptionError, match="-n"):
        cell("kprobe", "tcp_v4_connect", count=5.5)


def test_a_stop_shows_stopping_while_stap_ends(tmp_path, monkeypatch, capsys):
    """The stop button (SIGINT to this process, here sent by the fake stap to its parent):
    while stap runs its end probes and unloads (1.5 s here), the view says stopping at once
    instead of a 'running ... 0/s' that lingers until the summary."""
    fake = tmp_path / "stap"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, signal, sys, time\n"
        "def end(*a):\n"
        "    time.sleep(1.5)\n"
        "    print('END', flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGINT, end)\n"
        "print('Pass 5: starting run.', flush=True)\n"
        "time.sleep(0.3)\n"
        "os.kill(os.getppid(), signal.SIGINT)\n"
        "time.sleep(30)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    s = session.Session()
    outcome = s.run(cell("stap", body="probe begin { }\n", grace=10.0))
    assert outcome is not None and outcome.run.interrupted
    out = capsys.readouterr().out
    assert "stapmagic: stopping..." in out, out
    assert out.index("stopping...") < out.index("stopped: the 0 rows"), out
    assert "0/s" not in out, out


def test_replays_asks_auto_once_and_quietly(monkeypatch, capsys):
    from stapmagic import recording

    asked = []

    def mode_for(mode, target, env=None):
        asked.append(str(target))
        return ("replay", "stap cannot run here: test")

    monkeypatch.setattr(recording, "mode_for", mode_for)
    s = session.Session(mode="auto")
    assert s.replays("local") and s.replays("local")  # Tab after Tab: one check
    assert asked == ["local"] and capsys.readouterr().out == ""
    assert not session.Session(mode="live").replays("local")
    assert session.Session(mode="replay").replays("local")
