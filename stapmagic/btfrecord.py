"""What a recording keeps of a cell's BTF resolution, so that its replay needs no target.

A cell that names parameters the kernel's way, a bare FUNCTION or a `.return` without a type
is resolved from the target's BTF (btfspec.resolve_probe); a replay has no target, so the
recording carries, per probe, what that resolution gave: the arguments, the return type, the
notes, the script comments and the enum names. A replay puts them back on the parsed spec
(the spec text was already checked to be the recorded one); the script generated from them
is then compared with the recorded script as for any cell.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .btf import EnumValue, Field, FieldKind
from .errors import ReplayError
from .fieldread import FieldRead
from .spec import Arg, Spec, is_valid_arg_name

__all__ = ["BadResolution", "apply", "check", "to_json"]


class BadResolution(ValueError):
    """A recorded resolution that is not what to_json writes; the message says what."""


def to_json(spec: Spec) -> list[dict[str, Any]]:
    """Every probe's resolution, in spec order."""
    return [
        {
            "label": p.label,
            "args": [[a.name, a.type, a.index] for a in p.args],
            "rettype": p.rettype,
            "ret_typed": p.ret_typed,
            "notes": list(p.notes),
            "comments": list(p.comments),
            "enums": [[column, [[v, n] for v, n in names]] for column, names in p.enums],
            "fields": [_field_json(r) for r in p.fields],
        }
        for p in spec.probes
    ]


def _field_json(r: FieldRead) -> dict[str, Any]:
    f = dataclasses.asdict(r.field)
    f["hops"] = list(r.field.hops)
    f["enumerators"] = [[e.name, e.value] for e in r.field.enumerators]
    return {"column": r.column, "path": r.path, "index": r.index, "field": f}


_FIELD_TYPES = typing.get_type_hints(Field)
_FIELD_KINDS = typing.get_args(FieldKind)


def _check_field(obj: Any) -> None:
    bad = BadResolution("a member read must be {column, path, index, field} as recorded")
    if not isinstance(obj, dict) or set(obj) - {"fields"} != {"column", "path", "index", "field"}:
        raise bad
    column, path, index, f = obj["column"], obj["path"], obj["index"], obj["field"]
    if column is not None and not (isinstance(column, str) and is_valid_arg_name(column)):
        raise bad
    if not isinstance(path, str) or not _int(index) or not isinstance(f, dict):
        raise bad
    if set(f) != set(_FIELD_TYPES) or f["kind"] not in _FIELD_KINDS:
        raise bad
    for name in ("offset", "size", "length"):
        if not _int(f[name]):
            raise bad
    for name in ("bit_offset", "bit_size"):
        if f[name] is not None and not _int(f[name]):
            raise bad
    if not all(isinstance(f[n], bool) for n in ("signed", "big_endian")):
        raise bad
    if not all(isinstance(f[n], str) for n in ("text", "type_name")):
        raise bad
    if not isinstance(f["hops"], list) or not all(_int(h) for h in f["hops"]):
        raise bad
    if not isinstance(f["enumerators"], list) or not all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and _int(e[1])
        for e in f["enumerators"]
    ):
        raise bad


def _field(obj: dict[str, Any]) -> FieldRead:
    f = dict(obj["field"])
    f["hops"] = tuple(f["hops"])
    f["enumerators"] = tuple(EnumValue(n, v) for n, v in f["enumerators"])
    return FieldRead(obj["column"], obj["path"], obj["index"], Field(**f))


def _strs(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_one(obj: Any) -> None:
    if not isinstance(obj, dict) or set(obj) - {"fields"} != {
        "label",
        "args",
        "rettype",
        "ret_typed",
        "notes",
        "comments",
        "enums",
    }:
        raise BadResolution(
            "each probe must be an object of label, args, rettype, ret_typed, "
            "notes, comments, enums, fields"
        )
    if not isinstance(obj["label"], str):
        raise BadResolution("`label` must be a string")
    for arg in obj["args"] if isinstance(obj["args"], list) else [None]:
        if not (
            isinstance(arg, list)
            and len(arg) == 3
            and (arg[0] is None or (isinstance(arg[0], str) and is_valid_arg_name(arg[0])))
            and isinstance(arg[1], str)
            and _int(arg[2])
        ):
            raise BadResolution(f"an argument must be [NAME or null, TYPE, INDEX], not {arg!r:.40}")
    if obj["rettype"] is not None and not isinstance(obj["rettype"], str):
        raise BadResolution("`rettype` must be a string or null")
    if not isinstance(obj["ret_typed"], bool):
        raise BadResolution("`ret_typed` must be true or false")
    if not _strs(obj["notes"]) or not _strs(obj["comments"]):
        raise BadResolution("`notes` and `comments` must be lists of strings")
    for enum in obj["enums"] if isinstance(obj["enums"], list) else [None]:
        if not (
            isinstance(enum, list)
            and len(enum) == 2
            and isinstance(enum[0], str)
            and isinstance(enum[1], list)
            and all(
                isinstance(p, list) and len(p) == 2 and _int(p[0]) and isinstance(p[1], str)
                for p in enum[1]
            )
        ):
            raise BadResolution("an enum must be [COLUMN, [[VALUE, NAME], ...]]")
    if not isinstance(obj.get("fields", []), list):  # none before member paths were read
        raise BadResolution("`fields` must be a list")
    for f in obj.get("fields", []):
        _check_field(f)


def check(value: Any) -> list[dict[str, Any]]:
    """`value` if it is what to_json writes, else BadResolution."""
    if not isinstance(value, list):
        raise BadResolution("must be a list of probes")
    for obj in value:
        _check_one(obj)
    return value


def apply(spec: Spec, recorded: list[dict[str, Any]], where: str) -> Spec:
    """`spec` resolved as recorded; `recorded` empty (a recording made before BTF): as
    written. ReplayError when the recording's probes are not the spec's."""
    if not recorded:
        return spec
    labels = [p.label for p in spec.probes]
    if [r["label"] for r in recorded] != labels:
        raise ReplayError(
            f"the probes recorded in {where} ({', '.join(r['label'] for r in recorded)}) are "
            f"not this cell's ({', '.join(labels)}): re-record it"
        )
    probes = []
    for p, r in zip(spec.probes, recorded, strict=True):
        probes.append(
            dataclasses.replace(
                p,
                args=tuple(Arg(n, t, i) for n, t, i in r["args"]),
                rettype=r["rettype"],
                ret_typed=r["ret_typed"],
                notes=tuple(r["notes"]),
                comments=tuple(r["comments"]),
                enums=tuple((c, tuple((v, n) for v, n in names)) for c, names in r["enums"]),
                fields=tuple(_field(f) for f in r.get("fields", [])),
                btf_refs=(),
                all_params=False,
                ret_from_btf=False,
            )
        )
    return Spec(tuple(probes))
