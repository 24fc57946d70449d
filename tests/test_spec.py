"""spec.py: the examples of the issue as whole dataclasses, and every rejection with its position."""

from __future__ import annotations

import pytest

from stapmagic.errors import SpecError
from stapmagic.spec import (
    ARG_TYPES,
    MAX_ARGS,
    RESERVED_NAMES,
    RET_TYPES,
    Arg,
    Probe,
    Spec,
    Token,
    parse_line,
    parse_spec,
    tokenize,
)


def one(line: str, guru: bool = False) -> Probe:
    spec = parse_spec("", guru=guru, first_line=line)
    assert len(spec.probes) == 1
    return spec.probes[0]


def error(line: str, guru: bool = False) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec("", guru=guru, first_line=line)
    return info.value


def caret_line(err: SpecError) -> str:
    rendered = str(err).split("\n")
    assert len(rendered) == 3
    return rendered[2]


# -- the examples ------------------------------------------------------------------


def test_entry_with_arguments():
    assert parse_spec("", first_line="tcp_v4_connect sk:ptr uaddr:ptr len:uint") == Spec(
        (
            Probe(
                function="tcp_v4_connect",
                module=None,
                address=None,
                kind="entry",
                rettype=None,
                args=(Arg("sk", "ptr", 1), Arg("uaddr", "ptr", 2), Arg("len", "uint", 3)),
                text="tcp_v4_connect sk:ptr uaddr:ptr len:uint",
                label="tcp_v4_connect",
            ),
        )
    )


def test_return_with_type():
    assert one("tcp_v4_connect.return:int") == Probe(
        function="tcp_v4_connect",
        module=None,
        address=None,
        kind="return",
        rettype="int",
        args=(),
        text="tcp_v4_connect.return:int",
        label="tcp_v4_connect.return",
    )


def test_return_default_type_is_long():
    assert one("tcp_v4_connect.return").rettype == "long"


def test_no_arguments():
    assert one("tcp_v4_connect") == Probe(
        function="tcp_v4_connect",
        module=None,
        address=None,
        kind="entry",
        rettype=None,
        args=(),
        text="tcp_v4_connect",
        label="tcp_v4_connect",
        # with BTF on the target: every parameter, and the return type for --latency
        all_params=True,
        ret_from_btf=True,
    )


def test_module_function():
    assert one("ext4:ext4_file_open inode:ptr filp:ptr") == Probe(
        function="ext4_file_open",
        module="ext4",
        address=None,
        kind="entry",
        rettype=None,
        args=(Arg("inode", "ptr", 1), Arg("filp", "ptr", 2)),
        text="ext4:ext4_file_open inode:ptr filp:ptr",
        label="ext4:ext4_file_open",
    )


def test_module_return_label():
    p = one("ext4:ext4_file_open.return:int")
    assert (p.module, p.function, p.kind, p.rettype, p.label) == (
        "ext4",
        "ext4_file_open",
        "return",
        "int",
        "ext4:ext4_file_open.return",
    )


def test_address_with_guru():
    assert one("0xffffffff8125e2a0", guru=True) == Probe(
        function=None,
        module=None,
        address=0xFFFFFFFF8125E2A0,
        kind="entry",
        rettype=None,
        args=(),
        text="0xffffffff8125e2a0",
        label="0xffffffff8125e2a0",
    )


def test_address_label_is_normalised_lowercase():
    p = one("0X00FFFFFFFF8125E2A0 a:int", guru=True)
    assert p.label == "0xffffffff8125e2a0" and p.args == (Arg("a", "int", 1),)


def test_address_without_guru_is_refused():
    err = error("0xffffffff8125e2a0")
    assert "statement probes need --guru (stap -g)" in err.message
    assert (err.pos, err.length, err.line) == (0, 18, 1)
    assert caret_line(err) == "    " + "^" * 18


def test_pair_with_rettype_and_args():
    assert one("tcp_v4_connect.call+return:int sk:ptr") == Probe(
        function="tcp_v4_connect",
        module=None,
        address=None,
        kind="pair",
        rettype="int",
        args=(Arg("sk", "ptr", 1),),
        text="tcp_v4_connect.call+return:int sk:ptr",
        label="tcp_v4_connect.call+return",
    )


