"""Property tests: hostile member paths in a spec and in --where (10,000 generated, against
the lab kernel's BTF) either become a script in which every field read is one of the forms
fieldread/btfspec write, from validated names only, or are refused with a position inside
their text. Nothing else may happen."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from test_btf import vmlinux

from stapmagic import kbtf, pipeline
from stapmagic.errors import StapMagicError
from stapmagic.where import WhereError

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
PATH = rf"{IDENT}(?:(?:->|\.){IDENT})+"
# every line a member reader may have (btfspec.field_function)
READER_LINE = re.compile(
    r"\tp = kernel_pointer\(p \+ \d+\)"
    r"|\tv = kernel_(?:char|short|int|long)\(p \+ \d+\)"
    r"|\tv = (?:ntohs|ntohl|ntohll)\(v\)"
    r"|\tv = v & 0x[0-9a-f]+"
    r"|\tv = \(v >> \d+\) & 0x[0-9a-f]+"
    r"|\tv = \(v << \d+\) >> \d+"
    r"|\treturn v"
    r"|\treturn __sm_cstr\(kernel_pointer\(p \+ \d+\), \d+\)"
    r"|\treturn text_str\(kernel_string_n\(p \+ \d+, \d+\)\)"
)
READ_LINE = re.compile(
    r'\tf(\d+) = "\?"'
    r'|\ttry \{ v(\d+) = __sm_field\2\(pointer_arg\([1-6]\)\); f\2 = sprintf\("%[dux]", v\2\) \}'
    r" catch \{ __sm_faults\d+ <<< 1 \}"
    r"|\ttry \{ f(\d+) = __sm_field\3\(pointer_arg\([1-6]\)\) \}"
    r' catch \{ f\3 = "<fault>"; __sm_faults\d+ <<< 1 \}'
)
COMMENT = re.compile(rf"# (?:{IDENT}|\(--where\)) = {PATH}: `[ -~]*`, arg [1-6][ -~]*")
FUNCS = ("tcp_finish_connect", "vfs_open", "tcp_v4_connect", "tcp_v4_rcv")
WORDS = [
    "sk", "skb", "path", "uaddr", "addr_len", "__sk_common", "skc_dport", "skc_daddr",
    "skc_family", "skc_dportt", "dentry", "d_name", "name", "d_iname", "sk_filter", "refcnt",
    "refs", "counter", "fclone", "sk_err", "len", "hash", "dport", "x", "_", "0", "9x", "é",
    "->", ".", "=", "-", ">", ":", "int", '"', "'", "}", "{", ";", "%", "\\", "(", ")", "$",
    "\t", "#", "//", "/*", "\x00", "\n", "==", "&&", "||", "!", "80", "0x50", "-1",
]  # fmt: skip
_word = st.sampled_from(WORDS)
_glued = st.lists(_word, min_size=1, max_size=9).map("".join)
_path = st.one_of(
    _glued,
    st.tuples(st.sampled_from(["dport", "n", "x", "1", "é", ""]), _glued).map("=".join),
    st.text(max_size=30),
)


def _lookup(target: object, modules: object) -> kbtf.KernelBTF:
    return kbtf.KernelBTF(vmlinux())


def _check_script(text: str) -> None:
    in_reader = False
    for line in text.splitlines():
        if line.startswith("function __sm_field"):
            assert re.fullmatch(r"function __sm_field\d+:(?:long|string) \(p:long\) \{", line)
            in_reader = True
        elif in_reader:
            if line == "}":
                in_reader = False
            else:
                assert READER_LINE.fullmatch(line), line
        elif "__sm_field" in line or re.match(r"\tf\d+ = ", line):
            assert READ_LINE.fullmatch(line), line
        elif line.startswith("# ") and " = " in line and ": `" in line:
            assert COMMENT.fullmatch(line), line


def _outcome(first_line: str, where: str | None) -> None:
    try:
        opts = pipeline.ProbeOptions(dry_run=True, where=where)
        run = pipeline.prepare(first_line, "", opts, btf_lookup=_lookup)
    except WhereError as exc:
        assert where is not None and 0 <= exc.pos <= len(where), (exc.pos, where)
        return
    except StapMagicError as exc:  # SpecError at its word; OptionError (NUL) has no position
        pos = getattr(exc, "pos", 0)
        assert 0 <= pos <= len(first_line), (pos, first_line)
        return
    assert run.script is not None
    for schema in run.script.probes:
        for c in schema.columns:
            assert re.fullmatch(IDENT, c.name), c.name
    _check_script(run.script.text)


@settings(max_examples=6000, **SETTINGS)  # type: ignore[call-overload]
@given(st.sampled_from(FUNCS), st.lists(_path, min_size=1, max_size=3))
def test_hostile_field_paths_in_a_spec(func: str, paths: list[str]) -> None:
    line = " ".join([func, *paths])
    note(repr(line))
    _outcome(line, None)


_atom = st.one_of(_glued, st.sampled_from(["==", "!=", "<", "&&", "||", "!", "(", ")", "80"]))


@settings(max_examples=4000, **SETTINGS)  # type: ignore[call-overload]
@given(
    st.sampled_from(FUNCS),
    st.lists(_atom, min_size=1, max_size=7).map(" ".join),
    st.sampled_from(
        ["", " dport=sk->__sk_common.skc_dport", " sk:ptr", " name=path->dentry->d_iname"]
    ),
)
def test_hostile_member_paths_in_where(func: str, where: str, more: str) -> None:
    note(repr((func + more, where)))
    _outcome(func + more, where)


def test_the_generators_reach_scripts_with_fields() -> None:
    """The properties above are not vacuous: valid paths pass the same checks and have reads."""
    run = pipeline.prepare(
        "tcp_finish_connect dport=sk->__sk_common.skc_dport skb->len",
        "",
        pipeline.ProbeOptions(dry_run=True, where="dport == 80 && sk->sk_err != 0"),
        btf_lookup=_lookup,
    )
    assert run.script is not None and run.script.text.count("function __sm_field") == 3
    _check_script(run.script.text)
