"""The BTF reader against the lab kernel's own BTF (tests/fixtures/btf, captured by
scripts/capture_btf.py), with bpftrace in that kernel as the oracle for prototypes and
member offsets; synthetic blobs for the kinds that kernel's BTF does not use."""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stapmagic import btf
from stapmagic.btf import BTF, BTFError, FieldPathError, Kind, PathStep
from stapmagic.errors import StapMagicError

FIX = Path(__file__).parent / "fixtures" / "btf"


@cache
def _blob(name: str) -> bytes:
    return lzma.decompress((FIX / f"{name}.btf.xz").read_bytes())


@cache
def vmlinux() -> BTF:
    return BTF.parse(_blob("vmlinux"))


@cache
def ext4() -> BTF:
    return BTF.parse(_blob("ext4"), base=vmlinux(), name="ext4")


@cache
def listing_blocks() -> dict[str, str]:
    """bpftrace -lv's text per `fentry:OBJ:NAME` header."""
    text = lzma.decompress((FIX / "bpftrace_fentry.txt.xz").read_bytes()).decode()
    blocks: dict[str, list[str]] = {}
    cur: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("fentry:"):
            cur = blocks.setdefault(line.strip(), [])
        cur.append(line)
    return {k: "".join(v) for k, v in blocks.items()}


def oracle() -> dict[str, dict[str, int]]:
    data: dict[str, dict[str, int]] = json.loads((FIX / "offsets.json").read_text())
    return data


def field(b: BTF, func: str, path: str) -> btf.Field:
    root, _, steps = btf.parse_path(path)
    (f,) = b.functions(func)
    (param,) = [p for p in f.params if p.name == root]
    return b.resolve_field(param.type, steps, path)


# --- the captured kernel -----------------------------------------------------------------


def test_blobs_are_the_captured_ones():
    meta = json.loads((FIX / "meta.json").read_text())
    assert meta["release"].startswith("6.12")
    for name in ("vmlinux", "ext4"):
        assert hashlib.sha256(_blob(name)).hexdigest() == meta["blobs"][name]


def test_vmlinux_header_and_index():
    b = vmlinux()
    assert b.start_id == 1 and b.type_count > 100_000
    assert len(b.function_names()) > 40_000
    t = b.struct("sock")
    assert t.kind is Kind.STRUCT and t.size == oracle()["sizeof"]["sock"]


def test_tcp_v4_connect_prototype_as_bpftrace_prints_it():
    expected = (
        "fentry:vmlinux:tcp_v4_connect\n"
        "    struct sock * sk\n"
        "    struct sockaddr * uaddr\n"
        "    int addr_len\n"
        "    int retval\n"
    )
    assert listing_blocks()["fentry:vmlinux:tcp_v4_connect"] == expected
    assert vmlinux().bpftrace_listing(["tcp_v4_connect"]) == expected
    (f,) = vmlinux().functions("tcp_v4_connect")
    assert vmlinux().c_prototype(f) == (
        "int tcp_v4_connect(struct sock *sk, struct sockaddr *uaddr, int addr_len)"
    )
    assert [p.name for p in f.params] == ["sk", "uaddr", "addr_len"]


@pytest.mark.parametrize("obj", ["vmlinux", "ext4"])
def test_every_function_bpftrace_lists_has_the_same_prototype(obj):
    b = vmlinux() if obj == "vmlinux" else ext4()
    blocks = {k: v for k, v in listing_blocks().items() if k.split(":")[1] == obj}
    assert len(blocks) > (40_000 if obj == "vmlinux" else 800)
    names = [k.split(":", 2)[2] for k in blocks]
    mine = b.bpftrace_listing(names)
    theirs = "".join(blocks[f"fentry:{obj}:{n}"] for n in sorted(names))
    if mine != theirs:  # name the first function that differs
        ours = {}
        for chunk in mine.split("fentry:")[1:]:
            ours["fentry:" + chunk.split("\n", 1)[0]] = "fentry:" + chunk
        bad = next(k for k in sorted(blocks) if ours.get(k) != blocks[k])
        assert ours.get(bad) == blocks[bad]


def test_void_function_has_no_retval_and_const_pointers():
    blocks = listing_blocks()
    assert blocks["fentry:vmlinux:tcp_v4_send_check"] == (
        "fentry:vmlinux:tcp_v4_send_check\n    struct sock * sk\n    struct sk_buff * skb\n"
    )
    assert (
        vmlinux().bpftrace_listing(["tcp_v4_send_check"])
        == blocks["fentry:vmlinux:tcp_v4_send_check"]
    )
    assert "    const struct path * path\n" in vmlinux().bpftrace_listing(["vfs_open"])


