"""A reader of the kernel's BTF (kernel Documentation/bpf/btf.rst): types, functions, members.

`BTF.parse(data)` walks the type section once, recording where each type starts and the
FUNC entries by name; a type is decoded when first asked for. `load()` does the same with the
index cached on disk, keyed by the blob's sha256 (and its base's, for split BTF). Split BTF
(``/sys/kernel/btf/MODULE``) continues vmlinux's type ids and string offsets: pass the vmlinux
`BTF` as ``base``.

Rendering follows libbpf's ``btf_dump__emit_type_decl`` (what ``bpftrace -lv`` prints), so a
prototype can be checked against bpftrace in the same kernel. Everything that goes wrong
raises `BTFError` (`FieldPathError` for a member path), never another exception.
"""

from __future__ import annotations

import array
import difflib
import hashlib
import os
import pickle
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Literal

from stapmagic.errors import BTFError

__all__ = [
    "BTF",
    "BTFError",
    "EnumValue",
    "Field",
    "FieldPathError",
    "Function",
    "Kind",
    "Member",
    "Param",
    "PathStep",
    "Type",
    "default_cache_dir",
    "load",
    "parse_path",
]

MAGIC = 0xEB9F
HEADER_SIZE = 24
INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4
MAX_CHAIN = 256  # typedef/qualifier/pointer hops before a chain is called a cycle
MAX_NEST = 32  # anonymous struct/union nesting searched for a member
BIG_ENDIAN_TYPEDEFS = frozenset({"__be16", "__be32", "__be64"})
CHAR_NAMES = frozenset({"char", "signed char", "unsigned char"})


class Kind(IntEnum):
    """BTF_KIND_* (UNKN is type id 0, ``void``)."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# bytes after the 12-byte btf_type: fixed part, and per vlen item; -1: not a kind
_FIXED = [-1] * 32
_PER_VLEN = [0] * 32
for _k in Kind:
    if _k is not Kind.UNKN:
        _FIXED[_k] = 0
for _k, _n in ((Kind.INT, 4), (Kind.ARRAY, 12), (Kind.VAR, 4), (Kind.DECL_TAG, 4)):
    _FIXED[_k] = _n
for _k, _n in (
    (Kind.STRUCT, 12),
    (Kind.UNION, 12),
    (Kind.ENUM, 8),
    (Kind.FUNC_PROTO, 8),
    (Kind.DATASEC, 12),
    (Kind.ENUM64, 12),
):
    _PER_VLEN[_k] = _n
_FIXED_WORDS = [n // 4 if n >= 0 else -1 for n in _FIXED]
_PER_VLEN_WORDS = [n // 4 for n in _PER_VLEN]
_MODS = frozenset({Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
_SKIP = _MODS | {Kind.TYPEDEF}


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type: int
    bit_offset: int
    bitfield_size: int  # from kind_flag; 0 when not given there


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: int


@dataclass(frozen=True, slots=True)
class EnumValue:
    name: str
    value: int


@dataclass(frozen=True, slots=True)
class VarSecinfo:
    type: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Type:
    """One decoded btf_type; `ref` is the ``type`` field, `size` the ``size`` field."""

    id: int
    kind: Kind
    name: str
    kind_flag: bool
    vlen: int
    size_or_type: int
    int_encoding: int = 0
    int_offset: int = 0
    int_bits: int = 0
    array_type: int = 0
    array_index_type: int = 0
    array_nelems: int = 0
    members: tuple[Member, ...] = ()
    params: tuple[Param, ...] = ()
    enumerators: tuple[EnumValue, ...] = ()
    secinfos: tuple[VarSecinfo, ...] = ()
    linkage: int = 0
    component_idx: int = -1

    @property
    def ref(self) -> int:
        return self.size_or_type

    @property
    def size(self) -> int:
        return self.size_or_type


VOID = Type(0, Kind.UNKN, "void", False, 0, 0)


@dataclass(frozen=True, slots=True)
class Function:
    """A BTF_KIND_FUNC: `obj` is the BTF object's name (``vmlinux``, ``ext4``)."""

    obj: str
    id: int
    name: str
    linkage: int
    proto: int
    params: tuple[Param, ...]
    ret: int

    @property
    def variadic(self) -> bool:
        return bool(self.params) and self.params[-1].type == 0


@dataclass(frozen=True, slots=True)
class PathStep:
    op: Literal["->", "."]
    name: str
    pos: int  # column of `name` in the path text


FieldKind = Literal["int", "bool", "enum", "pointer", "string", "char_array"]


@dataclass(frozen=True, slots=True)
class Field:
    """How to read a member path: from the root value, read a pointer at each offset in
    `hops` (each relative to the previous pointer), then the leaf at `offset`.

    Bitfields: `size` bytes at `offset` hold the value at `bit_offset` (from the low bit,
    little-endian), `bit_size` bits wide. `big_endian`: a ``__be16/32/64`` on the way.
    """

    text: str
    hops: tuple[int, ...]
    offset: int
    size: int
    kind: FieldKind
    signed: bool
    type_name: str
    bit_offset: int | None = None
    bit_size: int | None = None
    big_endian: bool = False
    length: int = 0  # char arrays: element count
    enumerators: tuple[EnumValue, ...] = field(default=())


