"""The magics driven the way a notebook drives them: `shell.run_cell(cell_text)`."""

from __future__ import annotations

import pandas as pd
import pytest
from IPython.core.error import UsageError


def schema_of(spec_line):
    from stapmagic.script import ScriptOptions, generate
    from stapmagic.spec import parse_spec

    return generate(parse_spec("", first_line=spec_line), ScriptOptions()).probes[0]


def run(ip, text):
    """Run a cell like a notebook does; return (value, error)."""
    result = ip.run_cell(text)
    return result.result, result.error_before_exec or result.error_in_exec


def test_one_line_cell_is_accepted(ip, capsys):
    # IPython itself refuses `%%magic` with an empty body; a one-line %%kprobe cell must work.
    value, err = run(ip, "%%kprobe --dry-run tcp_v4_connect sk:ptr uaddr:ptr len:uint")
    assert err is None
    out = capsys.readouterr().out
    assert 'kprobe.function("tcp_v4_connect")' in out
    assert "pointer_arg(1)" in out and "pointer_arg(2)" in out and "uint_arg(3)" in out
    assert value is None


def test_dry_run_prints_script_and_command_line(ip, capsys, monkeypatch, tmp_path):
    fake = tmp_path / "stap"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    value, err = run(
        ip, '%%kprobe --dry-run -c "python3 connect_a_few.py" tcp_v4_connect.return:int\n'
    )
    assert err is None
    out = capsys.readouterr().out
    assert 'kprobe.function("tcp_v4_connect").return' in out
    assert "returnval()" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith(str(fake))
    assert "-c 'python3 connect_a_few.py'" in last


def test_body_lines_are_more_probes(ip, capsys):
    cell = "%%kprobe --dry-run tcp_v4_connect sk:ptr\n# a comment\n\ntcp_v4_connect.return:int\n"
    _, err = run(ip, cell)
    assert err is None
    out = capsys.readouterr().out
    assert (
        'kprobe.function("tcp_v4_connect") ' in out
        or 'kprobe.function("tcp_v4_connect"){' in out
        or 'kprobe.function("tcp_v4_connect")\n' in out
    )
    assert 'kprobe.function("tcp_v4_connect").return' in out


def test_dollar_is_not_expanded(ip, capsys):
    # SystemTap uses `$`; the magic must see the line exactly as typed.
    ip.user_ns["x"] = "SHOULD_NOT_APPEAR"
    _, err = run(ip, '%%stap --dry-run\nprobe begin { printf("$x\\n"); exit() }\n')
    assert err is None
    out = capsys.readouterr().out
    assert "$x" in out and "SHOULD_NOT_APPEAR" not in out


@pytest.mark.parametrize(
    "cell, needle",
    [
        ("%%kprobe --dry-run tcp_v4_connect sk:pointer", "unknown type"),
        ("%%kprobe --dry-run tcp_*", "wildcard"),
        ("%%kprobe --dry-run 0xffffffff8125e2a0", "--guru"),
        ('%%kprobe --dry-run tcp_v4_connect");system("id', "tcp_v4_connect"),
        ("%%kprobe --dry-run tcp_v4_connect a:int a:int", "duplicate"),
    ],
)
def test_bad_specs_are_usage_errors_with_position(ip, capsys, cell, needle):
    _, err = run(ip, cell)
    assert isinstance(err, UsageError)
    text = str(err)
    assert needle in text
    assert "^" in text  # the offending token is marked


def test_bad_out_variable(ip):
    _, err = run(ip, "%%kprobe --dry-run -o 1x tcp_v4_connect")
    assert isinstance(err, UsageError)


@pytest.mark.parametrize("body", [" ", "\n  \n", "# only a comment\n\n", "// c\n/* c */\n"])
def test_stap_body_empty_is_refused(ip, capsys, body):
    """Called the way IPython calls it (a `%%stap` cell with nothing below never reaches the
    magic: IPython refuses it first), and with bodies that hold no script."""
    with pytest.raises(UsageError, match="no script below %%stap"):
        ip.run_cell_magic("stap", "--dry-run", body)
    assert capsys.readouterr().out == ""
    _, err = run(ip, f"%%stap --dry-run\n{body}# nothing\n")
    assert isinstance(err, UsageError) and "no script below %%stap" in str(err)


STAP_RECORDS = "tcp_v4_connect sk:ptr len:uint"


def test_stap_spec_makes_rows_of_a_hand_written_script(ip, tmp_path, monkeypatch):
    """%%stap --spec: the records a hand-written script prints become rows, typed by SPEC."""
    from stapmagic.records import format_record

    schema = schema_of(STAP_RECORDS)
    data = tmp_path / "out.bin"
    data.write_bytes(
        b"hello from the script\n"
        + format_record(
            0, 1_700_000_000_000_000_000, 42, 43, 1, "curl", [0xFFFF888001, 16], schema=schema
        )
    )
    fake = tmp_path / "stap"
    fake.write_text(f"#!/bin/sh\ncat {data}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    value, err = run(
        ip,
        f"%%stap -q -o ev --spec '{STAP_RECORDS}'\n"
        'probe kprobe.function("tcp_v4_connect") { }\n',
    )
    assert err is None, err
    df = ip.user_ns["ev"]
    assert value is df and list(df.columns[-2:]) == ["sk", "len"]
    assert df["sk"].dtype == "uint64" and int(df["sk"][0]) == 0xFFFF888001
    assert list(df["comm"]) == ["curl"] and list(df["probe"]) == ["tcp_v4_connect"]
    assert df.kprobe.run.messages == ["hello from the script"]


