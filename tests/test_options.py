"""The options table (stapmagic.options) is the one declaration of every option: the magic
line, ProbeOptions' validation and the replay comparison all come from it (issue 12 §2)."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from stapmagic import options, pipeline, recording
from stapmagic.errors import OptionError, ReplayError


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"count": 5.5}, "-n"),
        ({"count": True}, "-n"),
        ({"count": 0}, "-n"),
        ({"duration": "1"}, "-T"),
        ({"duration": math.nan}, "-T"),
        ({"duration": True}, "-T"),
        ({"pid": 4194305}, "-x"),
        ({"pid": 1.0}, "-x"),
        ({"string_max": True}, "string_max"),
        ({"string_max": 512}, "string_max"),
        ({"count_by": 5}, "--count-by"),
        ({"hist": 5}, "--hist"),
        ({"command": b"ls"}, "-c"),
        ({"command": "a\x00b"}, "-c"),
        ({"regs": "rip"}, "--regs"),
        ({"regs": ("rip", 1)}, "--regs"),
        ({"defines": "X=1"}, "-D"),
        ({"target": 5}, "target"),
        ({"target": ""}, "target"),
        ({"grace": math.nan}, "grace"),
        ({"grace": -1}, "grace"),
        ({"verbose": True}, "verbose"),
        ({"print_regs": 1}, "--print-regs"),
        ({"guru": "yes"}, "--guru"),
        ({"hist_linear": (1, 2)}, "--hist-linear"),
        ({"hist_linear": [0, 10, 1]}, "--hist-linear"),
        ({"command_only": None}, "--cmd-only"),
        ({"stap_spec": ("tcp_v4_connect", 3)}, "--spec"),
    ],
)
def test_probe_options_validate_through_the_python_api(changes, needle):
    with pytest.raises(OptionError) as info:
        pipeline.ProbeOptions(**changes)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_probe_options_accept_the_defaults_and_good_values():
    pipeline.ProbeOptions()
    pipeline.ProbeOptions(
        count=5,
        duration=1,
        pid=4194304,
        string_max=511,
        count_by="comm",
        regs=("rip",),
        defines=("X=1",),
        target="ssh://root@h:22",
        hist="latency",
        hist_linear=(0, 100, 10),
        grace=0.0,
    )


def test_every_probe_options_field_has_one_table_row():
    fields = {f.name for f in dataclasses.fields(pipeline.ProbeOptions)}
    rows = {o.name for o in options.OPTIONS if o.field}
    assert fields == rows
    for f in dataclasses.fields(pipeline.ProbeOptions):
        assert f.default == options.BY_NAME[f.name].default, f.name


def _parser_flags(ip, magic):
    func = getattr(ip.magics_manager.registry["KprobeMagics"], magic)
    return {s for a in func.parser._actions for s in a.option_strings}


def test_magic_lines_are_generated_from_the_table(ip):
    kprobe, stap = _parser_flags(ip, "kprobe"), _parser_flags(ip, "stap")
    for opt in options.OPTIONS:
        for flag in opt.flags:
            assert flag in kprobe or opt.magics == ("stap",), (opt.name, flag)
            assert (flag in stap) == ("stap" in opt.magics), (opt.name, flag)
    declared = {f for o in options.OPTIONS for f in o.flags}
    assert kprobe - {"-h", "--help"} <= declared and stap - {"-h", "--help"} <= declared


# A value other than the default for every option a replay compares.
OTHER = {
    "count": 3,
    "duration": 2.0,
    "command": "ls",
    "pid": 7,
    "regs": ("rip",),
    "print_regs": True,
    "guru": True,
    "defines": ("X=1",),
    "string_max": 9,
    "latency": True,
    "hist": "retval",
    "hist_linear": (0, 10, 1),
    "count_by": "comm",
    "command_only": True,
    "include_self": True,
    "where": "pid == 1",
    "buffer_mb": 1,
    "stap_spec": ("tcp_v4_connect sk:ptr",),
}


def _header(opts: pipeline.ProbeOptions) -> recording.Header:
    return recording.Header(
        kind="kprobe",
        spec="tcp_v4_connect",
        options=recording.options_json(opts),
        script="",
        argv=[],
        target="local",
        kernel_release="",
        stap_version="",
        started=0.0,
    )


def test_replay_compares_every_option_that_changes_the_run():
    compared = {o.name for o in options.OPTIONS if o.field and o.compared}
    assert compared == set(OTHER)
    assert {"hist_linear", "command_only"} <= compared  # the two recording._FLAG had lost
    for name, value in OTHER.items():
        # --hist-linear needs --hist: both sides have it, so hist_linear is the difference
        base = pipeline.ProbeOptions(hist="retval" if name == "hist_linear" else None)
        cell = dataclasses.replace(base, **{name: value})
        with pytest.raises(ReplayError) as info:
            recording.check_match(_header(base), "kprobe", "tcp_v4_connect", cell)
        assert f"option {options.BY_NAME[name].label} differs" in str(info.value)


def test_replay_ignores_what_does_not_change_the_run():
    base = pipeline.ProbeOptions()
    cell = dataclasses.replace(base, target="lab", verbose=0, grace=1.0, dry_run=True)
    recording.check_match(_header(base), "kprobe", "tcp_v4_connect", cell)


def test_the_readme_options_table_is_the_options_table():
    """README.md's table is generated from OPTIONS (scripts/options_table.py): a flag added,
    renamed or re-explained in options.py without regenerating it fails here."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    begin = (
        "<!-- options table: generated by scripts/options_table.py from stapmagic/options.py -->\n"
    )
    end = "<!-- end of options table -->\n"
    assert readme.count(begin) == 1 and readme.count(end) == 1
    table = readme.split(begin, 1)[1].split(end, 1)[0]
    assert table == options.markdown_table(), "regenerate: python scripts/options_table.py"
    flags = {f for o in options.OPTIONS for f in o.flags}
    assert flags == set(re.findall(r"`(-{1,2}[a-z][a-z-]*|-[A-Za-z])[ `]", table))
