"""A live run on the lab recorded with --record, then replayed: the same DataFrame and
messages come out, and the recording names the lab's kernel and stap."""

from __future__ import annotations

import pandas as pd
import pytest

from stapmagic import recording, runner

LAB = runner.Target("lab")


@pytest.fixture
def cell(ip, lab, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    ip.run_line_magic("config", 'KprobeMagics.target = "lab"')

    def go(text: str):
        ip.user_ns.pop("_kprobe", None)
        result = ip.run_cell(text)
        return result.error_before_exec or result.error_in_exec, ip.user_ns.get("_kprobe")

    yield go
    ip.run_line_magic("config", 'KprobeMagics.target = "local"')


def test_replay_gives_the_live_frame_and_messages(cell, ip, tmp_path, capsys):
    spec = '--cmd-only -c "python3 connect_fail.py" tcp_v4_connect.return:int'
    err, live = cell(f"%%kprobe -o live --record rec.jsonl {spec}")
    assert err is None, err
    assert len(ip.user_ns["live"]) == 4  # connect_fail.py: 2 good connects, 2 rejected

    rec = recording.load(tmp_path / "rec.jsonl")
    release = runner.run_on_target(LAB, ["uname", "-r"]).strip()
    assert rec.header.kernel_release == release
    assert rec.header.stap_version.startswith("Systemtap translator/driver (version 5.")
    assert rec.header.target == "lab" and rec.header.argv == live.argv
    assert rec.end.exit_status == live.status.exit_status == 0
    capsys.readouterr()

    # A replay needs neither the lab nor stap: point the target elsewhere.
    ip.run_line_magic("config", 'KprobeMagics.target = "local"')
    err, again = cell(f"%%kprobe -o again --replay rec.jsonl {spec}")
    assert err is None, err
    out = capsys.readouterr().out
    assert "REPLAY of rec.jsonl" in out and release in out
    pd.testing.assert_frame_equal(ip.user_ns["again"], ip.user_ns["live"])
    assert again.messages == live.messages
    assert [d.summary for d in again.diagnoses] == [d.summary for d in live.diagnoses]
    assert again.summary().split(", ")[:-1] == live.summary().split(", ")[:-1]