def test_stap_spec_two_probes_in_order(ip, tmp_path, monkeypatch):
    from stapmagic.records import format_record

    second = schema_of("tcp_v4_connect.return:int")
    data = tmp_path / "out.bin"
    data.write_bytes(
        format_record(
            1, 1_700_000_000_000_000_000, 1, 1, 0, "x", [-111, "ECONNREFUSED"], schema=second
        )
    )
    fake = tmp_path / "stap"
    fake.write_text(f"#!/bin/sh\ncat {data}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    _, err = run(
        ip,
        "%%stap -q -o ev --spec tcp_v4_connect --spec tcp_v4_connect.return:int\nprobe begin { }\n",
    )
    assert err is None, err
    df = ip.user_ns["ev"]
    assert list(df["retval"]) == [-111] and list(df["errno"]) == ["ECONNREFUSED"]


def test_stap_spec_errors_point_at_the_spec(ip, capsys):
    _, err = run(ip, "%%stap --dry-run --spec 'tcp_v4_connect sk:pointer'\nprobe begin { }\n")
    assert isinstance(err, UsageError) and "--spec" in str(err) and "unknown type" in str(err)
    assert capsys.readouterr().out == ""


def test_missing_stap_says_how_to_install(ip, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    _, err = run(ip, "%%kprobe tcp_v4_connect")
    assert isinstance(err, UsageError)
    assert "apt-get install systemtap" in str(err)
    assert "--target lab" in str(err)


def test_config_target_is_used(ip, capsys, monkeypatch):
    from stapmagic import lab

    monkeypatch.setattr(
        lab,
        "stap_argv",
        lambda require_running=True: ["chroot", "/ROOT", "stap", "--remote=ssh://x"],
    )
    ip.run_line_magic("config", 'KprobeMagics.target = "lab"')
    try:
        _, err = run(ip, "%%kprobe --dry-run tcp_v4_connect")
    finally:
        ip.run_line_magic("config", 'KprobeMagics.target = "local"')
    assert err is None
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("chroot /ROOT stap --remote=ssh://x")


def test_unload_removes_magics_and_transformer(ip):
    from stapmagic import one_line_cell

    assert one_line_cell in ip.input_transformer_manager.line_transforms
    ip.run_line_magic("unload_ext", "stapmagic")
    assert one_line_cell not in ip.input_transformer_manager.line_transforms
    assert "kprobe" not in ip.magics_manager.magics["cell"]
    ip.run_line_magic("load_ext", "stapmagic")


def test_fake_stap_rows_reach_the_namespace(ip, tmp_path, monkeypatch):
    """Process plumbing only: a stand-in prints two records in the magic's own format."""
    from stapmagic.records import format_record

    schema = schema_of("tcp_v4_connect sk:ptr len:uint")
    recs = b"".join(
        [
            format_record(
                0,
                1_700_000_000_000_000_000,
                42,
                42,
                1,
                "python3",
                [0xFFFF888001, 16],
                schema=schema,
            ),
            format_record(
                0,
                1_700_000_000_000_001_000,
                42,
                43,
                0,
                "py\tthon",
                [0xFFFF888002, 16],
                schema=schema,
            ),
        ]
    )
    data = tmp_path / "out.bin"
    data.write_bytes(b"WARNING: harmless\n" + recs)
    fake = tmp_path / "stap"
    fake.write_text(f"#!/bin/sh\ncat {data}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    value, err = run(ip, "%%kprobe -q -o ev tcp_v4_connect sk:ptr len:uint")
    assert err is None
    df = ip.user_ns["ev"]
    assert value is df
    assert list(df["pid"]) == [42, 42]
    assert list(df["comm"]) == ["python3", "py\tthon"]
    assert df["sk"].dtype == "uint64" and list(df["len"]) == [16, 16]
    assert list(df["sk"]) == [0xFFFF888001, 0xFFFF888002]
    assert df["time"].dtype == "datetime64[ns]"
    assert isinstance(df["probe"].dtype, pd.CategoricalDtype)
    assert df.kprobe.run.messages == ["WARNING: harmless"]


def test_pointers_render_in_hex_but_stay_uint64(ip, tmp_path, monkeypatch):
    from stapmagic.records import format_record

    data = tmp_path / "out.bin"
    data.write_bytes(
        format_record(
            0,
            1_700_000_000_000_000_000,
            7,
            7,
            0,
            "x",
            [0xFF45EC0102030405, 16],
            schema=schema_of("tcp_v4_connect sk:ptr len:uint"),
        )
    )
    fake = tmp_path / "stap"
    fake.write_text(f"#!/bin/sh\ncat {data}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    _, err = run(ip, "%%kprobe -q -o ev tcp_v4_connect sk:ptr len:uint")
    assert err is None
    df = ip.user_ns["ev"]
    assert df["sk"].dtype == "uint64" and int(df["sk"][0]) == 0xFF45EC0102030405
    from stapmagic import display

    # The test shell is a terminal shell (text/plain only); a notebook asks for HTML too.
    assert ip.display_formatter.formatters["text/html"].lookup(df) is display.to_html
    assert "0xff45ec0102030405" in display.to_html(df)
    data, _ = ip.display_formatter.format(df)
    assert "0xff45ec0102030405" in data["text/plain"]
    assert "16" in data["text/plain"] and "0x10" not in data["text/plain"]
