"""From BTF to what a probe reads: parameters by register, return values, and fault-safe
SystemTap code for member paths (``sk->__sk_common.skc_dport``).

x86_64 SysV: integer and pointer parameters take one register each, in order, up to six
(rdi rsi rdx rcx r8 r9: SystemTap's ``*_arg(1..6)``); a struct or union passed by value takes
``ceil(size / 8)`` registers when it is at most 16 bytes, and goes on the stack otherwise (as
bpftrace counts them). Everything put into generated code is checked here first.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Literal, Protocol

from stapmagic import btf as btfmod
from stapmagic import fieldread
from stapmagic.btf import BTF, Field, Function, Kind
from stapmagic.errors import BTFError, SpecError
from stapmagic.spec import RESERVED_NAMES, Arg, BtfRef, Probe
from stapmagic.where import WhereError

__all__ = [
    "ArgPlan",
    "REG_ARGS",
    "RetPlan",
    "arg_plans",
    "field_function",
    "resolve_probe",
    "ret_plan",
    "string_reader",
]

REG_ARGS = 6  # x86_64 integer argument registers
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

ColumnKind = Literal["int", "uint", "hex", "str"]


@dataclass(frozen=True)
class ArgPlan:
    """One parameter: `index` is its register (1-based) or None when it is not in one.

    arg_type: the spec type it is read as (`int uint long ulong ptr`, `cstr` for a C string
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
        return "cstr" if btf.is_char(t.ref) else "ptr"
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
                plans.append(
                    ArgPlan(
                        name, None, ctype, None, f"`{ctype}` ({size} bytes) is passed on the stack"
                    )
                )
                continue
            n = max(1, (size + 7) // 8)
            plans.append(
                ArgPlan(
                    name,
                    reg if reg <= REG_ARGS else None,
                    ctype,
                    None,
                    f"`{ctype}` is passed by value in {n} register(s); its members cannot be named",
                )
            )
            reg += n
            continue
        if t.kind is Kind.FLOAT:
            plans.append(ArgPlan(name, None, ctype, None, "floating point: an XMM register"))
            continue
        if reg > REG_ARGS:
            plans.append(
                ArgPlan(
                    name,
                    None,
                    ctype,
                    None,
                    f"parameter {i + 1} is past the {REG_ARGS} argument registers (on the stack)",
                )
            )
            reg += 1
            continue
        at = value_type(btf, p.type)
        plans.append(
            ArgPlan(name, reg, ctype, at, "" if at else f"`{ctype}` cannot be read as a column")
        )
        reg += 1
    return plans


def ret_plan(btf: BTF, func: Function) -> RetPlan:
    if func.ret == 0:
        return RetPlan("void", None)
    ctype = btf.decl(func.ret)
    at = value_type(btf, func.ret)
    if at is None or at == "cstr":
        at = "ptr" if at == "cstr" else None
    if at is None:
        raise BTFError(
            f"{func.name} returns `{ctype}`, which a register cannot carry as a "
            "column; give .return:TYPE"
        )
    return RetPlan(ctype, at)


def string_reader() -> str:
    """The SystemTap string readers (script.py owns them; ``__sm_cstr`` picks the kernel or
    the user reader by address)."""
    from stapmagic import script

    return "\n".join(script.string_helpers())


_LOAD = {1: "kernel_char", 2: "kernel_short", 4: "kernel_int", 8: "kernel_long"}
_NTOH = {2: "ntohs", 4: "ntohl", 8: "ntohll"}


def field_function(n: int, f: Field, string_max: int) -> tuple[str, str]:
    """(function name, SystemTap text) of a reader of `f` from its root value: a long
    (host byte order, masked or sign-extended to the member's width) or, for strings, the
    text_str-escaped text. A bad pointer on the way raises a SystemTap error, which the
    caller catches (fieldread.py) to leave the field NA and count it."""
    if type(n) is not int or not 0 <= n < 1 << 20:
        raise BTFError(f"bad field reader number {n!r}")
    for v in (*f.hops, f.offset, f.size, string_max, f.length):
        if type(v) is not int or not 0 <= v < 1 << 32:
            raise BTFError(f"{f.text}: offset {v!r} out of range")
    name = f"__sm_field{n}"
    body = []
    for hop in f.hops:
        body.append(f"\tp = kernel_pointer(p + {hop})")
    if f.kind == "string":
        ret = "string"
        body.append(f"\treturn __sm_cstr(kernel_pointer(p + {f.offset}), {string_max})")
    elif f.kind == "char_array":
        ret = "string"
        body.append(
            f"\treturn text_str(kernel_string_n(p + {f.offset}, {min(f.length, string_max)}))"
        )
    else:
        ret = "long"
        if f.size not in _LOAD:
            raise BTFError(f"{f.text}: {f.size}-byte value")
        body.append(f"\tv = {_LOAD[f.size]}(p + {f.offset})")
        bits = f.size * 8
        if f.bit_size is not None:
            assert f.bit_offset is not None
            body.append(f"\tv = (v >> {f.bit_offset}) & {(1 << f.bit_size) - 1:#x}")
            if f.signed:
                body.append(f"\tv = (v << {64 - f.bit_size}) >> {64 - f.bit_size}")
        elif f.big_endian and f.size in _NTOH:
            body.append(f"\tv = {_NTOH[f.size]}(v)")
        elif not f.signed and bits < 64:
            body.append(f"\tv = v & {(1 << bits) - 1:#x}")
        body.append("\treturn v")
    return name, "\n".join([f"function {name}:{ret} (p:long) {{", *body, "}"])


def field_column_kind(f: Field) -> ColumnKind:
    if f.kind in ("string", "char_array"):
        return "str"
    if f.kind == "pointer":
        return "hex"
    return "int" if f.signed else "uint"


class _Kernel(Protocol):  # what resolve_probe needs of kbtf.KernelBTF
    vmlinux: BTF

    def functions(self, name: str, module: str | None = None) -> list[Function]: ...

    def object(self, func: Function) -> BTF: ...


def _error(ref: BtfRef, message: str, pos: int, length: int) -> SpecError | WhereError:
    if ref.where_only:  # a member path of --where: marked in the filter
        return WhereError(message, ref.source, pos, length)
    return SpecError(message, ref.source, pos, length, ref.lineno)


def _function(kb: _Kernel, probe: Probe, ref: BtfRef) -> tuple[BTF, Function]:
    name = probe.function or ""
    where = ref.source.find(name) if name else 0
    if probe.function is None:
        raise _error(ref, "an address probe has no BTF prototype: give NAME:TYPE", 0, 1)
    funcs = kb.functions(probe.function, probe.module)
    if not funcs:
        near = kb.vmlinux.near_functions(name)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise _error(
            ref,
            f"{name} is not in the kernel's BTF{hint}: pahole leaves out "
            "functions with inconsistent prototypes or unusual register use, and "
            "clones such as .isra/.constprop; give the arguments as NAME:TYPE"
            + (" and the return type as .return:TYPE" if probe.ret_from_btf else ""),
            max(0, where),
            max(1, len(name)),
        )
    obj = kb.object(funcs[0])
    protos = {obj.c_prototype(f) for f in funcs}
    if len(protos) > 1:
        raise _error(
            ref,
            f"{name} has {len(protos)} different prototypes in BTF ("
            + "; ".join(sorted(protos))
            + "): give the arguments as NAME:TYPE",
            max(0, where),
            max(1, len(name)),
        )
    return obj, funcs[0]


def resolve_probe(kb: _Kernel, probe: Probe) -> Probe:
    """`probe` with its BTF arguments (parameters named the kernel's way) turned into
    positional `Arg`s, the parameters and return type BTF fills in (`all_params`,
    `ret_from_btf`), notes where BTF disagrees with a NAME:TYPE, and the prototype as a
    script comment. SpecError at the word."""
    if probe.function is None and not probe.btf_refs:
        return probe
    if not (probe.btf_refs or probe.all_params or probe.ret_from_btf):
        return _checked(kb, probe)
    ref = probe.btf_refs[0] if probe.btf_refs else _function_word(probe)
    obj, func = _function(kb, probe, ref)
    plans_list = arg_plans(obj, func)
    plans = {p.name: p for p in plans_list}
    args = list(probe.args)
    notes = list(probe.notes)
    enums: list[tuple[str, tuple[tuple[int, str], ...]]] = list(probe.enums)
    if probe.all_params:
        for i, each in enumerate(plans_list, start=1):
            if each.arg_type is None or each.index is None:
                notes.append(f"{func.name}: parameter {i} `{_named(each)}` is not read: {each.why}")
                continue
            column = each.name
            if column in RESERVED_NAMES:
                column = f"{each.name}_arg"
                notes.append(
                    f"{func.name}: parameter {i} `{each.name}` is the column `{column}` "
                    f"(`{each.name}` is a column stapmagic fills itself)"
                )
            args.append(Arg(column, each.arg_type, each.index))
            names = enum_names(obj, func.params[i - 1].type)
            if names:
                enums.append((column, names))
    rettype, ret_typed = probe.rettype, probe.ret_typed
    if probe.ret_from_btf:
        try:
            rettype, ret_typed = ret_plan(obj, func).rettype, True
        except BTFError as exc:
            if probe.kind != "entry":  # an entry probe only keeps it for --latency
                raise _error(ref, str(exc), ref.pos, len(func.name)) from None
    fields: list[fieldread.FieldRead] = []
    for ref in sorted(probe.btf_refs, key=lambda r: r.where_only):
        root, _, steps = btfmod.parse_path(ref.path)
        plan = plans.get(root)
        if plan is None:
            near = difflib.get_close_matches(root, list(plans), n=2)
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
            if kb.functions(root):
                hint += f"; {root} is a function: to probe it too, give it its own line"
            raise _error(
                ref,
                f"{func.name} has no parameter {root!r}{hint}; its parameters: "
                f"{', '.join(plans) or 'none'} ({obj.c_prototype(func)})",
                ref.pos,
                len(root),
            )
        if steps:
            param = next(p for p in func.params if p.name == root)
            try:
                f = obj.resolve_field(param.type, steps, ref.path)
            except btfmod.FieldPathError as exc:
                raise _error(ref, exc.message, ref.pos + exc.pos, exc.length) from None
            if plan.index is None:
                raise _error(ref, f"{root}: {plan.why}", ref.pos, len(root))
            if probe.kind != "entry":
                raise _error(
                    ref,
                    f"{ref.path}: member paths are read at the function's entry; "
                    f"{probe.label} is a return probe",
                    ref.pos,
                    len(ref.path),
                )
            if not any(r.path == ref.path for r in fields) or not ref.where_only:
                fields.append(
                    fieldread.FieldRead(
                        None if ref.where_only else ref.column, ref.path, plan.index, f
                    )
                )
            continue
        if plan.arg_type is None or plan.index is None:
            raise _error(ref, f"{root}: {plan.why}", ref.pos, len(root))
        args.append(Arg(ref.column, plan.arg_type, plan.index))
        names = enum_names(obj, next(p.type for p in func.params if p.name == root))
        if names:
            enums.append((ref.column, names))
    comments = [f"# {obj.c_prototype(func)}  (BTF of {func.obj})"]
    comments += [fieldread.comment(r) for r in fields]
    return dataclasses.replace(
        probe,
        args=tuple(args),
        rettype=rettype,
        btf_refs=(),
        notes=tuple(notes),
        enums=tuple(enums),
        all_params=False,
        ret_from_btf=False,
        ret_typed=ret_typed,
        comments=(*probe.comments, *comments),
        fields=(*probe.fields, *fields),
    )


def _named(plan: ArgPlan) -> str:
    return f"{plan.ctype}{'' if plan.ctype.endswith('*') else ' '}{plan.name}"


def _function_word(probe: Probe) -> BtfRef:
    """Where a bare probe's errors point: its function name, in the probe's text."""
    name = probe.function or ""
    pos = max(0, probe.text.find(name))
    return BtfRef(name, name, pos, probe.text, probe.lineno)


def enum_names(obj: BTF, tid: int) -> tuple[tuple[int, str], ...]:
    """An enum type's (value, enumerator) pairs; () for any other type."""
    t, _ = obj.strip(tid)
    if t.kind not in (Kind.ENUM, Kind.ENUM64):
        return ()
    bits = t.size * 8
    out = []
    for e in t.enumerators:
        v = e.value
        if not t.kind_flag and v < 0:  # stored signed; read from the register unsigned
            v &= (1 << bits) - 1
        out.append((v, e.name))
    return tuple(out)


# How a spec type reads a register: (bytes, signed), None for a pointer, "str" for a string.
_READS: dict[str, tuple[int, bool] | str | None] = {
    "int": (4, True),
    "uint": (4, False),
    "s32": (4, True),
    "u32": (4, False),
    "long": (8, True),
    "ulong": (8, False),
    "longlong": (8, True),
    "ulonglong": (8, False),
    "s64": (8, True),
    "u64": (8, False),
    "s8": (1, True),
    "u8": (1, False),
    "s16": (2, True),
    "u16": (2, False),
    "ptr": None,
    "str": "str",
    "ustr": "str",
    "cstr": "str",
}


def _reads_as(ours: str, theirs: str) -> str | None:
    """How reading a `theirs` (from BTF) register as `ours` (NAME:TYPE) differs, or None when
    it reads the same value."""
    a, b = _READS.get(ours, "?"), _READS.get(theirs, "?")
    if a == b or (theirs == "cstr" and (a is None or a == "str")):
        return None
    if b is None and isinstance(a, tuple) and a[0] == 8:
        return None  # a pointer as a 64-bit number: the same bits
    if a is None:
        return "a pointer"
    if a == "str":
        return "a string behind a pointer"
    if isinstance(a, tuple):
        size, signed = a
        if isinstance(b, tuple) and b[0] == size:
            return "signed" if signed else "unsigned"
        return f"{'a signed' if signed else 'an unsigned'} {size * 8}-bit number"
    return None


def _checked(kb: _Kernel, probe: Probe) -> Probe:
    """The seed's NAME:TYPE as written, with a note for each argument BTF types otherwise
    (nothing when BTF does not have the function, or has it more than once)."""
    if not probe.args or probe.function is None:
        return probe
    try:
        funcs = kb.functions(probe.function, probe.module)
        if not funcs:
            return probe
        obj = kb.object(funcs[0])
        if len({obj.c_prototype(f) for f in funcs}) > 1:
            return probe
        by_reg = {p.index: p for p in arg_plans(obj, funcs[0]) if p.index is not None}
    except BTFError:
        return probe
    notes = list(probe.notes)
    for arg in probe.args:
        plan = by_reg.get(arg.index)
        if plan is None or plan.arg_type is None or arg.name is None:
            continue
        how = _reads_as(arg.type, plan.arg_type)
        if how is not None:
            notes.append(
                f"argument {arg.index} is `{_named(plan)}` in this kernel; "
                f"`{arg.name}:{arg.type}` reads it as {how}"
            )
    return dataclasses.replace(probe, notes=tuple(notes))
