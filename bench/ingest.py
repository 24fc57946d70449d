"""Benchmark 1 (issue 6): streaming ingest vs pandas.read_csv.

2,000,000 records of one probe (time, probe, pid, tid, comm, cpu, 3 arguments, retval),
written with `format_record` and with the pty's CRLF line ends, are

* fed to `RecordParser` in random 4-64 KiB chunks (flush() every 0.2 s like the live view's
  timer), then close() and frame();
* parsed by `pandas.read_csv(engine="c")` from memory into the same dtypes (time
  datetime64[ns], probe and comm category, the rest int64/uint64), with its fastest options
  (na_filter=False, QUOTE_NONE).

A third contender, RecordParser without its compiled scanner (records._recscan set to None:
what an install without a C compiler runs), is timed beside them when the scanner is built.

One untimed warm-up round of each comes first. Throughput is best-of-N wall time (this machine is shared; the median is printed too).
Peak extra memory is measured in a fresh child process per contender (so no earlier garbage
hides growth): RSS sampled every millisecond minus the RSS before parsing, plus the peak of
pyarrow's allocator (which tracemalloc does not see); the child also reports the final
DataFrame's memory (deep).

Variants: "dec" (arguments int, uint, int: pandas can parse everything natively; the
headline) and "hex" (arguments hex, hex, uint like tcp_v4_connect's sk, uaddr, addr_len;
read_csv has no hex parser, so its hex columns go through int(x, 16) per value).
"""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

from stapmagic import records  # noqa: E402
from stapmagic.records import RecordParser, format_record  # noqa: E402
from stapmagic.schema import Column, ProbeSchema  # noqa: E402

N_RECORDS = 2_000_000
COMMS = [
    "python3",
    "sshd",
    "kworker/0:1",
    "systemd-journal",
    "nginx",
    "curl",
    "Web Content",
    "postgres",
]
T0 = 1_764_000_000_000_000_000


def make_schema(variant: str) -> ProbeSchema:
    if variant == "dec":
        cols = (Column("fd", "int"), Column("count", "uint"), Column("offset", "int"))
    elif variant == "hex":
        cols = (Column("sk", "hex"), Column("uaddr", "hex"), Column("addr_len", "uint"))
    else:
        raise ValueError(variant)
    return ProbeSchema("tcp_v4_connect", (*cols, Column("retval", "int")), False)


def generate(n: int, variant: str, seed: int = 1) -> bytes:
    """n records of the variant's schema, CRLF line ends (what the pty delivers)."""
    schema = make_schema(variant)
    rng = np.random.default_rng(seed)
    ts = (T0 + np.cumsum(rng.integers(200, 20_000, n))).tolist()
    pid = rng.integers(1, 4_000_000, n).tolist()
    cpu = rng.integers(0, 64, n).tolist()
    comm = rng.integers(0, len(COMMS), n).tolist()
    rv = rng.integers(-4095, 1 << 31, n).tolist()
    if variant == "dec":
        a1 = rng.integers(-1, 1 << 20, n).tolist()
        a2 = rng.integers(0, 1 << 63, n, dtype=np.uint64).tolist()
        a3 = rng.integers(-(1 << 40), 1 << 40, n).tolist()
    else:
        a1 = (0xFF11000000000000 + rng.integers(0, 1 << 40, n, dtype=np.uint64)).tolist()
        a2 = (0x7FFC00000000 + rng.integers(0, 1 << 32, n, dtype=np.uint64)).tolist()
        a3 = rng.integers(0, 128, n).tolist()
    fr = format_record
    lines = [
        fr(
            0,
            ts[i],
            pid[i],
            pid[i],
            cpu[i],
            COMMS[comm[i]],
            [a1[i], a2[i], a3[i], rv[i]],
            schema=schema,
        )
        for i in range(n)
    ]
    return b"".join(lines).replace(b"\n", b"\r\n")


