"""No self-observation by default (issue 13 item 6): the generated script skips stapmagic's
own transport unless `--include-self`; the walk's rules are in stapmagic/selfskip.py and run
on a real kernel in tests/lab/test_self_observation.py."""

from __future__ import annotations

import re

from stapmagic import selfskip
from stapmagic.pipeline import ProbeOptions, script_options
from stapmagic.script import ScriptOptions, generate
from stapmagic.spec import parse_spec

BODY = re.compile(r"probe (kprobe[^\n]*)\n\{\n(.*?)\n\}", re.S)


def _gen(line: str, body: str = "", **opts) -> str:
    return generate(parse_spec(body, first_line=line), ScriptOptions(**opts)).text


def test_every_event_probe_skips_the_transport_by_default():
    text = _gen("f a:int", "g.return\nh.call+return x:str", filter_pid=True)
    bodies = BODY.findall(text)
    assert len(bodies) == 4
    for point, body in bodies:
        lines = body.split("\n")
        assert lines[0].startswith("\tif (pid() == stp_pid()) next"), point
        assert lines[1] == "\t" + selfskip.guard(), point
    assert selfskip.global_line() in text
    begin = text[text.index("probe begin") :]
    assert "task_parent(t)" in begin and selfskip.SELF_LINE in begin


def test_aggregating_scripts_skip_it_too():
    for opts in ({"hist": "latency"}, {"count_by": "comm"}):
        text = _gen("tcp_v4_connect sk:ptr", **opts)
        assert all(selfskip.guard() in body for _, body in BODY.findall(text)), opts


def test_include_self_leaves_no_trace_of_the_filter():
    text = _gen("f a:int", "g.return", skip_self=False)
    assert "__sm_self" not in text and "probe begin" not in text
    assert "task_parent" not in text and "execname() ==" not in text
    # stapio itself is always skipped (a hot probe it hits crashed a test guest)
    assert "if (pid() == stp_pid()) next" in text


def test_probe_options_map_include_self():
    assert script_options(ProbeOptions()).skip_self is True
    assert script_options(ProbeOptions(include_self=True)).skip_self is False


def test_the_walk_takes_ssh_sessions_only_above_stapsh():
    # Locally stapio's ancestors are stap, then the user's own processes: an sshd-session
    # there is the user's login. Only stap's remote shell makes the session above it ours.
    body = "\n".join(selfskip.begin_body())
    assert "\tif (!ours && !(remote && ssh))\n\t\tbreak" in body
    assert 'if (name == "stapsh")\n\t\tremote = 1' in body
    ours = next(line for line in body.split("\n") if line.startswith("\tours = "))
    assert "sshd" not in ours, ours
    # the user's shell names never appear: the walk stops at the first non-stap process
    for user in ("bash", "sh", "python", "sudo", "jupyter"):
        assert f'"{user}"' not in body


def test_magic_line_include_self(ip, capsys):
    assert ip.run_cell("%%kprobe --dry-run tcp_v4_connect sk:ptr").error_in_exec is None
    assert selfskip.guard() in capsys.readouterr().out
    result = ip.run_cell("%%kprobe --dry-run --include-self tcp_v4_connect sk:ptr")
    assert result.error_in_exec is None and result.error_before_exec is None
    out = capsys.readouterr().out
    assert "kprobe.function" in out and "__sm_self" not in out
