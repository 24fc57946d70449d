"""The wire format between a generated script and the parser (DESIGN.md "Record format").

The one owner of what a line on stap's output means: the tags, the fixed columns of a
record, the field separator, text_str() escaping, the record grammar (`format_record`
writes a line exactly as a script prints it, `parse_record` is the reference reader), the
`@@smc`/`@@smk` tag lines and the x86_64 print_regs() dump. script.py spells its printf
formats with these tags, records/hist read them, and _recscan.c's #defines are checked
against them by tests/test_wire.py. No numpy/pandas here: a pure module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # schema.py imports the register list from here
    from .schema import ColumnKind, ProbeSchema

__all__ = [
    "RECORD_TAG",
    "HIST_TAG",
    "HIST_END_TAG",
    "SUMMARY_TAG",
    "KEYS_TAG",
    "COUNTER_TAG",
    "FIRED_COUNTER",
    "WARN_PREFIX",
    "parse_fired",
    "END_TAG",
    "FIELD_SEP",
    "NA_FIELD",
    "RECORD_FIELDS",
    "PRINT_REGS_COLUMNS",
    "U_REGISTERS",
    "SCAN_KIND_CODES",
    "escape_text",
    "unescape_text",
    "format_record",
    "parse_record",
    "ParsedRecord",
    "FieldValue",
    "TagCount",
    "parse_tag_count",
    "parse_print_regs",
    "DUMP_LINES",
]

# ---- tags: the first field of every line a generated script prints ---------------------
RECORD_TAG = "@@sm1"  # one event: @@sm1 <TAB> probe_index <TAB> time ... <TAB> @@
HIST_TAG = "@@smh"  # @@smh <TAB> name <TAB> kind, then stap's histogram text, then
HIST_END_TAG = "@@smh-end"  # this line
SUMMARY_TAG = (
    "@@sms"  # @@sms <TAB> name <TAB> count <TAB> min <TAB> max <TAB> avg <TAB> sum <TAB> @@
)
KEYS_TAG = "@@smk"  # @@smk <TAB> name <TAB> key <TAB> count <TAB> @@
COUNTER_TAG = "@@smc"  # @@smc <TAB> name <TAB> probe_index <TAB> value <TAB> @@
# The @@smc counter `probe end` sends per probe: the events that passed its filters
# (counted in the kernel with a per-CPU statistic), what the ledger checks rows against.
# It goes through warn(), not printf: warnings take the control channel
# (runtime/linux/io.c _stp_vlog -> _stp_ctl_log_werr), which neither a full output buffer
# nor stapio's end-of-run stop (staprun/relay.c close_relayfs) can drop; stapio prints it
# on stderr as WARN_PREFIX + the line (print_stderr, staprun.h warn()).
FIRED_COUNTER = "fired"
WARN_PREFIX = "WARNING: "
END_TAG = "@@"  # the last field of a record and of the one-line tags
TAG_PREFIX = "@@sm"  # what every tag above starts with (diagnose.py cuts there)
FIELD_SEP = "\t"
# A numeric field with no value (a member read that faulted), in a column the schema marks
# nullable: no %d/%u/%x prints it, so elsewhere it is damage.
NA_FIELD = "?"
# A record's fields before the probe's own (DESIGN.md): idx is the probe index.
RECORD_FIELDS: tuple[str, ...] = ("idx", "time", "pid", "tid", "cpu", "comm")

# Several targets in one cell: every record ends with one more field, the remote index, read
# as an int column and shown as the categorical `host` (fleet.label_hosts). One target: none.
HOST_FIELD = "host"
HOST_EXPR = "remote_id()"

# The same as bytes, for the readers.
RECORD_TAG_B = RECORD_TAG.encode()
RECORD_PREFIX_B = (RECORD_TAG + FIELD_SEP).encode()
RECORD_SUFFIX_B = (FIELD_SEP + END_TAG).encode()
HIST_TAG_B = (HIST_TAG + FIELD_SEP).encode()
HIST_END_B = HIST_END_TAG.encode()
SUMMARY_TAG_B = (SUMMARY_TAG + FIELD_SEP).encode()
COUNTER_TAG_B = (COUNTER_TAG + FIELD_SEP).encode()
KEYS_TAG_B = (KEYS_TAG + FIELD_SEP).encode()
SEP_B = FIELD_SEP.encode()
NA_FIELD_B = NA_FIELD.encode()
END_B = END_TAG.encode()

# The field kinds as _recscan.scan() takes them (one byte each).
SCAN_KIND_CODES: dict[ColumnKind, bytes] = {
    "int": b"i",
    "uint": b"u",
    "hex": b"x",
    "str": b"s",
    "errno": b"e",
}

# ---- registers ---------------------------------------------------------------------------
# The columns a print_regs() dump is split into (x86_64 runtime/linux/regs.c), all uint64.
# The FS/GS selector values printed in parentheses are not kept: in kernel mode on x86_64
# they are always 0000 (the bases are in fs/gs).
PRINT_REGS_COLUMNS: tuple[str, ...] = (
    "rip",
    "rsp",
    "eflags",
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rbp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "fs",
    "gs",
    "knlgs",
    "cs",
    "ds",
    "es",
    "cr0",
    "cr2",
    "cr3",
    "cr4",
)
# The --regs names: u_register() (tapset/x86_64/registers.stp) knows these, and they are
# the general registers of the dump above.
U_REGISTERS: tuple[str, ...] = PRINT_REGS_COLUMNS[: PRINT_REGS_COLUMNS.index("r15") + 1]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class TagCount:
    """A `@@smc <TAB> name <TAB> probe_index <TAB> value <TAB> @@` counter (key: the probe
    index) or a `@@smk <TAB> name <TAB> key <TAB> count <TAB> @@` count per key (name: the
    probe label; key: as printed, text_str-escaped for strings). tag: "smc" or "smk"."""

    tag: str
    name: str
    key: str
    value: int


_SMC = COUNTER_TAG.encode()
_SMK = KEYS_TAG.encode()
_TAG_NAME_RE = re.compile(rb"[!-~]+\Z")
_COUNT_RE = re.compile(rb"[0-9]+\Z")


def parse_tag_count(line: bytes, key_kind: ColumnKind | None = None) -> TagCount:
    """Parse one `@@smc`/`@@smk` line (a trailing ``\\r`` is ignored); ValueError for
    anything the script cannot have printed: a count that is not a non-negative int64, a
    probe index that is not a number, a `@@smk` key that is not a field of `key_kind`
    (`%d` int64, `%u` uint64, `%x`, or text_str() text; None: text)."""
    parts = line.rstrip(b"\r\n").split(b"\t")
    if (
        len(parts) != 5
        or parts[0] not in (_SMC, _SMK)
        or parts[4] != END_B
        or _COUNT_RE.match(parts[3]) is None
        or _TAG_NAME_RE.match(parts[1]) is None
    ):
        raise ValueError(f"not an @@smc/@@smk line: {line!r}")
    value = int(parts[3])
    if value > _INT64_MAX:
        raise ValueError(f"count out of range: {line!r}")
    key = parts[2]
    if parts[0] == _SMC:
        if _COUNT_RE.match(key) is None:
            raise ValueError(f"@@smc probe index is not a number: {line!r}")
    elif key_kind is None or key_kind == "str":
        unescape_text(key)
    else:
        _parse_field(key, key_kind)
    return TagCount(parts[0][2:].decode(), parts[1].decode(), key.decode("ascii"), value)


def parse_fired(line: str) -> tuple[int, int] | None:
    """(probe index, count) of a `WARNING: @@smc <TAB> fired <TAB> idx <TAB> n <TAB> @@`
    message line (a trailing ``\r`` ignored); None for any other line."""
    head = WARN_PREFIX + COUNTER_TAG + FIELD_SEP + FIRED_COUNTER + FIELD_SEP
    if not line.startswith(head):
        return None
    try:
        t = parse_tag_count(line[len(WARN_PREFIX) :].encode())
    except (ValueError, UnicodeEncodeError):
        return None
    return (int(t.key), t.value) if t.key.isdigit() else None


# --------------------------------------------------------------------------------------
# text_str() escaping (SystemTap runtime/stp_string.c `_stp_text_str`, unquoted)
# --------------------------------------------------------------------------------------

# What text_str() prints verbatim: printable ASCII except `"` and `\`.
_PLAIN = bytes(c for c in range(0x20, 0x7F) if c not in (0x22, 0x5C))
# What may appear raw inside an escaped field: the above plus `\` and `"` (a `"` only as
# part of the escape `\"`).
_FIELD_CHARS = _PLAIN + b'\\"'
_SHORT_ESCAPES = {
    7: b"\\a",
    8: b"\\b",
    12: b"\\f",
    10: b"\\n",
    13: b"\\r",
    9: b"\\t",
    11: b"\\v",
    0x22: b'\\"',
    0x5C: b"\\\\",
}
_UNESCAPE_SIMPLE = {
    ord("a"): 7,
    ord("b"): 8,
    ord("f"): 12,
    ord("n"): 10,
    ord("r"): 13,
    ord("t"): 9,
    ord("v"): 11,
    ord("\\"): 0x5C,
    ord('"'): 0x22,
}
# The escapes _stp_text_str writes: octal always as three digits (the first 0-3), \u and \U
# with upper-case hex. Whether a matching escape is the one text_str() would have chosen
# for those bytes (\101 is never printed for "A") is checked by escaping the result again.
_ESCAPE_RE = re.compile(rb"\\(?:([0-3][0-7]{2})|u([0-9A-F]{4})|U([0-9A-F]{8})|([abfnrtv\\\"]))")


def _decode_utf8_at(b: bytes, i: int) -> tuple[int, int]:
    """SystemTap's `_stp_decode_utf8`: (length, code point) of the character at b[i]."""
    lead = b[i]
    rest = len(b) - i - 1
    if (lead & 0xE0) == 0xC0 and rest >= 1:
        n, c = 2, lead & 0x1F
    elif (lead & 0xF0) == 0xE0 and rest >= 2:
        n, c = 3, lead & 0x0F
    elif (lead & 0xF8) == 0xF0 and rest >= 3:
        n, c = 4, lead & 0x07
    else:
        return 1, lead
    for k in range(1, n):
        b2 = b[i + k]
        if (b2 & 0xC0) != 0x80:
            return 1, lead
        c = (c << 6) | (b2 & 0x3F)
    if 0xD800 <= c <= 0xDFFF or c > 0x10FFFF:
        return 1, lead
    if c < 0x80 or (n == 3 and c < 0x800) or (n == 4 and c < 0x10000):
        return 1, lead
    return n, c


