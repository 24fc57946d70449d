"""--where: tokenizer, parser, type checks, and hostile input that never reaches a script."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stapmagic.where import Operand, WhereError, compile_where, tokenize

NAMES = {"addr_len": Operand("a3", "int"), "dport": Operand("f0", "int"),
         "name": Operand("f1", "str"), "sk->__sk_common.skc_num": Operand("f2", "int")}


def resolve(text: str, pos: int) -> Operand:
    if text in NAMES:
        return NAMES[text]
    raise WhereError(f"unknown name {text!r}", "", pos, len(text))


def test_the_issue_example():
    assert compile_where('addr_len == 16 && comm == "curl"', resolve) == (
        '(a3 == 16 && execname() == "curl")')


@pytest.mark.parametrize("src, out", [
    ("pid == 1", "pid() == 1"),
    ("!(cpu != 0) || tid >= -5", "(!(cpu() != 0) || tid() >= (-5))"),
    ("dport == 0x1f90", "f0 == 8080"),
    ('name == "a\\"b\\\\"', 'f1 == "a\\"b\\\\"'),
    ("sk->__sk_common.skc_num < 1024", "f2 < 1024"),
    ("((pid > 1))", "((pid() > 1))"),
    ("pid>1&&tid<2||cpu==0", "((pid() > 1 && tid() < 2) || cpu() == 0)"),
])
def test_compiles(src, out):
    assert compile_where(src, resolve) == out


@pytest.mark.parametrize("src, pos, message", [
    ("", 0, "needs an expression"),
    ("pid", 3, "expected a comparison (== != < <= > >=) at the end"),
    ("pid == ", 7, "at the end"),
    ("pid = 1", 4, "unexpected '='"),
    ("comm == 1", 0, "cannot be compared"),
    ("bogus == 1", 0, "unknown name 'bogus'"),
    ("pid == 1 pid", 9, "expected `&&`, `||` or the end"),
    ("(pid == 1", 9, "expected `)` at the end"),
    ('comm == "x', 8, "unterminated string"),
    ('comm == "\\n"', 9, "escapes"),
    ("pid == 99999999999999999999", 7, "64-bit"),
    ("pid == 017", 7, "leading 0"),
    ("pid == 1; system(1)", 8, "unexpected ';'"),
    ("pid == $1", 7, "unexpected '$'"),
    ('comm == "é"', 9, "printable ASCII"),
])
def test_refused_with_position(src, pos, message):
    with pytest.raises(WhereError) as exc:
        compile_where(src, resolve)
    assert message in exc.value.message
    assert exc.value.pos == pos
    assert "^" in str(exc.value) or not src


def test_tokens_carry_positions():
    assert [(t.kind, t.pos) for t in tokenize('a->b.c == "x" ')] == [
        ("path", 0), ("op", 7), ("str", 10)]


_STAP_STRING = re.compile(r'"(?:[^"\\]|\\["\\])*"')
_ALLOWED_WORDS = {"pid", "tid", "cpu", "execname", "a3", "f0", "f1", "f2"}


def _safe(expr: str) -> bool:
    """Outside string literals, only the operators, numbers and names the filter may use."""
    rest = _STAP_STRING.sub('""', expr)
    if re.search(r'[^\sA-Za-z0-9_()!&|=<>\-"]', rest):
        return False
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rest)) <= _ALLOWED_WORDS


_atoms = st.sampled_from(["pid", "tid", "cpu", "comm", "addr_len", "dport", "name",
                          "sk->__sk_common.skc_num", "sk->x", "0", "-1", "0x10", "16",
                          '"curl"', '"a\\"b"', "==", "!=", "<", "<=", ">", ">=", "&&", "||",
                          "!", "(", ")", ";", "}", "{", "$", "#", "'", '"', "\\", "system",
                          "%{", "%}", "\n", " ", "->", ".", "9" * 25, "é", "\x00"])


@settings(max_examples=6000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_atoms, max_size=14).map(" ".join))
def test_generated_filters_compile_safely_or_fail_cleanly(src):
    try:
        out = compile_where(src, resolve)
    except WhereError as exc:
        assert 0 <= exc.pos <= len(src)
        return
    assert _safe(out), out


@settings(max_examples=4000, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_compiles_safely_or_fails_cleanly(src):
    try:
        out = compile_where(src, resolve)
    except WhereError:
        return
    assert _safe(out), out
