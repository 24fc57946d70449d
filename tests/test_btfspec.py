"""btfspec: registers, types and fault-safe readers derived from the lab kernel's BTF."""

from __future__ import annotations

import pytest
from test_btf import vmlinux

from stapmagic import btf, btfspec
from stapmagic.errors import BTFError


def plans(name: str) -> list[tuple[str, int | None, str | None]]:
    (f,) = vmlinux().functions(name)
    return [(p.name, p.index, p.arg_type) for p in btfspec.arg_plans(vmlinux(), f)]


def test_register_parameters_named_and_typed():
    assert plans("tcp_v4_connect") == [
        ("sk", 1, "ptr"),
        ("uaddr", 2, "ptr"),
        ("addr_len", 3, "int"),
    ]
    assert plans("do_sys_openat2") == [
        ("dfd", 1, "int"),
        ("filename", 2, "cstr"),
        ("how", 3, "ptr"),
    ]
    assert plans("___gnet_stats_copy_basic")[-1] == ("running", 5, "u8")  # bool
    assert plans("tcp_v4_send_reset")[-1] == ("reason", 3, "uint")  # enum sk_rst_reason


def test_struct_by_value_takes_two_registers():
    # sockptr_t (16 bytes) fills rdx and rcx: optlen is the 5th register
    assert plans("tcp_v4_parse_md5_keys") == [
        ("sk", 1, "ptr"),
        ("optname", 2, "int"),
        ("optval", 3, None),
        ("optlen", 5, "int"),
    ]


def test_parameters_past_six_registers_and_big_structs_are_said():
    (f,) = vmlinux().functions("FSE_decompress_wksp")
    last = btfspec.arg_plans(vmlinux(), f)[-1]
    assert (last.name, last.index, last.arg_type) == ("wkspSize", None, None)
    assert "past the 6 argument registers" in last.why
    (f,) = vmlinux().functions("ZSTD_CCtxParams_init_advanced")
    big = btfspec.arg_plans(vmlinux(), f)[1]
    assert big.index is None and "passed on the stack" in big.why


def test_return_types():
    b = vmlinux()
    assert btfspec.ret_plan(b, b.functions("tcp_v4_connect")[0]) == btfspec.RetPlan("int", "int")
    assert btfspec.ret_plan(b, b.functions("tcp_v4_send_reset")[0]).rettype is None
    assert btfspec.ret_plan(b, b.functions("do_sys_openat2")[0]) == btfspec.RetPlan(
        "long int", "long"
    )


def _field(func: str, path: str) -> btf.Field:
    (f,) = vmlinux().functions(func)
    root, _, steps = btf.parse_path(path)
    (p,) = [p for p in f.params if p.name == root]
    return vmlinux().resolve_field(p.type, steps, path)


def test_be16_reader():
    _, text = btfspec.field_function(
        0, _field("tcp_finish_connect", "sk->__sk_common.skc_dport"), 64
    )
    # no try here: the handler catches a fault (fieldread.py), so the field can be NA
    assert text == "\n".join(
        [
            "function __sm_field0:long (p:long) {",
            "\tv = kernel_short(p + 12)",
            "\tv = ntohs(v)",
            "\treturn v",
            "}",
        ]
    )


def test_pointer_hops_and_strings():
    _, text = btfspec.field_function(3, _field("vfs_open", "path->dentry->d_name.name"), 100)
    assert "\tp = kernel_pointer(p + 8)\n\treturn __sm_cstr(kernel_pointer(p + 40), 100)" in text
    assert text.startswith("function __sm_field3:string (p:long) {")
    _, arr = btfspec.field_function(1, _field("vfs_open", "path->dentry->d_iname"), 100)
    assert "text_str(kernel_string_n(p + 56, 40))" in arr


def test_bitfield_reader_masks_and_shifts():
    _, text = btfspec.field_function(0, _field("tcp_v4_rcv", "skb->fclone"), 64)
    assert "v = kernel_char(p + 126)\n\tv = (v >> 2) & 0x3\n\treturn v\n" in text


def test_unsigned_ints_are_masked_signed_are_not():
    _, fam = btfspec.field_function(0, _field("tcp_v4_connect", "sk->__sk_common.skc_family"), 64)
    assert "v = v & 0xffff" in fam
    _, err = btfspec.field_function(0, _field("tcp_v4_connect", "sk->sk_err"), 64)
    assert "v = v &" not in err and "\treturn v\n" in err


@pytest.mark.parametrize("n", [-1, 1 << 20, "1;x", True])
def test_reader_numbers_are_checked(n):
    with pytest.raises(BTFError):
        btfspec.field_function(n, _field("tcp_v4_connect", "sk->sk_err"), 64)


def test_cstr_picks_the_reader_by_address():
    text = btfspec.string_reader()
    assert "\tif (addr < 0) return __sm_kstr(addr, n)\n" in text
    assert 'user_string_n(addr, n, "<fault>")' in text
