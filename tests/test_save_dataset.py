"""--save DIR / --keep N (issue 16, long runs): rows streamed to a Parquet dataset while they
arrive, and the in-memory frame bounded to the last N rows.

The writer is tested on frames the parser itself makes; the cells run with the fake stap
(tests/fakestap: process handling only, never proof of probing). The lab test
(tests/lab/test_save.py) runs a million-row timer flood on a kernel.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_command_exit import run_cell as _cell

from stapmagic import pipeline, records, save
from stapmagic.records import format_record
from stapmagic.script import ScriptOptions, generate
from stapmagic.spec import parse_spec

SPEC = "tcp_v4_connect sk:ptr uaddr:ptr len:uint"
T0 = 1_700_000_000_000_000_000


def _schemas(spec: str = SPEC):
    return generate(parse_spec(spec), ScriptOptions()).probes


def _records(n: int, start: int = 0, comm: str = "bash") -> bytes:
    schema = _schemas()[0]
    return b"".join(
        format_record(
            0,
            T0 + i,
            40 + i,
            40 + i,
            i % 2,
            comm,
            [0xFFFF888000000000 + i, 0xFFFFC90000000000 + i, i],
            schema=schema,
        )
        for i in range(start, start + n)
    )


def _batches(n: int, per: int):
    """The parser's own batch frames: n rows, `per` rows a batch."""
    p = records.RecordParser(_schemas())
    for start in range(0, n, per):
        p.feed(_records(min(per, n - start), start))
        batch = p.flush()
        assert batch.frame is not None
        yield batch.frame


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _files(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


# -- the writer ---------------------------------------------------------------------------------


def test_rows_land_in_a_host_partition_and_read_back_equal(tmp_path):
    sink = save.ParquetDataset(tmp_path / "ds", host="lab")
    frames = list(_batches(300, 100))
    for f in frames:
        sink.write(f)
    sink.close()
    assert _files(tmp_path / "ds") == [f"host=lab/{os.path.basename(p)}" for p in sink.files]
    back = pd.read_parquet(tmp_path / "ds")
    assert sink.rows == len(back) == 300
    assert list(back["host"].astype(str).unique()) == ["lab"]
    want = pd.concat(frames, ignore_index=True)
    assert list(back["len"]) == list(want["len"]) == list(range(300))
    # pointers stay unsigned 64-bit values (shown in hex by the notebook, never text)
    assert back["sk"].dtype == np.uint64 and back["sk"].iloc[5] == 0xFFFF888000000005
    assert back["time"].dtype == "datetime64[ns]"
    assert list(back["comm"].astype(str).unique()) == ["bash"]


def test_files_rotate_by_size_and_by_time(tmp_path):
    clock = Clock()
    sink = save.ParquetDataset(
        tmp_path, host="lab", max_bytes=10_000, max_seconds=3600, clock=clock
    )
    for f in _batches(1000, 100):  # each batch ~6 kB in memory: a new file every 2 batches
        sink.write(f)
    assert len(sink.files) >= 4
    sink.close()
    by_size = len(sink.files)
    sink = save.ParquetDataset(
        tmp_path / "t", host="lab", max_bytes=1 << 30, max_seconds=10, clock=clock
    )
    for f in _batches(400, 100):
        sink.write(f)
        clock.now += 6  # a file is closed once it is 10 s old
    sink.close()
    assert len(sink.files) == 2
    assert by_size and sum(pq.ParquetFile(p).metadata.num_rows for p in sink.files) == 400
    # no rows for a while: the open file is closed on time all the same (take() polls)
    sink = save.ParquetDataset(tmp_path / "q", host="lab", max_seconds=10, clock=clock)
    sink.write(next(_batches(5, 5)))
    clock.now += 5
    sink.poll()
    assert not sink.files
    clock.now += 5
    sink.poll()
    assert len(sink.files) == 1 and len(pd.read_parquet(tmp_path / "q")) == 5


def test_a_reader_sees_only_whole_files_while_the_run_goes_on(tmp_path):
    sink = save.ParquetDataset(tmp_path, host="lab", max_bytes=10_000)
    gen = _batches(1000, 100)
    for _ in range(5):
        sink.write(next(gen))
    # one file is open (being written): it has a name readers skip
    assert sink.files and sink.open_path is not None
    assert os.path.basename(sink.open_path).startswith(".")
    assert os.path.exists(sink.open_path)
    mid = pd.read_parquet(tmp_path)
    assert 0 < len(mid) < 500 and len(mid) == sum(
        pq.ParquetFile(p).metadata.num_rows for p in sink.files
    )
    for f in gen:
        sink.write(f)
    sink.close()
    assert sink.open_path is None
    assert not [f for f in _files(tmp_path) if os.path.basename(f).startswith(".")]
    assert len(pd.read_parquet(tmp_path)) == 1000


def test_schema_is_the_same_in_every_file_even_for_all_na_columns(tmp_path):
    # two probes with different arguments: a file may hold only one probe's rows, whose
    # other columns are all NA (and the comm categories grow from batch to batch)
    spec = "a x:int s:str p:ptr\nb.return"
    schemas = generate(parse_spec(spec), ScriptOptions()).probes
    p = records.RecordParser(schemas)
    sink = save.ParquetDataset(tmp_path, host="h", max_bytes=1)  # one file per batch
    for i in range(4):
        if i % 2 == 0:
            rec = format_record(
                0, T0 + i, 1, 1, 0, f"c{i}", [i, f"s{i}", 0xFFFF0000 + i], schema=schemas[0]
            )
        else:
            rec = format_record(
                1, T0 + i, 1, 1, 0, f"c{i}" * 200, [-2, "ENOENT"], schema=schemas[1]
            )
        p.feed(rec)
        sink.write(p.flush().frame)
    sink.close()
    assert len(sink.files) == 4
    first = pq.read_schema(sink.files[0])
    assert all(pq.read_schema(f).equals(first) for f in sink.files[1:])
    back = pd.read_parquet(tmp_path)
    assert len(back) == 4
    assert back["s"].isna().tolist() == [False, True, False, True]
    assert back["retval"].isna().tolist() == [True, False, True, False]
    assert back["errno"].isna().tolist() == [True, False, True, False]
    assert str(back["retval"].dtype) == "Int64" and str(back["p"].dtype) == "UInt64"
    assert back["p"].iloc[2] == 0xFFFF0002


def test_host_column_makes_one_partition_per_host(tmp_path):
    frame = next(_batches(6, 6))
    frame["host"] = pd.Categorical(["lab", "lab:b", "ssh://root@web1"] * 2)
    sink = save.ParquetDataset(tmp_path, host="unused")
    sink.write(frame)
    sink.close()
    dirs = sorted(os.listdir(tmp_path))
    assert dirs == sorted(["host=lab", "host=lab%3Ab", "host=ssh%3A%2F%2Froot%40web1"])
    back = pd.read_parquet(tmp_path)
    assert sorted(back["host"].astype(str)) == sorted(["lab", "lab:b", "ssh://root@web1"] * 2)


def test_files_of_another_run_in_the_same_directory_are_kept(tmp_path):
    for _ in range(2):
        sink = save.ParquetDataset(tmp_path, host="lab")
        sink.write(next(_batches(10, 10)))
        sink.close()
    assert len(pd.read_parquet(tmp_path)) == 20


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: (d / "f").write_text("x") and d / "f", "is a file"),
        (lambda d: (d / "f").write_text("x") and d / "f" / "sub", "is a file"),
        (lambda d: "/proc/sys/stapmagic", "not writable"),
        (lambda d: "", "needs a directory"),
    ],
)
def test_a_bad_directory_is_refused_with_the_reason(tmp_path, make, needle):
    why = save.problem(str(make(tmp_path)))
    assert why is not None and needle in why


