"""records.py: the record writer/reader, escaping, chunking, print_regs dumps, messages,
dtypes, batches (damage: tests/test_damage.py)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stapmagic.records import (
    Batch,
    RecordParser,
    escape_text,
    format_record,
    parse_print_regs,
    parse_record,
    unescape_text,
)
from stapmagic.schema import PRINT_REGS_COLUMNS, Column, ProbeSchema

# Every test here runs with the compiled scanner and with pyarrow (conftest.scanner).
pytestmark = pytest.mark.usefixtures("scanner")

# Real captures, found by the `reference` fixture (tests/conftest.py).
R48 = "stap-4.8-linux-6.1"
R51 = "stap-5.1-linux-6.12"

CONNECT = ProbeSchema(
    "tcp_v4_connect",
    (Column("sk", "hex"), Column("uaddr", "hex"), Column("addr_len", "uint")),
    False,
)
CONNECT_RET = ProbeSchema(
    "tcp_v4_connect.return", (Column("retval", "int"), Column("errno", "errno")), False
)
OPEN = ProbeSchema(
    "do_sys_openat2",
    (Column("dfd", "int"), Column("filename", "str"), Column("flags", "int")),
    False,
)
READ = ProbeSchema("vfs_read", (), False)
SCHEMAS = [CONNECT, CONNECT_RET, OPEN, READ]
REGS = ProbeSchema("tcp_v4_connect", (), True)

T0 = 1_764_000_000_000_000_000


def pty(data: bytes) -> bytes:
    """What the pty delivers: every \\n as \\r\\n."""
    return data.replace(b"\n", b"\r\n")


def parse_all(schemas: list[ProbeSchema], data: bytes, **kw: Any) -> RecordParser:
    p = RecordParser(schemas, **kw)
    p.feed(data)
    p.close()
    return p


def rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain Python values (NA -> None, time -> int ns)."""
    out = []
    for rec in df.astype(object).to_dict("records"):
        r = {}
        for k, v in rec.items():
            if k == "time":
                v = pd.Timestamp(v).value
            elif v is None or (not isinstance(v, str) and pd.isna(v)):
                v = None
            elif isinstance(v, (np.integer, int)):
                v = int(v)
            r[k] = v
        out.append(r)
    return out


def expected_row(
    idx: int,
    schemas: list[ProbeSchema],
    t: int,
    pid: int,
    tid: int,
    cpu: int,
    comm: str,
    fields: list[Any],
) -> dict[str, Any]:
    r: dict[str, Any] = {
        "time": t,
        "probe": schemas[idx].label,
        "pid": pid,
        "tid": tid,
        "comm": comm,
        "cpu": cpu,
    }
    for s in schemas:
        for c in s.columns:
            r.setdefault(c.name, None)
    for c, v in zip(schemas[idx].columns, fields, strict=True):
        if isinstance(v, bytes):
            v = v.decode("utf-8", "backslashreplace")
        r[c.name] = v
    return r


# ---- text_str escaping ----------------------------------------------------------------

# SystemTap's own expectations (testsuite/systemtap.string/text_str.exp,
# systemtap.base/utf_kernel.exp, systemtap.base/utf_overlong.exp; string_quoted() is the
# same _stp_text_str with quotes).
TEXT_STR_VECTORS = [
    (b"\n\nXYZZY\031", rb"\n\nXYZZY\031"),
    (b"\077\231\a\n\n\r\n", rb"?\231\a\n\n\r\n"),
    (
        b"\x73\x74\x61\x70\x7f\xc2\x80\xce\x91\xce\xa9\xdf\xbf\xe0\xa0\x80\xe2\x98\xba\xef\xbf\xbf"
        b"\xf0\x90\x80\x80\xf0\x9f\x98\x88\xf4\x8f\xbf\xbf",
        rb"stap\177\u0080\u0391\u03A9\u07FF\u0800\u263A\uFFFF\U00010000\U0001F608\U0010FFFF",
    ),
    (b"\300\200 \301\277 \302\200 \337\277", rb"\300\200 \301\277 \u0080 \u07FF"),
    (
        b"\340\200\200 \340\237\277 \340\240\200 \357\277\277",
        rb"\340\200\200 \340\237\277 \u0800 \uFFFF",
    ),
    (
        b"\360\200\200\200 \360\217\277\277 \360\220\200\200 \364\217\277\277",
        rb"\360\200\200\200 \360\217\277\277 \U00010000 \U0010FFFF",
    ),
    (b'say "hi"\\', rb"say \"hi\"\\"),
]


