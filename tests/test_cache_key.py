"""stap's module cache keys on the script it elaborated (pass 2: comments dropped), on
options such as -D and -g (hash.cxx: find_script_hash) and on what else stap adds to its
session (the soak test sees one cached module per -c command). The part stapmagic controls is
the script text: it must not depend on column names, the workload or the process, so that a
cell whose names change reuses the compiled module. (Already so before issue 15; this keeps
it so.)"""

from __future__ import annotations

import pytest

from stapmagic import pipeline

RENAMED = [
    ("tcp_v4_connect sk:ptr uaddr:ptr len:uint", "tcp_v4_connect a:ptr b:ptr c:uint"),
    ("tcp_v4_connect _ _ len:uint", "tcp_v4_connect _ _ addr_len:uint"),
    ("tcp_v4_connect.return:int", "tcp_v4_connect.return:int"),
    ("do_sys_openat2 dfd:int name:ustr", "do_sys_openat2 d:int path:ustr"),
    (
        "tcp_v4_connect sk:ptr\ntcp_v4_connect.return:int",
        "tcp_v4_connect sock:ptr\ntcp_v4_connect.return:int",
    ),
]


def _script(spec: str, **opts: object) -> str:
    first, _, body = spec.partition("\n")
    run = pipeline.prepare(first, body, pipeline.ProbeOptions(dry_run=True, **opts))  # type: ignore[arg-type]
    return run.script_text


@pytest.mark.parametrize(("spec", "renamed"), RENAMED)
def test_renaming_the_columns_keeps_the_script(spec, renamed):
    assert _script(spec) == _script(renamed)


def test_the_workload_and_the_process_are_not_in_the_script():
    base = _script("tcp_v4_connect sk:ptr")
    assert _script("tcp_v4_connect sk:ptr", command="python3 a.py") == base
    assert _script("tcp_v4_connect sk:ptr", command="curl -s example.org") == base
    assert _script("tcp_v4_connect sk:ptr", pid=1234) == _script("tcp_v4_connect sk:ptr", pid=99)


def test_a_different_type_is_a_different_module():
    assert _script("tcp_v4_connect sk:ptr") != _script("tcp_v4_connect sk:uint")
