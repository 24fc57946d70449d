"""%kfind on the lab's kernel (issue 13): globbed kernel functions with the checks a probe
needs and their BTF prototypes, __pfx_ padding symbols hidden, answered from the cache the
second time."""

from __future__ import annotations

import time


def test_kfind_lists_tcp_v4_connect_and_no_pfx_symbols(ip, lab) -> None:
    df = ip.run_line_magic("kfind", "tcp_v4_* asm_exc_divide_error --target lab --refresh")
    assert list(df.columns) == [
        "name",
        "module",
        "in_kallsyms",
        "traceable",
        "blacklisted",
        "in_btf",
        "prototype",
    ]
    names = list(df["name"])
    assert "tcp_v4_connect" in names and len(names) > 10
    assert not [n for n in names if n.startswith("__pfx_") or ".cold" in n]
    row = df.set_index("name").loc["tcp_v4_connect"]
    assert row["module"] == "" and row["in_kallsyms"] and row["traceable"]
    assert not row["blacklisted"]
    assert row["in_btf"]
    assert row["prototype"] == (
        "int tcp_v4_connect(struct sock *sk, struct sockaddr *uaddr, int addr_len)"
    )
    # on the guest's /sys/kernel/debug/kprobes/blacklist (an exception entry stub)
    assert df.set_index("name").loc["asm_exc_divide_error", "blacklisted"]
    started = time.monotonic()
    again = ip.run_line_magic("kfind", "tcp_v4_* --target lab")
    assert time.monotonic() - started < 1.0
    assert "tcp_v4_connect" in list(again["name"])
