"""Damaged output, modeled on what stap does when its transport overflows ("WARNING: There
were N transport failures"): no damaged line may become a row, a wrong row, or cost another
line its row."""

from __future__ import annotations

import random
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stapmagic.records import RecordParser, format_record
from stapmagic.schema import Column, ProbeSchema

# Every test here runs with the compiled scanner and with pyarrow (conftest.scanner).
pytestmark = pytest.mark.usefixtures("scanner")

CONNECT = ProbeSchema(
    "tcp_v4_connect",
    (Column("sk", "hex"), Column("uaddr", "hex"), Column("addr_len", "uint")),
    False,
)
RET = ProbeSchema(
    "tcp_v4_connect.return", (Column("retval", "int"), Column("errno", "errno")), False
)
OPEN = ProbeSchema(
    "do_sys_openat2",
    (Column("dfd", "int"), Column("filename", "str"), Column("flags", "int")),
    False,
)
SCHEMAS = [CONNECT, RET, OPEN]
T0 = 1_764_000_000_000_000_000


def genuine(n: int, seed: int = 3) -> list[tuple[bytes, dict[str, Any]]]:
    """n well-formed record lines and the row each one must give."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        idx = rng.randrange(3)
        comm = rng.choice(["python3", "Web Content", "nginx", "curl é"])
        if idx == 0:
            fields: list[Any] = [rng.randrange(1 << 64), rng.randrange(1 << 48), rng.randrange(99)]
        elif idx == 1:
            fields = rng.choice([[0, None], [-97, "EAFNOSUPPORT"], [-22, "EINVAL"]])
        else:
            fields = [
                rng.randrange(-200, 200),
                rng.choice(["/etc/passwd", "a b\tc", "ü"]),
                rng.randrange(1 << 20),
            ]
        line = format_record(
            idx, T0 + i, 1000 + i, 2000 + i, i % 4, comm, fields, schema=SCHEMAS[idx]
        )
        row = {
            "time": T0 + i,
            "probe": SCHEMAS[idx].label,
            "pid": 1000 + i,
            "tid": 2000 + i,
            "comm": comm,
            "cpu": i % 4,
        }
        row.update({c.name: v for c, v in zip(SCHEMAS[idx].columns, fields, strict=True)})
        out.append((line, row))
    return out


def got_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of the columns the row's probe has (others are NA)."""
    out = []
    for rec in df.astype(object).to_dict("records"):
        label = rec["probe"]
        schema = next(s for s in SCHEMAS if s.label == label)
        row = {k: rec[k] for k in ("probe", "pid", "tid", "comm", "cpu")}
        row["time"] = pd.Timestamp(rec["time"]).value
        for c in schema.columns:
            v = rec[c.name]
            row[c.name] = None if v is None or (not isinstance(v, str) and pd.isna(v)) else v
        out.append(row)
    return out


def run(data: bytes, chunk: int = 4096, **kw: Any) -> RecordParser:
    p = RecordParser(SCHEMAS, **kw)
    for i in range(0, len(data), chunk):
        p.feed(data[i : i + chunk])
    p.close()
    return p


def check(
    lines: list[bytes],
    recs: list[tuple[bytes, dict[str, Any]]],
    damaged_at: set[int],
    n_damaged: int,
    *,
    messages: list[str] | None = None,
    pty: bool = True,
    **kw: Any,
) -> RecordParser:
    """Parse `lines` (records with some of them damaged); the rows must be exactly the
    undamaged genuine records, in order, for several batch sizes and chunkings."""
    data = b"".join(lines)
    if pty:
        data = data.replace(b"\n", b"\r\n")
    want = [row for i, (_, row) in enumerate(recs) if i not in damaged_at]
    for batch_bytes, chunk in ((1 << 20, 1 << 20), (256, 61), (1, 4096)):
        p = run(data, chunk, batch_bytes=batch_bytes, **kw)
        assert got_rows(p.frame()) == want, (batch_bytes, chunk)
        assert p.damaged_count == n_damaged, (batch_bytes, chunk, p.damaged)
        assert len(p.damaged) == n_damaged
        if messages is not None:
            assert p.messages == messages
    return p


RECS = genuine(40)
LINES = [ln for ln, _ in RECS]


def with_line(i: int, new: bytes) -> list[bytes]:
    out = list(LINES)
    out[i] = new
    return out