# ---- the two contenders -------------------------------------------------------------


def read_csv_frame(data: bytes, schema: ProbeSchema) -> pd.DataFrame:
    names = [
        "tag",
        "idx",
        "time",
        "pid",
        "tid",
        "cpu",
        "comm",
        *[c.name for c in schema.columns],
        "end",
    ]
    dtype: dict[str, Any] = {
        "idx": "int64",
        "time": "int64",
        "pid": "int64",
        "tid": "int64",
        "cpu": "int64",
        "comm": "category",
    }
    for c in schema.columns:
        dtype[c.name] = {"int": "int64", "uint": "uint64", "hex": object}[c.kind]
    df = pd.read_csv(
        io.BytesIO(data),
        sep="\t",
        header=None,
        names=names,
        usecols=names[1:-1],
        dtype=dtype,
        engine="c",
        na_filter=False,
        quoting=csv.QUOTE_NONE,
    )
    out: dict[str, Any] = {
        "time": df["time"].to_numpy().view("datetime64[ns]"),
        "probe": pd.Categorical.from_codes(df["idx"].to_numpy(), categories=[schema.label]),
        "pid": df["pid"],
        "tid": df["tid"],
        "comm": df["comm"],
        "cpu": df["cpu"],
    }
    for c in schema.columns:
        if c.kind == "hex":
            out[c.name] = np.array([int(x, 16) for x in df[c.name]], dtype=np.uint64)
        else:
            out[c.name] = df[c.name]
    return pd.DataFrame(out, copy=False)


def chunk_sizes(total: int, seed: int = 7) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4 << 10, (64 << 10) + 1, total // (4 << 10) + 2).tolist()
    out: list[int] = []
    acc = 0
    for s in sizes:
        if acc >= total:
            break
        out.append(s)
        acc += s
    return out


def ingest_frame(
    data: bytes, schema: ProbeSchema, sizes: list[int], flush_every: float = 0.2
) -> pd.DataFrame:
    parser = RecordParser([schema])
    pos = 0
    last = time.monotonic()
    for s in sizes:
        parser.feed(data[pos : pos + s])  # a pty read() returns a fresh bytes object too
        pos += s
        now = time.monotonic()
        if now - last >= flush_every:
            parser.flush()
            last = now
    if pos < len(data):
        parser.feed(data[pos:])
    parser.close()
    if parser.damaged_count:
        raise AssertionError(f"{parser.damaged_count} damaged lines in clean input")
    return parser.frame()


def ingest_frame_pyarrow(data: bytes, schema: ProbeSchema, sizes: list[int]) -> pd.DataFrame:
    """ingest_frame without the compiled scanner: what an install without a C compiler
    does (pyarrow's multithreaded CSV reader first), for the side-by-side figure."""
    saved = records._recscan
    records._recscan = None
    try:
        return ingest_frame(data, schema, sizes)
    finally:
        records._recscan = saved


