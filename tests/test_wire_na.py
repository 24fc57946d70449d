"""The NA marker of a numeric field that may be missing (a member read that faulted):
declared once in wire.py, written by format_record, read by every engine as <NA>."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from stapmagic import wire
from stapmagic.records import RecordParser
from stapmagic.schema import Column, ProbeSchema

T0 = 1_764_000_000_000_000_000
FIELDS = ProbeSchema(
    "tcp_finish_connect",
    (
        Column("dport", "uint", nullable=True),
        Column("off", "int", nullable=True),
        Column("p", "hex", nullable=True),
        Column("name", "str"),
    ),
    False,
)
PLAIN = ProbeSchema("tcp_v4_connect", (Column("len", "uint"),), False)


def _parse(schemas: list[ProbeSchema], data: bytes, **kw: object) -> RecordParser:
    p = RecordParser(schemas, **kw)  # type: ignore[arg-type]
    p.feed(data.replace(b"\n", b"\r\n"))
    p.close()
    return p


def test_marker_is_one_token_no_number_format_prints() -> None:
    assert wire.NA_FIELD_B == wire.NA_FIELD.encode()
    for kind in ("int", "uint", "hex"):
        with pytest.raises(ValueError):
            wire._parse_field(wire.NA_FIELD_B, kind)  # type: ignore[arg-type]


def test_format_and_parse_record_roundtrip_na() -> None:
    line = wire.format_record(0, T0, 1, 2, 0, "py", [None, -3, None, "x"], schema=FIELDS)
    assert b"\t" + wire.NA_FIELD_B + b"\t-3\t" + wire.NA_FIELD_B + b"\tx\t@@" in line
    rec = wire.parse_record(line[:-1], [FIELDS])
    assert rec is not None and rec.fields == (None, -3, None, "x")
    # not nullable: the marker is damage
    bad = wire.format_record(0, T0, 1, 2, 0, "py", [5], schema=PLAIN).replace(b"\t5\t", b"\t?\t")
    assert wire.parse_record(bad[:-1], [PLAIN]) is None


@pytest.mark.parametrize("n", [3, 5000])
def test_na_rows_are_na_in_the_frame(n: int) -> None:
    rng = random.Random(n)
    want = []
    lines = []
    for i in range(n):
        vals = [
            None if rng.random() < 0.3 else rng.randrange(1 << 16),
            None if rng.random() < 0.3 else rng.randrange(-(1 << 40), 1 << 40),
            None if rng.random() < 0.3 else rng.randrange(1 << 64),
            f"f{i}",
        ]
        want.append(vals)
        lines.append(wire.format_record(0, T0 + i, 1, 2, 0, "py", vals, schema=FIELDS))
    p = _parse([FIELDS], b"".join(lines), batch_bytes=64 << 10)
    df = p.frame()
    assert p.damaged_count == 0 and len(df) == n
    assert str(df["dport"].dtype) == "UInt64" and str(df["off"].dtype) == "Int64"
    assert str(df["p"].dtype) == "UInt64"
    for col, j in (("dport", 0), ("off", 1), ("p", 2)):
        got = [None if pd.isna(v) else int(v) for v in df[col]]
        assert got == [w[j] for w in want], col


def test_clean_batch_of_nullable_column_without_na_is_not_nullable_damage() -> None:
    lines = [
        wire.format_record(0, T0 + i, 1, 2, 0, "py", [80, 1, 0xFF, "a"], schema=FIELDS)
        for i in range(2000)
    ]
    df = _parse([FIELDS], b"".join(lines), batch_bytes=1 << 20).frame()
    assert str(df["dport"].dtype) == "UInt64" and df["dport"].tolist() == [80] * 2000


def test_mixed_probes_na_and_other_probe() -> None:
    lines = [
        wire.format_record(0, T0, 1, 2, 0, "py", [None, 1, 2, "a"], schema=FIELDS),
        wire.format_record(1, T0 + 1, 1, 2, 0, "py", [7], schema=PLAIN),
        wire.format_record(0, T0 + 2, 1, 2, 0, "py", [9, None, 2, "b"], schema=FIELDS),
    ]
    df = _parse([FIELDS, PLAIN], b"".join(lines) + b"a message\n").frame()
    assert [None if pd.isna(v) else int(v) for v in df["dport"]] == [None, None, 9]
    assert [None if pd.isna(v) else int(v) for v in df["off"]] == [1, None, None]


def test_compiled_scanner_reads_na_itself() -> None:
    """A clean batch with NA fields stays on the compiled path (the reference engine would
    take ~60x longer), and only in the nullable fields."""
    rs = pytest.importorskip("stapmagic._recscan")
    import numpy as np

    lines = b"".join(
        wire.format_record(
            0, T0 + i, 1, 2, 0, "py", [None if i % 3 else 80, i, None, "a"], schema=FIELDS
        )
        for i in range(6)
    )
    n = 6
    i64 = [np.empty(n, dtype=np.int64) for _ in range(5)]
    comm = np.empty(n, dtype=np.int32)
    fields = [
        np.empty(n, np.uint64),
        np.empty(n, np.int64),
        np.empty(n, np.uint64),
        np.empty(n, np.int32),
    ]
    nulls = [np.empty(n, np.uint8), np.empty(n, np.uint8), np.empty(n, np.uint8), None]
    raw = rs.scan(lines, b"uixs", b"\x01", n, *i64, comm, fields, nulls)
    assert raw is not None
    assert nulls[0].tolist() == [0, 1, 1, 0, 1, 1] and nulls[1].tolist() == [0] * 6
    assert nulls[2].tolist() == [1] * 6
    assert fields[0][[0, 3]].tolist() == [80, 80] and fields[1].tolist() == list(range(6))
    # without `nulls` the marker is not a number: the batch is refused
    assert rs.scan(lines, b"uixs", b"\x01", n, *i64, comm, fields) is None
    bad = lines.replace(b"\ta\t", b"\t" + wire.NA_FIELD_B + b"\t", 1)  # str: plain text
    assert rs.scan(bad, b"uixs", b"\x01", n, *i64, comm, fields, nulls) is not None


def test_na_batches_keep_the_compiled_speed() -> None:
    from stapmagic.parse.compiled import SCANNER

    if SCANNER != "compiled":
        pytest.skip("no compiled scanner")
    lines = b"".join(
        wire.format_record(0, T0 + i, 1, 2, 0, "py", [None, 1, 2, "a"], schema=FIELDS)
        for i in range(3000)
    )
    p = RecordParser([FIELDS])
    seen: list[str] = []
    real = p.reference.parse_lines  # type: ignore[attr-defined]

    def spy(*a: object, **k: object) -> object:
        seen.append("reference")
        return real(*a, **k)

    p.reference.parse_lines = spy  # type: ignore[attr-defined]
    p.feed(lines.replace(b"\n", b"\r\n"))
    p.close()
    assert len(p.frame()) == 3000 and p.frame()["dport"].isna().all() and not seen
