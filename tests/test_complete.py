"""Tab completion in %%kprobe cells (issue 13): through IPython's completer API, the way
JupyterLab, VS Code and the terminal ask for it."""

from __future__ import annotations

from pathlib import Path

from IPython.core.completer import provisionalcompleter

from stapmagic import complete, symbols

OPTIONS = {
    "-o": True,
    "-c": True,
    "-n": True,
    "--regs": True,
    "--guru": False,
    "--target": True,
    "--latency": False,
}
NAMES = ["tcp_v4_connect", "tcp_v4_conn_request", "tcp_v6_connect", "vfs_read"]


def ask(cell: str, line: int | None = None, column: int | None = None):
    lines = cell.split("\n")
    line = len(lines) - 1 if line is None else line
    column = len(lines[line]) if column is None else column
    return complete.complete(cell, line, column, options=OPTIONS, functions=lambda: NAMES)


def test_function_names_after_the_magic_and_its_options() -> None:
    assert ask("%%kprobe tcp_v4_con") == (
        "tcp_v4_con",
        [("tcp_v4_connect", "function"), ("tcp_v4_conn_request", "function")],
    )
    assert ask('%%kprobe -c "true" -n 3 --guru vfs_r')[1] == [("vfs_read", "function")]
    assert ask("%%kprobe -o x\ntcp_v6")[1] == [("tcp_v6_connect", "function")]


def test_options_and_types() -> None:
    assert ask("%%kprobe --la")[1] == [("--latency", "option")]
    assert ask("%%kprobe tcp_v4_connect sk:p")[1] == [("ptr", "type")]
    assert ask("%%kprobe tcp_v4_connect.return:u") == (
        "u",
        [(t, "type") for t in ("uint", "ulong", "ulonglong", "u32", "u64")],
    )
    assert ask("%%kprobe -o x\nvfs_read f:str buf:us")[1] == [("ustr", "type")]


def test_nothing_where_a_value_is_typed_or_outside_kprobe() -> None:
    assert ask("%%kprobe -o tcp") is None
    assert ask("x = tcp_v4_con") is None
    assert ask("%%stap tcp_v4_con") is None


def test_hidden_symbols_are_not_offered() -> None:
    text = (
        "6.12.0\n@@stapmagic-symbols kallsyms\ntcp_v4_connect\n__pfx_tcp_v4_connect\n"
        "tcp_v4_connect.cold\nnf_nat_setup [nf_nat]\n@@stapmagic-symbols traceable\n"
        "@@stapmagic-symbols missing\n@@stapmagic-symbols blacklist\n"
        "0xffffffffa6e01030-0xffffffffa6e01050\ttcp_v4_connect\n"
    )
    found = symbols.parse_fetch_output(text)
    assert found.names() == ["nf_nat_setup", "tcp_v4_connect"]
    assert found.functions["nf_nat_setup"] == "nf_nat"
    assert found.traceable is None and found.blacklist == frozenset({"tcp_v4_connect"})


def test_ipython_completer_offers_tcp_v4_connect(ip) -> None:
    """The host's own /proc/kallsyms (target local) through ip.Completer.completions."""
    cell = "%%kprobe tcp_v4_con"
    with provisionalcompleter():  # how ipykernel calls it
        texts = [c.text for c in ip.Completer.completions(cell, len(cell))]
        cell2 = "%%kprobe -o x\ntcp_v4_connect sk:pt"
        types = [c.text for c in ip.Completer.completions(cell2, len(cell2))]
    assert "tcp_v4_connect" in texts
    assert not [t for t in texts if t.startswith("__pfx_")]
    assert "ptr" in types


RECORDINGS = Path(__file__).resolve().parents[1] / "notebooks" / "recordings"


def _completions(ip, cell: str) -> list[str]:
    with provisionalcompleter():
        return [c.text for c in ip.Completer.completions(cell, len(cell))]


def test_replay_offers_no_host_symbols_only_the_recordings(ip) -> None:
    """In replay the target is a recording's kernel: this host's /proc/kallsyms would be
    another kernel's functions offered as if they were the target's."""
    assert "tcp_v4_connect" in _completions(ip, "%%kprobe tcp_v4_con")  # live: the host's
    ip.run_line_magic("config", f"KprobeMagics.recordings_dir = {str(RECORDINGS)!r}")
    ip.run_line_magic("config", 'KprobeMagics.mode = "replay"')
    try:
        # no recording named: what the recordings there probe, not the host's functions
        assert _completions(ip, "%%kprobe tcp_v4_con") == ["tcp_v4_connect"]
        assert _completions(ip, "%%kprobe vfs_rea") == []  # the host has it; no recording
        # 01_connect probes tcp_v4_connect (its spec), and resolved no kallsyms lines
        assert _completions(ip, "%%kprobe --recording 01_connect tcp_v4_con") == ["tcp_v4_connect"]
        assert _completions(ip, "%%kprobe --recording 01_connect ext4_file_o") == []
        # 05_guru_module recorded the target's line for ext4:ext4_file_open
        cell = "%%kprobe --guru --recording 05_guru_module ext4_file_o"
        assert _completions(ip, cell) == ["ext4_file_open"]
        replay = f"%%kprobe --replay {RECORDINGS / '05_guru_module.jsonl'} ext4_file_o"
        assert _completions(ip, replay) == ["ext4_file_open"]
        assert "--include-self" in _completions(ip, "%%kprobe --incl")  # options still
    finally:  # %config lands in the shell's config: later tests' magics would inherit it
        ip.run_line_magic("config", 'KprobeMagics.mode = "live"')
        ip.run_line_magic("config", 'KprobeMagics.recordings_dir = "recordings"')
    # an explicit --replay FILE replays in any mode
    assert _completions(ip, "%%kprobe --replay /nonexistent.jsonl tcp_v4_con") == []
