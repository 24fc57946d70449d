"""_recscan.c, the compiled first parser of a clean batch: it must accept exactly the lines
the reference parser `parse_record` accepts, with the same values, and give up (None) on
anything else, so that RecordParser's result never depends on which path took a batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stapmagic import records
from stapmagic.records import RecordParser, format_record, parse_record, unescape_text
from stapmagic.schema import Column, ProbeSchema

scan = pytest.importorskip("stapmagic._recscan").scan

I64_MIN, I64_MAX, U64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
KIND_CODE = {"int": b"i", "uint": b"u", "hex": b"x", "str": b"s", "errno": b"e"}
TEXT_KINDS = ("str", "errno")


def test_compiled_scanner_is_built() -> None:
    """The README's ingest figures are the compiled scanner's: an install that silently
    fell back to pyarrow must not pass."""
    assert records.SCANNER == "compiled", (
        "stapmagic._recscan was not built: install gcc and the Python headers "
        "(Debian: gcc python3-dev), then `pip install -e .` again"
    )


def schema_of(kinds: tuple[str, ...]) -> ProbeSchema:
    return ProbeSchema("p", tuple(Column(f"a{j}", k) for j, k in enumerate(kinds)), False)


def run_scan(buf: bytes, kinds: tuple[str, ...], probe_ok: bytes = b"\x01") -> Any:
    """scan() -> rows like reference()'s (text unescaped here, as records.py does), or None.
    ValueError: scan() let through a text field that text_str() cannot have printed (it
    leaves escapes to Python, and RecordParser then gives the batch to the other paths)."""
    n = buf.count(b"\n")
    i64 = [np.full(n, 7, dtype=np.int64) for _ in range(5)]
    comm = np.full(n, -1, dtype=np.int32)
    fields = [
        np.zeros(n, dtype=np.int32 if k in TEXT_KINDS else np.int64 if k == "int" else np.uint64)
        for k in kinds
    ]
    raw = scan(buf, b"".join(KIND_CODE[k] for k in kinds), probe_ok, n, *i64, comm, fields)
    if raw is None:
        return None
    assert len(raw) == 1 + sum(k in TEXT_KINDS for k in kinds)
    texts = iter(raw[1:])
    decoded = []
    for f, k in zip(fields, kinds, strict=True):
        if k in TEXT_KINDS:
            vals = [None if k == "errno" and not b else unescape_text(b) for b in next(texts)]
            decoded.append([vals[c] for c in f])
        else:
            decoded.append([int(v) for v in f])
    comms = [unescape_text(b) for b in raw[0]]
    return [
        (
            int(i64[0][r]),
            int(i64[1][r]),
            int(i64[2][r]),
            int(i64[3][r]),
            int(i64[4][r]),
            comms[comm[r]],
            tuple(d[r] for d in decoded),
        )
        for r in range(n)
    ]


def reference(line: bytes, kinds: tuple[str, ...]) -> Any:
    """What parse_record makes of one line, in run_scan's shape."""
    rec = parse_record(line.rstrip(b"\n"), [schema_of(kinds)])
    if rec is None:
        return None
    return (rec.idx, rec.time_ns, rec.pid, rec.tid, rec.cpu, rec.comm, rec.fields)


KINDS = st.lists(st.sampled_from(["int", "uint", "hex", "str", "errno"]), max_size=4).map(tuple)
BIG = st.one_of(st.integers(I64_MIN, I64_MAX), st.sampled_from([I64_MIN, I64_MAX, 0, -1]))
UBIG = st.one_of(st.integers(0, U64_MAX), st.sampled_from([U64_MAX, 0, I64_MAX + 1]))
COMM = st.text(st.characters(codec="utf-8", blacklist_characters="\0"), max_size=20)
ERRNO = st.one_of(st.none(), st.sampled_from(["EINVAL", "ECONNREFUSED", "E#3333"]))


@st.composite
def lines(draw: st.DrawFn) -> tuple[tuple[str, ...], bytes]:
    kinds = draw(KINDS)
    vals = [draw({"int": BIG, "str": COMM, "errno": ERRNO}.get(k, UBIG)) for k in kinds]
    line = format_record(
        0, draw(BIG), draw(BIG), draw(BIG), draw(BIG), draw(COMM), vals, schema=schema_of(kinds)
    )
    if draw(st.booleans()):
        line = line[:-1] + b"\r\n"
    # Mutations aimed at the field grammar: signs, zeros, prefixes, spaces, line ends, tags.
    for _ in range(draw(st.integers(0, 3))):
        body = line[:-1]
        pos = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = draw(
            st.sampled_from(
                [
                    b"0",
                    b"9",
                    b"-",
                    b"\t",
                    b" ",
                    b"x",
                    b"X",
                    b"a",
                    b"G",
                    b"@",
                    b"\r",
                    b"\\",
                    b'"',
                    b"\x7f",
                    b"\xc3",
                    b"1" * 20,
                ]
            )
        )
        if op == "insert":
            body = body[:pos] + ch + body[pos:]
        elif op == "delete":
            body = body[:pos] + body[pos + 1 :]
        else:
            body = body[:pos] + ch + body[pos + 1 :]
        line = body.replace(b"\n", b"") + b"\n"
    return kinds, line


