"""Bad input at the magic's edge: one short UsageError naming the problem, never a traceback
(issue 11 §4), driven as a notebook drives the magic: `shell.run_cell(cell_text)`."""

from __future__ import annotations

import shlex
import sys

import pytest
from IPython.core.error import UsageError


def run(ip, text):
    ip.user_ns.pop("_kprobe", None)
    result = ip.run_cell(text)
    return result.result, result.error_before_exec or result.error_in_exec


def fake_stap(tmp_path, monkeypatch, body: str) -> None:
    """A stand-in `stap` (process plumbing only): a Python script with this body."""
    fake = tmp_path / "stap"
    fake.write_text(f"#!{sys.executable}\nimport signal, sys, time\n{body}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")


@pytest.fixture
def magics(ip):
    m = ip.magics_manager.registry["KprobeMagics"]
    saved = {k: getattr(m, k) for k in ("mode", "grace", "string_max", "target")}
    yield m
    for k, v in saved.items():
        setattr(m, k, v)


# -- the mode and the traits -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "record", "replay"])
def test_bad_target_in_a_non_live_mode_is_a_usage_error(ip, magics, monkeypatch, capsys, mode):
    monkeypatch.delenv("STAPMAGIC_MODE", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    magics.mode = mode
    _, err = run(ip, "%%kprobe --target 'ssh://h;id' tcp_v4_connect")
    assert isinstance(err, UsageError), err
    assert "ssh://h;id" in str(err)


@pytest.mark.parametrize(
    "trait, value, needle",
    [
        ("mode", "bogus", "live, record, replay, auto"),
        ("grace", float("nan"), "grace"),
        ("grace", -1.0, "grace"),
        ("grace", float("inf"), "grace"),
        ("string_max", 0, "string"),
        ("string_max", 600, "511"),
        ("target", "ssh://h;id", "ssh://h;id"),
        ("target", "", "target"),
    ],
)
def test_bad_trait_values_are_refused_and_the_old_value_kept(
    ip, magics, capsys, caplog, trait, value, needle
):
    before = getattr(magics, trait)
    ip.run_cell(
        f"%config KprobeMagics.{trait} = {value!r}".replace("nan", "float('nan')").replace(
            "inf", "float('inf')"
        )
    )
    captured = capsys.readouterr()
    said = captured.out + captured.err + caplog.text  # %config logs the refusal
    assert needle in said and f"KprobeMagics.{trait}" in said
    assert "Traceback" not in said
    now = getattr(magics, trait)
    assert now == before or (now != now and before != before)
    # and the next cell works
    _, err = run(ip, "%%kprobe --dry-run tcp_v4_connect")
    assert err is None, err
    # and the extension loads again (the shell's own config kept the refused value)
    ip.run_line_magic("reload_ext", "stapmagic")
    assert ip.run_cell("%%kprobe --dry-run tcp_v4_connect").error_in_exec is None


# -- the options on the line ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "if",
        "class",
        "__builtins__",
        "get_ipython",
        "_kprobe",
        "In",
        "Out",
        "_",
        "_i3",
        "_5",
        "exit",
        "print",
        "__x__",
    ],
)
def test_out_names_that_are_keywords_or_shadow_the_shell(ip, name):
    _, err = run(ip, f"%%kprobe --dry-run -o {name} tcp_v4_connect")
    assert isinstance(err, UsageError), (name, err)
    assert name in str(err) and "-o" in str(err)
    assert "get_ipython" in ip.user_ns and callable(ip.user_ns["get_ipython"])


def test_out_name_that_is_fine(ip, capsys):
    _, err = run(ip, "%%kprobe --dry-run -o events tcp_v4_connect")
    assert err is None, err


@pytest.mark.parametrize(
    "option",
    [
        "-x 4194305",
        "-x 99999999999999999999",
        "-n \uff11\uff12",
        "-n 1_0",
        "-x 1_0",
        "-x \u0661\u0662",
        "-T \uff11",
        "-T 1_0",
        "-n +5",
        "-n ' 5'",
        "-T 1e400",
        "--replay-speed \uff11",
    ],
)
def test_numbers_are_ascii_and_in_range(ip, capsys, option):
    _, err = run(ip, f"%%kprobe --dry-run {option} tcp_v4_connect")
    assert isinstance(err, UsageError), (option, err)
    assert option.split()[0] in str(err)
    assert capsys.readouterr().out == ""


