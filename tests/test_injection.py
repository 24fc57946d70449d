"""Injection attempts, explicitly: through the magic (`ip.run_cell`, as a notebook runs it) and
through the APIs. Each attempt is either refused with a clear error or travels as exactly one
argv item of its own option; attacker text never reaches the generated script.

(`-c CMD` is a shell command on the target by SystemTap's design: staprun runs `sh -c CMD`
there, staprun/mainloop.c. stapmagic's part is to hand it over as one argv item untouched.)
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
from IPython.core.error import UsageError

from stapmagic import pipeline, runner
from stapmagic.errors import OptionError, SpecError
from stapmagic.script import ScriptOptions, generate
from stapmagic.spec import parse_spec

# Payloads that must never be part of a name: each holds a character outside the grammar.
PAYLOADS = [
    '"',
    "'",
    "{",
    "}",
    '"); system("id"); printf("',
    "%{ panic(); %}",
    "%{",
    ";",
    "foo;probe begin{}",
    "$(id)",
    "`id`",
    "$x",
    "\\",
    "-e",
    "--remote=ssh://evil",
    "-x1",
    "a b",
    "a\tb",
    "\x00",
    "\x1b[31m",
    "a=b",
    "*",
    "f?",
    "{print}",
    "(",
    "#",
    "a/b",
    "a,b",
    "\u0435",
    "\uff46",
    "\u200b",
]
# A newline ends the probe line; what follows must be refused as a line of its own.
NEWLINE_PAYLOADS = ['\nprobe begin { system("id") }', "\n%{ panic(); %}", "\n-e", "\n$(id)"]

# Where a payload can go in a spec line: function, module, argument name, type, return type.
SLOTS = [
    "{p}",
    "tcp_v4_connect{p}",
    "{p}tcp_v4_connect",
    "{p}:tcp_v4_connect",
    "ext4{p}:ext4_file_open",
    "tcp_v4_connect {p}:ptr",
    "tcp_v4_connect sk{p}:ptr",
    "tcp_v4_connect sk:ptr{p}",
    "tcp_v4_connect sk:{p}",
    "tcp_v4_connect.return:{p}",
    "tcp_v4_connect.return:int{p}",
    "tcp_v4_connect.call+return{p}",
    "tcp_v4_connect _:ptr {p}",
]

BAD_TARGETS = [
    "ssh://host;rm -rf /",
    "ssh://host$(id)",
    "ssh://host`id`",
    "ssh://-oProxyCommand=id",
    "ssh://-oProxyCommand=sh -c id",
    "ssh://root@-oProxyCommand=id",
    "ssh://root@host:22 -e",
    "ssh://host -oProxyCommand=id",
    "ssh://host\nid",
    "ssh://'host'",
    'ssh://"host"',
    "ssh://host/;id",
    "ssh://root@host:22/x",
    "ssh://host:22;id",
    "ssh://host:-1",
    "ssh://u@v@host",
    "--remote=ssh://evil",
    "-e",
    "lab;id",
    "local --remote=x",
    "unix:/tmp/s",
    "ssh://[::1]:22",
    "ssh://host\x00",
]
BAD_DEFINES = [
    "FOO=1;rm -rf /",
    "FOO=$(id)",
    "FOO=`id`",
    "FOO=a b",
    'FOO="x"',
    "FOO='x'",
    "FOO=1\nBAR=2",
    "FOO={x}",
    "FOO=%{x%}",
    "-e",
    "--remote=ssh://evil",
    "foo=1",
    "FOO BAR",
    "FOO=(x)",
    "FOO=a;b",
    "=1",
    "FOO=\\",
    "FOO=a,b",
]
COMMANDS = [
    "python3 -c 'import os; os.system(\"id\")'",
    "sh -c 'echo $(id); rm -rf /tmp/x' ; `reboot`",
    "echo \"quoted\" 'single' \\back",
    "--remote=ssh://evil",
    "-e",
    "-D FOO=1",
    'probe begin { system("id") } %{ panic(); %}',
    "a | b && c || d > e < f",
]


def spec_line_attempts() -> list[str]:
    lines = [slot.format(p=p) for slot in SLOTS for p in PAYLOADS]
    lines += [slot.format(p=p) for slot in SLOTS for p in NEWLINE_PAYLOADS]
    # a line starting with '#' is a comment (test_comments_never_reach_the_script)
    return [ln for ln in lines if not ln.startswith("#")]


def run_cell(ip, text: str):
    result = ip.run_cell(text)
    return result.error_before_exec or result.error_in_exec


# --------------------------------------------------------------------------------------
# the spec: names never carry code


_BTF_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:(?:->|\.)[A-Za-z_][A-Za-z0-9_]*)*")


@pytest.mark.parametrize("line", spec_line_attempts())
def test_spec_api_refuses_payloads_with_a_position(line):
    for guru in (False, True):
        try:
            spec = parse_spec(line, guru=guru)  # as the cell body: body line k is line k + 1
        except SpecError as exc:
            err = exc
        else:
            # words naming kernel parameters (issue 14) wait for the target's BTF: they are
            # identifiers, and no script is generated while they are unresolved
            refs = [r for p in spec.probes for r in p.btf_refs]
            assert refs and all(_BTF_PATH.fullmatch(r.path) for r in refs)
            with pytest.raises(SpecError, match="not resolved from BTF"):
                generate(spec, ScriptOptions())
            continue
        assert err.message
        # the error shows the offending line (tabs and control bytes made visible, same
        # width) and a column inside it
        assert len(err.source) == len(line.split("\n")[err.line - 2])
        assert err.source.isprintable()
        assert 0 <= err.pos <= len(err.source)


@pytest.mark.parametrize(
    "line", [ln for ln in spec_line_attempts() if "\n" not in ln and "\x00" not in ln]
)
def test_magic_line_refuses_payloads(ip, capsys, line):
    """On the %%kprobe line (quoted so the magic's word splitting passes it on whole)."""
    err = run_cell(ip, f"%%kprobe --dry-run -- {shlex.quote(line)}")
    assert isinstance(err, UsageError), (line, err)
    assert str(err).strip()
    assert capsys.readouterr().out == ""  # no script was printed


@pytest.mark.parametrize("line", spec_line_attempts())
def test_cell_body_refuses_payloads(ip, capsys, line):
    err = run_cell(ip, f"%%kprobe --dry-run\n{line}\n")
    assert isinstance(err, UsageError), (line, err)
    text = str(err)
    assert "line " in text and "column " in text and "^" in text
    assert capsys.readouterr().out == ""


def test_accepted_names_appear_only_in_the_probe_point(ip, capsys):
    """The control: symbols with '.', '_' and digits pass, and only inside kprobe.function("")."""
    err = run_cell(
        ip,
        "%%kprobe --dry-run -n 3 tcp_v4_connect.isra.0 my_sk:ptr\n"
        "ext4:ext4_file_open.cold _ mode_2:uint\n",
    )
    assert err is None
    out = capsys.readouterr().out
    assert out.count("tcp_v4_connect.isra.0") == 1
    assert 'kprobe.function("tcp_v4_connect.isra.0")' in out
    assert 'kprobe.function("ext4_file_open.cold")' in out
    assert "my_sk" not in out and "mode_2" not in out  # names are columns, not script text
    assert "ext4:" not in out  # the module is checked on the target, never put in the script


def test_comments_never_reach_the_script(ip, capsys):
    err = run_cell(ip, '%%kprobe --dry-run tcp_v4_connect\n# %{ panic(); %}\n  #"); system("id")\n')
    assert err is None, err
    out = capsys.readouterr().out
    assert "panic" not in out and "system" not in out


# --------------------------------------------------------------------------------------
# -D


@pytest.mark.parametrize("define", BAD_DEFINES)
def test_bad_defines_are_refused(ip, capsys, define):
    err = run_cell(ip, f"%%kprobe --dry-run -D={shlex.quote(define)} tcp_v4_connect")
    assert isinstance(err, UsageError), (define, err)
    assert "-D" in str(err)
    assert capsys.readouterr().out == ""
    with pytest.raises(OptionError):
        runner.stap_argv(
            runner.Target("local"), "probe begin {}", defines=[define], require_stap=False
        )


def test_define_is_one_item_after_its_flag():
    argv = runner.stap_argv(
        runner.Target("local"),
        "probe begin {}",
        defines=["MAXACTION=10", "STP_NO_OVERLOAD", "X=-1.5e+3"],
        require_stap=False,
    )
    assert argv[argv.index("MAXACTION=10") - 1] == "-D"
    assert argv[argv.index("STP_NO_OVERLOAD") - 1] == "-D"
    assert argv[argv.index("X=-1.5e+3") - 1] == "-D"


# --------------------------------------------------------------------------------------
# -c


def printed_argv(out: str) -> list[str]:
    """The stap command line a dry run printed, split back into argv."""
    return shlex.split(out.strip().splitlines()[-1])


@pytest.mark.parametrize("command", COMMANDS)
def test_command_is_one_argv_item_never_script_text(ip, capsys, command):
    err = run_cell(ip, f"%%kprobe --dry-run -c={shlex.quote(command)} tcp_v4_connect")
    assert err is None, err
    out = capsys.readouterr().out
    argv = printed_argv(out)
    at = argv.index("-c")
    assert argv[at + 1 :] == [command, "-e", "<the script above>"]
    script = out[: out.index("# stap command line:")]
    assert command not in script


@pytest.mark.parametrize("command", COMMANDS + ["x\ny", "-c"])
def test_command_api_is_one_argv_item_never_script_text(command):
    run = pipeline.prepare(
        "tcp_v4_connect", "", pipeline.ProbeOptions(command=command, dry_run=True)
    )
    at = run.argv.index("-c")
    assert run.argv[at + 1 :] == [command, "-e", run.script_text]
    assert command not in run.script_text


def test_option_looking_command_is_still_the_command(ip, capsys):
    """`-c--remote=...` (argparse's attached form) is the command, not a stap option."""
    err = run_cell(ip, "%%kprobe --dry-run -c--remote=ssh://evil tcp_v4_connect")
    assert err is None, err
    argv = printed_argv(capsys.readouterr().out)
    assert argv[argv.index("-c") + 1] == "--remote=ssh://evil"
    assert not any(a.startswith("--remote") for a in argv[: argv.index("-c")])


def test_command_with_nul_is_refused():
    with pytest.raises(OptionError):
        runner.stap_argv(
            runner.Target("local"), "probe begin {}", command="a\x00b", require_stap=False
        )


def test_command_reaches_the_process_as_one_item(ip, fake_stap_path, monkeypatch):
    """A real run (the fake stap prints the argv it received as JSON): no shell in between."""
    command = COMMANDS[1]
    monkeypatch.setenv("FAKESTAP_PYTHON", __import__("sys").executable)
    err = run_cell(ip, f"%%kprobe -q -c {shlex.quote(command)} tcp_v4_connect")
    assert err is None, err
    run = ip.user_ns["_kprobe"]
    # the JSON holds the script, hence "@@sm1": the parser keeps that line as damaged
    lines = run.messages + [d.decode() for d in run.parser.damaged]
    line = next(m for m in lines if m.startswith("ARGV "))
    got = json.loads(line[len("ARGV ") :].rstrip("\r\n"))
    assert got == run.argv[1:]
    assert got[got.index("-c") + 1] == command


# --------------------------------------------------------------------------------------
# --target


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_bad_targets_are_refused(ip, capsys, target):
    err = run_cell(ip, f"%%kprobe --dry-run --target={shlex.quote(target)} tcp_v4_connect")
    assert isinstance(err, UsageError), (target, err)
    assert "target" in str(err)
    assert capsys.readouterr().out == ""
    with pytest.raises(OptionError):
        runner.parse_target(target)


@pytest.mark.parametrize("target", BAD_TARGETS[:6])
def test_bad_configured_target_is_refused(ip, capsys, target):
    """Refused by %config itself (issue 11 §4): the target stays what it was."""
    magics = ip.magics_manager.registry["KprobeMagics"]
    ip.run_line_magic("config", f"KprobeMagics.target = {target!r}")
    try:
        assert magics.target == "local"
        err = run_cell(ip, "%%kprobe --dry-run tcp_v4_connect")
    finally:
        ip.run_line_magic("config", 'KprobeMagics.target = "local"')
    assert err is None
    argv = printed_argv(capsys.readouterr().out)
    assert not any(a.startswith("--remote") for a in argv)


def test_good_ssh_target_is_one_remote_item(ip, capsys):
    err = run_cell(ip, "%%kprobe --dry-run --target ssh://root@vm-1.example:2222 tcp_v4_connect")
    assert err is None, err
    argv = printed_argv(capsys.readouterr().out)
    assert argv[1] == "--remote=ssh://root@vm-1.example:2222"
    assert sum(a.startswith("--remote") for a in argv) == 1


def test_ssh_exec_quotes_every_item_for_the_remote_shell():
    target = runner.parse_target("ssh://root@vm:2222")
    argv = runner.exec_argv(target, ["grep", "-w", "-e", "$(id);`x`", "/proc/kallsyms"])
    assert argv[: argv.index("--") + 2] == [
        "ssh",
        "-p",
        "2222",
        "-o",
        "BatchMode=yes",
        "--",
        "root@vm",
    ]
    remote = argv[argv.index("--") + 2 :]
    assert [shlex.split(a)[0] for a in remote] == [
        "grep",
        "-w",
        "-e",
        "$(id);`x`",
        "/proc/kallsyms",
    ]


# --------------------------------------------------------------------------------------
# the other options


@pytest.mark.parametrize(
    "option",
    [
        '-o "x; import os"',
        "-o __import__('os')",
        "-o 1x",
        '-o ""',
        '-x "1;2"',
        "-x -1",
        "-x 0",
        "-x 1e3",
        "-n 0",
        "-n -1",
        '-n "1;2"',
        "-T nan",
        "-T inf",
        "-T -1",
        "-T 0",
        '--regs "rip,\\"); system(\\"id"',
        "--regs ax",
        "--regs rip,rip",
        "--regs '%{x%}'",
    ],
)
def test_other_options_refuse_payloads(ip, capsys, option):
    err = run_cell(ip, f"%%kprobe --dry-run {option} tcp_v4_connect")
    assert isinstance(err, UsageError), (option, err)
    assert capsys.readouterr().out == ""


def test_dollar_and_braces_on_the_line_are_not_expanded(ip, capsys):
    """IPython would expand $x and {x} on a magic line; the magic must refuse them as typed."""
    ip.user_ns["x"] = "tcp_v4_connect"
    err = run_cell(ip, "%%kprobe --dry-run $x")
    assert isinstance(err, UsageError)
    err = run_cell(ip, "%%kprobe --dry-run {x}")
    assert isinstance(err, UsageError)
    assert capsys.readouterr().out == ""


def test_stap_cell_command_and_target_follow_the_same_rules(ip, capsys):
    """%%stap runs the user's own script by design; its options are still checked."""
    err = run_cell(ip, '%%stap --dry-run -c "$(id)"\nprobe begin { exit() }\n')
    assert err is None
    argv = printed_argv(capsys.readouterr().out)
    assert argv[argv.index("-c") + 1] == "$(id)"
    err = run_cell(ip, '%%stap --dry-run --target "ssh://h;id"\nprobe begin { exit() }\n')
    assert isinstance(err, UsageError)
    err = run_cell(ip, '%%stap --dry-run -D "X=1;y"\nprobe begin { exit() }\n')
    assert isinstance(err, UsageError)


# --------------------------------------------------------------------------------------
# --record / --replay / --recording


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "a/b",
        "$(id)",
        "`id`",
        "x;id",
        "-e",
        "--remote=x",
        ".hidden",
        "a b",
        "a\\b",
        "~root",
        "",
    ],
)
def test_recording_names_are_plain_names(ip, capsys, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    err = run_cell(ip, f"%%kprobe -q --recording={shlex.quote(name)} tcp_v4_connect")
    assert isinstance(err, UsageError), (name, err)
    assert "--recording takes a plain name" in str(err)
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing run


def test_replay_file_name_is_a_path_never_a_command(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "x;touch pwned;$(touch pwned2)`touch pwned3`.jsonl"
    err = run_cell(ip, f"%%kprobe -q --replay {shlex.quote(name)} tcp_v4_connect")
    assert isinstance(err, UsageError)
    assert f"no recording {name}" in str(err)
    assert list(tmp_path.iterdir()) == []


def test_record_file_name_is_a_path_never_a_command(ip, tmp_path, monkeypatch):
    """A real (fake-stap) run recorded to a file whose name is full of shell syntax."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stap = bindir / "stap"
    stap.write_text(
        '#!/bin/sh\nif [ "$1" = "-V" ]; then echo "Systemtap translator/driver '
        '(version fake-9.9)" >&2; fi\nexit 0\n'
    )
    stap.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    name = "r;touch pwned;$(touch pwned2)`touch pwned3`.jsonl"
    err = run_cell(ip, f"%%kprobe -q --record {shlex.quote(name)} tcp_v4_connect")
    assert err is None, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bin", name])
    header = json.loads((tmp_path / name).read_text().splitlines()[0])
    assert header  # a recording, at exactly the path given