@settings(max_examples=3000, deadline=None)
@given(lines())
def test_one_line_same_as_reference(case: tuple[tuple[str, ...], bytes]) -> None:
    kinds, line = case
    want = reference(line, kinds)
    try:
        got = run_scan(line, kinds)
    except ValueError:
        assert want is None, line
        return
    assert got == (None if want is None else [want]), line


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        ("int", b"9223372036854775807", I64_MAX),
        ("int", b"-9223372036854775808", I64_MIN),
        ("int", b"9223372036854775808", None),
        ("int", b"-9223372036854775809", None),
        ("int", b"-0", 0),
        ("int", b"000000000000000000000000042", 42),
        ("int", b"-", None),
        ("int", b"", None),
        ("int", b"+1", None),
        ("int", b" 1", None),
        ("int", b"0x10", None),
        ("uint", b"18446744073709551615", U64_MAX),
        ("uint", b"18446744073709551616", None),
        ("uint", b"99999999999999999999", None),
        ("uint", b"184467440737095516150", None),
        ("uint", b"-1", None),
        ("hex", b"ffffffffffffffff", U64_MAX),
        ("hex", b"FFFFFFFFFFFFFFFF", U64_MAX),
        ("hex", b"0ffffffffffffffff", None),  # 17 digits: the reference takes 1 to 16
        ("hex", b"0x1f", None),
        ("hex", b"", None),
    ],
)
def test_number_edges(kind: str, text: bytes, value: int | None) -> None:
    line = b"@@sm1\t0\t1\t2\t3\t4\tsh\t" + text + b"\t@@\n"
    want = reference(line, (kind,))
    assert (None if want is None else want[6][0]) == value  # the table is right
    got = run_scan(line, (kind,))
    assert (None if got is None else got[0][6][0]) == value


def test_any_bad_line_rejects_the_batch_and_probe_ok_selects_the_shape() -> None:
    kinds = ("hex", "uint")
    good = [
        format_record(0, 10 + i, 100, 101, 1, c, [0xFFFF8880 + i, i], schema=schema_of(kinds))
        for i, c in enumerate(["a", "b", "a", "Web Content", "b"])
    ]
    rows = run_scan(b"".join(good), kinds)
    assert [r[5] for r in rows] == ["a", "b", "a", "Web Content", "b"]
    assert [r[6] for r in rows] == [(0xFFFF8880 + i, i) for i in range(5)]
    for k in range(len(good)):
        damaged = good.copy()
        damaged[k] = damaged[k][:20] + b"\n"
        assert run_scan(b"".join(damaged), kinds) is None, k
    # a record of probe 1 (another shape) in a batch of probe 0's shape
    other = format_record(1, 1, 2, 3, 4, "x", [5, 6], schema=schema_of(kinds))
    assert run_scan(b"".join(good) + other, kinds, probe_ok=b"\x01\x00") is None
    assert run_scan(b"".join(good) + other, kinds, probe_ok=b"\x01\x01") is not None
    assert run_scan(b"".join(good)[:-1], kinds) is None  # no final newline
    with pytest.raises(ValueError, match="only b'i', b'u', b'x', b's' and b'e'"):
        scan(
            b"",
            b"q",
            b"\x01",
            0,
            *[np.zeros(0, np.int64)] * 5,
            np.zeros(0, np.int32),
            [np.zeros(0, np.int64)],
        )


def test_failed_scan_leaves_handed_out_rows_alone() -> None:
    """The scanner parses into the table's unused rows; a batch it gives up on (damage in
    its last line) must not change rows already handed out, nor lose its own good rows."""
    schema = ProbeSchema("p", (Column("a", "int"), Column("b", "hex")), False)
    first = b"".join(
        format_record(0, i, i, i, 0, "one", [i, i], schema=schema) for i in range(3000)
    )
    second = b"".join(
        format_record(0, 10**6 + i, 7, 7, 1, "two", [-i, 2 * i], schema=schema) for i in range(3000)
    )
    p = RecordParser([schema], batch_bytes=1 << 30)
    p.feed(first)
    df1 = p.flush().frame
    assert df1 is not None
    before = df1.copy()
    p.feed(second + b"@@sm1\t0\t1\tbroken\n")
    df2 = p.flush().frame
    assert p.damaged_count == 1
    assert df2 is not None and df2["a"].tolist() == [-i for i in range(3000)]
    assert df2["b"].tolist() == [2 * i for i in range(3000)]
    assert df1.equals(before)
    assert p.frame()["time"].astype("int64").tolist() == (
        list(range(3000)) + [10**6 + i for i in range(3000)]
    )
