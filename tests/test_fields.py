"""Member paths in a cell (issue 14): resolved from the lab kernel's BTF (the fixtures),
checked, and written into the script as fault-safe reads, the way a notebook runs them."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from test_btf import vmlinux
from test_btf_magic import run

from stapmagic import kbtf, pipeline, wire

FINISH = "tcp_finish_connect dport=sk->__sk_common.skc_dport daddr=sk->__sk_common.skc_daddr"


RUNS: list[pipeline.ProbeRun] = []


@pytest.fixture(autouse=True)
def _lab_btf_and_runs(monkeypatch):
    """The lab kernel's BTF (fixtures) as the target's; the dry runs' ProbeRuns kept."""
    monkeypatch.setattr(pipeline, "target_btf", lambda target, modules: kbtf.KernelBTF(vmlinux()))
    RUNS.clear()
    shown = pipeline.dry_run_text

    def keep(r: pipeline.ProbeRun) -> str:
        RUNS.append(r)
        return shown(r)

    monkeypatch.setattr(pipeline, "dry_run_text", keep)


def _script(ip, capsys, cell: str) -> str:
    _, err = run(ip, f"%%kprobe --dry-run {cell}")
    assert err is None, err
    return capsys.readouterr().out


def _columns(i: int = 0):
    assert RUNS[-1].script is not None
    return RUNS[-1].script.probes[i].columns


def test_dport_daddr_columns_and_reads(ip, capsys):
    out = _script(ip, capsys, FINISH)
    assert [(c.name, c.kind, c.nullable) for c in _columns()] == [
        ("dport", "uint", True),
        ("daddr", "uint", True),
    ]
    # the reader: __be16 at offset 12 of struct sock, to host order; __be32 at 0
    assert (
        "function __sm_field0:long (p:long) {\n\tv = kernel_short(p + 12)\n\tv = ntohs(v)\n" in out
    )
    assert "function __sm_field1:long (p:long) {\n\tv = kernel_int(p + 0)\n\tv = ntohl(v)\n" in out
    # fault-safe in the handler: NA stays, the fault is counted, the run goes on
    na = wire.NA_FIELD
    assert (
        f'\tf0 = "{na}"\n\ttry {{ v0 = __sm_field0(pointer_arg(1)); f0 = sprintf("%u", v0) }}'
        in out
    )
    assert "catch { __sm_faults0 <<< 1 }" in out
    assert re.search(r'printf\("@@sm1\\t0(\\t%d){4}\\t%s\\t%s\\t%s\\t@@\\n", .*, f0, f1\)', out)
    assert '@@smc\\tfield_faults\\t0\\t%d\\t@@\\n", @count(__sm_faults0))' in out


def test_dry_run_shows_prototype_and_offsets(ip, capsys):
    out = _script(ip, capsys, FINISH)
    assert "# void tcp_finish_connect(struct sock *sk, struct sk_buff *skb)" in out
    assert (
        "# dport = sk->__sk_common.skc_dport: `__be16`, arg 1 -> offset 12, 2 bytes, "
        "big-endian: to host order" in out
    )
    assert "# daddr = sk->__sk_common.skc_daddr: `__be32`, arg 1 -> offset 0, 4 bytes" in out


def test_pointer_hops_to_a_string(ip, capsys):
    out = _script(ip, capsys, "vfs_open name=path->dentry->d_name.name")
    assert "function __sm_field0:string (p:long) {\n\tp = kernel_pointer(p + 8)\n" in out
    assert "\treturn __sm_cstr(kernel_pointer(p + 40), 64)\n" in out
    assert "function __sm_cstr:string" in out
    assert 'try { f0 = __sm_field0(pointer_arg(1)) } catch { f0 = "<fault>"' in out
    assert "# name = path->dentry->d_name.name: `const unsigned char *`, arg 1 -> [+8]" in out
    (col,) = _columns()
    assert (col.name, col.kind, col.nullable) == ("name", "str", False)


def test_column_named_after_the_last_member(ip, capsys):
    _script(ip, capsys, "tcp_v4_connect sk->__sk_common.skc_family addr_len")
    cols = _columns()
    assert [c.name for c in cols] == ["addr_len", "skc_family"]


def test_bitfield_and_char_array(ip, capsys):
    out = _script(ip, capsys, "tcp_v4_rcv skb->fclone\nvfs_open path->dentry->d_iname")
    assert "v = kernel_char(p + 126)\n\tv = (v >> 2) & 0x3\n" in out
    assert "text_str(kernel_string_n(p + 56, 40))" in out


