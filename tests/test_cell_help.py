"""`%%kprobe?` (issue 13): the SPEC grammar, the types, options in groups, examples; the
usage line says %%kprobe, no stray `::` from IPython's magic_arguments."""

from __future__ import annotations

from stapmagic.spec import ARG_TYPES, RET_TYPES


def test_kprobe_help_has_grammar_types_groups_and_examples(ip) -> None:
    text = ip.object_inspect_text("%%kprobe")
    assert "%%kprobe [options] SPEC" in text
    assert "\n%kprobe [" not in text and " %kprobe [" not in text and "::" not in text
    assert "SPEC := [MODULE:]FUNCTION[.return[:RETTYPE]] [NAME:TYPE ...]" in text
    assert " | ".join(ARG_TYPES) in text and " | ".join(RET_TYPES) in text
    for group in (
        "what to probe, when to stop, where:",
        "aggregating in the kernel (no rows):",
        "what the cell shows and keeps:",
        "recordings:",
    ):
        assert group in text
    assert "-n, --count N" in text and "--latency" in text and "Examples:" in text
    assert "%%kprobe tcp_v4_connect sk:ptr uaddr:ptr len:uint" in text


def test_a_bad_option_names_the_cell_magic(ip) -> None:
    from stapmagic.magic import KprobeMagics

    usage = KprobeMagics.kprobe.parser.format_usage()
    assert "%%kprobe [-c CMD]" in usage and "%%%" not in usage


def test_kprobe_repr_of_a_replay_says_so_once(ip, monkeypatch) -> None:
    """Issue 13 item 8: "<ProbeRun 1: tcp_v4_connect on lab; 3 rows; 3 rows, 44.0s>"."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1] / "notebooks")
    ip.run_line_magic("config", 'KprobeMagics.mode = "replay"')
    try:
        ip.run_cell(
            '%%kprobe --recording 01_connect -q --cmd-only -c "python3 connect_a_few.py"'
            "\ntcp_v4_connect sk:ptr uaddr:ptr len:uint\n"
        )
    finally:
        ip.run_line_magic("config", 'KprobeMagics.mode = "live"')
    text = repr(ip.user_ns["_kprobe"])
    assert "replay of recordings/01_connect.jsonl (recorded on lab)" in text, text
    assert text.count("3 rows") == 1, text


def test_status_and_mode_lines_say_things_once(ip, monkeypatch, capsys) -> None:
    """Issue 13 item 8: `_kprobe.status` printed the whole script inside argv; the mode line
    read "mode replay (mode replay)"."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1] / "notebooks")
    capsys.readouterr()
    ip.run_line_magic("config", 'KprobeMagics.mode = "replay"')
    try:
        said = capsys.readouterr().out
        ip.run_cell(
            '%%kprobe --recording 01_connect -q --cmd-only -c "python3 connect_a_few.py"'
            "\ntcp_v4_connect sk:ptr uaddr:ptr len:uint\n"
        )
    finally:
        ip.run_line_magic("config", 'KprobeMagics.mode = "live"')
    assert said.startswith("stapmagic: mode replay: ") and "(mode replay)" not in said, said
    status = repr(ip.user_ns["_kprobe"].status)
    assert "\n" not in status and "_kprobe.script_text" in status and "exit_status=0" in status
