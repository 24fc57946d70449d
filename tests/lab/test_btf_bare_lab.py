"""Issue 14 on the lab kernel: a bare FUNCTION reads every register parameter, named and typed
from the guest's BTF; `.return` without a type is BTF's; an enum parameter shows its
enumerator's name; a `char *` parameter its string. Values checked against the workloads."""

from __future__ import annotations

import pandas as pd
from labutil import workload_pid


def test_bare_function_every_parameter(cell):
    df, err, run = cell('%%kprobe --cmd-only -c "python3 connect_a_few.py 3" tcp_v4_connect')
    assert err is None, (err, run.messages if run else None)
    assert list(df.columns[-3:]) == ["sk", "uaddr", "addr_len"]
    assert list(df["addr_len"]) == [16, 16, 16]  # sizeof(struct sockaddr_in)
    # kernel pointers (top bit set): sk a kernel socket, uaddr the kernel copy of the address
    assert all(v >= 1 << 63 for v in df["sk"]) and all(v >= 1 << 63 for v in df["uaddr"])
    assert "# int tcp_v4_connect(struct sock *sk, struct sockaddr *uaddr, int addr_len)" in (
        run.script_text
    )


def test_return_typed_from_btf(cell):
    df, err, run = cell('%%kprobe --cmd-only -c "python3 connect_fail.py" tcp_v4_connect.return')
    assert err is None, (err, run.messages if run else None)
    assert list(df["retval"]) == [0, 0, -97, -22]
    assert list(df["errno"].fillna("")) == ["", "", "EAFNOSUPPORT", "EINVAL"]


def test_enum_parameter_by_name(cell):
    # a SYN to a closed port on 127.0.0.1: the kernel answers with a reset, NO_SOCKET
    df, err, run = cell(
        '%%kprobe -c "python3 -c \'import socket; socket.socket().connect_ex((\\"127.0.0.1\\", 9))\'" '
        "tcp_v4_send_reset"
    )
    assert err is None, (err, run.messages if run else None)
    assert list(df.columns[-3:]) == ["sk", "skb", "reason"]
    assert isinstance(df["reason"].dtype, pd.CategoricalDtype)
    assert "SK_RST_REASON_NO_SOCKET" in set(df["reason"].astype(str)), df


def test_char_pointer_parameter_is_the_string(cell):
    df, err, run = cell(
        '%%kprobe --cmd-only -c "python3 read_files.py 3 /etc/hostname" do_sys_openat2'
    )
    assert err is None, (err, run.messages if run else None)
    assert list(df.columns[-3:]) == ["dfd", "filename", "how"]
    mine = df[df["pid"] == workload_pid(run)]
    assert (mine["filename"] == "/etc/hostname").sum() == 3, mine[["filename", "dfd"]]
