"""Tab completion in %%kprobe cells (issue 13): through IPython's completer API, the way
JupyterLab, VS Code and the terminal ask for it."""

from __future__ import annotations

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