def test_pair_default_rettype():
    assert one("vfs_read.call+return").rettype == "long"


def test_skipping_positions():
    p = one("vfs_read _ buf:ptr _:ulong count:ulong")
    assert p.args == (
        Arg(None, "long", 1),
        Arg("buf", "ptr", 2),
        Arg(None, "ulong", 3),
        Arg("count", "ulong", 4),
    )


def test_symbol_names_with_dots():
    assert one("foo.isra.0").function == "foo.isra.0"
    assert one("foo.cold a:int").function == "foo.cold"
    assert one("foo.constprop.0.isra.0.return").function == "foo.constprop.0.isra.0"


def test_return_suffix_is_always_the_kind():
    # A function literally named `x.return` cannot be probed: the suffix is the kind.
    p = one("x.return.return")
    assert (p.function, p.kind) == ("x.return", "return")
    assert one("foo.call").kind == "entry" and one("foo.call").function == "foo.call"


def test_multi_line_body():
    body = "\n".join(
        [
            "",
            "# connects",
            "   tcp_v4_connect.return:int   ",
            "\t",
            "ext4:ext4_file_open inode:ptr\r",
            "   # indented comment",
        ]
    )
    spec = parse_spec(body, first_line="tcp_v4_connect sk:ptr")
    assert [p.label for p in spec.probes] == [
        "tcp_v4_connect",
        "tcp_v4_connect.return",
        "ext4:ext4_file_open",
    ]
    assert spec.probes[1].text == "tcp_v4_connect.return:int"
    assert spec.probes[2].args == (Arg("inode", "ptr", 1),)


def test_body_only():
    spec = parse_spec("tcp_v4_connect\nvfs_read")
    assert [p.function for p in spec.probes] == ["tcp_v4_connect", "vfs_read"]


def test_every_type_parses():
    for i, t in enumerate(ARG_TYPES, start=1):
        assert one(f"f x:{t}").args == (Arg("x", t, 1),), i
    for t in RET_TYPES:
        assert one(f"f.return:{t}").rettype == t


def test_sixteen_positions_allowed():
    line = "f " + " ".join(f"a{i}:long" for i in range(1, MAX_ARGS + 1))
    assert [a.index for a in one(line).args] == list(range(1, 17))


def test_same_argument_name_in_two_probes_is_fine():
    spec = parse_spec("g x:ptr", first_line="f x:int")
    assert spec.probes[0].args[0].name == spec.probes[1].args[0].name == "x"


def test_tokenizer_keeps_positions():
    assert tokenize("ext4:f.isra.0 a:int") == [
        Token("ident", "ext4", 0),
        Token("colon", ":", 4),
        Token("ident", "f", 5),
        Token("dot", ".", 6),
        Token("ident", "isra", 7),
        Token("dot", ".", 11),
        Token("number", "0", 12),
        Token("space", " ", 13),
        Token("ident", "a", 14),
        Token("colon", ":", 15),
        Token("ident", "int", 16),
    ]
    assert tokenize("f\u2024") == [Token("ident", "f", 0), Token("bad", "\u2024", 1)]


def test_parse_line_skips_blank_and_comment():
    assert parse_line("   ") is None
    assert parse_line("# tcp_v4_connect") is None


# -- rejections ----------------------------------------------------------------------------

