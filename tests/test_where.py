"""--where: tokenizer, parser, type checks, and hostile input that never reaches a script."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stapmagic.where import Operand, WhereError, compile_where, tokenize

NAMES = {
    "addr_len": Operand("a3", "int"),
    "dport": Operand("f0", "int"),
    "name": Operand("f1", "str"),
    "sk->__sk_common.skc_num": Operand("f2", "int"),
}


def resolve(text: str, pos: int) -> Operand:
    if text in NAMES:
        return NAMES[text]
    raise WhereError(f"unknown name {text!r}", "", pos, len(text))


def test_the_issue_example():
    assert compile_where('addr_len == 16 && comm == "curl"', resolve) == (
        '(a3 == 16 && execname() == "curl")'
    )


@pytest.mark.parametrize(
    "src, out",
    [
        ("pid == 1", "pid() == 1"),
        ("!(cpu != 0) || tid >= -5", "(!(cpu() != 0) || tid() >= (-5))"),
        ("dport == 0x1f90", "f0 == 8080"),
        ('name == "a\\"b\\\\"', 'f1 == "a\\"b\\\\"'),
        ("sk->__sk_common.skc_num < 1024", "f2 < 1024"),
        ("((pid > 1))", "((pid() > 1))"),
        ("pid>1&&tid<2||cpu==0", "((pid() > 1 && tid() < 2) || cpu() == 0)"),
    ],
)
def test_compiles(src, out):
    assert compile_where(src, resolve) == out


@pytest.mark.parametrize(
    "src, pos, message",
    [
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
    ],
)
def test_refused_with_position(src, pos, message):
    with pytest.raises(WhereError) as exc:
        compile_where(src, resolve)
    assert message in exc.value.message
    assert exc.value.pos == pos
    assert "^" in str(exc.value) or not src


def test_tokens_carry_positions():
    assert [(t.kind, t.pos) for t in tokenize('a->b.c == "x" ')] == [
        ("path", 0),
        ("op", 7),
        ("str", 10),
    ]


_STAP_STRING = re.compile(r'"(?:[^"\\]|\\["\\])*"')
_ALLOWED_WORDS = {"pid", "tid", "cpu", "execname", "a3", "f0", "f1", "f2"}


def _safe(expr: str) -> bool:
    """Outside string literals, only the operators, numbers and names the filter may use."""
    rest = _STAP_STRING.sub('""', expr)
    if re.search(r'[^\sA-Za-z0-9_()!&|=<>\-"]', rest):
        return False
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rest)) <= _ALLOWED_WORDS


_atoms = st.sampled_from(
    [
        "pid",
        "tid",
        "cpu",
        "comm",
        "addr_len",
        "dport",
        "name",
        "sk->__sk_common.skc_num",
        "sk->x",
        "0",
        "-1",
        "0x10",
        "16",
        '"curl"',
        '"a\\"b"',
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "&&",
        "||",
        "!",
        "(",
        ")",
        ";",
        "}",
        "{",
        "$",
        "#",
        "'",
        '"',
        "\\",
        "system",
        "%{",
        "%}",
        "\n",
        " ",
        "->",
        ".",
        "9" * 25,
        "é",
        "\x00",
    ]
)


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


# --- in the generated script -------------------------------------------------------------


def _script(spec_text: str, where: str, **kw) -> str:
    from stapmagic.script import ScriptOptions, generate
    from stapmagic.spec import parse_spec

    return generate(parse_spec(spec_text), ScriptOptions(where=where, **kw)).text


def test_filter_follows_the_reads_and_precedes_the_count():
    text = _script(
        "tcp_v4_connect sk:ptr uaddr:ptr addr_len:int", 'addr_len == 16 && comm == "curl"', count=5
    )
    body = text[text.index('probe kprobe.function("tcp_v4_connect")') :]
    lines = [ln.strip() for ln in body.splitlines()]
    i_read = lines.index("a3 = int_arg(3)")
    i_where = lines.index('if (!((a3 == 16 && execname() == "curl"))) next  # --where')
    i_count = lines.index("k = ++__sm_n")
    assert i_read < i_where < i_count


def test_filter_on_a_return_value():
    text = _script("tcp_v4_connect.return:int", "retval < 0")
    assert "rv = (r << 32) >> 32" in text
    assert text.index("rv = (r << 32) >> 32") < text.index("if (!(rv < 0)) next  # --where")


def test_unknown_name_is_refused_with_the_probe_names():
    with pytest.raises(WhereError) as exc:
        _script("tcp_v4_connect len:int", "addr_len == 16")
    assert "addr_len is not a name tcp_v4_connect reads (its names: len, pid, tid, cpu, comm)" in (
        exc.value.message
    )
    assert exc.value.pos == 0 and exc.value.length == len("addr_len")


def test_where_needs_record_mode():
    from stapmagic.errors import OptionError

    with pytest.raises(OptionError, match="does not combine with --hist"):
        _script("tcp_v4_connect len:int", "len == 1", hist="len")


def test_no_where_no_change():
    assert "--where" not in _script("tcp_v4_connect len:int", None)
