"""Member paths in cells on the lab kernel (issue 14), with bpftrace in the same guest as
the oracle: the values, a --where over a member, and a faulting read that leaves NA."""

from __future__ import annotations

import re
import socket
import subprocess

import pandas as pd
from labutil import LAB

from stapmagic import runner

FIELDS = "dport=sk->__sk_common.skc_dport daddr=sk->__sk_common.skc_daddr"
# Two listeners on fixed ports: 2 connects to the first, 3 to the second.
TWO_PORTS = """\
import socket
listeners = []
for port in (40001, 40002):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(8)
    listeners.append(s)
for s, n in zip(listeners, (2, 3)):
    for _ in range(n):
        c = socket.create_connection(s.getsockname())
        s.accept()[0].close()
        c.close()
print("two ports done", flush=True)
"""
# bpftrace attaches, then runs the workload: both see the same connects.
BPFTRACE = (
    'exec bpftrace -e \'fentry:tcp_finish_connect { printf("bt %d %u %u\\n", pid, '
    "args->sk->__sk_common.skc_dport, args->sk->__sk_common.skc_daddr); }' "
    "-c '/usr/bin/python3 /root/work/connect_a_few.py 3'\n"
)


def _put(path: str, text: str) -> None:
    subprocess.run(  # noqa: S603
        runner.exec_argv(LAB, ["sh", "-c", f"cat > {path}"]),
        input=text.encode(),
        capture_output=True,
        timeout=120,
        check=True,
    )


def _na(values: pd.Series) -> list[int | None]:
    return [None if pd.isna(v) else int(v) for v in values]


def test_dport_daddr_equal_the_workload_and_bpftrace(cell):
    _put("/tmp/sm_fields_bt.sh", BPFTRACE)
    df, err, run = cell(f'%%kprobe -q -c "sh /tmp/sm_fields_bt.sh" tcp_finish_connect {FIELDS}')
    assert err is None, (err, run.messages if run else None)
    port = int(
        next(
            re.search(r"127\.0\.0\.1:(\d+)", m).group(1)  # type: ignore[union-attr]
            for m in run.messages
            if "did 3 connects" in m
        )
    )
    # the lab is shared: only the events of this workload (its pid, as it and bpftrace say)
    pid = int(next(m.split("=")[1] for m in run.messages if m.startswith("workload pid=")))
    bt = [
        (int(p), int(d), int(a))
        for p, d, a in (m.split()[1:] for m in run.messages if m.startswith("bt "))
    ]
    bt = [(d, a) for p, d, a in bt if p == pid]
    df = df[df["pid"] == pid]
    assert len(bt) == 3 and len(df) == 3, (run.messages, df)
    assert str(df["dport"].dtype) == "UInt64"
    assert _na(df["dport"]) == [port] * 3  # __be16 in host order: the port, not 20480-style
    assert _na(df["daddr"]) == [0x7F000001] * 3  # 127.0.0.1
    # bpftrace prints the raw members (network order): the same values once converted
    assert sorted(_na(df["dport"])) == sorted(socket.ntohs(p) for p, _ in bt)
    assert sorted(_na(df["daddr"])) == sorted(socket.ntohl(a) for _, a in bt)
    assert run.field_faults == 0


def test_where_over_a_member_and_a_faulting_read(cell):
    """--where over the member path keeps exactly the 3 connects to 40002 (the 2 to 40001
    are dropped in the probe); `bad` goes through sk->sk_filter, NULL on these sockets:
    NA in every row, each fault counted (all 5 events: the reads come before the filter),
    and the run goes on."""
    _put("/tmp/sm_fields_two_ports.py", TWO_PORTS)
    df, err, run = cell(
        '%%kprobe -q --cmd-only -c "python3 /tmp/sm_fields_two_ports.py" '
        "--where 'sk->__sk_common.skc_dport == 40002' tcp_finish_connect "
        f"{FIELDS} bad=sk->sk_filter->refcnt.refs.counter"
    )
    assert err is None, (err, run.messages if run else None)
    assert any("two ports done" in m for m in run.messages), run.messages
    assert _na(df["dport"]) == [40002] * 3
    assert _na(df["daddr"]) == [0x7F000001] * 3
    assert _na(df["bad"]) == [None] * 3 and str(df["bad"].dtype) == "Int64"
    assert run.field_faults == 5 and run.damaged == 0
    assert "5 member reads faulted" in run.summary()


def test_vfs_open_name_is_the_opened_file(cell):
    df, err, run = cell(
        '%%kprobe -q --cmd-only -c "python3 read_files.py 5 /etc/hostname" '
        "vfs_open name=path->dentry->d_name.name"
    )
    assert err is None, (err, run.messages if run else None)
    names = df["name"].tolist()
    assert names.count("hostname") == 5, names
    assert "read_files.py" in names, names  # python opens the script it runs
    assert run.field_faults == 0