# (line, pos, length, part of the message)
REJECTIONS = [
    # unknown types, listing the valid ones
    ("f x:integer", 4, 7, "unknown type 'integer' (did you mean int?); valid: int, uint"),
    ("f x:Int", 4, 3, "did you mean int?"),
    ("f x:char", 4, 4, "valid: int, uint, long"),
    ("f x:int.5", 7, 1, "unexpected '.' after the argument type: a spec is FUNCTION then"),
    ("f.return:str", 9, 3, "str is not a return type"),
    ("f.call+return:ustr", 14, 4, "ustr is not a return type"),
    ("f.return:bogus", 9, 5, "unknown return type 'bogus'"),
    ("f.return:", 8, 1, "missing return type after ':'"),
    ("f x:", 3, 1, "missing type after ':'"),
    # bad names
    ("f 1x:int", 2, 2, "bad argument name"),
    ("f 1x", 2, 2, "bad argument name"),
    ("f x.y:int", 2, 3, "bad argument name"),
    ("9func", 0, 5, "cannot start with a digit"),
    ("f x:int:y", 7, 1, "unexpected ':'"),
    (".return", 0, 1, "expected a function name"),
    ("ext4:", 4, 1, "expected a function name after 'MODULE:'"),
    ("ext4:9x", 5, 2, "expected a function name after 'MODULE:'"),
    # duplicates and reserved columns
    ("f x:int x:long", 8, 1, "duplicate argument name 'x' (first at column 3)"),
    ("f pid:int", 2, 3, "'pid' is a column stapmagic fills itself"),
    ("f latency_ns:long", 2, 10, "pick another name, e.g. latency_ns_arg"),
    ("f rip:ptr", 2, 3, "'rip' is a column"),
    ("f cr4:ptr", 2, 3, "'cr4' is a column"),
    # wildcards, with the reason
    ("tcp_*", 4, 1, "wildcard '*'"),
    ("tcp_v?_connect", 5, 1, "silently fails to register or expands to hundreds"),
    ("tcp_[46]", 4, 1, "wildcard '['"),
    ("ext*:f", 3, 1, "wildcard"),
    ("ext4:f*", 6, 1, "wildcard"),
    # return/address shapes
    ("f.return a:int", 9, 5, "use FUNCTION.call+return"),
    ("f:int", 2, 3, "a return type needs a return probe: f.return:int"),
    ("ext4:f:int", 6, 1, "a return type needs a return probe"),
    ("foo.call+ret", 8, 1, "expected '.call+return'"),
    ("foo+return", 3, 1, "'+' only appears"),
    ("0x1g", 3, 1, "'g' is not a hex digit"),
    ("0x", 0, 2, "empty address"),
    ("0x" + "f" * 17, 0, 19, "does not fit in 64 bits"),
    ("0x0", 0, 3, "address 0"),
    ("0x1000.return", 6, 7, "an address probe has no .return"),
    ("0x1000:int", 6, 1, "an address takes no module"),
    ("ext4:0x1000", 5, 6, "a module takes a function name, not an address"),
    ("f x:int ->int", 8, 2, "'->' is not the syntax"),
    # too many positions
    (
        LONG := "f " + " ".join(f"a{i}:int" for i in range(1, 18)),
        LONG.index("a17"),
        7,
        "at most 16 positions",
    ),
]


@pytest.mark.parametrize("line,pos,length,fragment", REJECTIONS)
def test_rejections_point_at_the_token(line, pos, length, fragment):
    err = error(line, guru=True)
    assert fragment in err.message
    assert (err.pos, err.length, err.line) == (pos, length, 1)
    assert err.source == line
    assert caret_line(err) == "    " + " " * pos + "^" * length
    assert 0 <= err.pos <= len(line)


# Injection attempts: nothing but names and types may pass.
INJECTIONS = [
    ('tcp_v4_connect") { system("id") } probe begin("', 14, "quotes are not allowed"),
    ("'tcp_v4_connect'", 0, "quotes are not allowed"),
    ("`id`", 0, "quotes"),
    ("f {", 2, "braces are not allowed"),
    ("f}", 1, "braces"),
    ("f %{ panic(); %}", 2, "'%' is not allowed"),
    ("f; probe begin{}", 1, "';' is not allowed"),
    ("f x:int; exit()", 7, "';'"),
    ("f $(reboot)", 2, "'$' is not allowed"),
    ("f $return", 2, "no $variables"),
    ("f()", 1, "parentheses are not allowed"),
    ("f -e", 2, "looks like an option"),
    ("-e probe", 0, "looks like an option"),
    ("--guru f", 0, "looks like an option"),
    ("f.return -n 5", 9, "looks like an option"),
    ("my-func", 2, "'-' is not allowed in names"),
    ("f # trailing comment", 2, "a comment must be on a line of its own"),
    ("f x:int\\n", 7, "backslashes"),
    ("f\rprobe begin", 1, "a line break"),
    ("f\x00", 1, "control character U+0000"),
    ("f\x1b[2J", 1, "control character U+001B"),
    ("probe begin{}", 11, "braces"),
    ("tcp\u0131v4", 3, "non-ASCII character"),  # dotless i
    ("tcp_v4_conn\u0435ct", 11, "U+0435"),  # Cyrillic e
    ("f\u2024g", 1, "U+2024"),  # one dot leader
    ("\uff46", 0, "lookalike"),  # fullwidth f
    ("f x\uff1aint", 3, "non-ASCII"),  # fullwidth colon
    ("f\u00a0x:int", 1, "U+00A0"),  # no-break space
    ("f\u202ex:int", 1, "U+202E"),  # right-to-left override
    ("f\u200b", 1, "U+200B"),  # zero-width space
    ("f x:int=1", 7, "unexpected '='"),
    ("f, g", 1, "unexpected ','"),
    ("f/g", 1, "unexpected '/'"),
]