def escape_text(value: str | bytes) -> bytes:
    """Escape like SystemTap's text_str(): what a generated script prints for a string.

    Printable ASCII except `"` and `\\` is kept; `\\a \\b \\f \\n \\r \\t \\v \\" \\\\` are
    short escapes; valid multi-byte UTF-8 becomes `\\uXXXX`/`\\UXXXXXXXX` (upper-case hex);
    every other byte is `\\ooo` octal. Like text_str() the string ends at the first NUL.
    A `str` is encoded as UTF-8 (lone surrogates from surrogateescape become the raw bytes).
    MAXSTRINGLEN truncation is not applied.
    """
    b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    nul = b.find(b"\0")
    if nul >= 0:
        b = b[:nul]
    if not b.translate(None, _PLAIN):
        return b
    out = bytearray()
    i, n = 0, len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            if 0x20 <= c < 0x7F and c not in (0x22, 0x5C):
                out.append(c)
            else:
                short = _SHORT_ESCAPES.get(c)
                out += short if short is not None else b"\\%03o" % c
            i += 1
            continue
        k, cp = _decode_utf8_at(b, i)
        if k > 1:
            out += b"\\u%04X" % cp if cp <= 0xFFFF else b"\\U%08X" % cp
        else:
            out += b"\\%03o" % c
        i += k
    return bytes(out)