@pytest.mark.parametrize("cut", [5, 6, 20, -4, -3, -2])
def test_truncated_record(cut: int) -> None:
    p = check(with_line(7, LINES[7][:cut] + b"\n"), RECS, {7}, 1, messages=[])
    assert p.damaged[0] == LINES[7][:cut]


def test_truncated_before_the_tag_is_a_message() -> None:
    """Cut before `@@sm1` is complete, nothing says it was a record: a message."""
    check(with_line(7, LINES[7][:4] + b"\n"), RECS, {7}, 0, messages=["@@sm"])


def test_truncated_record_without_newline_at_end() -> None:
    """The last line cut off by the end of the output (stap killed)."""
    check(LINES + [LINES[0][:30]], RECS + [(b"", {})], {40}, 1, messages=[], pty=False)


def test_two_records_glued() -> None:
    glued = LINES[3][:-1] + LINES[4]
    lines = LINES[:3] + [glued] + LINES[5:]
    recs = RECS[:3] + [RECS[3]] + RECS[5:]
    p = check(lines, recs, {3}, 1, messages=[])
    assert p.damaged == [glued[:-1]]
    # and glued right behind the tag, or a truncated one in front of a whole one
    check(LINES[:3] + [LINES[3][:25] + LINES[4]] + LINES[5:], recs, {3}, 1)


@pytest.mark.parametrize(
    "junk",
    [b"\x00\x00\x00\x10\x01\x00\x00\x00", b"\xff\xfe\x00\x07", b"\x00", b"\x93\x1f\x8b", b"xx"],
)
def test_binary_header_in_front_of_record(junk: bytes) -> None:
    check(with_line(11, junk + LINES[11]), RECS, {11}, 1, messages=[])


@pytest.mark.parametrize("where", ["comm", "str"])
@pytest.mark.parametrize("raw", [b"\xff", b"\xc3\xa9", b"\x00", b"\x01", b'"'])
def test_unescaped_bytes_in_text_fields(where: str, raw: bytes) -> None:
    """text_str() escapes everything outside printable ASCII (and `"`), so a raw byte there
    means the line is not what the script printed."""
    i = next(k for k, (_, row) in enumerate(RECS) if row["probe"] == OPEN.label)
    line = LINES[i]
    if where == "comm":
        parts = line.split(b"\t")
        parts[6] = parts[6][:2] + raw + parts[6][2:]
        bad = b"\t".join(parts)
    else:
        parts = line.split(b"\t")
        parts[8] = raw + parts[8]
        bad = b"\t".join(parts)
    check(with_line(i, bad), RECS, {i}, 1, messages=[])


@pytest.mark.parametrize("where", ["comm", "str"])
@pytest.mark.parametrize("esc", [rb"\x41", rb"\'", rb"\01", rb"\101", rb"\u00e9", rb"\303\251"])
def test_escapes_text_str_never_prints(where: str, esc: bytes) -> None:
    """An escape text_str() does not print (\\x, \\', short or needless octal, lower-case
    or needless \\u) means a damaged field: the line is DAMAGED, never a row."""
    i = next(k for k, (_, row) in enumerate(RECS) if row["probe"] == OPEN.label)
    parts = LINES[i].split(b"\t")
    parts[6 if where == "comm" else 8] += esc
    check(with_line(i, b"\t".join(parts)), RECS, {i}, 1, messages=[])


def test_escaped_non_utf8_is_fine() -> None:
    """The same bytes escaped by text_str are a valid record (kept as backslashreplace)."""
    line = format_record(2, T0, 1, 1, 0, b"\xffcomm", [0, b"f\xc3\xa9\xff", 0], schema=OPEN)
    p = run(line)
    df = p.frame()
    assert p.damaged_count == 0 and df["comm"].iloc[0] == "\\xffcomm"
    assert df["filename"].iloc[0] == "fé\\xff"