def test_a_good_directory_is_accepted(tmp_path):
    assert save.problem(str(tmp_path / "new" / "deeper")) is None
    assert save.problem(str(tmp_path)) is None


# -- --keep: the parser's rows bounded ----------------------------------------------------------


def test_keep_bounds_the_frame_to_the_last_rows_and_every_batch_is_complete():
    p = records.RecordParser(_schemas())
    p.keep_last(250)
    seen = []
    for start in range(0, 5000, 100):
        p.feed(_records(100, start))
        batch = p.flush()
        seen.extend(batch.frame["len"].tolist())
    df = p.frame()
    assert p.row_count == 5000
    assert list(df["len"]) == list(range(4750, 5000))
    assert list(df.index) == list(range(4750, 5000))  # row numbers of the whole run
    assert seen == list(range(5000))
    # the table does not grow with the run: it is compacted, not extended
    assert p.columns_store.table.capacity <= 4 * 250 + 200


def test_keep_with_a_batch_larger_than_keep():
    p = records.RecordParser(_schemas(), batch_bytes=1 << 30)
    p.keep_last(10)
    p.feed(_records(1000))
    b = p.flush()
    assert list(b.frame["len"]) == list(range(1000))
    assert list(p.frame()["len"]) == list(range(990, 1000))
    p.feed(_records(5, 1000))
    assert list(p.close().frame["len"]) == list(range(1000, 1005))
    assert list(p.frame()["len"]) == list(range(995, 1005))