@lru_cache(maxsize=4096)
def _unescape_cached(b: bytes) -> str:
    return unescape_text(b)


def unescape_text(b: bytes) -> str:
    """Undo text_str() escaping: the field's bytes -> str (bytes that are not UTF-8 are kept
    as backslashreplace escapes). Raises ValueError for anything text_str() cannot have
    printed: control or non-ASCII bytes, a raw `"`, an escape it never writes (`\\x41`,
    `\\'`, `\\0`, `\\101` for "A", `\\303\\251` for valid UTF-8, lower-case `\\u00e9`)."""
    if b.translate(None, _FIELD_CHARS):
        raise ValueError("raw byte that text_str() escapes")
    if b"\\" not in b:
        if b'"' in b:
            raise ValueError('raw "')
        return b.decode("ascii")
    out = bytearray()
    pos = 0
    while True:
        j = b.find(b"\\", pos)
        seg = b[pos:] if j < 0 else b[pos:j]
        if b'"' in seg:
            raise ValueError('raw "')
        out += seg
        if j < 0:
            break
        m = _ESCAPE_RE.match(b, j)
        if m is None:
            raise ValueError(f"bad escape at {j}")
        octal, u4, u8, simple = m.groups()
        if octal is not None:
            out.append(int(octal, 8))
        elif u4 is not None or u8 is not None:
            cp = int(u4 if u4 is not None else u8, 16)
            if cp > 0x10FFFF:
                raise ValueError("code point out of range")
            out += chr(cp).encode("utf-8", "surrogatepass")
        else:
            out.append(_UNESCAPE_SIMPLE[simple[0]])
        pos = m.end()
    raw = bytes(out)
    if escape_text(raw) != b:
        raise ValueError("an escape text_str() does not print for these bytes")
    return raw.decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------------------
