"""Issue 15 on the lab's kernel: the loss ledger adds up.

`fired` is counted in the kernel (a per-CPU statistic fed right before each record is
printed) and printed by `probe end`; `rows` are what reached the frame. A run that loses
nothing has fired == rows; a run that loses (a 1 MB buffer and a flood of large records)
says how many, exactly, in the ledger and the summary line.
"""

from __future__ import annotations

import re

DD = "dd if=/dev/zero of=/dev/null bs=1 count=20000"
# stapio stops reading its buffers 400 ms after the run ends (staprun/relay.c close_relayfs)
# and its reader thread for dd's CPU falls seconds behind under TCG: what is unread then is
# lost without a word from stap (issue 15; bench/RESULTS.md). The sleep gives it the time
# to drain, so this run loses nothing; the -c command is the shell, so dd is kept by name.
NO_LOSS_CELL = (
    f"""%%kprobe --target lab --where 'comm == "dd"' -c "sh -c '{DD}; sleep 8'" """
    "ksys_read fd:int"
)


def _show(run, capsys) -> str:
    printed = capsys.readouterr()
    print(printed.out + printed.err)  # the cell's own output, kept in the test log
    print(run.ledger.to_string())
    print("\n".join(m for m in run.messages if "WARNING" in m or "ERROR" in m)[-3000:])
    return printed.out


def test_run_without_loss_adds_up(cell, capsys):
    value, err, run = cell(NO_LOSS_CELL)
    out = _show(run, capsys)
    assert err is None, err
    led = run.ledger
    assert led["rows"].tolist() == [len(value)]
    # dd's 20,000 reads of one byte, plus its start-up reads (and any other dd in the guest)
    assert len(value) >= 20_000
    assert led["fired"].tolist() == [len(value)]
    assert led["lost"].tolist() == [0]
    assert led[["transport_failures", "lost_messages", "skipped_probes"]].sum().sum() == 0
    assert "events lost" not in out and "loss unknown" not in out


def test_run_forced_to_lose_says_how_many_exactly(cell, capsys):
    # dd pinned to CPU 1, where stapio's reader thread for that CPU's buffer is pinned too
    # (staprun/relay.c reader_thread_serialmode), at nice -20 so that the reader (nice 0)
    # gets ~1 % of that CPU: the reader falls far behind, ~200-byte records (--regs)
    # overflow a 1 MB buffer (transport failures) and what it has not read when the run
    # ends is never read (the silent part). A CPU that busy trips stap's overload guard,
    # whose error ends the run before `probe end` (then the ledger can only say unknown).
    value, err, run = cell(
        "%%kprobe --target lab --cmd-only -s 1 --regs rax,rbx,rcx,rdx,rsi,rdi,r8,r9 "
        "-D STP_NO_OVERLOAD "
        '-c "taskset -c 1 nice -n -20 dd if=/dev/zero of=/dev/null bs=1 count=20000" '
        "ksys_read fd:int"
    )
    out = _show(run, capsys)
    assert err is None, err
    led = run.ledger
    fired, rows, lost = (int(led[c].iloc[0]) for c in ("fired", "rows", "lost"))
    assert rows == len(value)
    assert fired >= 20_000
    assert lost > 0 and rows + lost == fired
    m = re.search(r"([\d,]+) of ([\d,]+) events lost \(([\d.]+) %\)", out)
    assert m, out
    assert (int(m[1].replace(",", "")), int(m[2].replace(",", ""))) == (lost, fired)