@pytest.mark.parametrize(("raw", "printed"), TEXT_STR_VECTORS)
def test_escape_matches_systemtap(raw: bytes, printed: bytes) -> None:
    assert escape_text(raw) == printed
    assert unescape_text(printed) == raw.decode("utf-8", "backslashreplace")


def test_escape_stops_at_nul_and_unescape_rejects() -> None:
    assert escape_text(b"ab\0cd") == b"ab"
    assert unescape_text(rb"\377") == "\\xff"  # not UTF-8: backslashreplace
    for bad in (
        b"tab\there",
        b'quote"',
        b"\\q",
        b"\\u12",
        b"\\",
        b"\\777",
        b"caf\xc3\xa9",
        b"\\U00110000",
    ):
        with pytest.raises(ValueError):
            unescape_text(bad)


# Escapes that _stp_text_str (runtime/stp_string.c) never prints: it writes octal as exactly
# three digits (the first 0-3) and only for bytes without a short escape that are not part
# of valid UTF-8; \u/\U with upper-case hex, \u for code points up to FFFF, \U above; no
# \x, no \', and a string ends at its first NUL.
NEVER_PRINTED = [
    rb"\x41",
    rb"\'",
    rb"\0",
    rb"\01",
    rb"\7",
    rb"\000",
    rb"\101",
    rb"\011",
    rb"\134",
    rb"\042",
    rb"\303\251",
    rb"\u0041",
    rb"\u00e9",
    rb"\u007F",
    rb"\uD800",
    rb"\U0000FFFF",
    rb"\U000000E9",
    rb"\u0000",
    rb"\400",
]


@pytest.mark.parametrize("printed", NEVER_PRINTED)
def test_unescape_accepts_only_what_text_str_prints(printed: bytes) -> None:
    with pytest.raises(ValueError):
        unescape_text(printed)
    with pytest.raises(ValueError):
        unescape_text(b"ok " + printed + b" ok")


@given(st.binary(max_size=80))
def test_escape_roundtrip_bytes(raw: bytes) -> None:
    printed = escape_text(raw)
    assert not printed.translate(None, bytes(range(0x20, 0x7F)))  # printable ASCII only
    assert b'"' not in printed.replace(b'\\"', b"")
    assert unescape_text(printed) == raw.split(b"\0")[0].decode("utf-8", "backslashreplace")


@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=60
    )
)
def test_escape_roundtrip_text(text: str) -> None:
    assert unescape_text(escape_text(text)) == text


# ---- format_record / parse_record -----------------------------------------------------


def test_format_record_exact() -> None:
    line = format_record(
        0, T0, 42, 43, 1, "py thon\t3", [0xFFFF888012345678, 0, 16], schema=CONNECT
    )
    assert line == (b"@@sm1\t0\t%d\t42\t43\t1\tpy thon\\t3\tffff888012345678\t0\t16\t@@\n" % T0)
    assert format_record(3, 1, 2, 3, 4, "x", []) == b"@@sm1\t3\t1\t2\t3\t4\tx\t@@\n"
    assert format_record(1, 1, 2, 3, 4, "x", [-97, "EAFNOSUPPORT"]).endswith(
        b"\t-97\tEAFNOSUPPORT\t@@\n"
    )
    assert format_record(1, 1, 2, 3, 4, "x", [0, None], schema=CONNECT_RET).endswith(b"\t0\t\t@@\n")
    with pytest.raises(ValueError):
        format_record(0, 1, 2, 3, 4, "x", [1, 2], schema=CONNECT)
    with pytest.raises(ValueError):
        format_record(0, 1, 2, 3, 4, "x", [-1, 2, 3], schema=CONNECT)
    with pytest.raises(TypeError):
        format_record(0, 1, 2, 3, 4, "x", ["a", 2, 3], schema=CONNECT)


I64 = st.integers(-(1 << 63), (1 << 63) - 1)
U64 = st.integers(0, (1 << 64) - 1)
TEXT = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=24
    ),
    st.binary(max_size=24).filter(lambda b: b"\0" not in b),
    st.sampled_from(["Web Content", "0x12", " lead", "trail ", "nginx", "X", "@@", "a\\b"]),
)