def test_largest_pid_is_accepted(ip, capsys):
    _, err = run(ip, "%%kprobe --dry-run -x 4194304 tcp_v4_connect")
    assert err is None, err
    assert "-x 4194304" in capsys.readouterr().out


def test_empty_target_is_refused_not_replaced_by_the_default(ip, capsys):
    _, err = run(ip, "%%kprobe --dry-run --target '' tcp_v4_connect")
    assert isinstance(err, UsageError), err
    assert "target" in str(err)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "line",
    ["-c a -c b", "-n 1 -n 2", "--target local --target lab", "-o a -o b", "-T 1 --duration 2"],
)
def test_a_value_option_given_twice_is_refused(ip, capsys, line):
    _, err = run(ip, f"%%kprobe --dry-run {line} tcp_v4_connect")
    assert isinstance(err, UsageError), err
    assert "twice" in str(err)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("flag", ["--record", "--replay"])
def test_recording_file_with_nul_is_refused(ip, tmp_path, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    _, err = run(ip, f"%%kprobe -q {flag} {shlex.quote('a' + chr(0) + 'b.jsonl')} tcp_v4_connect")
    assert isinstance(err, UsageError), err
    assert "NUL" in str(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--record", "--replay"])
def test_recording_file_in_a_missing_directory_is_refused(ip, tmp_path, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    _, err = run(ip, f"%%kprobe -q {flag} nodir/r.jsonl tcp_v4_connect")
    assert isinstance(err, UsageError), err
    assert "nodir" in str(err) and "does not exist" in str(err)
    assert list(tmp_path.iterdir()) == []


def test_recording_file_under_a_file_is_refused(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    _, err = run(ip, "%%kprobe -q --record afile/r.jsonl tcp_v4_connect")
    assert isinstance(err, UsageError), err
    assert "afile" in str(err)


# -- %%stap -T --------------------------------------------------------------------------------


def test_stap_duration_ends_the_script(ip, capsys):
    """SystemTap has no -T: the script gets the timer probe %%kprobe -T generates (counted
    from the module's start; exit() runs the end probes, rows kept). The lab test
    tests/lab/test_stap_cell.py shows it stopping a real run."""
    from stapmagic.script import duration_probe

    _, err = run(ip, "%%stap --dry-run -T 1.5\nprobe begin { println(1) }\n")
    assert err is None, err
    out = capsys.readouterr().out
    script, line = out.split("# stap command line:\n")
    assert script.rstrip().endswith(duration_probe(1.5)) and "timer.ms(1500)" in script
    assert script.startswith("probe begin { println(1) }\n")
    assert "-T" not in shlex.split(line)


def test_stap_duration_is_part_of_a_replayed_cell(ip, tmp_path, monkeypatch):
    """The recorded script holds the timer: a replay of the same cell matches, without -T not."""
    fake_stap(tmp_path, monkeypatch, "if sys.argv[1:2] == ['-V']: sys.exit(0)\nprint('hi')")
    monkeypatch.chdir(tmp_path)
    _, err = run(ip, "%%stap -q -T 2 --record r.jsonl\nprobe begin { }\n")
    assert err is None, err
    _, err = run(ip, "%%stap -q -T 2 --replay r.jsonl\nprobe begin { }\n")
    assert err is None, err
    _, err = run(ip, "%%stap -q --replay r.jsonl\nprobe begin { }\n")
    assert isinstance(err, UsageError) and "option -T differs" in str(err)


# -- a chatty run prints a bounded tail -------------------------------------------------------


def test_many_messages_print_a_bounded_tail(ip, tmp_path, monkeypatch, capsys):
    fake_stap(
        tmp_path,
        monkeypatch,
        "sys.stdout.write(''.join(f'chatty line {i}\\n' for i in range(20000)))",
    )
    _, err = run(ip, "%%stap -q\nprobe begin { exit() }\n")
    assert err is None, err
    text = capsys.readouterr().out  # normal output: stdout (issue 13)
    lines = text.splitlines()
    assert len(lines) <= 60
    assert "chatty line 19999" in text and "chatty line 0\n" not in text
    assert "19950 earlier lines not shown" in text and "in _kprobe.messages" in text
