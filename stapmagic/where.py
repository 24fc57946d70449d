"""``--where EXPR``: a filter compiled into the probe handler, so rejected events never leave
the kernel.

Grammar (its own tokenizer; positions are 0-based columns of EXPR)::

    expr    := and ('||' and)*
    and     := unary ('&&' unary)*
    unary   := '!' unary | '(' expr ')' | operand CMP operand
    CMP     := '==' | '!=' | '<' | '<=' | '>' | '>='
    operand := INT | STRING | NAME | PATH        (PATH: NAME ('->' NAME | '.' NAME)+)

INT is decimal or 0x hex, optionally negative, within a signed 64-bit value; STRING is
double-quoted printable ASCII with ``\\"`` and ``\\\\`` as the only escapes. NAME and PATH are
resolved by the caller (spec names, field paths, ``pid tid comm cpu``); nothing else passes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from stapmagic.errors import StapMagicError

__all__ = ["BUILTINS", "Operand", "WhereError", "compile_where", "tokenize"]

OperandKind = Literal["int", "str"]
# the names every probe has, as SystemTap expressions
BUILTINS: dict[str, tuple[str, OperandKind]] = {
    "pid": ("pid()", "int"),
    "tid": ("tid()", "int"),
    "cpu": ("cpu()", "int"),
    "comm": ("execname()", "str"),
}
MAX_LENGTH = 1000
MAX_DEPTH = 50
_INT64 = 1 << 63


class WhereError(StapMagicError):
    """A filter that cannot be compiled; `pos`/`length` locate the offending token."""

    def __init__(self, message: str, source: str = "", pos: int = 0, length: int = 1) -> None:
        self.message = message
        self.source = source
        self.pos = pos
        self.length = max(1, length)
        super().__init__(self.render())

    def render(self) -> str:
        if not self.source:
            return self.message
        return (
            f"{self.message} (--where, column {self.pos + 1})\n    {self.source}\n"
            f"    {' ' * self.pos}{'^' * self.length}"
        )


@dataclass(frozen=True)
class Token:
    kind: Literal["int", "str", "name", "path", "op", "lparen", "rparen", "not", "and", "or"]
    text: str
    pos: int
    value: int | str | None = None


@dataclass(frozen=True)
class Operand:
    """What a NAME or PATH means in the probe: a SystemTap expression and its kind."""

    expr: str
    kind: OperandKind


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t]+)
  | (?P<int>-?(?:0[xX][0-9a-fA-F]+|[0-9]+))(?![A-Za-z0-9_])
  | (?P<path>[A-Za-z_][A-Za-z0-9_]*(?:(?:->|\.)[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<and>&&) | (?P<or>\|\|) | (?P<not>!) | (?P<lparen>\() | (?P<rparen>\))
""",
    re.VERBOSE,
)


def _string(src: str, i: int) -> tuple[Token, int]:
    j, out = i + 1, list[str]()
    while j < len(src):
        c = src[j]
        if c == '"':
            return Token("str", src[i : j + 1], i, "".join(out)), j + 1
        if c == "\\":
            if j + 1 < len(src) and src[j + 1] in '"\\':
                out.append(src[j + 1])
                j += 2
                continue
            raise WhereError('only \\" and \\\\ are escapes in a --where string', src, j, 2)
        if not (" " <= c <= "~"):
            raise WhereError(f"character {c!r} in a string: printable ASCII only", src, j, 1)
        out.append(c)
        j += 1
    raise WhereError("unterminated string", src, i, len(src) - i)


def tokenize(src: str) -> list[Token]:
    if len(src) > MAX_LENGTH:
        raise WhereError(
            f"--where is {len(src)} characters; at most {MAX_LENGTH}", src, MAX_LENGTH, 1
        )
    toks: list[Token] = []
    i = 0
    while i < len(src):
        if src[i] == '"':
            tok, i = _string(src, i)
            toks.append(tok)
            continue
        m = _TOKEN.match(src, i)
        if m is None or m.lastgroup is None:
            raise WhereError(f"unexpected {src[i]!r}", src, i, 1)
        kind = m.lastgroup
        text = m.group()
        if kind == "int":
            digits = text.lstrip("-")
            if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xX":
                raise WhereError(f"{text}: a leading 0 (octal?) is not accepted", src, i, len(text))
            value = int(digits, 16 if digits[:2] in ("0x", "0X") else 10)
            value = -value if text.startswith("-") else value
            if not -_INT64 <= value < _INT64:
                raise WhereError(
                    f"{text} does not fit in a signed 64-bit integer", src, i, len(text)
                )
            toks.append(Token("int", text, i, value))
        elif kind != "ws":
            toks.append(Token(kind, text, i))  # type: ignore[arg-type]
        i = m.end()
    return toks