def field_strategy(c: Column) -> st.SearchStrategy[Any]:
    if c.kind == "int":
        return I64
    if c.kind in ("uint", "hex"):
        return U64
    if c.kind == "errno":
        return st.one_of(st.none(), st.sampled_from(["EINVAL", "EAFNOSUPPORT", "E#3333"]))
    return TEXT


@st.composite
def records(draw: st.DrawFn, schemas: list[ProbeSchema] = SCHEMAS) -> tuple[Any, ...]:
    idx = draw(st.integers(0, len(schemas) - 1))
    fields = [draw(field_strategy(c)) for c in schemas[idx].columns]
    return (
        idx,
        draw(st.integers(0, (1 << 63) - 1)),
        draw(I64),
        draw(I64),
        draw(st.integers(0, 4096)),
        draw(TEXT),
        fields,
    )


def as_text(v: Any) -> Any:
    return v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v


@given(records())
def test_format_parse_roundtrip(rec: tuple[Any, ...]) -> None:
    idx, t, pid, tid, cpu, comm, fields = rec
    line = format_record(idx, t, pid, tid, cpu, comm, fields, schema=SCHEMAS[idx])
    assert line.count(b"\n") == 1 and line.endswith(b"\t@@\n")
    parsed = parse_record(line[:-1] + b"\r", SCHEMAS)
    assert parsed is not None
    assert (parsed.idx, parsed.time_ns, parsed.pid, parsed.tid, parsed.cpu) == (
        idx,
        t,
        pid,
        tid,
        cpu,
    )
    assert parsed.comm == as_text(comm)
    assert list(parsed.fields) == [as_text(v) for v in fields]


# ---- the streaming parser: chunking ---------------------------------------------------

MESSAGE = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\0"),
        max_size=40,
    ),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.sampled_from(
        [
            "did 3 connects to 127.0.0.1:56943",
            "",
            "Pass 5: starting run.",
            "WARNING: There were 3 transport failures. Try stap -s to increase",
        ]
    ),
).filter(lambda m: b"@@sm" not in (m.encode() if isinstance(m, str) else m))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[dict[str, Any]], list[str]]:
    items = draw(
        st.lists(
            st.one_of(records().map(lambda r: ("rec", r)), MESSAGE.map(lambda m: ("msg", m))),
            max_size=30,
        )
    )
    data = bytearray()
    rows_: list[dict[str, Any]] = []
    msgs: list[str] = []
    for kind, v in items:
        if kind == "rec":
            idx, t, pid, tid, cpu, comm, fields = v
            data += format_record(idx, t, pid, tid, cpu, comm, fields, schema=SCHEMAS[idx])
            rows_.append(expected_row(idx, SCHEMAS, t, pid, tid, cpu, as_text(comm), fields))
        else:
            b = v.encode() if isinstance(v, str) else v
            data += b + b"\n"
            msgs.append(b.decode("utf-8", "backslashreplace"))
    return pty(bytes(data)), rows_, msgs


def chunked(parser: RecordParser, data: bytes, cuts: list[int], flushes: list[bool]) -> list[Batch]:
    batches = []
    pos = 0
    for i, c in enumerate(sorted(set(cuts))):
        parser.feed(data[pos:c])
        if flushes[i % len(flushes)]:
            batches.append(parser.flush())
        pos = c
    parser.feed(data[pos:])
    batches.append(parser.close())
    return batches


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.data())
def test_random_chunking_equals_one_shot(stream: Any, data: st.DataObject) -> None:
    raw, want_rows, want_msgs = stream
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    flushes = data.draw(st.lists(st.booleans(), min_size=1, max_size=5))
    batch_bytes = data.draw(st.sampled_from([1, 64, 300, 1 << 20]))
    one = parse_all(SCHEMAS, raw)
    p = RecordParser(SCHEMAS, batch_bytes=batch_bytes)
    batches = chunked(p, raw, cuts, flushes)
    assert p.damaged_count == 0 and one.damaged_count == 0
    assert p.messages == want_msgs == one.messages
    assert rows(p.frame()) == want_rows == rows(one.frame())
    pd.testing.assert_frame_equal(p.frame(), one.frame(), check_categorical=False)
    # the batches' frames are the rows, once each, numbered on
    frames = [b.frame for b in batches if b.frame is not None]
    assert sum(b.rows for b in batches) == len(want_rows) == p.row_count
    if frames:
        cat = pd.concat([f.astype({"probe": object, "comm": object}) for f in frames])
        assert list(cat.index) == list(range(len(want_rows)))
        assert rows(cat) == want_rows
    assert [m for b in batches for m in b.messages] == want_msgs


