"""RecordParser's memory stays bounded whatever stap (or a chatty -c command) prints:
overlong lines are cut even when they arrive in one piece, and message lines are kept as a
bounded head and tail, stap's own ERROR/WARNING/Pass lines before ordinary output, with a
count of the ones not kept."""

from __future__ import annotations

import tracemalloc

import pytest

from stapmagic.records import RecordParser, format_record
from stapmagic.schema import Column, ProbeSchema

CONNECT = ProbeSchema(
    "tcp_v4_connect",
    (Column("sk", "hex"), Column("uaddr", "hex"), Column("addr_len", "uint")),
    False,
)
T0 = 1_764_000_000_000_000_000


def rec(i: int) -> bytes:
    return format_record(0, T0 + i, 10, 10, 0, "curl", [i, 2, 16], schema=CONNECT)


def peak_while(fn) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.usefixtures("scanner")
@pytest.mark.parametrize("tagged", [False, True])
@pytest.mark.parametrize("ends", ["newline", "eof"])
def test_a_50mb_line_in_one_feed_is_not_kept_whole(tagged: bool, ends: str) -> None:
    long = (rec(0)[:20] if tagged else b"workload says ") + b"A" * (50 << 20)
    data = rec(1) + long + (b"\r\n" + rec(2) if ends == "newline" else b"")
    p = RecordParser([CONNECT], max_line=1 << 20)

    def go() -> None:
        p.feed(data)
        p.close()

    peak = peak_while(go)
    assert peak < 12 << 20, f"peak {peak >> 20} MiB for a 50 MiB line"
    assert p.row_count == (2 if ends == "newline" else 1)
    if tagged:
        assert p.damaged_count == 1 and len(p.damaged[0]) <= 1 << 20 and p.messages == []
    else:
        assert p.damaged_count == 0 and len(p.messages) == 1
        assert len(p.messages[0]) < (1 << 20) + 100
        more = len(long) + (ends == "newline") - (1 << 20)  # the \r is part of it
        assert p.messages[0].endswith(f"[... {more} more bytes of this line not kept]")


def test_overlong_line_between_short_ones_in_one_chunk() -> None:
    """Whole lines before and after the long one, all in one feed(): same rows, order kept."""
    data = b"before\n" + rec(0) + b"x" * 5000 + b"\n" + rec(1) + b"after\n"
    p = RecordParser([CONNECT], max_line=1000)
    p.feed(data)
    p.close()
    assert p.row_count == 2 and p.messages[0] == "before" and p.messages[-1] == "after"
    assert len(p.messages) == 3 and p.messages[1].startswith("xxx")
    assert p.messages[1].endswith("[... 4000 more bytes of this line not kept]")


def test_many_message_lines_are_bounded_and_counted() -> None:
    n = 120_000
    lines = [b"chatty workload line %d\r\n" % i for i in range(n)]
    lines[1000] = b"WARNING: early warning\r\n"
    lines[100_000] = b"ERROR: something in the middle\r\n"
    lines[100_001] = b"semantic error: also kept\r\n"
    lines[100_002] = b"Pass 5: run failed.  [man error::pass5]\r\n"
    lines[110_000] = rec(7)
    data = b"".join(lines)
    p = RecordParser([CONNECT], messages_head=100, messages_tail=100, stap_messages=50)
    batches = []

    def go() -> None:
        for i in range(0, len(data), 1 << 16):
            p.feed(data[i : i + (1 << 16)])
            if i % (1 << 20) == 0:
                batches.append(p.flush())
        batches.append(p.close())

    go()
    msgs = p.messages
    assert msgs[:3] == [
        "chatty workload line 0",
        "chatty workload line 1",
        "chatty workload line 2",
    ]
    assert msgs[-1] == f"chatty workload line {n - 1}"
    assert len(msgs) == 100 + 100 + 4
    assert msgs[100:104] == [
        "WARNING: early warning",
        "ERROR: something in the middle",
        "semantic error: also kept",
        "Pass 5: run failed.  [man error::pass5]",
    ]
    assert p.messages_dropped == n - 1 - len(msgs)
    assert p.row_count == 1
    # each Batch is bounded the same way, and says how many of its lines it left out
    assert all(len(b.messages) <= 250 for b in batches)
    assert sum(len(b.messages) + b.messages_dropped for b in batches) == n - 1
    assert any("ERROR: something in the middle" in b.messages for b in batches)


def test_stap_lines_past_their_own_bound_are_counted_too() -> None:
    data = b"".join(b"WARNING: w%d\n" % i for i in range(1000))
    p = RecordParser([CONNECT], messages_head=10, messages_tail=10, stap_messages=5)
    p.feed(data)
    p.close()
    assert len(p.messages) == 25 and p.messages[10:15] == [f"WARNING: w{i}" for i in range(10, 15)]
    assert p.messages_dropped == 975
