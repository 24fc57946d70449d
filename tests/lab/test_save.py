"""--save on the lab (issue 16, long runs): a timer flood of more than a million numbered
records through `%%stap --spec ... --save DIR --keep N`, with the Python process's memory
measured while it runs, and the Parquet dataset compared with what the script sent.

The script is bench/throughput.py's timer (K records per timer.ms(1) tick, each numbered),
with flow control: the lab's transport (stapmagic's pty <- ssh <- stapsh <- stapio, under
TCG) held 50k records/s alone (bench/RESULTS.md) but only ~3k-5k/s while several test runs
shared the 2 cores, and then stap's 16 MB relay buffer overflowed at any fixed rate worth a
million rows (lost messages at 10k/s). So the script prints only up to a credit the test
grants through a procfs file (`probe procfs("credit").write`), a window ahead of the rows
the parser has received: the run goes as fast as the transport, and nothing is lost
for want of buffer. Run it alone: `python -m pytest tests/lab/test_save.py` (~1 min on an
idle lab, several on a shared one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest

from stapmagic import runner, save

K = 25  # records per tick (one printf): at most 25k records/s
TOTAL = 1_050_000
WINDOW = 150_000  # records granted ahead of those received (~4.4 MB of the 16 MB buffer)
KEEP = 20_000
# ~29 bytes: time 1, pid, tid and cpu 0, comm "f", the sequence number
RECORD = r"@@sm1\t0\t1\t0\t0\t0\tf\t%d\t@@\n"
SCRIPT = f"""
global seq, credit
probe procfs("credit").write {{ credit += strtol($value, 10) }}
probe timer.ms(1) {{
\tif (seq >= {TOTAL} || seq + {K} > credit) next
\tprintf("{RECORD * K}", {", ".join(f"seq + {i + 1}" for i in range(K))})
\tseq += {K}
\tif (seq == {TOTAL}) exit()
}}
probe end {{ printf("flood: emitted=%d\\n", seq) }}
"""
LAB = runner.Target("lab")


class Credit(threading.Thread):
    """Grants the script WINDOW records ahead of the rows the run has received."""

    def __init__(self, seen: dict) -> None:
        super().__init__(daemon=True)
        self.seen = seen
        self.granted = 0
        self.stop = threading.Event()
        self.error: str | None = None

    def grant(self, n: int) -> bool:
        try:
            runner.run_on_target(
                LAB,
                ["sh", "-c", f"f=$(ls /proc/systemtap/*/credit) && echo {n} > $f"],
                timeout=60,
            )
        except Exception as exc:  # noqa: BLE001 - not loaded yet: try again
            self.error = str(exc)
            return False
        self.granted += n
        return True

    def run(self) -> None:
        while not self.stop.wait(0.5):
            run = self.seen.get("run")
            if run is None:
                continue
            if self.granted == 0:
                self.grant(WINDOW)
            elif self.granted < TOTAL and run.parser.row_count > self.granted - WINDOW // 2:
                self.grant(min(WINDOW // 2, TOTAL - self.granted))


class Sampler(threading.Thread):
    """This process's RSS every 50 ms, and once files exist, one read of the dataset by
    pandas in another process (so that reading costs this process nothing) mid-run."""

    def __init__(self, directory: str) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.stop = threading.Event()
        self.mid_rows: int | None = None
        self.mid_error: str | None = None

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)
            if self.mid_rows is None and self._has_files():
                self._read_mid()

    def _has_files(self) -> bool:
        import pathlib

        return any(pathlib.Path(self.directory).glob("host=lab/*.parquet"))

    def _read_mid(self) -> None:
        code = "import sys, pandas as pd; print(len(pd.read_parquet(sys.argv[1], columns=['seq'])))"
        done = subprocess.run(  # noqa: S603
            [sys.executable, "-c", code, self.directory],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            self.mid_rows = int(done.stdout)
        else:
            self.mid_error = done.stderr[-2000:]
            self.mid_rows = -1


@pytest.fixture
def flood_dir():
    # not under pytest's tmp_path: that base directory is shared by every pytest run of
    # the user, which removes all but the last three while this test runs for minutes
    d = tempfile.mkdtemp(prefix="stapmagic-save-")
    yield os.path.join(d, "flood")
    shutil.rmtree(d, ignore_errors=True)


def test_a_million_rows_saved_with_memory_bounded(cell, live_run, flood_dir, monkeypatch):
    ds = flood_dir
    credit = Credit(live_run)
    credit.start()
    # files a reader can see during the run: one every 5 s (default 60 s)
    monkeypatch.setattr(save, "DEFAULT_MAX_SECONDS", 5.0)
    sampler = Sampler(ds)
    sampler.start()
    t0 = time.monotonic()
    value, err, run = cell(
        f"%%stap -q --spec 'tick seq:long' -D MAXACTION=1000000 -D STP_NO_OVERLOAD "
        f"--save {ds} --keep {KEEP}\n{SCRIPT}"
    )
    took = time.monotonic() - t0
    sampler.stop.set()
    sampler.join()
    credit.stop.set()
    credit.join()
    print(f"\nstatus {run.status}; granted {credit.granted}; last grant error {credit.error}")
    print("\n".join(run.messages[-30:]))
    assert err is None, err
    ends = [m for m in (re.search(r"flood: emitted=(\d+)", x) for x in run.messages) if m]
    assert ends, (run.summary(), run.messages[-20:], credit.granted, credit.error)
    emitted = int(ends[0].group(1))
    assert emitted == TOTAL >= 1_000_000
    grew_mib = (sampler.peak - sampler.base) >> 20
    print(f"\n{emitted:,} records in {took:.1f} s; RSS +{grew_mib} MiB")

    # the dataset is every row sent: the count and every sequence number once
    back = pd.read_parquet(ds)
    assert len(back) == emitted == run.parser.row_count, run.summary()
    seq = np.sort(back["seq"].to_numpy())
    assert (seq == np.arange(1, emitted + 1)).all()
    assert list(back["host"].astype(str).unique()) == ["lab"]
    assert run.damaged == 0 and run.counters.transport_failures == 0
    assert len(run.saved.files) >= 2  # rotated: readers saw files during the run
    # read by pandas in another process while the run went on: whole files only
    assert sampler.mid_error is None, sampler.mid_error
    assert sampler.mid_rows is not None and 0 < sampler.mid_rows < emitted

    # the frame keeps the last KEEP rows, numbered as in the run
    assert len(value) == KEEP
    assert list(value["seq"].iloc[[0, -1]]) == [emitted - KEEP + 1, emitted]
    assert value.index[0] == emitted - KEEP

    # memory: without --keep the parser's table alone would hold every row (its columns'
    # bytes per row times the rows), more than the whole process grew by
    table = run.parser.columns_store.table
    per_row = sum(a.dtype.itemsize for a in table.arrays.values())
    unbounded = per_row * emitted
    grew = sampler.peak - sampler.base
    assert grew < unbounded, (grew >> 20, unbounded >> 20)