def test_functions_sharing_a_name():
    b = Builder()
    i = b.add("int", 1, 0, 4, struct.pack("<I", (1 << 24) | 32))
    p1 = b.add("", 13, 1, i, struct.pack("<II", b.s("a"), i))
    p2 = b.add("", 13, 2, 0, struct.pack("<II", b.s("x"), i) + struct.pack("<II", b.s("y"), i))
    f1, f2 = b.add("same", 12, 0, p1), b.add("same", 12, 1, p2)
    got = BTF.parse(b.blob())
    assert [
        (f.id, [p.name for p in f.params], f.ret, f.linkage) for f in got.functions("same")
    ] == [(f1, ["a"], i, 0), (f2, ["x", "y"], 0, 1)]
    # bpftrace 0.23 keys its parameter lists by name: both FUNCs' lines under one header
    assert got.bpftrace_listing(["same"]) == (
        "fentry:vmlinux:same\n    int a\n    int retval\n    int x\n    int y\n"
    )


@pytest.mark.parametrize("key", sorted(oracle()["offsetof"]))
def test_member_offsets_equal_bpftrace_offsetof(key):
    struct_name, path = key.split(":", 1)
    assert vmlinux().offsetof(struct_name, path) == oracle()["offsetof"][key]


@pytest.mark.parametrize("name", sorted(oracle()["sizeof"]))
def test_struct_sizes_equal_bpftrace_sizeof(name):
    assert vmlinux().struct(name).size == oracle()["sizeof"][name]


def test_field_through_anonymous_unions_with_byte_order():
    b = vmlinux()
    dport = field(b, "tcp_finish_connect", "sk->__sk_common.skc_dport")
    assert (dport.hops, dport.offset, dport.size) == (
        (),
        oracle()["offsetof"]["sock:__sk_common.skc_dport"],
        2,
    )
    assert dport.kind == "int" and not dport.signed and dport.big_endian
    assert dport.type_name == "__be16"
    daddr = field(b, "tcp_finish_connect", "sk->__sk_common.skc_daddr")
    assert (daddr.offset, daddr.size, daddr.big_endian) == (0, 4, True)
    fam = field(b, "tcp_finish_connect", "sk->__sk_common.skc_family")
    assert (fam.offset, fam.size, fam.big_endian, fam.signed) == (16, 2, False, False)


def test_field_through_pointers_to_a_string():
    b = vmlinux()
    name = field(b, "vfs_open", "path->dentry->d_name.name")
    assert name.hops == (oracle()["offsetof"]["path:dentry"],)
    assert name.offset == oracle()["offsetof"]["dentry:d_name.name"]
    assert name.kind == "string" and name.type_name == "const unsigned char *"
    ln = field(b, "vfs_open", "path->dentry->d_name.len")  # inside union { struct { ... } }
    assert (ln.offset, ln.size, ln.kind) == (oracle()["offsetof"]["dentry:d_name.len"], 4, "int")
    iname = field(b, "vfs_open", "path->dentry->d_iname")
    assert (iname.kind, iname.length) == ("char_array", 40)


def test_field_kinds_bool_enum_pointer_signed():
    b = vmlinux()
    state = field(b, "tcp_v4_connect", "sk->sk_socket->state")
    assert state.kind == "enum" and state.size == 4 and len(state.hops) == 1
    assert {v.name for v in state.enumerators} >= {"SS_CONNECTED", "SS_UNCONNECTED"}
    sock = field(b, "tcp_v4_connect", "sk->sk_socket")
    assert sock.kind == "pointer" and sock.size == 8
    err = field(b, "tcp_v4_connect", "sk->sk_err")
    assert err.kind == "int" and err.signed and err.size == 4
    assert field(b, "tcp_v4_connect", "sk->sk_socket->file->f_path.dentry").kind == "pointer"