def test_keep_with_text_columns():
    schemas = generate(parse_spec("f name:str"), ScriptOptions()).probes
    p = records.RecordParser(schemas)
    p.keep_last(3)
    for i in range(2000):
        p.feed(format_record(0, T0 + i, 1, 1, 0, "c", [f"n{i}"], schema=schemas[0]))
        if i % 7 == 0:
            p.flush()
    p.close()
    assert list(p.frame()["name"]) == ["n1997", "n1998", "n1999"]


# -- through a cell ------------------------------------------------------------------------------


@pytest.fixture
def fake(fake_stap_path, monkeypatch, tmp_path):
    """The fake stap prints N records, then runs the -c command."""

    def records_file(n: int) -> None:
        path = tmp_path / "records.bin"
        path.write_bytes(_records(n))
        monkeypatch.setenv("FAKESTAP_RECORDS", str(path))

    monkeypatch.setenv("FAKESTAP_PYTHON", sys.executable)
    monkeypatch.setenv("FAKESTAP_RUN_COMMAND", "1")
    monkeypatch.setattr(pipeline, "_target_problem", lambda target: None)
    return records_file


def test_cell_saves_every_row_and_keeps_the_last(ip, fake, tmp_path, capsys):
    fake(5000)
    ds = tmp_path / "ds"
    value, err, run = _cell(ip, f"%%kprobe --save {ds} --keep 100 -q {SPEC}")
    assert err is None, err
    assert list(value["len"]) == list(range(4900, 5000))
    back = pd.read_parquet(ds)
    assert list(back["len"]) == list(range(5000))
    assert list(back["host"].astype(str).unique()) == ["local"]
    out = capsys.readouterr().out
    assert "5,000 rows" in out or "5000 rows" in out
    assert f"saved to {ds}" in out and "5,000 rows in 1 file" in out
    assert "the frame keeps the last 100" in out
    assert run.saved is not None and run.saved.rows == 5000


def test_a_failed_run_still_writes_what_it_received(ip, fake, tmp_path):
    fake(300)
    ds = tmp_path / "ds"
    value, err, run = _cell(ip, f"%%kprobe --save {ds} -q -c \"sh -c 'kill -9 $PPID'\" {SPEC}")
    assert err is not None and not run.ok
    assert len(pd.read_parquet(ds)) == 300
    assert f"saved to {ds}" in str(err)


def test_keep_without_save_is_refused(ip, fake):
    fake(3)
    _, err, _ = _cell(ip, f"%%kprobe --keep 10 -q {SPEC}")
    assert err is not None and "--keep" in str(err) and "--save" in str(err)


@pytest.mark.parametrize("bad, needle", [("FILE", "is a file"), ("/proc/sys/x", "not writable")])
def test_a_bad_save_directory_is_one_usage_error_before_anything_runs(
    ip, fake, tmp_path, bad, needle
):
    from IPython.core.error import UsageError

    fake(3)
    path = tmp_path / "f"
    path.write_text("")
    target = str(path) if bad == "FILE" else bad
    _, err, run = _cell(ip, f"%%kprobe --save {target} -q {SPEC}")
    assert isinstance(err, UsageError) and needle in str(err) and "--save" in str(err)
    assert run is None  # nothing ran


def test_a_stopped_background_run_closes_its_files(ip, fake, tmp_path):
    fake(300)
    ds = tmp_path / "ds"
    run, err, _ = _cell(ip, f'%%kprobe --bg --save {ds} -q -c "sleep 30" {SPEC}')
    assert err is None, err
    deadline = time.monotonic() + 20
    while run.saved.rows < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    # written, but not whole yet: only under a name readers skip
    assert run.running and [os.path.basename(f)[0] for f in _files(ds)] == ["."]
    run.stop(20)
    assert not run.running and run.interrupted
    assert len(pd.read_parquet(ds)) == 300
    assert [os.path.basename(f) for f in _files(ds)] == [os.path.basename(run.saved.files[0])]


def test_rows_per_probe_count_the_rows_keep_let_go():
    # the ledger compares them with the kernel's count: --keep must not look like loss
    schemas = generate(parse_spec("a x:int\nb y:int"), ScriptOptions()).probes
    p = records.RecordParser(schemas)
    p.keep_last(5)
    for i in range(3000):
        p.feed(format_record(i % 3 // 2, T0 + i, 1, 1, 0, "c", [i], schema=schemas[i % 3 // 2]))
        if i % 100 == 0:
            p.flush()
    p.close()
    assert len(p.frame()) == 5
    assert p.rows_per_probe() == {"a": 2000, "b": 1000}
