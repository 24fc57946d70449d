"""Cells that name arguments the kernel's way, resolved from BTF (the lab kernel's, from the
fixtures, standing in for the target's), the way a notebook runs them."""

from __future__ import annotations

import pytest
from test_btf import ext4, vmlinux

from stapmagic import kbtf, pipeline

CALLS: list[tuple[str, list[str]]] = []


@pytest.fixture
def lab_btf(monkeypatch):
    CALLS.clear()

    def lookup(target, modules):
        CALLS.append((str(target), list(modules)))
        kb = kbtf.KernelBTF(vmlinux())
        if "ext4" in modules:
            kb.modules["ext4"] = ext4()
        return kb

    monkeypatch.setattr(pipeline, "target_btf", lookup)


@pytest.fixture
def no_btf(monkeypatch):
    def lookup(target, modules):
        raise kbtf.NoBTF(
            "the target kernel has no BTF (/sys/kernel/btf/vmlinux: No such file or directory)"
        )

    monkeypatch.setattr(pipeline, "target_btf", lookup)


def run(ip, text):
    result = ip.run_cell(text)
    return result.result, result.error_before_exec or result.error_in_exec


def test_a_parameter_by_its_kernel_name(ip, capsys, lab_btf):
    _, err = run(ip, "%%kprobe --dry-run tcp_v4_connect addr_len")
    assert err is None, err
    out = capsys.readouterr().out
    assert "# int tcp_v4_connect(struct sock *sk, struct sockaddr *uaddr, int addr_len)" in out
    assert "int_arg(3)" in out
    assert CALLS == [("local", [])]


def test_several_names_and_a_c_string(ip, capsys, lab_btf):
    _, err = run(ip, "%%kprobe --dry-run do_sys_openat2 filename dfd")
    assert err is None, err
    out = capsys.readouterr().out
    assert "__sm_cstr(pointer_arg(2), 64)" in out and "int_arg(1)" in out
    assert "function __sm_cstr:string" in out


def test_module_function_uses_the_module_btf(ip, capsys, lab_btf):
    _, err = run(ip, "%%kprobe --dry-run ext4:ext4_file_open filp")
    assert err is None, err
    assert "pointer_arg(2)" in capsys.readouterr().out
    assert CALLS == [("local", ["ext4"])]


def test_seed_style_needs_no_btf(ip, capsys, no_btf):
    _, err = run(ip, "%%kprobe --dry-run tcp_v4_connect sk:ptr uaddr:ptr len:uint")
    assert err is None


@pytest.mark.parametrize(
    "cell, message, marked",
    [
        (
            "tcp_v4_connect addr_lenn",
            "has no parameter 'addr_lenn' (did you mean addr_len?)",
            "addr_lenn",
        ),
        ("tcp_v4_connect sk->__sk_common.skc_dportt", "did you mean skc_dport", "skc_dportt"),
        ("tcp_v4_connect sk->__sk_common->skc_dport", "which is not a pointer", "->skc"),
        (
            "tcp_v4_connectt addr_len",
            "tcp_v4_connectt is not in the kernel's BTF (did you mean tcp_v4_connect",
            "tcp_v4_connectt",
        ),
        ("tcp_v4_connect sk->", "expected a member name", ""),
        ("tcp_v4_connect len=addr_len len:int", "duplicate argument name 'len'", None),
    ],
)
def test_refused_before_anything_runs(ip, lab_btf, cell, message, marked):
    _, err = run(ip, f"%%kprobe --dry-run {cell}")
    assert err is not None and message in str(err), err
    if marked is not None:
        at = cell.index(marked) if marked else len(cell)
        width = 2 if marked == "->skc" else max(1, len(marked))
        caret = " " * (4 + at) + "^" * width
        assert str(err).endswith("\n" + caret), str(err)


def test_no_btf_says_so(ip, no_btf):
    _, err = run(ip, "%%kprobe --dry-run tcp_v4_connect addr_len")
    assert "addr_len needs the kernel's BTF: the target kernel has no BTF" in str(err)


def test_another_function_on_the_same_line_is_named(ip, lab_btf):
    _, err = run(ip, "%%kprobe --dry-run tcp_v4_connect tcp_v6_connect")
    assert "tcp_v6_connect is a function: to probe it too, give it its own line" in str(err)


def test_where_on_the_magic_line(ip, capsys, lab_btf):
    _, err = run(
        ip,
        "%%kprobe --dry-run --where 'addr_len == 16 && comm == \"curl\"' tcp_v4_connect addr_len",
    )
    assert err is None, err
    assert 'if (!((a3 == 16 && execname() == "curl"))) next  # --where' in (capsys.readouterr().out)


def test_bad_where_is_one_usage_error_with_a_caret(ip, lab_btf):
    _, err = run(ip, "%%kprobe --dry-run --where 'addr_len = 16' tcp_v4_connect addr_len")
    assert type(err).__name__ == "UsageError"
    assert str(err).endswith("addr_len = 16\n             ^")