def test_bitfields_sit_where_the_kernel_marks_their_byte():
    b = vmlinux()
    off = oracle()["offsetof"]
    cloned = field(b, "tcp_v4_rcv", "skb->cloned")
    assert (cloned.offset, cloned.bit_offset, cloned.bit_size, cloned.size) == (
        off["sk_buff:__cloned_offset"],
        0,
        1,
        1,
    )
    fclone = field(b, "tcp_v4_rcv", "skb->fclone")  # cloned:1, nohdr:1, fclone:2
    assert (fclone.offset, fclone.bit_offset, fclone.bit_size) == (
        off["sk_buff:__cloned_offset"],
        2,
        2,
    )
    pkt = field(b, "tcp_v4_rcv", "skb->pkt_type")
    assert (pkt.offset, pkt.bit_offset, pkt.bit_size, pkt.signed) == (
        off["sk_buff:__pkt_type_offset"],
        0,
        3,
        False,
    )
    with pytest.raises(BTFError, match="bitfield"):
        b.offsetof("sk_buff", "cloned")


@pytest.mark.parametrize(
    "path, pos, message",
    [
        ("sk->__sk_common.skc_dportt", 16, "did you mean skc_dport"),
        ("sk->__sk_common->skc_dport", 15, "`->` on sk->__sk_common, which is not a pointer"),
        ("sk.sk_err", 2, "`.` on sk, which is a pointer (`struct sock *`); use `->`"),
        ("sk->sk_socket.state", 13, "`.` on sk->sk_socket, which is a pointer"),
        ("sk->sk_err->x", 10, "not a pointer (it is `int`)"),
        ("sk->__sk_common", 0, "name one of its members"),
        ("sk", 0, "at least one member"),
    ],
)
def test_path_errors_point_at_the_token(path, pos, message):
    with pytest.raises(FieldPathError) as exc:
        field(vmlinux(), "tcp_v4_connect", path)
    assert message in str(exc.value)
    assert exc.value.pos == pos


def test_unknown_member_lists_the_struct_members():
    with pytest.raises(FieldPathError) as exc:
        field(vmlinux(), "tcp_v4_connect", "sk->__sk_common.skc_dportt")
    msg = str(exc.value)
    assert "struct sock_common has no member 'skc_dportt'" in msg
    # anonymous union members are listed under the names C code uses
    assert "its members: skc_addrpair, skc_daddr, skc_rcv_saddr" in msg
    assert exc.value.length == len("skc_dportt")


@pytest.mark.parametrize(
    "text, pos",
    [("", 0), ("1sk", 0), ("sk->", 4), ("sk-x", 2), ("sk->a..b", 6), ("sk->a b", 5), ("sk;x", 2)],
)
def test_parse_path_rejects(text, pos):
    with pytest.raises(FieldPathError) as exc:
        btf.parse_path(text)
    assert exc.value.pos == pos


def test_parse_path():
    assert btf.parse_path("path->dentry->d_name.name") == (
        "path",
        0,
        [PathStep("->", "dentry", 6), PathStep("->", "d_name", 14), PathStep(".", "name", 21)],
    )


# --- split BTF --------------------------------------------------------------------------


def test_module_split_btf_continues_the_base():
    base, mod = vmlinux(), ext4()
    assert mod.start_id == base.type_count
    assert mod.start_str_off == base.str_end
    (f,) = mod.functions("ext4_file_open")
    assert f.id >= mod.start_id and f.obj == "ext4"
    assert (
        mod.bpftrace_listing(["ext4_file_open"]) == listing_blocks()["fentry:ext4:ext4_file_open"]
    )
    # a module struct whose members are base types
    sbi = mod.struct("ext4_sb_info")
    assert sbi.id >= mod.start_id
    assert mod.struct("super_block").id < mod.start_id
    assert not base.functions("ext4_file_open")
    with pytest.raises(BTFError):
        base.struct("ext4_sb_info")


def test_split_btf_without_its_base_is_refused():
    with pytest.raises(BTFError):
        mod = BTF.parse(_blob("ext4"), name="ext4")
        mod.functions("ext4_file_open")[0]  # a base string offset out of range


# --- cache --------------------------------------------------------------------------------