def test_where_over_a_field_column(ip, capsys):
    out = _script(ip, capsys, f"--where 'dport == 80' {FINISH}")
    assert f'\tif (f0 == "{wire.NA_FIELD}") next  # --where reads a member that faulted\n' in out
    assert "\tif (!(v0 == 80)) next  # --where\n" in out
    # the reads come before the filter
    assert out.index("v0 = __sm_field0") < out.index("if (!(v0 == 80))")


def test_where_over_a_member_path_directly(ip, capsys):
    out = _script(ip, capsys, "--where 'sk->__sk_common.skc_dport == 80' tcp_finish_connect sk:ptr")
    assert "\tif (!(v0 == 80)) next  # --where\n" in out
    assert "# (--where) = sk->__sk_common.skc_dport" in out
    cols = _columns()
    assert [c.name for c in cols] == ["sk"]  # read for the filter only
    assert not re.search(r"[^_]f0\)", out)  # not printed (the ledger's __sm_f0 is another name)


def test_where_path_and_column_of_the_same_member_read_once(ip, capsys):
    out = _script(ip, capsys, f"--where 'sk->__sk_common.skc_dport != 0' {FINISH}")
    assert out.count("function __sm_field") == 2


@pytest.mark.parametrize(
    "cell, message, marked",
    [
        (
            "tcp_finish_connect sk->__sk_common.skc_dportt",
            "has no member 'skc_dportt' (did you mean skc_dport or",
            "skc_dportt",
        ),
        ("tcp_finish_connect sk->__sk_common->skc_dport", "which is not a pointer", "->"),
        ("vfs_open path->dentry.d_name", "which is a pointer", "."),
        (
            "tcp_finish_connect skk->sk_err",
            "has no parameter 'skk' (did you mean sk or skb?)",
            "skk",
        ),
        ("tcp_finish_connect.return sk->sk_err", "cannot read arguments", "sk->sk_err"),
    ],
)
def test_refused_with_the_token_marked(ip, cell, message, marked):
    _, err = run(ip, f"%%kprobe --dry-run {cell}")
    assert type(err).__name__ == "UsageError" and message in str(err), err
    at = cell.rindex(marked)
    caret = " " * (4 + at) + "^" * len(marked)
    assert str(err).endswith("\n" + caret), str(err)


def test_where_member_errors_are_marked_in_the_filter(ip):
    _, err = run(
        ip, "%%kprobe --dry-run --where 'sk->__sk_common.skc_dportt == 1' tcp_finish_connect sk:ptr"
    )
    assert type(err).__name__ == "UsageError"
    assert "did you mean skc_dport or" in str(err) and "(--where, column 17)" in str(err)
    assert str(err).endswith("\n" + " " * 20 + "^" * 10), str(err)


def test_member_paths_refused_where_they_cannot_be_read(ip):
    _, err = run(ip, f"%%kprobe --dry-run --latency {FINISH}")
    assert "do not combine with --latency" in str(err)
    _, err = run(ip, "%%kprobe --dry-run --where 'sk->sk_err == 1' tcp_finish_connect.return")
    assert "member paths are read at the function's entry" in str(err)


def test_a_faulted_read_is_na_in_its_row_and_counted(monkeypatch):
    """The stream the script above prints when one member read faults: that row has NA
    (not a damaged line), the others their values, and the summary counts the fault."""
    run = pipeline.prepare(FINISH, "", pipeline.ProbeOptions(dry_run=True))
    na = wire.NA_FIELD
    stream = (
        "@@sm1\t0\t1764000000000000000\t7\t7\t0\tpython3\t80\t2130706433\t@@\n"
        f"@@sm1\t0\t1764000000000000001\t7\t7\t1\tpython3\t{na}\t{na}\t@@\n"
        "@@sm1\t0\t1764000000000000002\t7\t7\t0\tpython3\t443\t2130706433\t@@\n"
        "@@smc\tfield_faults\t0\t2\t@@\n"
    )
    run.parser.feed(stream.replace("\n", "\r\n").encode())
    run.note_batch(run.parser.close())
    df = run.df
    assert run.damaged == 0 and len(df) == 3
    assert [None if pd.isna(v) else int(v) for v in df["dport"]] == [80, None, 443]
    assert str(df["daddr"].dtype) == "UInt64"
    assert run.field_faults == 2
    assert "2 member reads faulted (<NA> in those rows)" in run.summary()