@pytest.mark.parametrize("tagged", [True, False])
def test_line_longer_than_any_buffer(tagged: bool) -> None:
    """10 MB without a newline, then a newline: kept (its head) as damaged if it has the
    tag, else as a message; the records around it are unaffected."""
    head = LINES[5][:-1] if tagged else b"no tag here "
    long = head + b"A" * (10 << 20) + b"\n"
    lines = LINES[:5] + [long] + LINES[6:]
    recs = RECS
    data = b"".join(lines).replace(b"\n", b"\r\n")
    want = [row for i, (_, row) in enumerate(recs) if i != 5]
    for chunk in (65536, 1 << 20):
        p = run(data, chunk, batch_bytes=1 << 20, max_line=1 << 16)
        assert got_rows(p.frame()) == want
        if tagged:
            assert p.damaged_count == 1 and p.messages == []
            assert p.damaged[0].startswith(head) and len(p.damaged[0]) == 1 << 16
        else:
            assert p.damaged_count == 0 and len(p.messages) == 1
            assert p.messages[0].startswith("no tag here AAAA")
            assert p.messages[0].endswith("more bytes of this line not kept]")
    # the tag only in the skipped part, split across chunks
    long2 = b"x" * 100_000 + b"@@s" + b"m1" + b"y" * 10 + b"\n"
    p = RecordParser(SCHEMAS, max_line=1000)
    p.feed(b"x" * 100_000 + b"@@s")
    p.feed(b"m1" + b"y" * 10 + b"\n" + LINES[0])
    p.close()
    assert p.damaged_count == 1 and p.row_count == 1 and len(long2) > 1000


@pytest.mark.parametrize("change", ["extra", "missing", "empty_end"])
def test_field_count(change: str) -> None:
    i = 2
    parts = LINES[i][:-1].split(b"\t")
    if change == "extra":
        parts.insert(8, b"17")
    elif change == "missing":
        del parts[8]
    else:
        parts[-1] = b""
    check(with_line(i, b"\t".join(parts) + b"\n"), RECS, {i}, 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (2, b"12a4"),
        (3, b""),
        (3, b"-"),
        (4, b" 12"),
        (5, b"1 "),
        (2, b"0x10"),
        (2, b"99999999999999999999"),
        (1, b"7"),
        (1, b"x"),
        (1, b"00000"),
    ],
)
def test_bad_base_field(field: int, value: bytes) -> None:
    """idx (1), time (2), pid (3), tid (4), cpu (5): decimal, int64, a known probe."""
    parts = LINES[9][:-1].split(b"\t")
    parts[field] = value
    check(with_line(9, b"\t".join(parts) + b"\n"), RECS, {9}, 1)


def test_bad_typed_fields() -> None:
    def idx_of(label: str) -> int:
        return next(k for k, (_, row) in enumerate(RECS) if row["probe"] == label)

    cases = []
    c = idx_of(CONNECT.label)
    for j, v in (
        (7, b"ffffg"),
        (7, b"0x12"),
        (7, b"12345678901234567"),
        (7, b""),
        (9, b"-1"),
        (9, b"18446744073709551616"),
        (9, b"1.5"),
        (8, b" 12"),
    ):
        parts = LINES[c][:-1].split(b"\t")
        parts[j] = v
        cases.append((c, b"\t".join(parts) + b"\n"))
    r = idx_of(RET.label)
    for j, v in ((7, b"-9223372036854775809"), (7, b"--1"), (8, b"E\\q")):
        parts = LINES[r][:-1].split(b"\t")
        parts[j] = v
        cases.append((r, b"\t".join(parts) + b"\n"))
    for i, bad in cases:
        check(with_line(i, bad), RECS, {i}, 1)


def test_record_tag_in_a_message_and_cr_inside() -> None:
    lines = list(LINES)
    lines.insert(4, b"workload says @@sm1 hello\n")
    lines[10] = LINES[9][:20] + b"\r" + LINES[9][20:]
    recs = RECS[:4] + [(b"", {})] + RECS[4:]
    check(lines, recs, {4, 10}, 2, messages=[])


def test_unknown_probe_and_missing_end() -> None:
    parts = LINES[6][:-1].split(b"\t")
    parts[1] = b"3"
    check(with_line(6, b"\t".join(parts) + b"\n"), RECS, {6}, 1)
    check(with_line(6, LINES[6][:-3] + b"\n"), RECS, {6}, 1)
    check(with_line(6, LINES[6][:-3] + b"@\n"), RECS, {6}, 1)