Resolver = Callable[[str, int], Operand]


class _Parser:
    def __init__(self, src: str, toks: list[Token], resolve: Resolver) -> None:
        self.src, self.toks, self.resolve, self.i = src, toks, resolve, 0

    def peek(self) -> Token | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def fail(self, msg: str, tok: Token | None) -> WhereError:
        if tok is None:
            return WhereError(msg + " at the end", self.src, len(self.src), 1)
        return WhereError(msg, self.src, tok.pos, len(tok.text))

    def expr(self, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise self.fail(f"nested more than {MAX_DEPTH} deep", self.peek())
        parts = [self.conj(depth)]
        while (t := self.peek()) is not None and t.kind == "or":
            self.i += 1
            parts.append(self.conj(depth))
        return parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"

    def conj(self, depth: int) -> str:
        parts = [self.unary(depth)]
        while (t := self.peek()) is not None and t.kind == "and":
            self.i += 1
            parts.append(self.unary(depth))
        return parts[0] if len(parts) == 1 else "(" + " && ".join(parts) + ")"

    def unary(self, depth: int) -> str:
        t = self.peek()
        if t is None:
            raise self.fail("expected a comparison", t)
        if t.kind == "not":
            self.i += 1
            if depth > MAX_DEPTH:
                raise self.fail(f"nested more than {MAX_DEPTH} deep", t)
            return "!" + self.unary(depth + 1)
        if t.kind == "lparen":
            self.i += 1
            inner = self.expr(depth + 1)
            close = self.peek()
            if close is None or close.kind != "rparen":
                raise self.fail("expected `)`", close)
            self.i += 1
            return "(" + inner + ")"
        return self.comparison()

    def operand(self) -> tuple[str, OperandKind, Token]:
        t = self.peek()
        if t is None or t.kind not in ("int", "str", "name", "path"):
            raise self.fail('expected a number, a "string" or a name', t)
        self.i += 1
        if t.kind == "int":
            assert isinstance(t.value, int)
            return (str(t.value) if t.value >= 0 else f"({t.value})"), "int", t
        if t.kind == "str":
            assert isinstance(t.value, str)
            return '"' + t.value.replace("\\", "\\\\").replace('"', '\\"') + '"', "str", t
        op = self.resolve(t.text, t.pos)
        return op.expr, op.kind, t

    def comparison(self) -> str:
        left, lk, lt = self.operand()
        op = self.peek()
        if op is None or op.kind != "op":
            raise self.fail("expected a comparison (== != < <= > >=)", op)
        self.i += 1
        right, rk, rt = self.operand()
        if lk != rk:
            raise WhereError(
                f"{lt.text} is {'a string' if lk == 'str' else 'a number'} and "
                f"{rt.text} is {'a string' if rk == 'str' else 'a number'}: "
                "they cannot be compared",
                self.src,
                lt.pos,
                rt.pos + len(rt.text) - lt.pos,
            )
        return f"{left} {op.text} {right}"


def compile_where(src: str, resolve: Resolver) -> str:
    """The filter as a SystemTap boolean expression. `resolve(name_or_path, pos)` gives an
    Operand for each NAME/PATH (raise WhereError for an unknown one); BUILTINS are
    resolved before it is asked."""
    toks = tokenize(src)
    if not toks:
        raise WhereError("--where needs an expression, e.g. 'comm == \"curl\"'", src, 0, 1)

    def lookup(text: str, pos: int) -> Operand:
        if text in BUILTINS:
            expr, kind = BUILTINS[text]
            return Operand(expr, kind)
        try:
            return resolve(text, pos)
        except WhereError as exc:
            if exc.source:
                raise
            raise WhereError(exc.message, src, exc.pos, exc.length) from None

    p = _Parser(src, toks, lookup)
    out = p.expr(0)
    if p.peek() is not None:
        raise p.fail("expected `&&`, `||` or the end", p.peek())
    return out