def test_split_at_every_position() -> None:
    """A small stream cut in two at every byte (inside multi-byte characters, between \\r
    and \\n) gives the same rows and messages; also cut into 1-byte pieces."""
    lines = [
        format_record(
            0, T0, 100, 101, 0, "python3", [0xFFFF888012345678, 0x7FFC0000, 16], schema=CONNECT
        ),
        "naïve workload line ☺\n".encode(),
        format_record(1, T0 + 1, 100, 101, 1, "curl é", [-97, "EAFNOSUPPORT"]),
        format_record(2, T0 + 2, 7, 7, 3, "cat", [-100, "/tmp/ünï\tcode", 0o100000]),
        b"\xff\xfe not utf-8\n",
        format_record(3, T0 + 3, 1, 1, 0, "sh", []),
    ]
    raw = pty(b"".join(lines))
    ref = parse_all(SCHEMAS, raw)
    want = rows(ref.frame())
    assert len(want) == 4 and ref.damaged_count == 0
    assert ref.messages == ["naïve workload line ☺", "\\xff\\xfe not utf-8"]
    assert want[2]["filename"] == "/tmp/ünï\tcode" and want[1]["comm"] == "curl é"
    for i in range(len(raw) + 1):
        p = RecordParser(SCHEMAS, batch_bytes=64)
        p.feed(raw[:i])
        p.flush()
        p.feed(raw[i:])
        p.close()
        assert rows(p.frame()) == want, i
        assert p.messages == ref.messages, i
    p = RecordParser(SCHEMAS, batch_bytes=1)
    for i in range(len(raw)):
        p.feed(raw[i : i + 1])
    p.close()
    assert rows(p.frame()) == want and p.messages == ref.messages


def test_fast_path_batch() -> None:
    """A big clean batch (the vectorized path) gives the same rows as per-line parsing."""
    rng = random.Random(5)
    comms = ["python3", "Web Content", "nginx", "Xorg", "kworker/0:1", "ünï", "tab\there"]
    lines = []
    for i in range(20_000):
        lines.append(
            format_record(
                0,
                T0 + i,
                rng.randrange(1 << 22),
                rng.randrange(1 << 22),
                rng.randrange(64),
                rng.choice(comms),
                [rng.randrange(1 << 64), rng.randrange(1 << 48), rng.randrange(128)],
                schema=CONNECT,
            )
        )
    raw = pty(b"".join(lines))
    p = parse_all([CONNECT], raw, batch_bytes=256 << 10)
    df = p.frame()
    assert len(df) == 20_000 and p.damaged_count == 0 and not p.messages
    ref = [parse_record(ln[:-1], [CONNECT]) for ln in lines]
    assert df["sk"].tolist() == [r.fields[0] for r in ref if r]
    assert df["uaddr"].tolist() == [r.fields[1] for r in ref if r]
    assert df["comm"].astype(str).tolist() == [r.comm for r in ref if r]
    assert (df["time"].astype("int64") == T0 + np.arange(20_000)).all()


# ---- dtypes ---------------------------------------------------------------------------


def test_dtypes_one_probe() -> None:
    raw = pty(format_record(0, T0, 1, 2, 3, "a", [1, 2, 3], schema=CONNECT))
    df = parse_all([CONNECT], raw).frame()
    assert list(df.columns) == [
        "time",
        "probe",
        "pid",
        "tid",
        "comm",
        "cpu",
        "sk",
        "uaddr",
        "addr_len",
    ]
    assert str(df["time"].dtype) == "datetime64[ns]"
    assert isinstance(df["probe"].dtype, pd.CategoricalDtype)
    assert isinstance(df["comm"].dtype, pd.CategoricalDtype)
    assert [str(df[c].dtype) for c in ("pid", "tid", "cpu")] == ["int64"] * 3
    assert [str(df[c].dtype) for c in ("sk", "uaddr", "addr_len")] == ["uint64"] * 3
    assert df["time"].iloc[0] == pd.Timestamp(T0, unit="ns")
    assert list(df["probe"].cat.categories) == ["tcp_v4_connect"]