@pytest.mark.parametrize("line,pos,fragment", INJECTIONS)
def test_injection_attempts_are_refused(line, pos, fragment):
    err = error(line, guru=True)
    assert fragment in err.message
    assert err.pos == pos and err.length >= 1
    assert 0 <= err.pos <= len(line)
    # The shown source has the same length (positions hold) and no control characters.
    assert len(err.source) == len(line)
    assert err.source.isprintable()


def test_newline_in_first_line():
    err = error("f\nprobe begin { }")
    assert "line break" in err.message
    assert (err.source, err.pos, err.line) == ("f", 1, 1)


def test_body_errors_carry_their_line_number():
    with pytest.raises(SpecError) as info:
        parse_spec("tcp_v4_connect\n\n  vfs_read x:bogus", first_line="f")
    err = info.value
    assert (err.line, err.pos, err.length) == (4, 13, 5)
    assert "line 4, column 14" in str(err)
    assert str(err).split("\n")[1] == "      vfs_read x:bogus"


def test_body_line_one_is_line_two():
    with pytest.raises(SpecError) as info:
        parse_spec("bad*")
    assert info.value.line == 2


def test_tabs_shown_as_spaces_so_the_caret_lines_up():
    err = error("f\tx:bogus")
    assert err.source == "f x:bogus"
    assert caret_line(err) == "    " + "    " + "^^^^^"


def test_empty_spec():
    for text, first in (("", ""), ("\n# only comments\n   \n", "")):
        with pytest.raises(SpecError) as info:
            parse_spec(text, first_line=first)
        assert "no probe given" in info.value.message


def test_reserved_names_cover_the_fixed_and_register_columns():
    for name in (
        "time",
        "probe",
        "pid",
        "tid",
        "comm",
        "cpu",
        "retval",
        "errno",
        "latency_ns",
        "rip",
        "rsp",
        "eflags",
        "rax",
        "r8",
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
    ):
        assert name in RESERVED_NAMES
        assert error(f"f {name}:int").pos == 2


def test_messages_say_what_to_do():
    assert "add --guru" in error("0xffffffff8125e2a0").message
    assert "e.g. tcp_v4_connect" in error('"tcp_v4_connect"').message
    assert "name exactly one function" in error("tcp_*").message


def test_kernel_names_and_member_paths_wait_for_btf():
    # issue 14: a bare NAME, NAME=PATH and PATH are resolved from the target's BTF later
    # (pipeline.resolve_btf); the parser only checks their grammar and the column names
    p = parse_line("f x sk->a.b d=sk->c len:int")
    assert p is not None
    assert [(r.column, r.path, r.pos) for r in p.btf_refs] == [
        ("x", "x", 2),
        ("b", "sk->a.b", 4),
        ("d", "sk->c", 14),
    ]
    assert [a.name for a in p.args] == ["len"] and p.args[0].index == 1
    with pytest.raises(SpecError, match="expected a member name") as exc:
        parse_line("f sk->a.")
    assert exc.value.pos == 8
    with pytest.raises(SpecError, match="duplicate column name 'b'"):
        parse_line("f sk->b b")
    with pytest.raises(SpecError, match="column stapmagic fills itself"):
        parse_line("f sk->pid")
