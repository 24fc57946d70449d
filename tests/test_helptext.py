"""`%%kprobe?` (issue 13): the SPEC grammar, the types, options in groups, examples; the
usage line says %%kprobe, no stray `::` from IPython's magic_arguments."""

from __future__ import annotations

from stapmagic.spec import ARG_TYPES, RET_TYPES


def test_kprobe_help_has_grammar_types_groups_and_examples(ip) -> None:
    text = ip.object_inspect_text("%%kprobe")
    assert "%%kprobe [options] SPEC" in text
    assert "\n%kprobe [" not in text and " %kprobe [" not in text and "::" not in text
    assert "SPEC := [MODULE:]FUNCTION[.return[:RETTYPE]] [NAME:TYPE ...]" in text
    assert " | ".join(ARG_TYPES) in text and " | ".join(RET_TYPES) in text
    for group in ("what to record:", "when to stop, whom:", "where and how to run:",
                  "recordings:"):
        assert group in text
    assert "-n, --count N" in text and "--latency" in text and "Examples:" in text
    assert "%%kprobe tcp_v4_connect sk:ptr uaddr:ptr len:uint" in text


def test_a_bad_option_names_the_cell_magic(ip) -> None:
    from stapmagic.magic import KprobeMagics

    usage = KprobeMagics.kprobe.parser.format_usage()
    assert "%%kprobe [-o VAR]" in usage and "%%%" not in usage