def test_dtypes_several_probes() -> None:
    raw = pty(
        b"".join(
            [
                format_record(0, T0, 1, 1, 0, "a", [10, 20, 30], schema=CONNECT),
                format_record(1, T0, 1, 1, 0, "a", [-97, "EAFNOSUPPORT"], schema=CONNECT_RET),
                format_record(1, T0, 1, 1, 0, "a", [0, None], schema=CONNECT_RET),
                format_record(2, T0, 1, 1, 0, "a", [-100, "/etc/passwd", 0], schema=OPEN),
                format_record(3, T0, 1, 1, 0, "a", [], schema=READ),
            ]
        )
    )
    df = parse_all(SCHEMAS, raw).frame()
    dt = {c: str(df[c].dtype) for c in df.columns}
    assert dt["sk"] == dt["uaddr"] == dt["addr_len"] == "UInt64"
    assert dt["retval"] == dt["dfd"] == dt["flags"] == "Int64"
    assert dt["errno"] == "object" and dt["filename"] == "str"
    assert df["errno"].tolist() == [None, "EAFNOSUPPORT", None, None, None]
    assert df["retval"].tolist()[:3] == [pd.NA, -97, 0]
    assert df["filename"].iloc[3] == "/etc/passwd" and pd.isna(df["filename"].iloc[0])
    assert list(df["probe"].cat.categories) == [s.label for s in SCHEMAS]
    assert df["probe"].tolist() == [s.label for s in SCHEMAS[:2]] + [
        CONNECT_RET.label,
        OPEN.label,
        READ.label,
    ]


def test_conflicting_kinds_and_empty_frame() -> None:
    a = ProbeSchema("a", (Column("retval", "int"),), False)
    b = ProbeSchema("b.return", (Column("retval", "hex"),), False)
    c = ProbeSchema("c", (Column("v", "uint"),), False)
    d = ProbeSchema("d", (Column("v", "hex"),), False)
    p = parse_all(
        [a, b, c, d],
        pty(
            b"".join(
                [
                    format_record(0, 1, 1, 1, 0, "x", [-1], schema=a),
                    format_record(1, 1, 1, 1, 0, "x", [0xFFFFFFFFFFFFFFFF], schema=b),
                    format_record(2, 1, 1, 1, 0, "x", [5], schema=c),
                    format_record(3, 1, 1, 1, 0, "x", [255], schema=d),
                ]
            )
        ),
    )
    df = p.frame()
    assert df["retval"].dtype == object  # int and hex: exact Python ints
    assert df["retval"].tolist() == [-1, 0xFFFFFFFFFFFFFFFF, None, None]
    assert str(df["v"].dtype) == "UInt64"  # uint and hex share uint64
    assert df["v"].tolist()[2:] == [5, 255]
    empty = RecordParser(SCHEMAS).frame()
    assert len(empty) == 0
    assert str(empty["retval"].dtype) == "Int64" and str(empty["time"].dtype) == "datetime64[ns]"


def test_frame_is_protected_and_cached() -> None:
    raw = pty(
        b"".join(
            format_record(0, T0 + i, i, i, 0, "a", [i, i, i], schema=CONNECT) for i in range(5)
        )
    )
    p = RecordParser([CONNECT])
    p.feed(raw)
    p.flush()
    df = p.frame()
    df.loc[0, "pid"] = 999
    df["sk"] = 0
    again = p.frame()
    assert again["pid"].tolist() == [0, 1, 2, 3, 4] and again["sk"].tolist() == [0, 1, 2, 3, 4]
    p.feed(pty(format_record(0, T0, 5, 5, 0, "a", [5, 5, 5], schema=CONNECT)))
    p.close()
    assert p.frame()["pid"].tolist() == [0, 1, 2, 3, 4, 5]
    assert df["pid"].tolist() == [999, 1, 2, 3, 4]


def test_batches() -> None:
    p = RecordParser([CONNECT], batch_bytes=1 << 20)
    p.feed(pty(format_record(0, 1, 1, 1, 0, "a", [1, 2, 3], schema=CONNECT)))
    assert p.row_count == 0 and p.buffered > 0  # buffered, not parsed yet
    b = p.flush()
    assert b.rows == 1 and b.frame is not None and list(b.frame.index) == [0]
    p.feed(pty(b"hello\n" + format_record(0, 2, 1, 1, 0, "b", [1, 2, 3], schema=CONNECT)))
    p.feed(b"partial line")
    b = p.flush()
    assert b.messages == ("hello",) and b.rows == 1 and list(b.frame.index) == [1]
    assert b.frame["comm"].tolist() == ["b"]
    b = p.close()
    assert b.messages == ("partial line",) and b.rows == 0 and b.frame is None
    assert p.closed and p.close().empty
    with pytest.raises(ValueError):
        p.feed(b"x")


