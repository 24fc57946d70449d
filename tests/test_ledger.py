"""Issue 15: the loss ledger. `fired` is counted in the kernel and printed by `probe end`
as an `@@smc fired` counter; rows are what reached the frame; stap's own counters come from
its end-of-run warnings (formats: shared/reference 4f_wildcard_run.stderr, staprun/relay.c)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from stapmagic import display, ledger, pipeline, runner, wire

TRANSPORT = (
    "WARNING: There were 3 transport failures. Try stap -s to increase the buffer size from 16."
)
LOST = "WARNING: There were 7 lost messages and 560 lost bytes."
SKIPPED = "WARNING: Number of errors: 0, skipped probes: 2"


def _run(body: str, **opts: object) -> pipeline.ProbeRun:
    first, _, rest = body.partition("\n")
    return pipeline.prepare(
        first,
        rest,
        pipeline.ProbeOptions(**opts),  # type: ignore[arg-type]
        lookup=lambda target, names: [],
        build=lambda text, o, target: ["stap", "-e", text],
    )


def _records(run: pipeline.ProbeRun, idx: int, n: int) -> bytes:
    assert run.script is not None
    schema = run.script.probes[idx]
    fields = [5 for _ in schema.columns]
    return b"".join(
        wire.format_record(idx, 1_000 + i, 7, 7, 0, "dd", fields, schema=schema) for i in range(n)
    )


def _fired(idx: int, n: int) -> bytes:
    # as stapio prints a warn() from the script (stderr, merged into the pty)
    return f"WARNING: {wire.COUNTER_TAG}\t{wire.FIRED_COUNTER}\t{idx}\t{n}\t@@\r\n".encode()


def _finish(run: pipeline.ProbeRun, data: bytes, *, signal: int | None = None) -> None:
    run.parser.feed(data)
    run.parser.close()
    run.status = runner.RunStatus(
        exit_status=None if signal else 0,
        signal=signal,
        interrupted=False,
        escalated=None,
        duration=1.0,
    )
    run.done.set()


def test_script_counts_each_probe_after_its_filters_and_prints_fired_at_end() -> None:
    run = _run("ksys_read fd:int count:ulong\nksys_write fd:int", where="fd > 1", count=5)
    assert run.script is not None
    text = run.script.text
    # one per-CPU statistic per probe, fed right before the record is printed: after the
    # stapio guard, the --where filter and -n's cut (what could reach the frame)
    for i in (0, 1):
        handler = text.split(f'printf("{wire.RECORD_TAG}\\t{i}\\t')[0].rsplit("probe ", 1)[1]
        lines = [ln.strip() for ln in handler.splitlines() if ln.strip()]
        assert lines[-1] == f"__sm_f{i} <<< 1", handler
        assert any("--where" in ln for ln in lines) or i == 1
        assert any(ln.startswith("if (k > 5) next") for ln in lines)
        assert f"global __sm_f{i}" in text
    end = text.split("probe end")[-1]
    for i in (0, 1):
        fired = f"{wire.COUNTER_TAG}\\t{wire.FIRED_COUNTER}\\t{i}\\t%d\\t@@"
        # warn(): the control channel, not the output buffer a printf would use
        assert f'warn(sprintf("{fired}", @count(__sm_f{i})))' in end


def test_ledger_counts_fired_rows_and_loss_per_probe() -> None:
    run = _run("ksys_read fd:int\nksys_write fd:int")
    _finish(run, _records(run, 0, 10) + _records(run, 1, 4) + _fired(0, 12) + _fired(1, 4))
    led = run.ledger
    assert list(led["probe"]) == ["ksys_read", "ksys_write"]
    assert list(led["fired"]) == [12, 4]
    assert list(led["rows"]) == [10, 4]
    assert list(led["lost"]) == [2, 0]
    assert str(led["fired"].dtype) == "Int64"
    for col in ("transport_failures", "lost_messages", "skipped_probes"):
        assert list(led[col]) == [0, 0]


def test_ledger_takes_stap_counters_from_its_end_of_run_warnings() -> None:
    run = _run("ksys_read fd:int")
    text = f"{TRANSPORT}\n{LOST}\n{SKIPPED}\n".encode()
    _finish(run, _records(run, 0, 3) + _fired(0, 13) + text)
    row = run.ledger.iloc[0]
    assert (row["transport_failures"], row["lost_messages"], row["skipped_probes"]) == (3, 7, 2)
    assert (row["fired"], row["rows"], row["lost"]) == (13, 3, 10)


def test_killed_run_says_fired_is_unknown_not_zero() -> None:
    run = _run("ksys_read fd:int")
    _finish(run, _records(run, 0, 3), signal=9)
    led = run.ledger
    assert led["rows"].tolist() == [3]
    assert led["fired"].isna().all() and led["lost"].isna().all()
    assert "loss unknown" in run.summary()


def test_summary_line_names_the_loss() -> None:
    run = _run("ksys_read fd:int")
    _finish(run, _records(run, 0, 46) + _fired(0, 50))
    line = display.run_summary(run, None, []).line
    assert "4 of 50 events lost (8.0 %)" in line
    assert "4 of 50 events lost (8.0 %)" in run.summary()


def test_summary_line_formats_big_numbers_like_the_issue() -> None:
    assert ledger.loss_note(1204, 50_000) == "1,204 of 50,000 events lost (2.4 %)"


def test_no_loss_no_loss_note() -> None:
    run = _run("ksys_read fd:int")
    _finish(run, _records(run, 0, 5) + _fired(0, 5))
    assert "events lost" not in display.run_summary(run, None, []).line
    assert run.ledger["lost"].tolist() == [0]


def test_hist_ledger_counts_the_events_the_histogram_holds() -> None:
    run = _run("ksys_read fd:int count:ulong", hist="count")
    assert run.script is not None
    assert "__sm_f0 <<< 1" in run.script.text
    summary = f"{wire.SUMMARY_TAG}\tksys_read\t9\t1\t8\t4\t36\t@@\n".encode()
    _finish(run, summary + _fired(0, 9))
    assert run.ledger[["fired", "rows", "lost"]].iloc[0].tolist() == [9, 9, 0]


def test_count_by_ledger_counts_keyed_and_overflowed_events() -> None:
    run = _run("ksys_read fd:int", count_by="fd")
    keys = b"".join(
        f"{wire.KEYS_TAG}\tksys_read\t{k}\t{c}\t@@\n".encode() for k, c in ((3, 5), (4, 2))
    )
    over = f"{wire.COUNTER_TAG}\tcount_overflow\t0\t1\t@@\n".encode()
    _finish(run, keys + over + _fired(0, 8))
    assert run.ledger[["fired", "rows", "lost"]].iloc[0].tolist() == [8, 8, 0]


def test_stap_script_has_no_kernel_count() -> None:
    run = pipeline.prepare_script(
        "probe begin { exit() }", pipeline.ProbeOptions(), build=lambda t, o, tg: ["stap"]
    )
    _finish(run, b"")
    led = run.ledger
    assert isinstance(led, pd.DataFrame) and led.empty
    assert re.search(r"events lost|loss unknown", run.summary()) is None


@pytest.mark.parametrize(
    "line",
    [
        b"WARNING: @@smc\tfired\t0\tx\t@@\n",
        b"WARNING: @@smc\tfired\t0\t-1\t@@\n",
        b"WARNING: @@smc\tfired\t0\t5\n",  # cut short (stderr cut into by stdout)
        b"@@smc\tfired\t0\t5\t@@\n",  # printed to the output buffer: not the kernel's count
    ],
)
def test_a_malformed_fired_line_leaves_the_count_unknown(line: bytes) -> None:
    run = _run("ksys_read fd:int")
    _finish(run, _records(run, 0, 2) + line)
    assert run.ledger["fired"].isna().all()
    assert "loss unknown" in run.summary()


def test_the_fired_line_is_not_shown_among_the_messages() -> None:
    from stapmagic.session import worth_showing

    shown = worth_showing(["WARNING: @@smc\tfired\t0\t5\t@@", "WARNING: real"])
    assert shown == ["WARNING: real"]


def test_buffer_size_reaches_stap_and_is_checked(ip) -> None:
    argv = pipeline.build_argv(
        "probe begin { exit() }",
        pipeline.ProbeOptions(buffer_mb=2, dry_run=True),
        runner.parse_target("local"),
    )
    assert argv[argv.index("-s") + 1] == "2" and argv.index("-s") < argv.index("-e")
    for bad in ("0", "4096"):
        result = ip.run_cell(f"%%kprobe --dry-run -s {bad} ksys_read")
        assert "1 to 4095" in str(result.error_in_exec), bad


def test_loss_stap_did_not_report_is_named() -> None:
    run = _run("ksys_read fd:int")
    _finish(run, _records(run, 0, 40) + _fired(0, 50) + f"{TRANSPORT}\n".encode())
    line = display.run_summary(run, None, []).line
    assert "10 of 50 events lost (20.0 %)" in line
    assert "7 of them unreported by stap" in line


def test_loss_stap_reported_in_full_gets_no_extra_note() -> None:
    run = _run("ksys_read fd:int")
    _finish(run, _records(run, 0, 47) + _fired(0, 50) + f"{TRANSPORT}\n".encode())
    assert "unreported" not in display.run_summary(run, None, []).line


def test_stapios_wrapped_zero_loss_warning_is_no_diagnosis() -> None:
    # seen on the lab (issue 15): stapio's lost-message counter, pushed past 2**32 by
    # late messages ("unexpected sequence"), comes back to 0 and it still warns
    from stapmagic import diagnose

    assert diagnose.diagnose(["WARNING: There were 0 lost messages and 0 lost bytes."]) == []
    assert [d.count for d in diagnose.diagnose([LOST])] == [7]


def test_a_stap_that_dies_leaves_the_loss_unknown() -> None:
    """Process handling only (the fake stap probes nothing): a run that dies before its end
    probe has no kernel count, so the ledger says NA and the summary line says unknown."""
    import signal
    import sys
    from pathlib import Path

    fake = str(Path(__file__).resolve().parent / "fakestap" / "fakestap.py")
    run = pipeline.prepare(
        "ksys_read fd:int",
        "",
        pipeline.ProbeOptions(),
        lookup=lambda target, names: [],
        build=lambda text, o, target: [sys.executable, fake, "segv", "3"],
    )
    pipeline.execute(run)
    assert run.status is not None and run.status.signal == signal.SIGSEGV
    assert run.ledger["fired"].isna().all() and run.ledger["lost"].isna().all()
    line = display.run_summary(run, None, []).line
    assert "loss unknown" in line and "stap killed by SIGSEGV" in line


def test_counts_that_landed_inside_a_record_line_are_found() -> None:
    """The pty merges stap's stderr into stdout in chunks, not lines (seen on the lab with
    a flood): the warnings can land inside a record, which is then damaged."""
    run = _run("ksys_read fd:int")
    rec = _records(run, 0, 1)
    cut = rec[:20] + _fired(0, 9) + rec[20:]
    cut2 = rec[:25] + f"{TRANSPORT}\r\n".encode() + rec[25:]
    _finish(run, _records(run, 0, 5) + cut + cut2)
    assert run.damaged >= 2
    row = run.ledger.iloc[0]
    assert (row["fired"], row["rows"], row["lost"]) == (9, 5, 4)
    assert row["transport_failures"] == 3
