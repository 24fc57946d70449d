"""Probe specs: `%%kprobe` text -> `Spec` (frozen dataclasses), or `SpecError` at the bad token.

Grammar (one probe per line; the magic line's spec is line 1, body line k is line k + 1):

    SPEC := [MODULE:]FUNCTION[.return[:RETTYPE]] [ARG ...]
          | [MODULE:]FUNCTION.call+return[:RETTYPE] [ARG ...]     (latency pairing)
          | 0xADDRESS [ARG ...]                                    (needs guru mode)
    ARG  := NAME:TYPE | _ | _:TYPE                                 (`_` skips a position)

FUNCTION and MODULE are `[A-Za-z_][A-Za-z0-9_.]*` (kernel symbols such as `foo.isra.0`).
A trailing `.return` or `.call+return` is always the probe kind, never part of the name:
a function literally named `x.return` cannot be probed (no such kernel symbol is known).
Blank lines and lines whose first non-blank character is `#` are ignored.

Nothing but the characters above is accepted, so no spec can carry SystemTap code, quotes,
embedded C or option-looking words into the generated script.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from . import btf as btf_path
from .errors import SpecError
from .wire import PRINT_REGS_COLUMNS

if TYPE_CHECKING:
    from .fieldread import FieldRead

__all__ = [
    "ARG_TYPES",
    "RET_TYPES",
    "DEFAULT_RETTYPE",
    "REGISTER_COLUMNS",
    "RESERVED_NAMES",
    "MAX_ARGS",
    "Arg",
    "BtfRef",
    "Probe",
    "Spec",
    "Token",
    "tokenize",
    "parse_spec",
    "parse_line",
    "is_valid_symbol",
    "is_valid_arg_name",
]

ARG_TYPES: tuple[str, ...] = (
    "int",
    "uint",
    "long",
    "ulong",
    "longlong",
    "ulonglong",
    "s32",
    "s64",
    "u32",
    "u64",
    "ptr",
    "str",
    "ustr",
    "s8",
    "u8",
    "s16",
    "u16",
    "cstr",
)
# A return value is one register: strings are not returned, so str/ustr are excluded.
RET_TYPES: tuple[str, ...] = (
    "int",
    "uint",
    "long",
    "ulong",
    "longlong",
    "ulonglong",
    "s32",
    "s64",
    "u32",
    "u64",
    "ptr",
)
DEFAULT_RETTYPE = "long"
# Bare `_` skips one full register-sized position.
SKIP_TYPE = "long"
# SystemTap's *_arg(n) reads stack-passed arguments beyond the 6th (x86_64), so any n works;
# 16 is a sanity bound, not a SystemTap limit.
MAX_ARGS = 16

# Columns of the print_regs() dump (wire.py owns the list): reserved as argument names.
REGISTER_COLUMNS: tuple[str, ...] = PRINT_REGS_COLUMNS
RESERVED_NAMES: frozenset[str] = frozenset(
    ("time", "probe", "pid", "tid", "comm", "cpu", "retval", "errno", "latency_ns")
    + REGISTER_COLUMNS
)

Kind = Literal["entry", "return", "pair"]

_IDENT_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT_CHARS = _IDENT_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_SPACE = frozenset(" \t")
_BTF_WORD = _IDENT_CHARS | frozenset(".=->")


@dataclass(frozen=True)
class Arg:
    """One argument position: `name` None for `_`; `index` is 1-based (`*_arg(index)`)."""

    name: str | None
    type: str
    index: int


@dataclass(frozen=True)
class BtfRef:
    """An argument named the kernel's way, resolved from the target's BTF before the script
    is generated: a parameter (`path` is its name) or a member path (`sk->a.b`); `column` is
    the column's name (NAME= or the last member). `pos` is the column of the word in
    `source`, line `lineno`, for errors found then."""

    column: str
    path: str
    pos: int
    source: str
    lineno: int
    where_only: bool = False  # a member path only --where reads (no column)

    @property
    def is_field(self) -> bool:
        return "->" in self.path or "." in self.path


@dataclass(frozen=True)
class Probe:
    """One probe line. `address` is set for `0x...` (and by script.module_statement_probe)."""

    function: str | None
    module: str | None
    address: int | None
    kind: Kind
    rettype: str | None
    args: tuple[Arg, ...]
    text: str
    label: str
    # Arguments named the kernel's way (issue 14), resolved from the target's BTF.
    btf_refs: tuple[BtfRef, ...] = ()
    notes: tuple[str, ...] = ()  # said once per cell, e.g. where BTF disagrees with NAME:TYPE
    # What BTF fills in when the target has it (a kernel without BTF: as written, the seed's
    # meaning): every register parameter (a function named with no arguments), and the
    # return type (a .return or .call+return without :RETTYPE; `rettype` is then the default).
    all_params: bool = False
    ret_from_btf: bool = False  # an entry probe too: --latency pairs it with this type
    ret_typed: bool = False  # `rettype` came from BTF (None: void), also on an entry probe
    # column -> enumerator names by value, for enum parameters read from BTF
    enums: tuple[tuple[str, tuple[tuple[int, str], ...]], ...] = ()
    lineno: int = 1  # the probe's line in the cell, for errors found after parsing
    comments: tuple[str, ...] = ()  # put in the script (--dry-run shows them)
    fields: tuple[FieldRead, ...] = ()  # member paths, resolved from BTF (fieldread.py)


@dataclass(frozen=True)
class Spec:
    """Every probe of one cell, in source order (the record's probe_index)."""

    probes: tuple[Probe, ...]

    @property
    def notes(self) -> list[str]:
        """What the cell says once, as information (each note once)."""
        return list(dict.fromkeys(n for p in self.probes for n in p.notes))


TokenKind = Literal["ident", "number", "dot", "colon", "plus", "space", "bad"]


@dataclass(frozen=True)
class Token:
    """A lexeme and its 0-based column in the line."""

    kind: TokenKind
    text: str
    pos: int


def is_valid_symbol(name: str) -> bool:
    """True when `name` matches `[A-Za-z_][A-Za-z0-9_.]*` (function/module grammar)."""
    return (
        bool(name) and name[0] in _IDENT_START and all(c in _IDENT_CHARS or c == "." for c in name)
    )


def is_valid_arg_name(name: str) -> bool:
    """True when `name` matches `[A-Za-z_][A-Za-z0-9_]*`."""
    return bool(name) and name[0] in _IDENT_START and all(c in _IDENT_CHARS for c in name)


def tokenize(line: str) -> list[Token]:
    """Split one line into tokens; characters outside the grammar become `bad` tokens."""
    tokens: list[Token] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        start = i
        if c in _SPACE:
            while i < n and line[i] in _SPACE:
                i += 1
            tokens.append(Token("space", line[start:i], start))
        elif c in _IDENT_START:
            while i < n and line[i] in _IDENT_CHARS:
                i += 1
            tokens.append(Token("ident", line[start:i], start))
        elif c in _DIGITS:
            # Greedy over letters too, so `0x1g2` is one token the parser can point into.
            while i < n and line[i] in _IDENT_CHARS:
                i += 1
            tokens.append(Token("number", line[start:i], start))
        elif c in ".:+":
            kind: TokenKind = "dot" if c == "." else "colon" if c == ":" else "plus"
            tokens.append(Token(kind, c, start))
            i += 1
        else:
            tokens.append(Token("bad", c, start))
            i += 1
    return tokens


def _display(line: str) -> str:
    """The line as shown under an error: same length, so `pos` still points at the token;
    tabs become spaces (caret alignment), anything unprintable (control, bidi, zero-width)
    U+FFFD, so the message cannot carry terminal escapes or reorder itself."""
    return "".join(" " if c == "\t" else c if c.isprintable() else "\ufffd" for c in line)


def _types_hint(types: tuple[str, ...]) -> str:
    return ", ".join(types)


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word.lower(), choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class _LineParser:
    """Recursive-descent parser over the tokens of one line."""

    def __init__(self, line: str, lineno: int, guru: bool) -> None:
        self.line = line
        self.lineno = lineno
        self.guru = guru
        self.tokens = tokenize(line)
        self.i = 0
        self.rettype_given = False

    # -- helpers -----------------------------------------------------------------------------
    def error(self, message: str, pos: int, length: int = 1) -> SpecError:
        pos = max(0, min(pos, len(self.line)))
        return SpecError(message, _display(self.line), pos, length, self.lineno)

    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def bad_char(self, tok: Token, in_target: bool) -> SpecError:
        """The error for a character outside the grammar, saying what to write instead."""
        c, pos = tok.text, tok.pos
        if c in "*?[]":
            if in_target:
                return self.error(
                    f"wildcard {c!r} in a function or module name: a wildcard kprobe either "
                    "silently fails to register or expands to hundreds of probes (tcp_* gave "
                    "386, some failing); name exactly one function per line",
                    pos,
                )
            return self.error(f"{c!r} is not allowed in an argument; arguments are NAME:TYPE", pos)
        if c in "\"'`":
            return self.error("quotes are not allowed: write names bare, e.g. tcp_v4_connect", pos)
        if c in "{}":
            return self.error(
                "braces are not allowed: a spec is not SystemTap code "
                "(use %%stap for a hand-written script)",
                pos,
            )
        if c == ";":
            return self.error("';' is not allowed: put each probe on its own line", pos)
        if c == "%":
            return self.error(
                "'%' is not allowed: a spec cannot carry embedded C or format directives", pos
            )
        if c == "$":
            return self.error(
                "'$' is not allowed: without debuginfo there are no $variables; "
                "name arguments by position as NAME:TYPE",
                pos,
            )
        if c in "()":
            return self.error(
                "parentheses are not allowed: write the bare function name, "
                "e.g. tcp_v4_connect (not tcp_v4_connect())",
                pos,
            )
        if c == "-":
            word_start = pos == 0 or self.line[pos - 1] in _SPACE
            if word_start and self.line[pos : pos + 2] == "->":
                return self.error(
                    "'->' is not the syntax: write the return type as "
                    "FUNCTION.call+return:TYPE or FUNCTION.return:TYPE",
                    pos,
                    2,
                )
            if word_start:
                return self.error(
                    "this looks like an option: options go on the %%kprobe line "
                    "before the spec, never after it or in the body",
                    pos,
                )
            return self.error("'-' is not allowed in names (kernel symbols use '_')", pos)
        if c == "#":
            return self.error("a comment must be on a line of its own (starting with '#')", pos)
        if c == "\\":
            return self.error("backslashes are not allowed in a spec", pos)
        if c in "\n\r":
            return self.error("a line break inside a spec: put each probe on its own line", pos)
        code = ord(c)
        if code < 32 or code == 127:
            return self.error(f"control character U+{code:04X} is not allowed", pos)
        if code > 127:
            return self.error(
                f"non-ASCII character {c!r} (U+{code:04X}): names are ASCII letters, digits, "
                "'_' and '.' (pasted text may hold lookalike letters or smart quotes)",
                pos,
            )
        return self.error(
            f"unexpected {c!r}: a spec is FUNCTION [NAME:TYPE ...], "
            "e.g. tcp_v4_connect sk:ptr len:uint",
            pos,
        )

    def expect_word_end(self, in_target: bool, what: str) -> None:
        tok = self.peek()
        if tok is None or tok.kind == "space":
            return
        if tok.kind == "bad":
            raise self.bad_char(tok, in_target)
        raise self.error(
            f"unexpected {tok.text!r} after {what}: a spec is FUNCTION then "
            "NAME:TYPE words separated by spaces",
            tok.pos,
            len(tok.text),
        )

    def skip_space(self) -> None:
        tok = self.peek()
        if tok is not None and tok.kind == "space":
            self.i += 1

    # -- grammar -----------------------------------------------------------------------------
    def parse(self) -> Probe:
        self.skip_space()
        module, function, address, kind, rettype = self.parse_target()
        args: list[Arg] = []
        refs: list[BtfRef] = []
        seen: dict[str, int] = {}
        index = 0
        while True:
            self.skip_space()
            tok = self.peek()
            if tok is None:
                break
            if kind == "return":
                if tok.kind == "bad":
                    raise self.bad_char(tok, False)
                raise self.error(
                    "a .return probe cannot read arguments (the argument registers are "
                    "reused by then): use FUNCTION.call+return NAME:TYPE ... to get the entry "
                    "arguments together with the return value",
                    tok.pos,
                    self.word_length(tok.pos),
                )
            ref = self.parse_btf_word(seen)
            if ref is not None:
                refs.append(ref)
                continue
            index += 1
            if index > MAX_ARGS:
                raise self.error(
                    f"too many arguments: at most {MAX_ARGS} positions",
                    tok.pos,
                    self.word_length(tok.pos),
                )
            arg = self.parse_arg(index, seen)
            args.append(arg)
        text = self.line.strip()
        named = address is None and function is not None
        if address is not None:
            label = f"0x{address:x}"
        else:
            assert function is not None
            suffix = {"entry": "", "return": ".return", "pair": ".call+return"}[kind]
            label = (f"{module}:" if module else "") + function + suffix
        return Probe(
            function=function,
            module=module,
            address=address,
            kind=kind,
            rettype=rettype,
            args=tuple(args),
            text=text,
            label=label,
            btf_refs=tuple(refs),
            all_params=named and kind != "return" and not args and not refs,
            ret_from_btf=named
            and not self.rettype_given
            and (kind != "entry" or not args and not refs),
            lineno=self.lineno,
        )

    def parse_btf_word(self, seen: dict[str, int]) -> BtfRef | None:
        """NAME (a parameter by its kernel name), NAME=PATH or PATH (a member path), or None
        for the other argument forms (NAME:TYPE, `_`)."""
        tok = self.peek()
        assert tok is not None
        start = tok.pos
        end = start + self.word_length(start)
        word = self.line[start:end]
        if (
            tok.kind != "ident"
            or ":" in word
            or word == "_"
            or any(c not in _BTF_WORD for c in word)
        ):
            return None  # NAME:TYPE, `_`, or characters parse_arg has a message for
        column, eq, path = word.partition("=")
        path_pos = start + len(column) + 1 if eq else start
        if not eq:
            path = word
        if eq and not is_valid_arg_name(column):
            raise self.error(
                f"bad column name {column!r}: names are [A-Za-z_][A-Za-z0-9_]*",
                start,
                max(1, len(column)),
            )
        try:
            root, _, steps = btf_path.parse_path(path)
        except btf_path.FieldPathError as exc:
            raise self.error(exc.message, path_pos + exc.pos, exc.length) from None
        if not eq:
            column = steps[-1].name if steps else root
        if column in RESERVED_NAMES:
            raise self.error(
                f"{column!r} is a column stapmagic fills itself; name it: NAME={path}",
                start,
                len(word),
            )
        if column in seen:
            raise self.error(
                f"duplicate column name {column!r} (first at column "
                f"{seen[column] + 1}); name it: NAME={path}",
                start,
                len(word),
            )
        seen[column] = start
        # the tokens of this word are consumed by position
        while (t := self.peek()) is not None and t.pos < end:
            self.i += 1
        return BtfRef(column, path, path_pos, _display(self.line), self.lineno)

    def word_length(self, pos: int) -> int:
        end = pos
        while end < len(self.line) and self.line[end] not in _SPACE:
            end += 1
        return max(1, end - pos)

    def name_length(self, pos: int) -> int:
        """Width of the NAME part of a NAME:TYPE word starting at `pos`."""
        word = self.line[pos : pos + self.word_length(pos)]
        colon = word.find(":")
        return colon if colon > 0 else len(word)

    def parse_target(self) -> tuple[str | None, str | None, int | None, Kind, str | None]:
        """The probe point word: (module, function, address, kind, rettype)."""
        tok = self.peek()
        assert tok is not None  # blank lines never reach the parser
        if tok.kind == "number":
            if tok.text[:2] in ("0x", "0X"):
                return self.parse_address(tok)
            raise self.error(
                "a function name cannot start with a digit (an address is written 0x..., in hex)",
                tok.pos,
                len(tok.text),
            )
        if tok.kind == "bad":
            raise self.bad_char(tok, True)
        if tok.kind != "ident":
            raise self.error(f"expected a function name, got {tok.text!r}", tok.pos)
        start = tok.pos
        name = self.scan_name()
        module: str | None = None
        if not name.endswith(".return") and self.peek_kind() == "colon":
            # MODULE:FUNCTION. After `.return` the colon starts the RETTYPE instead.
            colon = self.peek()
            assert colon is not None
            self.i += 1
            nxt = self.peek()
            if nxt is None or nxt.kind == "space":
                raise self.error("expected a function name after 'MODULE:'", colon.pos)
            if nxt.kind == "bad":
                raise self.bad_char(nxt, True)
            if nxt.kind == "number" and nxt.text[:2] in ("0x", "0X"):
                raise self.error(
                    "a module takes a function name, not an address (an address "
                    "is absolute: write 0x... alone)",
                    nxt.pos,
                    len(nxt.text),
                )
            if nxt.kind != "ident":
                raise self.error("expected a function name after 'MODULE:'", nxt.pos, len(nxt.text))
            if nxt.text in ARG_TYPES and self.word_length(nxt.pos) == len(nxt.text):
                # `f:int` is almost surely a forgotten `.return`; no kernel function is `int`.
                raise self.error(
                    f"a return type needs a return probe: {name}.return:{nxt.text} "
                    f"(or {name}.call+return:{nxt.text}); MODULE:FUNCTION names a module "
                    "function",
                    nxt.pos,
                    len(nxt.text),
                )
            module = name
            name = self.scan_name()
        kind: Kind = "entry"
        function = name
        if name.endswith(".return"):
            kind, function = "return", name[: -len(".return")]
        elif name.endswith(".call") and self.peek_kind() == "plus":
            plus = self.peek()
            assert plus is not None
            self.i += 1
            ret = self.peek()
            if ret is None or ret.kind != "ident" or ret.text != "return":
                raise self.error("expected '.call+return'", plus.pos)
            self.i += 1
            kind, function = "pair", name[: -len(".call")]
        if not function:
            raise self.error("missing function name before the suffix", start)
        rettype: str | None = DEFAULT_RETTYPE if kind != "entry" else None
        tok = self.peek()
        if tok is not None and tok.kind == "colon":
            if kind == "entry":
                raise self.error(
                    "a return type needs a return probe: FUNCTION.return:TYPE or "
                    "FUNCTION.call+return:TYPE",
                    tok.pos,
                )
            self.i += 1
            rettype = self.parse_type(RET_TYPES, tok.pos, "return type")
            self.rettype_given = True
        elif tok is not None and tok.kind == "plus":
            raise self.error("'+' only appears in the '.call+return' suffix", tok.pos)
        self.expect_word_end(True, "the probe point")
        for part, pos in ((module, start), (function, start)):
            if part is not None and not is_valid_symbol(part):  # defence in depth
                raise self.error(f"bad name {part!r}", pos)
        return module, function, None, kind, rettype

    def peek_kind(self, offset: int = 0) -> str | None:
        tok = self.peek(offset)
        return tok.kind if tok is not None else None

    def scan_name(self) -> str:
        """`[A-Za-z_][A-Za-z0-9_.]*` as a run of ident/number/dot tokens."""
        parts: list[str] = []
        while True:
            tok = self.peek()
            if tok is None or tok.kind not in ("ident", "number", "dot"):
                break
            parts.append(tok.text)
            self.i += 1
        tok = self.peek()
        if tok is not None and tok.kind == "bad":
            raise self.bad_char(tok, True)
        return "".join(parts)

    def parse_address(self, tok: Token) -> tuple[None, None, int, Kind, None]:
        digits = tok.text[2:]
        if not digits:
            raise self.error(
                "empty address: write 0x followed by hex digits", tok.pos, len(tok.text)
            )
        for k, c in enumerate(digits):
            if c not in _HEX:
                raise self.error(f"{c!r} is not a hex digit in the address", tok.pos + 2 + k)
        value = int(digits, 16)
        if value >= 1 << 64:
            raise self.error("address does not fit in 64 bits", tok.pos, len(tok.text))
        if value == 0:
            raise self.error("address 0 cannot be probed", tok.pos, len(tok.text))
        self.i += 1
        nxt = self.peek()
        if nxt is not None and nxt.kind == "dot":
            raise self.error(
                "an address probe has no .return or .call+return (SystemTap only "
                "has kprobe.statement(ADDR).absolute at entry)",
                nxt.pos,
                self.word_length(nxt.pos),
            )
        if nxt is not None and nxt.kind == "colon":
            raise self.error("an address takes no module or return type", nxt.pos)
        self.expect_word_end(True, "the address")
        if not self.guru:
            raise self.error(
                "statement probes need --guru (stap -g): add --guru to the "
                "%%kprobe line, or probe the function by name",
                tok.pos,
                len(tok.text),
            )
        return None, None, value, "entry", None

    def parse_type(self, allowed: tuple[str, ...], colon_pos: int, what: str) -> str:
        tok = self.peek()
        if tok is None or tok.kind == "space":
            raise self.error(f"missing {what} after ':'; valid: {_types_hint(allowed)}", colon_pos)
        if tok.kind == "bad":
            raise self.bad_char(tok, False)
        if tok.kind != "ident" or tok.text not in allowed:
            # Report the whole type word (e.g. `int.x`), not just its first token.
            length = self.word_length(tok.pos)
            word = self.line[tok.pos : tok.pos + length]
            if what == "return type" and tok.text in ("str", "ustr"):
                raise self.error(
                    f"{tok.text} is not a return type: a return value is a number in a "
                    f"register; valid: {_types_hint(allowed)}",
                    tok.pos,
                    length,
                )
            raise self.error(
                f"unknown {what} {word!r}{_suggest(word, allowed)}; valid: {_types_hint(allowed)}",
                tok.pos,
                length,
            )
        self.i += 1
        return tok.text

    def parse_arg(self, index: int, seen: dict[str, int]) -> Arg:
        tok = self.peek()
        assert tok is not None and tok.kind != "space"
        start = tok.pos
        if tok.kind == "bad":
            raise self.bad_char(tok, False)
        if tok.kind != "ident":
            raise self.error(
                "bad argument name: names are [A-Za-z_][A-Za-z0-9_]* (or _ to skip a position)",
                start,
                self.name_length(start),
            )
        self.i += 1
        name = tok.text
        nxt = self.peek()
        if nxt is not None and nxt.kind in ("dot", "plus", "number"):
            raise self.error(
                "bad argument name: names are [A-Za-z_][A-Za-z0-9_]* (no '.')",
                start,
                self.name_length(start),
            )
        if nxt is not None and nxt.kind == "bad":
            raise self.bad_char(nxt, False)
        if name == "_":
            if nxt is not None and nxt.kind == "colon":
                self.i += 1
                typ = self.parse_type(ARG_TYPES, nxt.pos, "type")
                self.expect_word_end(False, "the argument")
                return Arg(None, typ, index)
            return Arg(None, SKIP_TYPE, index)
        if nxt is None or nxt.kind != "colon":
            raise self.error(
                f"{name!r} has no type: arguments are NAME:TYPE (types: "
                f"{_types_hint(ARG_TYPES)}); to probe another function, give it its own line",
                start,
                len(name),
            )
        if name in RESERVED_NAMES:
            raise self.error(
                f"{name!r} is a column stapmagic fills itself; pick another name, e.g. {name}_arg",
                start,
                len(name),
            )
        if name in seen:
            raise self.error(
                f"duplicate argument name {name!r} (first at column "
                f"{seen[name] + 1}); give each argument its own name",
                start,
                len(name),
            )
        self.i += 1
        typ = self.parse_type(ARG_TYPES, nxt.pos, "type")
        self.expect_word_end(False, "the argument type")
        seen[name] = start
        return Arg(name, typ, index)


def parse_line(line: str, *, lineno: int = 1, guru: bool = False) -> Probe | None:
    """Parse one spec line; None for a blank or `#` comment line."""
    if "\n" in line:
        # A newline would split one record into two lines downstream: never accept it.
        first = line.index("\n")
        raise SpecError(
            "a line break inside a spec: put each probe on its own line",
            _display(line[:first]),
            first,
            1,
            lineno,
        )
    if line.endswith("\r"):  # CRLF cell text
        line = line[:-1]
    stripped = line.strip(" \t")
    if not stripped or stripped.startswith("#"):
        return None
    return _LineParser(line, lineno, guru).parse()


def parse_spec(text: str, *, guru: bool = False, first_line: str = "") -> Spec:
    """Parse the magic-line spec (`first_line`, line 1) and the cell body (`text`, body line k
    is line k + 1) into a `Spec`; raise `SpecError` pointing at the first bad token."""
    probes: list[Probe] = []
    first = parse_line(first_line, lineno=1, guru=guru)
    if first is not None:
        probes.append(first)
    for k, line in enumerate(text.split("\n"), start=2):
        probe = parse_line(line, lineno=k, guru=guru)
        if probe is not None:
            probes.append(probe)
    if not probes:
        raise SpecError(
            "no probe given: name a kernel function, e.g. "
            "%%kprobe tcp_v4_connect sk:ptr uaddr:ptr len:uint"
        )
    return Spec(tuple(probes))