def test_transport_failure_burst() -> None:
    """A burst of damage in the middle of a big clean stream: one damaged line costs nothing
    but itself, whichever path parses the batch."""
    recs = genuine(3000, seed=11)
    lines = [ln for ln, _ in recs]
    damaged = {
        100: lines[100][:17] + b"\n",
        101: b"\x00\x00\x00" + lines[101],
        1500: lines[1500][:-1] + lines[1501],
        2999: lines[2999][:-4] + b"\t5\t@@\n",
    }
    out = []
    skip = set()
    for i, ln in enumerate(lines):
        if i in skip:
            continue
        if i in damaged:
            out.append(damaged[i])
            if i == 1500:
                skip.add(1501)
        else:
            out.append(ln)
    data = b"WARNING: There were 3 transport failures.\n" + b"".join(out)
    want = [row for i, (_, row) in enumerate(recs) if i not in {100, 101, 1500, 1501, 2999}]
    for batch_bytes in (1 << 20, 8192):
        p = run(data.replace(b"\n", b"\r\n"), 65536, batch_bytes=batch_bytes)
        assert got_rows(p.frame()) == want
        assert p.damaged_count == 4
        assert p.messages == ["WARNING: There were 3 transport failures."]


# ---- random detectable damage ---------------------------------------------------------

OPS = st.sampled_from(
    ["truncate", "glue", "junk", "nonnumber", "extra", "missing", "drop", "tag_in_message"]
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 39), OPS, st.integers(0, 1 << 30)), max_size=8),
    st.sampled_from([1, 300, 1 << 20]),
    st.integers(1, 5000),
)
def test_random_damage_never_gives_a_wrong_row(
    ops: list[tuple[int, str, int]], batch_bytes: int, chunk: int
) -> None:
    lines: list[bytes | None] = list(LINES)
    extra_lines: dict[int, bytes] = {}
    messages: dict[int, str] = {}
    damaged: set[int] = set()
    n_damaged_lines = 0
    for i, op, r in ops:
        if i in damaged or lines[i] is None or (op == "glue" and (i + 1 >= 40 or i + 1 in damaged)):
            continue
        ln = lines[i]
        assert ln is not None
        rng = random.Random(r)
        if op == "drop":  # a whole record lost: not damage, just gone
            lines[i] = None
            damaged.add(i)
            continue
        if op == "tag_in_message":
            if i in extra_lines:
                continue
            extra_lines[i] = b"printed @@sm1 by the workload\n"
            n_damaged_lines += 1
            continue
        if op == "truncate":
            new = ln[: rng.randrange(1, len(ln) - 1)] + b"\n"
        elif op == "glue":
            nxt = lines[i + 1]
            assert nxt is not None
            new = ln[: rng.randrange(1, len(ln))] + nxt
            lines[i + 1] = None
            damaged.add(i + 1)
        elif op == "junk":
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8))) + b"\x00"
            pos = rng.randrange(0, len(ln) - 1)
            new = (ln[:pos] + junk + ln[pos:]).replace(b"\n", b"") + b"\n"
        elif op == "nonnumber":
            parts = ln[:-1].split(b"\t")
            parts[rng.choice([2, 3, 4, 5])] = rng.choice([b"1x", b"", b"+1", b"1 ", b"0x1"])
            new = b"\t".join(parts) + b"\n"
        elif op == "extra":
            parts = ln[:-1].split(b"\t")
            parts.insert(rng.randrange(2, len(parts)), b"5")
            new = b"\t".join(parts) + b"\n"
        else:
            parts = ln[:-1].split(b"\t")
            del parts[rng.randrange(1, len(parts) - 1)]
            new = b"\t".join(parts) + b"\n"
        lines[i] = new
        damaged.add(i)
        if b"@@sm1" in new:
            n_damaged_lines += 1
        else:  # the damage hit the tag itself: nothing says it was a record
            messages[i] = new[:-1].decode("utf-8", "backslashreplace")
    out = []
    for i, ln in enumerate(lines):
        if i in extra_lines:
            out.append(extra_lines[i])
        if ln is not None:
            out.append(ln)
    data = b"".join(out).replace(b"\n", b"\r\n")
    p = run(data, chunk, batch_bytes=batch_bytes)
    want = [row for i, (_, row) in enumerate(RECS) if i not in damaged]
    assert got_rows(p.frame()) == want
    assert p.damaged_count == n_damaged_lines
    assert p.messages == [messages[i] for i in sorted(messages)]