def test_feed_parses_but_flush_reports() -> None:
    """feed() parses once batch_bytes are buffered (memory stays bounded) but reports
    nothing itself: the next flush()/close() reports it, once."""
    p = RecordParser([CONNECT], batch_bytes=100)
    lines = [format_record(0, i, i, i, 0, "a", [i, i, i], schema=CONNECT) for i in range(50)]
    for ln in lines:
        assert p.feed(pty(ln)) is None  # nothing to report: see flush()
    p.feed(b"msg\r\n@@smh\th\tlog\r\nvalue |---- count\r\n    1 |@ 1\r\n@@smh-end\r\n")
    assert p.row_count >= 40 and p.buffered < 400  # parsed already, little buffered
    b = p.flush()
    assert b.rows == 50 and b.messages == ("msg",) and len(b.histograms) == 1
    assert list(b.frame["pid"]) == list(range(50))
    assert p.flush().empty and p.close().empty


# ---- print_regs() dumps ---------------------------------------------------------------


def regs_in_text(text: str) -> dict[str, int]:
    """The register values printed in a dump, read independently of records.py."""
    names = {"R08": "r8", "R09": "r9", "FS": "fs", "GS": "gs", "knlGS": "knlgs"}
    out = {}
    for name, val in re.findall(r"(\w+): *([0-9a-f]+)", text):
        out[names.get(name, name.lower())] = int(val, 16)
    return out


@pytest.mark.parametrize("name", [f"{R48}/4c_print_regs.stdout", f"{R51}/r_c.stdout"])
def test_print_regs_real_dumps(name: str, reference: Callable[[str], Path]) -> None:
    text = reference(name).read_bytes()
    dump_text = "\n".join(ln for ln in text.decode().splitlines() if not ln.startswith("did "))
    want = regs_in_text(dump_text)
    assert set(want) == set(PRINT_REGS_COLUMNS)
    record = format_record(0, T0, 1234, 1234, 1, "python3", [])
    raw = pty(record + text)  # r_c: the workload's line comes before the dump
    for batch_bytes in (1, 100, 1 << 20):
        p = RecordParser([REGS], batch_bytes=batch_bytes)
        for i in range(0, len(raw), 37):
            p.feed(raw[i : i + 37])
            p.flush()
        p.close()
        df = p.frame()
        assert len(df) == 1 and p.damaged_count == 0
        got = {r: int(df[r].iloc[0]) for r in PRINT_REGS_COLUMNS}
        assert got == want
        assert all(str(df[r].dtype) == "UInt64" for r in PRINT_REGS_COLUMNS)
        assert p.messages == [ln for ln in text.decode().splitlines() if ln.startswith("did ")]
    assert parse_print_regs(dump_text.splitlines()) == want


@pytest.fixture
def dump_lines(reference: Callable[[str], Path]) -> Callable[[], list[bytes]]:
    def lines() -> list[bytes]:
        return [
            ln
            for ln in reference(f"{R48}/4c_print_regs.stdout").read_bytes().splitlines()
            if not ln.startswith(b"did ")
        ]

    return lines


def test_print_regs_interrupted_or_damaged(dump_lines: Callable[[], list[bytes]]) -> None:
    dump = dump_lines()
    rec = [format_record(0, T0 + i, 1, 1, 0, "p", []) for i in range(4)]
    other = ProbeSchema("other", (Column("x", "int"),), False)
    orec = format_record(1, T0, 1, 1, 0, "p", [7], schema=other)
    broken = dump[:]
    broken[1] = b"RSP: ff8fe5did 3 connects"  # another write landed inside the line
    raw = pty(
        b"".join(
            [
                rec[0],
                b"\n".join(dump[:5]) + b"\n",
                orec,  # interrupted by a record
                rec[1],
                b"\n".join(broken) + b"\n",  # damaged dump line
                rec[2],
                b"x\n" * 3,
                b"\n".join(dump) + b"\n",  # foreign lines inside: fine
                rec[3],
                b"\n".join(dump[:3]) + b"\n",  # cut off by the end
            ]
        )
    )
    p = parse_all([REGS, other], raw, batch_bytes=50)
    df = p.frame()
    assert df["probe"].tolist() == ["tcp_v4_connect", "other"] + ["tcp_v4_connect"] * 3
    assert df["rip"].isna().tolist() == [True, True, True, False, True]
    assert int(df["rip"].iloc[3]) == 0xFFFFFFFF9E2A03B0
    assert df["x"].tolist()[1] == 7
    want_msgs = (
        [d.decode() for d in dump[:5]]
        + [b.decode() for b in broken]
        + ["x"] * 3
        + [d.decode() for d in dump[:3]]
    )
    assert p.messages == want_msgs
    assert p.damaged_count == 0