# Record writer and the per-line reference parser
# --------------------------------------------------------------------------------------

FieldValue = int | str | bytes | None


def _format_field(v: FieldValue, kind: ColumnKind | None) -> bytes:
    if kind is None:
        if v is None:
            return b""
        if isinstance(v, bool):
            raise TypeError("bool is not a record field")
        if isinstance(v, int):
            return b"%d" % v
        return escape_text(v)
    if kind in ("int", "uint", "hex"):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{kind} field needs an int, got {v!r}")
        if kind == "int":
            if not _INT64_MIN <= v <= _INT64_MAX:
                raise ValueError(f"int field out of range: {v}")
            return b"%d" % v
        if not 0 <= v <= _UINT64_MAX:
            raise ValueError(f"{kind} field out of range: {v}")
        return b"%d" % v if kind == "uint" else b"%x" % v
    if kind == "errno" and v is None:
        return b""
    if not isinstance(v, (str, bytes)):
        raise TypeError(f"{kind} field needs str or bytes, got {v!r}")
    return escape_text(v)


@lru_cache(maxsize=1024)
def _escape_cached(v: str | bytes) -> bytes:
    return escape_text(v)


def _fmt_int(v: FieldValue) -> bytes:
    if type(v) is not int:
        return _format_field(v, "int")
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise ValueError(f"int field out of range: {v}")
    return b"%d" % v


def _fmt_uint(v: FieldValue) -> bytes:
    if type(v) is not int or not 0 <= v <= _UINT64_MAX:
        return _format_field(v, "uint")
    return b"%d" % v


def _fmt_hex(v: FieldValue) -> bytes:
    if type(v) is not int or not 0 <= v <= _UINT64_MAX:
        return _format_field(v, "hex")
    return b"%x" % v


