"""%%stap on the lab: -T stops the run from the host, --spec makes rows of the records a
hand-written script prints (here the script %%kprobe generates, pasted as a %%stap cell)."""

from __future__ import annotations

import time

from stapmagic import pipeline


def test_stap_duration_and_spec_on_the_lab(cell):
    script = pipeline.prepare(
        "ksys_read fd:uint", "", pipeline.ProbeOptions(dry_run=True)
    ).script_text
    t0 = time.monotonic()
    value, err, run = cell(f"%%stap -q -T 3 --spec 'ksys_read fd:uint'\n{script}")
    took = time.monotonic() - t0
    assert err is None, err
    # -T ended it (the script itself never exits): exit() from the timer, not an interrupt
    assert run.ok and not run.interrupted and run.status.exit_status == 0, run.summary()
    assert run.status.duration < took < 300
    assert len(value) > 0, "\n".join(run.messages)
    assert list(value.columns[-1:]) == ["fd"]
    assert value["fd"].dtype == "uint32" or str(value["fd"].dtype).startswith("uint")
    assert set(value["probe"]) == {"ksys_read"}
    assert not any(m.startswith("@@sm1") for m in run.messages)  # rows, not messages
    assert run.damaged == 0