def same_frames(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal columns, dtypes and values (categoricals by value: their categories may be
    in another order). Column by column with numpy: assert_frame_equal takes a minute here."""
    assert list(a.columns) == list(b.columns), (list(a.columns), list(b.columns))
    assert len(a) == len(b)
    for c in a.columns:
        x, y = a[c], b[c]
        if isinstance(x.dtype, pd.CategoricalDtype):
            assert isinstance(y.dtype, pd.CategoricalDtype), c
            lut = pd.Index(y.cat.categories).get_indexer(x.cat.categories)
            assert (lut >= 0).all(), c
            assert np.array_equal(lut[x.cat.codes.to_numpy()], y.cat.codes.to_numpy()), c
        else:
            assert x.dtype == y.dtype, (c, x.dtype, y.dtype)
            assert np.array_equal(x.to_numpy(), y.to_numpy()), c


# ---- memory (child process) -----------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(which: str, path: str, variant: str) -> None:
    schema = make_schema(variant)
    data = Path(path).read_bytes()
    sizes = chunk_sizes(len(data))
    gc.collect()
    base_rss = _rss()
    base_arrow = pa.total_allocated_bytes()
    peak = [base_rss, base_arrow]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            peak[1] = max(peak[1], pa.total_allocated_bytes())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    if which == "ingest":
        df = ingest_frame(data, schema, sizes)
    else:
        df = read_csv_frame(data, schema)
    elapsed = time.perf_counter() - t
    peak[0] = max(peak[0], _rss())
    stop.set()
    th.join()
    print(
        json.dumps(
            {
                "rss_peak_extra": peak[0] - base_rss,
                "arrow_peak_extra": peak[1] - base_arrow,
                "frame_bytes": int(df.memory_usage(deep=True).sum()),
                "rows": len(df),
                "seconds": elapsed,
            }
        )
    )


def measure_memory(which: str, path: str, variant: str) -> dict[str, Any]:
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(Path(__file__).resolve()), "--memory-child", which, path, variant],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---- the benchmark ------------------------------------------------------------------


def _time(fn: Callable[[], pd.DataFrame]) -> tuple[float, float, pd.DataFrame]:
    """(wall seconds, CPU seconds of this process, all threads; the result)."""
    gc.collect()
    t, c = time.perf_counter(), time.process_time()
    df = fn()
    return time.perf_counter() - t, time.process_time() - c, df


def run(
    variant: str = "dec", n: int = N_RECORDS, repeats: int = 5, out: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run benchmark 1; returns the figures (and prints progress through `out`)."""
    schema = make_schema(variant)
    t = time.perf_counter()
    data = generate(n, variant)
    out(
        f"generated {n:,} records, {len(data) / 1e6:.1f} MB with format_record in "
        f"{time.perf_counter() - t:.1f} s"
    )
    sizes = chunk_sizes(len(data))
    contenders: dict[str, Callable[[], pd.DataFrame]] = {
        "read_csv": lambda: read_csv_frame(data, schema),
        "ingest": lambda: ingest_frame(data, schema, sizes),
    }
    if records.SCANNER == "compiled":
        contenders["ingest_pyarrow"] = lambda: ingest_frame_pyarrow(data, schema, sizes)
    out(f"RecordParser's first parser of a clean batch: {records.SCANNER}")
    t = time.perf_counter()
    # One untimed round first: on this VM the first touch of memory the process has not
    # used before costs ~2.5 ms/MB, and would land on whichever contender ran first.
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    cpu: dict[str, list[float]] = {k: [] for k in contenders}
    frames: dict[str, pd.DataFrame] = {}
    for _ in range(repeats):  # interleaved, so background load hits all alike
        for name, fn in contenders.items():
            el, c, df = _time(fn)
            times[name].append(el)
            cpu[name].append(c)
            frames[name] = df
            del df
    out(f"timed a warm-up and {repeats} interleaved rounds in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    # same result?
    for name in frames:
        if name != "read_csv":
            same_frames(frames[name], frames["read_csv"])
    del frames
    gc.collect()
    with tempfile.NamedTemporaryFile(prefix="stapmagic-bench-", suffix=".bin") as f:
        f.write(data)
        f.flush()
        out(f"compared the frames in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        mem = {w: measure_memory(w, f.name, variant) for w in ("read_csv", "ingest")}
    out(f"measured memory in child processes in {time.perf_counter() - t:.1f} s")
    res: dict[str, Any] = {
        "variant": variant,
        "records": n,
        "bytes": len(data),
        "times": times,
        "cpu": cpu,
        "memory": mem,
    }
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    res["ratio_best"] = best["read_csv"] / best["ingest"]
    res["ratio_median"] = med["read_csv"] / med["ingest"]
    return res


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "--memory-child":
        _memory_child(argv[1], argv[2], argv[3])
        return 0
    from bench.run import main as run_main

    return run_main(["ingest", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