def _fmt_str(v: FieldValue) -> bytes:
    return _format_field(v, "str")


def _fmt_errno(v: FieldValue) -> bytes:
    return _format_field(v, "errno")


_FORMATTERS: dict[str, Callable[[FieldValue], bytes]] = {
    "int": _fmt_int,
    "uint": _fmt_uint,
    "hex": _fmt_hex,
    "str": _fmt_str,
    "errno": _fmt_errno,
}


def _fmt_na(fmt: Callable[[FieldValue], bytes]) -> Callable[[FieldValue], bytes]:
    def f(v: FieldValue) -> bytes:
        return NA_FIELD_B if v is None else fmt(v)

    return f


_FORMATTER_CACHE: dict[int, tuple[ProbeSchema, tuple[Callable[[FieldValue], bytes], ...]]] = {}


def _formatters(schema: ProbeSchema) -> tuple[Callable[[FieldValue], bytes], ...]:
    hit = _FORMATTER_CACHE.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    fmts = tuple(
        _fmt_na(_FORMATTERS[c.kind]) if c.nullable else _FORMATTERS[c.kind] for c in schema.columns
    )
    if len(_FORMATTER_CACHE) > 256:
        _FORMATTER_CACHE.clear()
    _FORMATTER_CACHE[id(schema)] = (schema, fmts)
    return fmts


_HEAD_FMT = RECORD_PREFIX_B + SEP_B.join([b"%d"] * 5 + [b"%s"]) + SEP_B
_TAIL = RECORD_SUFFIX_B + b"\n"


def format_record(
    idx: int,
    time_ns: int,
    pid: int,
    tid: int,
    cpu: int,
    comm: str | bytes,
    fields: Sequence[FieldValue],
    *,
    schema: ProbeSchema | None = None,
) -> bytes:
    """One record line exactly as a generated script prints it (ending in ``\\n``).

    Without `schema`, an int field is printed `%d`, a str/bytes field text_str()-escaped and
    None as the empty field (errno). With `schema`, the fields are checked against its
    columns and printed per kind (`hex` as `%x`).
    """
    if schema is None:
        parts = [b"%d" % v if type(v) is int else _format_field(v, None) for v in fields]
    else:
        fmts = _formatters(schema)
        if len(fields) != len(fmts):
            raise ValueError(f"{schema.label}: {len(fmts)} fields expected, got {len(fields)}")
        parts = [f(v) for f, v in zip(fmts, fields, strict=True)]
    head = _HEAD_FMT % (idx, time_ns, pid, tid, cpu, _escape_cached(comm))
    if parts:
        return head + SEP_B.join(parts) + _TAIL
    return head + END_B + b"\n"


@dataclass(frozen=True)
class ParsedRecord:
    """A record line parsed by the reference parser `parse_record`."""

    idx: int
    time_ns: int
    pid: int
    tid: int
    cpu: int
    comm: str
    fields: tuple[int | str | None, ...]


_DEC_RE = re.compile(rb"-?[0-9]+\Z")
_UDEC_RE = re.compile(rb"[0-9]+\Z")
_HEX_RE = re.compile(rb"[0-9a-fA-F]{1,16}\Z")


def _int_field(b: bytes) -> int:
    if _DEC_RE.match(b) is None:
        raise ValueError("not a decimal")
    v = int(b)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise ValueError("int64 overflow")
    return v


def _parse_field(b: bytes, kind: ColumnKind) -> int | str | None:
    if kind == "int":
        return _int_field(b)
    if kind == "uint":
        if _UDEC_RE.match(b) is None:
            raise ValueError("not an unsigned decimal")
        v = int(b)
        if v > _UINT64_MAX:
            raise ValueError("uint64 overflow")
        return v
    if kind == "hex":
        if _HEX_RE.match(b) is None:
            raise ValueError("not hex")
        return int(b, 16)
    if kind == "errno":
        return unescape_text(b) if b else None
    return unescape_text(b)