def test_load_caches_the_index(tmp_path, monkeypatch):
    data = _blob("vmlinux")
    first = btf.load(data, cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    assert entry.name == hashlib.sha256(data).hexdigest() + ".idx"

    def no_walk(self):
        raise AssertionError("the cached index was not used")

    monkeypatch.setattr(BTF, "_walk", no_walk)
    again = btf.load(data, cache_dir=tmp_path)
    assert again.type_count == first.type_count
    assert again.bpftrace_listing(["tcp_v4_connect"]) == first.bpftrace_listing(["tcp_v4_connect"])
    monkeypatch.undo()
    mod = btf.load(_blob("ext4"), base=again, name="ext4", cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # split BTF: keyed by its base too
    assert mod.functions("ext4_file_open")


def test_load_survives_a_damaged_cache(tmp_path):
    data = _blob("ext4")
    base = vmlinux()
    btf.load(data, base=base, name="ext4", cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(b"not a pickle")
    mod = btf.load(data, base=base, name="ext4", cache_dir=tmp_path)
    assert mod.functions("ext4_file_open")


# --- synthetic BTF for what the lab kernel does not use ---------------------------------


class Builder:
    """Encodes btf_type records as kernel Documentation/bpf/btf.rst lays them out."""

    def __init__(self) -> None:
        self.strs = bytearray(b"\0")
        self.types: list[bytes] = []

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strs)
        self.strs += text.encode() + b"\0"
        return off

    def add(
        self,
        name: str,
        kind: int,
        vlen: int,
        size_or_type: int,
        extra: bytes = b"",
        kflag: bool = False,
    ) -> int:
        info = (int(kflag) << 31) | (kind << 24) | vlen
        self.types.append(struct.pack("<III", self.s(name), info, size_or_type) + extra)
        return len(self.types)

    def blob(self, order: str = "<") -> bytes:
        t = b"".join(self.types)
        if order == ">":  # every field is a u32 (or s32) except the header's first bytes
            t = b"".join(struct.pack(">I", w) for (w,) in struct.iter_unpack("<I", t))
        hdr = struct.pack(order + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(t), len(t), len(self.strs))
        return hdr + t + bytes(self.strs)


def synthetic() -> tuple[Builder, dict[str, int]]:
    b = Builder()
    ids: dict[str, int] = {}
    ids["int"] = b.add("int", 1, 0, 4, struct.pack("<I", (1 << 24) | 32))
    ids["uint3"] = b.add("unsigned int", 1, 0, 4, struct.pack("<I", (2 << 16) | 3))
    ids["char"] = b.add("char", 1, 0, 1, struct.pack("<I", (1 << 24) | 8))
    # ptr -> type_tag -> const -> char, the chain btf.rst describes
    ids["cchar"] = b.add("", 10, 0, ids["char"])
    ids["user_tag"] = b.add("user", 18, 0, ids["cchar"])
    ids["pcc"] = b.add("", 2, 0, ids["user_tag"])
    ids["e64"] = b.add(
        "big",
        19,
        2,
        8,
        struct.pack("<III", b.s("NEG"), 0xFFFFFFFF, 0xFFFFFFFF)
        + struct.pack("<III", b.s("HUGE"), 0, 0x10),
        kflag=True,
    )
    ids["f"] = b.add("double", 16, 0, 8)
    # struct s { int a; unsigned int b:3 (old style: int bits 3, int offset 2); }
    ids["s"] = b.add(
        "s",
        4,
        2,
        8,
        struct.pack("<III", b.s("a"), ids["int"], 0)
        + struct.pack("<III", b.s("b"), ids["uint3"], 32),
    )
    ids["ps"] = b.add("", 2, 0, ids["s"])
    ids["be"] = b.add("__be32", 8, 0, ids["int"])
    ids["arr"] = b.add("", 3, 0, 0, struct.pack("<III", ids["int"], ids["int"], 4))
    ids["fp"] = b.add(
        "", 13, 2, ids["int"], struct.pack("<II", b.s("x"), ids["int"]) + struct.pack("<II", 0, 0)
    )
    ids["pfp"] = b.add("", 2, 0, ids["fp"])
    ids["proto"] = b.add(
        "",
        13,
        5,
        0,
        struct.pack("<II", b.s("p"), ids["pcc"])
        + struct.pack("<II", b.s("s"), ids["ps"])
        + struct.pack("<II", b.s("cb"), ids["pfp"])
        + struct.pack("<II", b.s("e"), ids["e64"])
        + struct.pack("<II", b.s("v"), ids["be"]),
    )
    ids["func"] = b.add("g", 12, 1, ids["proto"])
    ids["var"] = b.add("counter", 14, 0, ids["int"], struct.pack("<I", 1))
    ids["sec"] = b.add(".data", 15, 1, 4, struct.pack("<III", ids["var"], 0, 4))
    ids["tag"] = b.add("noinline", 17, 0, ids["func"], struct.pack("<i", -1))
    ids["fwd"] = b.add("opaque", 7, 0, 0, kflag=True)
    return b, ids


@pytest.mark.parametrize("order", ["<", ">"])
def test_synthetic_kinds(order):
    builder, ids = synthetic()
    b = BTF.parse(builder.blob(order))
    assert b.bpftrace_listing(["g"]) == (
        "fentry:vmlinux:g\n"
        '    const char __attribute__((btf_type_tag("user"))) * p\n'
        "    struct s * s\n"
        "    int (*)(int x, ...) cb\n"
        "    enum big e\n"
        "    __be32 v\n"
    )
    e64 = b.type(ids["e64"])
    assert [(v.name, v.value) for v in e64.enumerators] == [("NEG", -1), ("HUGE", 1 << 36)]
    assert b.type(ids["f"]).kind is Kind.FLOAT and b.resolve_size(ids["f"]) == 8
    assert b.resolve_size(ids["arr"]) == 16 and b.decl(ids["arr"], "a") == "int a[4]"
    assert b.type(ids["sec"]).secinfos[0].type == ids["var"]
    assert b.type(ids["var"]).linkage == 1
    assert b.type(ids["tag"]).component_idx == -1
    assert b.decl(ids["fwd"]) == "union opaque"
    (f,) = b.functions("g")
    assert f.ret == 0 and not f.variadic
    bf = b.resolve_field(ids["ps"], [PathStep("->", "b", 3)], "s->b")
    assert (bf.offset, bf.bit_offset, bf.bit_size, bf.size) == (4, 2, 3, 1)
    v = b.resolve_field(ids["ps"], [PathStep("->", "a", 3)], "s->a")
    assert (v.offset, v.size, v.signed) == (0, 4, True)
    with pytest.raises(FieldPathError, match="which has no members"):
        b.resolve_field(ids["pfp"], [PathStep("->", "x", 3)], "c->x")


def test_duplicate_names_get_libbpf_suffixes():
    b = Builder()
    i = b.add("int", 1, 0, 4, struct.pack("<I", (1 << 24) | 32))
    s1 = b.add("dup", 4, 0, 4)
    s2 = b.add("dup", 4, 1, 4, struct.pack("<III", b.s("x"), i, 0))
    p1, p2 = b.add("", 2, 0, s1), b.add("", 2, 0, s2)
    proto = b.add("", 13, 2, 0, struct.pack("<II", b.s("a"), p2) + struct.pack("<II", b.s("b"), p1))
    b.add("h", 12, 1, proto)
    # the first one emitted keeps the name, as in one libbpf btf_dump
    assert BTF.parse(b.blob()).bpftrace_listing(["h"]) == (
        "fentry:vmlinux:h\n    struct dup * a\n    struct dup___2 * b\n"
    )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d[:10], "shorter than a BTF header"),
        (lambda d: b"\0\0" + d[2:], "bad magic"),
        (lambda d: d[:2] + b"\x02" + d[3:], "version 2"),
        (lambda d: d[:-1], "past the end"),
        (lambda d: d[: 24 + 1] + b"\x7f" + d[26:], "unknown kind"),
    ],
)
def test_malformed_headers_and_types(mutate, message):
    builder, _ = synthetic()
    data = builder.blob()
    # byte 27 is the kind byte of type [1]'s info (little-endian u32 at 28..31 holds it at 31)
    if message == "unknown kind":
        data = data[:31] + b"\x1f" + data[32:]
    else:
        data = mutate(data)
    with pytest.raises(BTFError, match=message):
        BTF.parse(data)


def _exercise(data: bytes) -> None:
    b = BTF.parse(data)
    for t in b.types():
        b.decl(t.id, "x")
        b.strip(t.id)
        if t.kind in (Kind.STRUCT, Kind.UNION):
            for name in b.member_names(t):
                try:
                    b.resolve_field(t.id, [PathStep(".", name, 0)], name, root_is_value=False)
                except FieldPathError:
                    pass
        if t.kind is Kind.PTR:
            b.resolve_field(t.id, [PathStep("->", "a", 2)], "p->a")
        try:
            b.resolve_size(t.id)
        except BTFError:
            pass
    for n in b.function_names():
        b.bpftrace_listing([n])
        for f in b.functions(n):
            b.c_prototype(f)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_btf_raises_only_btferror(data):
    builder, _ = synthetic()
    blob = bytearray(builder.blob())
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        _exercise(bytes(blob))
    except BTFError as exc:
        assert isinstance(exc, StapMagicError)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_btferror(blob):
    for data in (blob, b"\x9f\xeb\x01\x00\x18\x00\x00\x00" + blob):
        try:
            _exercise(data)
        except BTFError:
            pass
