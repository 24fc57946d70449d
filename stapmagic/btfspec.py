"""From BTF to what a probe reads: parameters by register, return values, and fault-safe
SystemTap code for member paths (``sk->__sk_common.skc_dport``).

x86_64 SysV: integer and pointer parameters take one register each, in order, up to six
(rdi rsi rdx rcx r8 r9: SystemTap's ``*_arg(1..6)``); a struct or union passed by value takes
``ceil(size / 8)`` registers when it is at most 16 bytes, and goes on the stack otherwise (as
bpftrace counts them). Everything put into generated code is checked here first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from stapmagic.btf import BTF, Field, Function, Kind
from stapmagic.errors import BTFError

__all__ = ["ArgPlan", "REG_ARGS", "RetPlan", "arg_plans", "field_function", "ret_plan",
           "string_reader"]

REG_ARGS = 6  # x86_64 integer argument registers
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KERNEL_HALF = 0xFFFF800000000000  # x86_64: kernel addresses from here (4- and 5-level paging)

ColumnKind = Literal["int", "uint", "hex", "str"]


@dataclass(frozen=True)
class ArgPlan:
    """One parameter: `index` is its register (1-based) or None when it is not in one.

    arg_type: the spec type it is read as (`int uint long ulong ptr`, `kstr` for a C string
    that may be a kernel or a user pointer), or None with `why` when it cannot be read."""

    name: str
    index: int | None
    ctype: str
    arg_type: str | None
    why: str = ""


@dataclass(frozen=True)
class RetPlan:
    ctype: str
    rettype: str | None  # None: void


def _int_type(size: int, signed: bool) -> str | None:
    if size == 8:
        return "long" if signed else "ulong"
    if size == 4:
        return "int" if signed else "uint"
    if size in (1, 2):
        return f"{'s' if signed else 'u'}{size * 8}"
    return None


def value_type(btf: BTF, tid: int) -> str | None:
    """The spec type a register holding a value of type `tid` is read as, or None."""
    t, _ = btf.strip(tid)
    if t.kind is Kind.PTR:
        return "kstr" if btf.is_char(t.ref) else "ptr"
    if t.kind is Kind.INT:
        if t.int_encoding & 4:  # bool
            return "u8"
        return _int_type(t.size, bool(t.int_encoding & 1))
    if t.kind in (Kind.ENUM, Kind.ENUM64):
        return _int_type(t.size, t.kind_flag)
    return None


def arg_plans(btf: BTF, func: Function) -> list[ArgPlan]:
    plans: list[ArgPlan] = []
    reg = 1
    for i, p in enumerate(func.params):
        if p.type == 0:
            break  # `...`: nothing after it has a name or a register
        name = p.name or f"arg{i + 1}"
        if not _IDENT.match(name):
            raise BTFError(f"{func.name}: parameter name {name!r} from BTF is not an identifier")
        ctype = btf.decl(p.type)
        t, _ = btf.strip(p.type)
        if t.kind in (Kind.STRUCT, Kind.UNION):
            size = t.size
            if size > 16:
                plans.append(ArgPlan(name, None, ctype, None,
                                     f"`{ctype}` ({size} bytes) is passed on the stack"))
                continue
            n = max(1, (size + 7) // 8)
            plans.append(ArgPlan(name, reg if reg <= REG_ARGS else None, ctype, None,
                                 f"`{ctype}` is passed by value in {n} register(s); "
                                 "its members cannot be named"))
            reg += n
            continue
        if t.kind is Kind.FLOAT:
            plans.append(ArgPlan(name, None, ctype, None, "floating point: an XMM register"))
            continue
        if reg > REG_ARGS:
            plans.append(ArgPlan(name, None, ctype, None,
                                 f"parameter {i + 1} is past the {REG_ARGS} argument registers "
                                 "(on the stack)"))
            reg += 1
            continue
        at = value_type(btf, p.type)
        plans.append(ArgPlan(name, reg, ctype, at,
                             "" if at else f"`{ctype}` cannot be read as a column"))
        reg += 1
    return plans


def ret_plan(btf: BTF, func: Function) -> RetPlan:
    if func.ret == 0:
        return RetPlan("void", None)
    ctype = btf.decl(func.ret)
    at = value_type(btf, func.ret)
    if at is None or at == "kstr":
        at = "ptr" if at == "kstr" else None
    if at is None:
        raise BTFError(f"{func.name} returns `{ctype}`, which a register cannot carry as a "
                       "column; give .return:TYPE")
    return RetPlan(ctype, at)


def string_reader() -> str:
    """A C string from a pointer that may be a kernel or a user address (``__user`` is not in
    BTF from a gcc-built kernel): the address range decides which reader may touch it."""
    return "\n".join((
        "function __sm_cstr:string (addr:long, n:long) {",
        f"\tif (addr >= {_KERNEL_HALF:#x}) {{",
        '\t\ttry { return text_str(kernel_string_n(addr, n)) } catch { return "<fault>" }',
        "\t}",
        '\treturn text_str(user_string_n(addr, n, "<fault>"))',
        "}",
    ))


_LOAD = {1: "kernel_char", 2: "kernel_short", 4: "kernel_int", 8: "kernel_long"}
_NTOH = {2: "ntohs", 4: "ntohl", 8: "ntohll"}


def field_function(n: int, f: Field, string_max: int, fault_counter: str) -> tuple[str, str]:
    """(function name, SystemTap text) of a fault-safe reader of `f` from its root value.

    Numbers come back as decimal or hex text and strings escaped, so that a fault can be
    the empty field (NA); `fault_counter` (a global) counts the faults."""
    if not _IDENT.match(fault_counter) or not 0 <= n < 10_000:
        raise BTFError(f"bad field reader name {fault_counter!r}/{n}")
    for v in (*f.hops, f.offset, f.size, string_max, f.length):
        if type(v) is not int or not 0 <= v < 1 << 32:
            raise BTFError(f"{f.text}: offset {v!r} out of range")
    name = f"__sm_field{n}"
    body = ["\ttry {"]
    for hop in f.hops:
        body.append(f"\t\tp = kernel_pointer(p + {hop})")
    if f.kind == "string":
        body.append(f"\t\treturn __sm_cstr(kernel_pointer(p + {f.offset}), {string_max})")
    elif f.kind == "char_array":
        body.append(f"\t\treturn text_str(kernel_string_n(p + {f.offset}, "
                    f"{min(f.length, string_max)}))")
    else:
        if f.size not in _LOAD:
            raise BTFError(f"{f.text}: {f.size}-byte value")
        body.append(f"\t\tv = {_LOAD[f.size]}(p + {f.offset})")
        bits = f.size * 8
        if f.bit_size is not None:
            assert f.bit_offset is not None
            body.append(f"\t\tv = (v >> {f.bit_offset}) & {(1 << f.bit_size) - 1:#x}")
            if f.signed:
                body.append(f"\t\tv = (v << {64 - f.bit_size}) >> {64 - f.bit_size}")
        elif f.big_endian and f.size in _NTOH:
            body.append(f"\t\tv = {_NTOH[f.size]}(v)")
        elif not f.signed and bits < 64:
            body.append(f"\t\tv = v & {(1 << bits) - 1:#x}")
        if f.kind == "pointer":
            body.append('\t\treturn sprintf("%x", v)')
        elif f.signed:
            body.append('\t\treturn sprintf("%d", v)')
        else:
            body.append('\t\treturn sprintf("%u", v)')
    body += ["\t} catch {", f"\t\t{fault_counter}++", '\t\treturn ""', "\t}"]
    return name, "\n".join([f"function {name}:string (p:long) {{", *body, "}"])


def field_column_kind(f: Field) -> ColumnKind:
    if f.kind in ("string", "char_array"):
        return "str"
    if f.kind == "pointer":
        return "hex"
    return "int" if f.signed else "uint"
