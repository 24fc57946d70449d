"""The first rows reach on_batch (the live view, the bench's first-row clock) as soon as
their line is complete, not at the next 0.2 s tick; afterwards only the tick flushes."""

from __future__ import annotations

from stapmagic import pipeline, runner
from stapmagic.wire import format_record


def _status(argv):
    return runner.RunStatus(
        exit_status=0,
        signal=None,
        interrupted=False,
        escalated=None,
        duration=1.0,
        argv=tuple(argv),
    )


def _run():
    return pipeline.prepare("tcp_v4_connect", "", pipeline.ProbeOptions(dry_run=True))


def _record(run, n):
    return format_record(0, n, 7, 7, 0, "bash", [], schema=run.script.probes[0]).replace(
        b"\n", b"\r\n"
    )


def test_the_first_record_is_flushed_when_its_line_completes():
    run = _run()
    seen = []  # (after which chunk, final, rows)
    step = [0]

    def source(argv, on_chunk, **kw):  # never calls tick: only the eager flush can show rows
        rec = _record(run, 1)
        for chunk in (b"Pass 5: starting run.\r\n", rec[:5], rec[5:], _record(run, 2)):
            step[0] += 1
            on_chunk(chunk)
        return _status(argv)

    pipeline.execute(
        run, source=source, on_batch=lambda r, b, final: seen.append((step[0], final, b.rows))
    )
    live = [(s, rows) for s, final, rows in seen if not final and rows]
    # the row arrives with the chunk that ends its line (3rd), and the later record waits
    # for the tick (here: the end), not flushed per chunk
    assert live == [(3, 1)]
    assert seen[-1] == (4, True, 1) and len(run.df) == 2


def test_tagged_lines_that_never_parse_are_not_flushed_per_chunk():
    run = _run()
    calls = []

    def source(argv, on_chunk, **kw):
        for _ in range(50):
            on_chunk(b"@@sm1 damaged\r\n")
        return _status(argv)

    pipeline.execute(run, source=source, on_batch=lambda r, b, final: calls.append(final))
    assert calls == [False] * pipeline.FIRST_ROWS_TRIES + [True]  # then only the end
    assert len(run.df) == 0
