"""Member paths read by btfspec's fault-safe SystemTap readers on the lab kernel, with
offsets from the guest's own BTF, checked against the workload and against bpftrace."""

from __future__ import annotations

import re
import socket
import subprocess

from labutil import LAB

from stapmagic import btf, btfspec, runner


def _guest_bytes(argv: list[str], timeout: float = 900) -> bytes:
    done = subprocess.run(  # noqa: S603
        runner.exec_argv(LAB, argv),
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout


def _fields(vmlinux: btf.BTF, func: str, paths: list[str]) -> list[btf.Field]:
    (f,) = vmlinux.functions(func)
    out = []
    for path in paths:
        root, _, steps = btf.parse_path(path)
        (param,) = [p for p in f.params if p.name == root]
        out.append(vmlinux.resolve_field(param.type, steps, path))
    return out


def test_dport_daddr_and_a_bad_pointer(cell):
    vmlinux = btf.BTF.parse(_guest_bytes(["cat", "/sys/kernel/btf/vmlinux"]))
    dport, daddr = _fields(
        vmlinux, "tcp_finish_connect", ["sk->__sk_common.skc_dport", "sk->__sk_common.skc_daddr"]
    )
    funcs = [btfspec.field_function(i, f, 64)[1] for i, f in enumerate((dport, daddr))]
    # the readers raise on a bad pointer; the handler catches it (as fieldread.py does)
    script = "\n".join(
        [
            "global __sm_faults",
            btfspec.string_reader(),
            *funcs,
            'probe kprobe.function("tcp_finish_connect") {',
            "\tasmlinkage()",
            "\tp = pointer_arg(1)",
            '\tbad = ""',
            "\ttry { bad = sprint(__sm_field0(16)) } catch { __sm_faults++ }",
            '\tprintf("fields dport=%d daddr=%d bad=[%s]\\n", __sm_field0(p), __sm_field1(p), bad)',
            "}",
            'probe end { printf("faults=%d\\n", __sm_faults) }',
        ]
    )
    _, err, run = cell('%%stap -q -c "python3 connect_a_few.py 3"\n' + script)
    assert err is None, (err, run.messages if run else None)
    port = int(
        next(
            re.search(r"127\.0\.0\.1:(\d+)", m).group(1)  # type: ignore[union-attr]
            for m in run.messages
            if "did 3 connects" in m
        )
    )
    rows = [m for m in run.messages if m.startswith("fields ")]
    assert len(rows) == 3, run.messages
    for line in rows:
        got = dict(re.findall(r"(\w+)=(\S*)", line))
        assert int(got["dport"]) == port  # __be16 arrives in host order
        assert int(got["daddr"]) == 0x7F000001  # 127.0.0.1, __be32 in host order
        assert got["bad"] == "[]"  # NULL+16: no value, and the run goes on
    assert "faults=3" in run.messages

    # bpftrace reads the same members in the same kernel: raw (network order) values
    out = _guest_bytes(
        [
            "bpftrace",
            "-c",
            "/usr/bin/python3 /root/work/connect_a_few.py 3",
            "-e",
            'fentry:tcp_finish_connect { printf("bt %u %u\\n", '
            "args->sk->__sk_common.skc_dport, args->sk->__sk_common.skc_daddr); }",
        ]
    ).decode()
    bt_port = int(re.search(r"127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
    bt = [tuple(int(x) for x in m) for m in re.findall(r"^bt (\d+) (\d+)$", out, re.M)]
    assert len(bt) == 3, out
    for raw_port, raw_addr in bt:
        assert socket.ntohs(raw_port) == bt_port
        assert socket.ntohl(raw_addr) == 0x7F000001