class FieldPathError(BTFError):
    """A member path that BTF cannot resolve; `pos`/`length` locate the bad token in it."""

    def __init__(self, message: str, pos: int = 0, length: int = 1) -> None:
        self.message = message
        self.pos = pos
        self.length = max(1, length)
        super().__init__(message)


# ----------------------------------------------------------------------------------------
# the reader


@dataclass(frozen=True)
class _Index:
    offsets: bytes  # array('I') of each own type's position in the blob
    funcs: dict[str, tuple[int, ...]]


class BTF:
    """One BTF object (vmlinux, or a module's split BTF over `base`)."""

    def __init__(
        self,
        data: bytes,
        *,
        base: BTF | None = None,
        name: str = "vmlinux",
        index: _Index | None = None,
    ) -> None:
        self.data = bytes(data)
        self.base = base
        self.name = name
        self.start_id = base.type_count if base is not None else 1
        self.start_str_off = base.str_end if base is not None else 0
        self._parse_header()
        self._types: dict[int, Type] = {}
        self._strings: dict[int, str] = {}
        self._by_name: dict[str, list[int]] | None = None
        if index is None:
            index = self._walk()
        self._offsets = array.array("I")
        self._offsets.frombytes(index.offsets)
        self._funcs = index.funcs
        self.index = index

    @classmethod
    def parse(cls, data: bytes, *, base: BTF | None = None, name: str = "vmlinux") -> BTF:
        return cls(data, base=base, name=name)

    # -- layout -------------------------------------------------------------------------

    def _parse_header(self) -> None:
        d = self.data
        if len(d) < HEADER_SIZE:
            raise BTFError(f"BTF {self.name}: {len(d)} bytes, shorter than a BTF header")
        if d[:2] == b"\x9f\xeb":
            self._order = "<"
        elif d[:2] == b"\xeb\x9f":
            self._order = ">"
        else:
            raise BTFError(f"BTF {self.name}: bad magic {d[:2].hex()} (not BTF)")
        version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            self._order + "BBIIIII", d, 2
        )
        if version != 1:
            raise BTFError(f"BTF {self.name}: version {version}, only version 1 is known")
        if hdr_len < HEADER_SIZE or hdr_len > len(d):
            raise BTFError(f"BTF {self.name}: header length {hdr_len} out of range")
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if t0 + type_len > len(d) or s0 + str_len > len(d):
            raise BTFError(
                f"BTF {self.name}: sections run past the end of the data "
                f"({len(d)} bytes): truncated?"
            )
        if type_len % 4:
            raise BTFError(f"BTF {self.name}: type section length {type_len} not a multiple of 4")
        if str_len == 0 and self.base is None:
            raise BTFError(f"BTF {self.name}: empty string section")
        if str_len and d[s0 + str_len - 1] != 0:
            raise BTFError(f"BTF {self.name}: string section does not end with NUL")
        if self.base is None and d[s0] != 0:
            raise BTFError(f"BTF {self.name}: string section does not start with the empty string")
        self._t0: int = t0
        self._t1: int = t0 + type_len
        self._s0: int = s0
        self._s1: int = s0 + str_len
        self._u32x3 = struct.Struct(self._order + "III")

    def _walk(self) -> _Index:
        d, t0 = self.data, self._t0
        words = array.array("I", d[t0 : self._t1])
        if (self._order == "<") != (sys.byteorder == "little"):
            words.byteswap()
        fixed, per = _FIXED_WORDS, _PER_VLEN_WORDS
        offsets = array.array("I")
        append = offsets.append
        func_ids: list[int] = []
        func_offs: list[int] = []
        tid = self.start_id
        i, n = 0, len(words)
        while i < n:
            if i + 3 > n:
                raise BTFError(f"BTF {self.name}: type [{tid}] truncated")
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            extra = fixed[kind]
            if extra < 0:
                raise BTFError(f"BTF {self.name}: type [{tid}] has unknown kind {kind}")
            nxt = i + 3 + extra + per[kind] * (info & 0xFFFF)
            if nxt > n:
                raise BTFError(f"BTF {self.name}: type [{tid}] runs past the type section")
            append(t0 + 4 * i)
            if kind == 12:
                func_ids.append(tid)
                func_offs.append(words[i])
            i = nxt
            tid += 1
        funcs: dict[str, list[int]] = {}
        own, s0, s1, find = self.start_str_off, self._s0, self._s1, d.find
        for fid, off in zip(func_ids, func_offs, strict=True):
            if off < own:
                name = self.string(off)
            else:
                start = s0 + off - own
                if start >= s1:
                    raise BTFError(f"BTF {self.name}: string offset {off} out of range")
                name = d[start : find(b"\0", start, s1)].decode("utf-8", "replace")
            got = funcs.get(name)
            if got is None:
                funcs[name] = [fid]
            else:
                got.append(fid)
        return _Index(offsets.tobytes(), {k: tuple(v) for k, v in funcs.items()})

    @property
    def type_count(self) -> int:
        """One past the last type id (libbpf's btf__type_cnt)."""
        return self.start_id + len(self._offsets)

    @property
    def str_end(self) -> int:
        """One past the last string offset of this object (where a split BTF's strings start)."""
        return self.start_str_off + (self._s1 - self._s0)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    # -- strings and types --------------------------------------------------------------

    def string(self, off: int) -> str:
        if off < self.start_str_off:
            assert self.base is not None
            return self.base.string(off)
        got = self._strings.get(off)
        if got is not None:
            return got
        start = self._s0 + off - self.start_str_off
        if start >= self._s1:
            raise BTFError(f"BTF {self.name}: string offset {off} out of range")
        end = self.data.find(b"\0", start, self._s1)
        if end < 0:  # pragma: no cover - the section ends with NUL (checked)
            raise BTFError(f"BTF {self.name}: unterminated string at {off}")
        s = self.data[start:end].decode("utf-8", "replace")
        self._strings[off] = s
        return s

    def type(self, tid: int) -> Type:
        if tid == 0:
            return VOID
        if tid < self.start_id:
            if self.base is None:
                raise BTFError(f"BTF {self.name}: type id {tid} out of range")
            return self.base.type(tid)
        got = self._types.get(tid)
        if got is None:
            got = self._decode(tid)
            self._types[tid] = got
        return got

    def _decode(self, tid: int) -> Type:
        idx = tid - self.start_id
        if not 0 <= idx < len(self._offsets):
            raise BTFError(
                f"BTF {self.name}: type id {tid} out of range (1..{self.type_count - 1})"
            )
        d, o = self.data, self._order
        pos = self._offsets[idx]
        name_off, info, st = self._u32x3.unpack_from(d, pos)
        kind = Kind((info >> 24) & 0x1F)
        vlen = info & 0xFFFF
        kf = bool(info >> 31)
        name = self.string(name_off)
        p = pos + 12
        if kind is Kind.INT:
            (v,) = struct.unpack_from(o + "I", d, p)
            return Type(
                tid,
                kind,
                name,
                kf,
                vlen,
                st,
                int_encoding=(v >> 24) & 0x0F,
                int_offset=(v >> 16) & 0xFF,
                int_bits=v & 0xFF,
            )
        if kind is Kind.ARRAY:
            a, ix, n = struct.unpack_from(o + "III", d, p)
            return Type(
                tid, kind, name, kf, vlen, st, array_type=a, array_index_type=ix, array_nelems=n
            )
        if kind in (Kind.STRUCT, Kind.UNION):
            members = []
            for i in range(vlen):
                mn, mt, moff = struct.unpack_from(o + "III", d, p + 12 * i)
                if kf:
                    members.append(Member(self.string(mn), mt, moff & 0xFFFFFF, moff >> 24))
                else:
                    members.append(Member(self.string(mn), mt, moff, 0))
            return Type(tid, kind, name, kf, vlen, st, members=tuple(members))
        if kind is Kind.ENUM:
            fmt = o + ("Ii" if kf else "II")
            vals = tuple(
                EnumValue(self.string(n), v)
                for n, v in (struct.unpack_from(fmt, d, p + 8 * i) for i in range(vlen))
            )
            return Type(tid, kind, name, kf, vlen, st, enumerators=vals)
        if kind is Kind.ENUM64:
            vals64 = []
            for i in range(vlen):
                n, lo, hi = struct.unpack_from(o + "III", d, p + 12 * i)
                v = (hi << 32) | lo
                if kf and v >= 1 << 63:
                    v -= 1 << 64
                vals64.append(EnumValue(self.string(n), v))
            return Type(tid, kind, name, kf, vlen, st, enumerators=tuple(vals64))
        if kind is Kind.FUNC_PROTO:
            params = tuple(
                Param(self.string(n), t)
                for n, t in (struct.unpack_from(o + "II", d, p + 8 * i) for i in range(vlen))
            )
            return Type(tid, kind, name, kf, vlen, st, params=params)
        if kind is Kind.VAR:
            (link,) = struct.unpack_from(o + "I", d, p)
            return Type(tid, kind, name, kf, vlen, st, linkage=link)
        if kind is Kind.DATASEC:
            secs = tuple(
                VarSecinfo(*struct.unpack_from(o + "III", d, p + 12 * i)) for i in range(vlen)
            )
            return Type(tid, kind, name, kf, vlen, st, secinfos=secs)
        if kind is Kind.DECL_TAG:
            (cidx,) = struct.unpack_from(o + "i", d, p)
            return Type(tid, kind, name, kf, vlen, st, component_idx=cidx)
        if kind is Kind.FUNC:
            return Type(tid, kind, name, kf, vlen, st, linkage=vlen)
        return Type(tid, kind, name, kf, vlen, st)

    def types(self) -> Iterable[Type]:
        """This object's own types, in id order."""
        for tid in range(self.start_id, self.type_count):
            yield self.type(tid)

    def find_types(self, name: str, kinds: Iterable[Kind] | None = None) -> list[Type]:
        """Named types (own and base), in id order."""
        if self._by_name is None:
            by: dict[str, list[int]] = {}
            for t in self.types():
                if t.name and t.kind is not Kind.FUNC:
                    by.setdefault(t.name, []).append(t.id)
            self._by_name = by
        found = [self.type(i) for i in self._by_name.get(name, ())]
        if self.base is not None:
            found = self.base.find_types(name) + found
        want = set(kinds) if kinds is not None else None
        return [t for t in found if want is None or t.kind in want]

    def struct(self, name: str) -> Type:
        """The (first) struct or union called `name` that has a body."""
        for t in self.find_types(name, (Kind.STRUCT, Kind.UNION)):
            return t
        raise BTFError(f"no struct or union {name!r} in BTF {self.name}")

    # -- functions ----------------------------------------------------------------------

    def function_names(self) -> list[str]:
        return sorted(self._funcs)

    def functions(self, name: str) -> list[Function]:
        """Every FUNC called `name` in this object (several may share a name), in id order."""
        out = []
        for fid in self._funcs.get(name, ()):
            f = self.type(fid)
            proto = self.type(f.ref)
            if proto.kind is not Kind.FUNC_PROTO:
                raise BTFError(
                    f"BTF {self.name}: function {name} [{fid}] has no FUNC_PROTO "
                    f"(type [{f.ref}] is {proto.kind.name})"
                )
            out.append(Function(self.name, fid, name, f.linkage, proto.id, proto.params, proto.ref))
        return out

    def near_functions(self, name: str, n: int = 3) -> list[str]:
        return difflib.get_close_matches(name, self._funcs.keys(), n=n)

    def c_prototype(self, func: Function) -> str:
        """``int tcp_v4_connect(struct sock *sk, struct sockaddr *uaddr, int addr_len)``."""
        return _Dumper(self).decl(func.proto, func.name)

    def decl(self, tid: int, name: str = "") -> str:
        """The C declaration of type `tid` (named `name`), as libbpf's btf_dump writes it."""
        return _Dumper(self).decl(tid, name)

    def bpftrace_listing(self, names: Iterable[str]) -> str:
        """What ``bpftrace -lv`` prints for ``fentry:OBJ:NAME`` of each name (bpftrace 0.23:
        one libbpf dumper per BTF object over the FUNCs in id order, parameters of FUNCs that
        share a name concatenated, names sorted, functions with more than 6 parameters left
        out; whether the kernel can trace a function is not in BTF, so the caller picks)."""
        wanted = set(names)
        dumper = _Dumper(self)
        lines: dict[str, list[str]] = {}
        ids = sorted(fid for n in wanted for fid in self._funcs.get(n, ()))
        for fid in ids:
            f = self.type(fid)
            proto = self.type(f.ref)
            if proto.kind is not Kind.FUNC_PROTO or proto.vlen > 6:
                continue
            out = lines.setdefault(f.name, [])
            for p in proto.params:
                out.append(f"    {dumper.decl(p.type, '')} {p.name}")
            if proto.ref:
                out.append(f"    {dumper.decl(proto.ref, '')} retval")
        text = []
        for n in sorted(lines):
            text.append(f"fentry:{self.name}:{n}")
            text.extend(lines[n])
        return "".join(line + "\n" for line in text)

    # -- types, resolved ----------------------------------------------------------------

    def strip(self, tid: int) -> tuple[Type, list[str]]:
        """The type under typedefs and qualifiers, and the typedef names passed."""
        names: list[str] = []
        t = self.type(tid)
        for _ in range(MAX_CHAIN):
            if t.kind not in _SKIP:
                return t, names
            if t.kind is Kind.TYPEDEF:
                names.append(t.name)
            t = self.type(t.ref)
        raise BTFError(
            f"BTF {self.name}: type chain from [{tid}] longer than {MAX_CHAIN} (a cycle?)"
        )

    def resolve_size(self, tid: int) -> int:
        t = self.type(tid)
        nelems = 1
        for _ in range(MAX_CHAIN):
            if t.kind in (
                Kind.INT,
                Kind.STRUCT,
                Kind.UNION,
                Kind.ENUM,
                Kind.ENUM64,
                Kind.FLOAT,
                Kind.DATASEC,
            ):
                return nelems * t.size
            if t.kind is Kind.PTR:
                return nelems * 8
            if t.kind in _SKIP or t.kind is Kind.VAR:
                t = self.type(t.ref)
            elif t.kind is Kind.ARRAY:
                nelems *= t.array_nelems
                t = self.type(t.array_type)
            else:
                raise BTFError(f"BTF {self.name}: type [{t.id}] ({t.kind.name}) has no size")
        raise BTFError(
            f"BTF {self.name}: type chain from [{tid}] longer than {MAX_CHAIN} (a cycle?)"
        )

    def member_names(self, t: Type, _depth: int = 0) -> list[str]:
        """Members of a struct/union by the names C code uses (anonymous ones flattened)."""
        out: list[str] = []
        if _depth > MAX_NEST:
            return out
        for m in t.members:
            if m.name:
                out.append(m.name)
            else:
                inner, _ = self.strip(m.type)
                if inner.kind in (Kind.STRUCT, Kind.UNION):
                    out.extend(self.member_names(inner, _depth + 1))
        return out

    def find_member(self, t: Type, name: str, _depth: int = 0) -> tuple[int, Member] | None:
        """(bit offset from the start of `t`, member), looking into anonymous members."""
        if _depth > MAX_NEST:
            return None
        for m in t.members:
            if m.name == name:
                return m.bit_offset, m
        for m in t.members:
            if not m.name:
                inner, _ = self.strip(m.type)
                if inner.kind in (Kind.STRUCT, Kind.UNION):
                    hit = self.find_member(inner, name, _depth + 1)
                    if hit is not None:
                        return m.bit_offset + hit[0], hit[1]
        return None

    def resolve_field(
        self, root: int, steps: Sequence[PathStep], text: str = "", *, root_is_value: bool = True
    ) -> Field:
        """Resolve a member path from a value of type `root` (a parameter: its value is in
        hand, so the first ``->`` reads nothing) or, with `root_is_value` False, from the
        start of an object of type `root` (offsets as ``offsetof`` gives them)."""
        try:
            return self._resolve(root, steps, text, root_is_value)
        except RecursionError:  # pragma: no cover - bounded above; belt and braces
            raise BTFError(f"BTF {self.name}: types nested too deeply") from None

    def _resolve(
        self, root: int, steps: Sequence[PathStep], text: str, root_is_value: bool
    ) -> Field:
        cur, hops, bits, bitfield = self._walk_path(root, steps, text, root_is_value)
        return self._leaf(cur, text, hops, bits, bitfield)

    def _walk_path(
        self, root: int, steps: Sequence[PathStep], text: str, root_is_value: bool
    ) -> tuple[int, tuple[int, ...], int, int | None]:
        """(leaf type, pointer hops, bit offset from the last address, bitfield width)."""
        cur = root
        hops: list[int] = []
        bits = 0  # bit offset from the current base address
        in_hand = root_is_value  # the current value is a register value, not in memory
        bitfield: int | None = None
        where = text or "the value"
        prev_text = text[: steps[0].pos - len(steps[0].op)] if steps and text else "value"
        for step in steps:
            t, _ = self.strip(cur)
            shown = self.decl(cur)
            tok_pos = step.pos - len(step.op)
            if bitfield is not None:
                raise FieldPathError(
                    f"{prev_text} is a bitfield ({shown}); it has no members",
                    tok_pos,
                    len(step.op) + len(step.name),
                )
            if step.op == "->":
                if t.kind is not Kind.PTR:
                    hint = "; use `.`" if t.kind in (Kind.STRUCT, Kind.UNION) else ""
                    raise FieldPathError(
                        f"`->` on {prev_text}, which is not a pointer (it is `{shown}`){hint}",
                        tok_pos,
                        2,
                    )
                if not in_hand:
                    hops.append(bits // 8)
                in_hand = False
                bits = 0
                target, _ = self.strip(t.ref)
                owner = self.decl(t.ref)
            else:
                if t.kind is Kind.PTR:
                    raise FieldPathError(
                        f"`.` on {prev_text}, which is a pointer (`{shown}`); use `->`", tok_pos, 1
                    )
                if in_hand:
                    raise FieldPathError(
                        f"`.` on {prev_text}, a value passed in a register "
                        f"(`{shown}`): only pointers can be followed",
                        tok_pos,
                        1,
                    )
                target = t
                owner = shown
            if target.kind is Kind.FWD:
                raise FieldPathError(
                    f"{owner} is only declared in BTF (no members known)",
                    tok_pos,
                    len(step.op) + len(step.name),
                )
            if target.kind not in (Kind.STRUCT, Kind.UNION):
                raise FieldPathError(
                    f"{prev_text} leads to `{owner}`, which has no members",
                    tok_pos,
                    len(step.op) + len(step.name),
                )
            hit = self.find_member(target, step.name)
            if hit is None:
                names = self.member_names(target)
                near = difflib.get_close_matches(step.name, names, n=3)
                msg = f"{owner} has no member {step.name!r}"
                if near:
                    msg += f" (did you mean {' or '.join(near)}?)"
                shown_names = ", ".join(names[:80]) + (
                    f", ... ({len(names)} in all)" if len(names) > 80 else ""
                )
                msg += f"; its members: {shown_names}" if names else "; it has no members"
                raise FieldPathError(msg, step.pos, len(step.name))
            moff, m = hit
            bits += moff
            mtype = self.type(m.type)
            if m.bitfield_size:
                bitfield = m.bitfield_size
            elif mtype.kind is Kind.INT and mtype.int_bits != mtype.size * 8:
                bitfield = mtype.int_bits
                bits += mtype.int_offset
            elif bits % 8:
                raise FieldPathError(
                    f"{step.name} starts at bit {bits}, not on a byte", step.pos, len(step.name)
                )
            cur = m.type
            prev_text = text[: step.pos + len(step.name)] if text else step.name
        if in_hand:
            raise FieldPathError(f"{where}: a path needs at least one member", 0, len(text))
        return cur, tuple(hops), bits, bitfield

    def _leaf(
        self, tid: int, text: str, hops: tuple[int, ...], bits: int, bitfield: int | None
    ) -> Field:
        t, typedefs = self.strip(tid)
        shown = self.decl(tid)
        be = any(n in BIG_ENDIAN_TYPEDEFS for n in typedefs)
        if bitfield is not None:
            if t.kind not in (Kind.INT, Kind.ENUM, Kind.ENUM64):
                raise FieldPathError(
                    f"{text} is a bitfield of `{shown}`, not an integer", 0, len(text)
                )
            shift = bits % 8
            need = (shift + bitfield + 7) // 8
            unit = next((u for u in (1, 2, 4, 8) if u >= need), 0)
            if not unit or bitfield < 1:
                raise FieldPathError(
                    f"{text}: a {bitfield}-bit field at bit {bits} cannot be read in one load",
                    0,
                    len(text),
                )
            signed = bool(t.int_encoding & INT_SIGNED) if t.kind is Kind.INT else t.kind_flag
            kind: FieldKind = (
                "enum"
                if t.kind is not Kind.INT
                else ("bool" if t.int_encoding & INT_BOOL else "int")
            )
            return Field(
                text,
                hops,
                bits // 8,
                unit,
                kind,
                signed,
                shown,
                shift,
                bitfield,
                be,
                enumerators=t.enumerators,
            )
        off = bits // 8
        if t.kind is Kind.INT:
            if t.size not in (1, 2, 4, 8):
                raise FieldPathError(
                    f"{text} is `{shown}`, {t.size} bytes: only 1, 2, 4 or 8 "
                    "byte integers can be read",
                    0,
                    len(text),
                )
            kind = "bool" if t.int_encoding & INT_BOOL else "int"
            return Field(
                text,
                hops,
                off,
                t.size,
                kind,
                bool(t.int_encoding & INT_SIGNED),
                shown,
                big_endian=be,
            )
        if t.kind in (Kind.ENUM, Kind.ENUM64):
            if t.size not in (1, 2, 4, 8):
                raise FieldPathError(f"{text} is `{shown}` of {t.size} bytes", 0, len(text))
            return Field(
                text, hops, off, t.size, "enum", t.kind_flag, shown, enumerators=t.enumerators
            )
        if t.kind is Kind.PTR:
            kind = "string" if self.is_char(t.ref) else "pointer"
            return Field(text, hops, off, 8, kind, False, shown)
        if t.kind is Kind.ARRAY:
            if self.is_char(t.array_type):
                return Field(
                    text,
                    hops,
                    off,
                    t.array_nelems,
                    "char_array",
                    False,
                    shown,
                    length=t.array_nelems,
                )
            raise FieldPathError(
                f"{text} is an array (`{shown}`): only char arrays (strings) can be read whole",
                0,
                len(text),
            )
        if t.kind in (Kind.STRUCT, Kind.UNION):
            names = self.member_names(t)
            raise FieldPathError(
                f"{text} is `{shown}`: name one of its members "
                f"({', '.join(names[:40])}{', ...' if len(names) > 40 else ''})",
                0,
                len(text),
            )
        raise FieldPathError(f"{text} is `{shown}`, which cannot be read as a column", 0, len(text))

    def is_char(self, tid: int) -> bool:
        """A C character type, under qualifiers only: ``u8``/``__u8`` buffers are bytes."""
        t = self.type(tid)
        for _ in range(MAX_CHAIN):
            if t.kind not in _MODS:
                break
            t = self.type(t.ref)
        return (
            t.kind is Kind.INT
            and t.size == 1
            and (t.name in CHAR_NAMES or bool(t.int_encoding & INT_CHAR))
        )

    def offsetof(self, struct_name: str, path: str) -> int:
        """Byte offset of a ``.``-separated member path in a struct (like C's offsetof)."""
        steps = [PathStep(".", n, 0) for n in path.split(".")]
        _, _, bits, bitfield = self._walk_path(self.struct(struct_name).id, steps, path, False)
        if bitfield is not None:
            raise BTFError(f"{struct_name}.{path} is a bitfield: it has no byte offset")
        return bits // 8


# ----------------------------------------------------------------------------------------
# member paths


def parse_path(text: str) -> tuple[str, int, list[PathStep]]:
    """``PARAM->a.b->c`` -> (root name, its column, steps). FieldPathError with the column
    of the first character that does not fit ``IDENT (('->' | '.') IDENT)+``."""
    i, n = 0, len(text)

    def ident(at: int) -> int:
        j = at
        if j < n and (text[j].isascii() and (text[j].isalpha() or text[j] == "_")):
            j += 1
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                j += 1
        return j

    j = ident(0)
    if j == 0:
        raise FieldPathError(f"expected a parameter name at the start of {text!r}", 0, 1)
    root = text[:j]
    i = j
    steps: list[PathStep] = []
    while i < n:
        if text.startswith("->", i):
            op: Literal["->", "."] = "->"
        elif text[i] == ".":
            op = "."
        else:
            raise FieldPathError(
                f"unexpected {text[i]!r} in {text!r}: members are joined by `->` and `.`", i, 1
            )
        i += len(op)
        j = ident(i)
        if j == i:
            raise FieldPathError(f"expected a member name after `{op}` in {text!r}", i, 1)
        steps.append(PathStep(op, text[i:j], i))
        i = j
    return root, 0, steps


# ----------------------------------------------------------------------------------------
# C declarations, as libbpf's btf_dump.c emits them (v1.5)


class _Dumper:
    """State of one libbpf ``struct btf_dump``: names seen twice get ``___N`` suffixes in
    the order they are first emitted, so one dumper renders one listing."""

    def __init__(self, btf: BTF) -> None:
        self.btf = btf
        self.type_names: dict[str, int] = {}
        self.ident_names: dict[str, int] = {}
        self.resolved: dict[int, str] = {}
        self.depth = 0

    def decl(self, tid: int, fname: str, lvl: int = 0) -> str:
        out: list[str] = []
        self.depth += 1
        try:
            if self.depth > MAX_NEST:
                raise BTFError(f"BTF {self.btf.name}: declarations nested too deeply at [{tid}]")
            self._emit_type_decl(tid, fname, lvl, out)
        finally:
            self.depth -= 1
        return "".join(out)

    def _dups(self, names: dict[str, int], name: str) -> int:
        names[name] = names.get(name, 0) + 1
        return names[name]

    def _resolve_name(self, t: Type, names: dict[str, int]) -> str:
        if not t.name:
            return ""
        got = self.resolved.get(t.id)
        if got is not None:
            return got
        if t.kind is Kind.FWD or (t.kind is Kind.ENUM and t.vlen == 0):
            self.resolved[t.id] = t.name
            return t.name
        n = self._dups(names, t.name)
        res = f"{t.name}___{n}" if n > 1 else t.name
        self.resolved[t.id] = res
        return res

    def _emit_type_decl(self, tid: int, fname: str, lvl: int, out: list[str]) -> None:
        stack: list[int] = []
        for _ in range(MAX_CHAIN):
            stack.append(tid)
            if tid == 0:
                break
            t = self.btf.type(tid)
            if t.kind in (
                Kind.PTR,
                Kind.VOLATILE,
                Kind.CONST,
                Kind.RESTRICT,
                Kind.FUNC_PROTO,
                Kind.TYPE_TAG,
            ):
                tid = t.ref
            elif t.kind is Kind.ARRAY:
                tid = t.array_type
            else:
                break
        else:
            raise BTFError(f"BTF {self.btf.name}: declaration chain longer than {MAX_CHAIN}")
        self._emit_chain(stack, fname, lvl, out)

    def _emit_mods(self, decls: list[int], out: list[str]) -> None:
        while decls:
            k = self.btf.type(decls[-1]).kind
            if k is Kind.VOLATILE:
                out.append("volatile ")
            elif k is Kind.CONST:
                out.append("const ")
            elif k is Kind.RESTRICT:
                out.append("restrict ")
            else:
                return
            decls.pop()

    def _drop_mods(self, decls: list[int]) -> None:
        while decls and self.btf.type(decls[-1]).kind in _MODS:
            decls.pop()

    @staticmethod
    def _emit_name(name: str, last_was_ptr: bool, out: list[str]) -> None:
        out.append((" " if name and not last_was_ptr else "") + name)

    def _emit_chain(self, decls: list[int], fname: str, lvl: int, out: list[str]) -> None:
        last_was_ptr = True
        while decls:
            tid = decls.pop()
            if tid == 0:
                self._emit_mods(decls, out)
                out.append("void")
                last_was_ptr = False
                continue
            t = self.btf.type(tid)
            k = t.kind
            if k in (Kind.INT, Kind.FLOAT):
                self._emit_mods(decls, out)
                out.append(t.name)
            elif k in (Kind.STRUCT, Kind.UNION):
                self._emit_mods(decls, out)
                if not t.name:
                    self._emit_struct_def(t, lvl, out)
                else:
                    out.append(
                        ("struct " if k is Kind.STRUCT else "union ")
                        + self._resolve_name(t, self.type_names)
                    )
            elif k in (Kind.ENUM, Kind.ENUM64):
                self._emit_mods(decls, out)
                if not t.name:
                    self._emit_enum_def(t, lvl, out)
                else:
                    out.append("enum " + self._resolve_name(t, self.type_names))
            elif k is Kind.FWD:
                self._emit_mods(decls, out)
                out.append(
                    ("union " if t.kind_flag else "struct ")
                    + self._resolve_name(t, self.type_names)
                )
            elif k is Kind.TYPEDEF:
                self._emit_mods(decls, out)
                out.append(self._resolve_name(t, self.ident_names))
            elif k is Kind.PTR:
                out.append("*" if last_was_ptr else " *")
            elif k is Kind.VOLATILE:
                out.append(" volatile")
            elif k is Kind.CONST:
                out.append(" const")
            elif k is Kind.RESTRICT:
                out.append(" restrict")
            elif k is Kind.TYPE_TAG:
                self._emit_mods(decls, out)
                out.append(f' __attribute__((btf_type_tag("{t.name}")))')
            elif k is Kind.ARRAY:
                self._drop_mods(decls)
                if not decls:
                    self._emit_name(fname, last_was_ptr, out)
                    out.append(f"[{t.array_nelems}]")
                    return
                multidim = self.btf.type(decls[-1]).kind is Kind.ARRAY
                if fname and not last_was_ptr:
                    out.append(" ")
                if not multidim:
                    out.append("(")
                self._emit_chain(decls, fname, lvl, out)
                if not multidim:
                    out.append(")")
                out.append(f"[{t.array_nelems}]")
                return
            elif k is Kind.FUNC_PROTO:
                self._drop_mods(decls)
                if decls:
                    out.append(" (")
                    self._emit_chain(decls, fname, lvl, out)
                    out.append(")")
                else:
                    self._emit_name(fname, last_was_ptr, out)
                out.append("(")
                params = t.params
                if not params or (len(params) == 1 and params[0].type == 0):
                    out.append("void)")
                    return
                for i, p in enumerate(params):
                    if i:
                        out.append(", ")
                    if i == len(params) - 1 and p.type == 0:
                        out.append("...")
                        break
                    out.append(self.decl(p.type, p.name, lvl))
                out.append(")")
                return
            else:  # libbpf warns "unexpected type in decl chain" and stops
                return
            last_was_ptr = k is Kind.PTR
        self._emit_name(fname, last_was_ptr, out)

    def _emit_struct_def(self, t: Type, lvl: int, out: list[str]) -> None:
        # libbpf also writes explicit padding (`long: 64;`) between members; anonymous
        # aggregates inline in a parameter list are rare enough that it is left out here.
        tabs = "\t" * min(lvl + 1, 13)
        out.append(("struct" if t.kind is Kind.STRUCT else "union") + " {")
        for m in t.members:
            out.append(f"\n{tabs}{self.decl(m.type, m.name, lvl + 1)}")
            if m.bitfield_size:
                out.append(f": {m.bitfield_size}")
            out.append(";")
        if t.members or t.size:
            out.append("\n" + "\t" * min(lvl, 13) + "}")
        else:
            out.append("}")

    def _emit_enum_def(self, t: Type, lvl: int, out: list[str]) -> None:
        out.append("enum")
        if not t.members and not t.enumerators:
            return
        out.append(" {")
        tabs = "\t" * min(lvl + 1, 13)
        for v in t.enumerators:
            n = self._dups(self.ident_names, v.name)
            name = f"{v.name}___{n}" if n > 1 else v.name
            if t.kind is Kind.ENUM64:
                out.append(f"\n{tabs}{name} = {v.value}{'LL' if t.kind_flag else 'ULL'},")
            else:
                out.append(f"\n{tabs}{name} = {v.value},")
        out.append("\n" + "\t" * min(lvl, 13) + "}")
        if t.size == 1:
            out.append(" __attribute__((mode(byte)))")
        elif t.size == 8 and (
            t.kind is Kind.ENUM or all(v.value & 0xFFFFFFFF00000000 == 0 for v in t.enumerators)
        ):
            out.append(" __attribute__((mode(word)))")


# ----------------------------------------------------------------------------------------
# loading with an on-disk index cache

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "stapmagic" / "btf"


def load(
    data: bytes,
    *,
    base: BTF | None = None,
    name: str = "vmlinux",
    cache_dir: Path | None = None,
    use_cache: bool = True,
) -> BTF:
    """`BTF.parse`, with the index kept in `cache_dir` (default ~/.cache/stapmagic/btf/) under
    the blob's sha256: a kernel build is indexed once."""
    if not use_cache:
        return BTF(data, base=base, name=name)
    key = hashlib.sha256(data).hexdigest()
    if base is not None:
        key = hashlib.sha256((key + base.sha256).encode()).hexdigest()
    path = (cache_dir or default_cache_dir()) / f"{key}.idx"
    index = _read_index(path)
    if index is not None:
        try:
            return BTF(data, base=base, name=name, index=index)
        except BTFError:
            pass  # a stale or damaged cache entry: index again
    btf = BTF(data, base=base, name=name)
    _write_index(path, btf.index)
    return btf


def _read_index(path: Path) -> _Index | None:
    try:
        with open(path, "rb") as fh:
            got = pickle.load(fh)  # noqa: S301 - our own cache file
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
    ):
        return None
    if (
        not isinstance(got, tuple)
        or len(got) != 3
        or got[0] != CACHE_VERSION
        or not isinstance(got[1], bytes)
        or not isinstance(got[2], dict)
    ):
        return None
    return _Index(got[1], got[2])


def _write_index(path: Path, index: _Index) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            pickle.dump((CACHE_VERSION, index.offsets, index.funcs), fh, protocol=5)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home still works, only slower
        print(f"stapmagic: could not cache the BTF index in {path}: {exc}", file=sys.stderr)