def parse_record(line: bytes, schemas: Sequence[ProbeSchema]) -> ParsedRecord | None:
    """The reference parser: one line (without its line end; one trailing ``\\r`` is
    ignored) -> ParsedRecord, or None when it is not a whole, well-formed record."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.startswith(RECORD_PREFIX_B) or not line.endswith(RECORD_SUFFIX_B):
        return None
    if b"\0" in line or b"\r" in line or b"\n" in line:
        return None
    parts = line.split(SEP_B)
    try:
        idx_b = parts[1]
        if _UDEC_RE.match(idx_b) is None:
            return None
        idx = int(idx_b)
        if idx >= len(schemas):
            return None
        cols = schemas[idx].columns
        if len(parts) != 8 + len(cols):
            return None
        time_ns = _int_field(parts[2])
        pid = _int_field(parts[3])
        tid = _int_field(parts[4])
        cpu = _int_field(parts[5])
        comm = unescape_text(parts[6])
        vals = tuple(
            None
            if c.nullable and parts[7 + j] == NA_FIELD_B
            else _parse_field(parts[7 + j], c.kind)
            for j, c in enumerate(cols)
        )
    except (ValueError, IndexError):
        return None
    return ParsedRecord(idx, time_ns, pid, tid, cpu, comm, vals)


# --------------------------------------------------------------------------------------
# print_regs() dump (x86_64, runtime/linux/regs.c)
# --------------------------------------------------------------------------------------

_H16 = rb"([0-9a-f]{16})"
_SEL = rb"([0-9a-f]{4,8})"
_DUMP_RES: tuple[re.Pattern[bytes], ...] = tuple(
    re.compile(p + rb"\Z")
    for p in (
        rb"RIP: " + _H16,
        rb"RSP: " + _H16 + rb"  EFLAGS: ([0-9a-f]{8,16})",
        rb"RAX: " + _H16 + rb" RBX: " + _H16 + rb" RCX: " + _H16,
        rb"RDX: " + _H16 + rb" RSI: " + _H16 + rb" RDI: " + _H16,
        rb"RBP: " + _H16 + rb" R08: " + _H16 + rb" R09: " + _H16,
        rb"R10: " + _H16 + rb" R11: " + _H16 + rb" R12: " + _H16,
        rb"R13: " + _H16 + rb" R14: " + _H16 + rb" R15: " + _H16,
        rb"FS:  " + _H16 + rb"\([0-9a-f]{4,8}\) GS:" + _H16 + rb"\([0-9a-f]{4,8}\) knlGS:" + _H16,
        rb"CS:  " + _SEL + rb" DS: " + _SEL + rb" ES: " + _SEL + rb" CR0: " + _H16,
        rb"CR2: " + _H16 + rb" CR3: " + _H16 + rb" CR4: " + _H16,
    )
)
_DUMP_PREFIXES = (
    b"RIP: ",
    b"RSP: ",
    b"RAX: ",
    b"RDX: ",
    b"RBP: ",
    b"R10: ",
    b"R13: ",
    b"FS:  ",
    b"CS:  ",
    b"CR2: ",
)
DUMP_LINES = len(_DUMP_RES)
# Lines of other output (the -c command's) tolerated inside one dump before giving up on it.
MAX_FOREIGN_IN_DUMP = 16


def parse_print_regs(lines: Sequence[bytes | str]) -> dict[str, int] | None:
    """The 10 lines of one x86_64 print_regs() dump -> {register: value}, or None."""
    if len(lines) != DUMP_LINES:
        return None
    vals: list[int] = []
    for k, ln in enumerate(lines):
        b = ln.encode() if isinstance(ln, str) else ln
        m = _DUMP_RES[k].match(b.rstrip(b"\r\n"))
        if m is None:
            return None
        vals.extend(int(g, 16) for g in m.groups())
    return dict(zip(PRINT_REGS_COLUMNS, vals, strict=True))