def test_print_regs_wrong_order_and_too_much_between(dump_lines: Callable[[], list[bytes]]) -> None:
    dump = dump_lines()
    rec = format_record(0, T0, 1, 1, 0, "p", [])
    swapped = [dump[0], dump[2], dump[1]] + dump[3:]
    far = [dump[0]] + [b"noise"] * 20 + dump[1:]
    for body in (swapped, far):
        p = parse_all([REGS], pty(rec + b"\n".join(body) + b"\n"))
        assert pd.isna(p.frame()["rip"].iloc[0])
        assert p.messages == [b.decode() for b in body]


# ---- messages from real stap runs -----------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "4f_wildcard_run.stderr",
        "4b_return.stderr",
        "4c_print_regs.stderr",
        "9_stock_runtime.stderr",
        "4e_statement_nog.stderr",
    ],
)
def test_reference_messages_kept_in_order(name: str, reference: Callable[[str], Path]) -> None:
    text = reference(f"{R48}/{name}").read_bytes()
    lines = text.decode("utf-8", "backslashreplace").splitlines()
    recs = [
        format_record(0, T0 + i, i, i, 0, "c", [i, i, i], schema=CONNECT) for i in range(len(lines))
    ]
    # records and stap's lines interleaved, cut in odd places
    raw = pty(b"".join(r + ln + b"\n" for r, ln in zip(recs, text.splitlines(), strict=True)))
    p = RecordParser([CONNECT], batch_bytes=97)
    for i in range(0, len(raw), 61):
        p.feed(raw[i : i + 61])
    p.close()
    assert p.messages == lines
    assert p.frame()["pid"].tolist() == list(range(len(lines)))
    assert p.damaged_count == 0


def test_seed_stdout_is_messages(reference: Callable[[str], Path]) -> None:
    """The seed's own printf lines are not records: all messages, never rows."""
    text = reference(f"{R48}/4f_wildcard_run.stdout").read_bytes()
    p = parse_all(SCHEMAS, pty(text))
    assert p.row_count == 0 and p.damaged_count == 0
    assert p.messages == text.decode().splitlines()


# ---- histograms and summaries in the stream -------------------------------------------


def test_hist_and_summary_tags(reference: Callable[[str], Path]) -> None:
    hist = reference(f"{R51}/r_h.stdout").read_bytes().split(b"\n", 2)[2]  # from the header on
    raw = pty(
        b"".join(
            [
                format_record(0, T0, 1, 1, 0, "a", [1, 2, 3], schema=CONNECT),
                b"@@smh\treads\tlog\n",
                hist,
                b"@@smh-end\n",
                b"@@sms\treads\t577\t1\t262144\t5078\t2930006\t@@\n",
                b"@@smc\tunpaired\t0\t3\t@@\n",
            ]
        )
    )
    p = RecordParser([CONNECT], batch_bytes=64)
    for i in range(0, len(raw), 50):
        p.feed(raw[i : i + 50])
    got = [p.close()]
    assert len(p.histograms) == 1 and sum(len(b.histograms) for b in got) == 1
    h = p.histograms[0]
    assert h.name == "reads" and h.kind == "log" and h.frame["count"].sum() == 577
    assert [s.count for s in p.summaries] == [577] and p.summaries[0].max == 262144
    assert p.messages == []
    assert [(t.tag, t.name, t.value) for t in p.tag_counts] == [("smc", "unpaired", 3)]
    assert p.row_count == 1


def test_unterminated_hist_block_becomes_messages() -> None:
    p = parse_all([CONNECT], pty(b"@@smh\tx\tlog\nvalue |---- count\n    1 |@ 1\n"))
    assert not p.histograms
    assert p.messages == ["@@smh\tx\tlog", "value |---- count", "    1 |@ 1"]
