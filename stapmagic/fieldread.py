"""Member paths a probe reads (``dport=sk->__sk_common.skc_dport``), as script text.

btfspec resolves a path from BTF into a `FieldRead` (offsets, hops, how to load the leaf);
this module writes what the handler does with it. Every read is fault-safe: a bad pointer
on the way is caught in the handler, the field is left NA (`wire.NA_FIELD` for a number,
`script.FAULT_TEXT` for a string, as str arguments have it), the fault is counted per probe
(a `@@smc field_faults` line at the end) and the run goes on; an uncaught error would end it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from . import btfspec, wire
from .btf import Field
from .errors import SpecError
from .schema import Column, ColumnKind
from .spec import BtfRef, Spec
from .where import Operand, WhereError, tokenize

__all__ = [
    "FAULTS_COUNTER",
    "FieldRead",
    "check",
    "comment",
    "handler",
    "where_operands",
    "where_refs",
]

# The @@smc counter of member reads that faulted, one per probe.
FAULTS_COUNTER = "field_faults"
# Member paths per probe (reader numbers are probe index * this + position).
MAX_PER_PROBE = 64
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:(?:->|\.)[A-Za-z_][A-Za-z0-9_]*)+\Z")
_FORMAT = {"int": "%d", "uint": "%u", "hex": "%x"}


@dataclass(frozen=True)
class FieldRead:
    """One member path of a probe: `column` None when only --where reads it; `index` is the
    register (1-based) of the pointer parameter the path starts from."""

    column: str | None
    path: str
    index: int
    field: Field

    @property
    def kind(self) -> ColumnKind:
        return btfspec.field_column_kind(self.field)

    def schema_column(self) -> Column:
        assert self.column is not None
        return Column(self.column, self.kind, nullable=self.kind != "str")


def check(reads: Sequence[FieldRead], where: str) -> None:
    """Defence in depth: every name and number is what btfspec made, before any is printed."""
    for r in reads:
        ok = (
            (r.column is None or _IDENT.match(r.column) is not None)
            and _PATH.match(r.path) is not None
            and type(r.index) is int
            and 1 <= r.index <= btfspec.REG_ARGS
        )
        if len(reads) > MAX_PER_PROBE:
            ok = False
        if not ok:
            raise SpecError(f"refusing member path {r.path!r} ({r.column!r}) in a script", where)


def comment(r: FieldRead) -> str:
    """The script comment --dry-run shows: where the member is and how it is read."""
    f = r.field
    hops = "".join(f" -> [+{h}]" for h in f.hops)
    bits = f", bits {f.bit_offset}..+{f.bit_size}" if f.bit_size is not None else ""
    order = ", big-endian: to host order" if f.big_endian and f.bit_size is None else ""
    name = r.column if r.column is not None else "(--where)"
    return (
        f"# {name} = {r.path}: `{f.type_name}`, arg {r.index}{hops} -> offset {f.offset}, "
        f"{f.size} bytes{bits}{order}"
    )


def handler(n: int, probe_idx: int, r: FieldRead) -> tuple[list[str], str]:
    """(handler lines that read field number `n` into the local `fN`, and for a number also
    `vN`; the record format of `fN`, always %s). asmlinkage() must come first."""
    name = f"__sm_field{n}"
    call = f"{name}(pointer_arg({r.index}))"
    counted = f"__sm_faults{probe_idx} <<< 1"
    if r.kind == "str":
        from .script import FAULT_TEXT

        return [f'try {{ f{n} = {call} }} catch {{ f{n} = "{FAULT_TEXT}"; {counted} }}'], "%s"
    fmt = _FORMAT[r.kind]
    return [
        f'f{n} = "{wire.NA_FIELD}"',
        f'try {{ v{n} = {call}; f{n} = sprintf("{fmt}", v{n}) }} catch {{ {counted} }}',
    ], "%s"


def where_operands(n: int, r: FieldRead) -> tuple[Operand, str | None]:
    """What --where compares for field `n`, and the test that its read faulted (an event
    whose filter reads a faulted number is dropped: the filter cannot be decided)."""
    if r.kind == "str":
        return Operand(f"f{n}", "str"), None
    return Operand(f"v{n}", "int"), f'f{n} == "{wire.NA_FIELD}"'


def where_refs(spec: Spec, where: str | None) -> Spec:
    """`spec` with each member path --where names added to its entry probes, to be resolved
    from BTF like the spec's own (read for the filter, no column). A filter that does not
    tokenize is left for its compiler to refuse with its own message."""
    if not where:
        return spec
    try:
        toks = tokenize(where)
    except WhereError:
        return spec
    paths = [t for t in toks if t.kind == "path"]
    if not paths:
        return spec
    probes = []
    for p in spec.probes:
        if p.address is None:  # a return probe is refused at its word (read at entry)
            refs = [
                BtfRef(t.text.replace("->", ".").rsplit(".", 1)[-1], t.text, t.pos, where, 1, True)
                for t in paths
            ]
            p = dataclasses.replace(p, btf_refs=(*p.btf_refs, *refs))
        probes.append(p)
    return Spec(tuple(probes))
