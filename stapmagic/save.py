"""--save DIR: a run's rows streamed to a Parquet dataset while they arrive (issue 16).

Layout: hive-style, one partition per host, `DIR/host=NAME/part-<start>-<pid>-<n>.parquet`
(NAME percent-encoded, as pyarrow's hive partitioning reads it back: `ssh://root@web1` is
`host=ssh%3A%2F%2Froot%40web1`). A file being written is named `.part-....parquet.tmp`:
pyarrow (pandas.read_parquet), polars and DuckDB skip dot files and read `*.parquet`, so a
reader of DIR during the run sees only whole files; it is renamed once closed. A file is
closed after `max_bytes` of rows (their size in memory) or `max_seconds`, and at the end of
the run, also a failed or interrupted one.

Every file has the schema of the first batch, with the types a batch cannot show fixed:
categories as dictionary<int32, string> (pandas uses int8 codes while there are few),
all-NA text columns as string, mixed-kind columns (several probes' arguments of one name
with different kinds) as text.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StapMagicError

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_SECONDS",
    "ParquetDataset",
    "SaveError",
    "Sink",
    "problem",
]

# --keep's default: rows the in-memory frame keeps with --save.
DEFAULT_KEEP = 1_000_000
# A file is closed (and readable) after this many bytes of rows, or this many seconds.
DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_MAX_SECONDS = 60.0
HOST_COLUMN = "host"


class SaveError(StapMagicError):
    """The dataset could not be written (disk full, directory removed...)."""


class Sink(Protocol):
    """Where a run's batches go as they arrive."""

    rows: int
    failed: str | None

    def write(self, frame: pd.DataFrame) -> None: ...

    def poll(self) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


def problem(path: str) -> str | None:
    """Why --save cannot write a dataset at `path`, or None (a missing directory is made)."""
    if not path or not path.strip():
        return "--save needs a directory, got an empty string"
    if "\x00" in path:
        return "--save contains a NUL byte"
    p = Path(path)
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "" if probe == p else f" (in the path {path})"
        return f"--save {probe} is a file{what}: give a directory (made if missing)"
    if not _writable(probe):
        return f"--save {probe} is not writable: give a directory you can write to"
    return None


def _writable(directory: Path) -> bool:
    # os.access says yes to root everywhere, also on /proc and read-only mounts: try it
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


_runs = itertools.count()


class ParquetDataset:
    """A Sink writing Parquet files, rotated, under `directory/host=NAME/`. `host`: the
    partition of frames without a `host` column; `max_bytes`/`max_seconds` default to
    DEFAULT_MAX_BYTES/DEFAULT_MAX_SECONDS."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        host: str,
        *,
        max_bytes: int | None = None,
        max_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.host = host
        self.max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        self.max_seconds = DEFAULT_MAX_SECONDS if max_seconds is None else max_seconds
        self.clock = clock
        self.rows = 0
        self.failed: str | None = None  # why writing stopped (take())
        self.files: list[str] = []  # closed files, in order
        self.schema: pa.Schema | None = None
        self._stem = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{next(_runs)}"
        self._seq = itertools.count()
        self._open: dict[str, _OpenFile] = {}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SaveError(f"--save cannot make {self.directory}: {exc}") from None

    @property
    def open_path(self) -> str | None:
        """The file being written (a dot name), if any (the last host's)."""
        for f in self._open.values():
            return f.tmp
        return None

    def write(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        if HOST_COLUMN in frame.columns:
            hosts = frame[HOST_COLUMN].astype(str)
            for host, part in frame.drop(columns=[HOST_COLUMN]).groupby(hosts.to_numpy()):
                self._write_host(str(host), part)
        else:
            self._write_host(self.host, frame)
        self.rows += len(frame)

    def _write_host(self, host: str, frame: pd.DataFrame) -> None:
        try:
            table = self._table(frame)
            f = self._open.get(host)
            if f is None:
                f = self._open[host] = self._new_file(host)
            f.writer.write_table(table)
            f.bytes += table.nbytes
            if f.bytes >= self.max_bytes or self.clock() - f.opened >= self.max_seconds:
                self._close_file(host)
        except (OSError, pa.ArrowException) as exc:
            raise SaveError(f"--save could not write to {self.directory}: {exc}") from None

    def _table(self, frame: pd.DataFrame) -> pa.Table:
        frame = frame.copy(deep=False)
        for name in frame.columns:
            col = frame[name]
            if col.dtype == object:
                frame[name] = col.map(lambda v: None if v is None else str(v)).astype("str")
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.schema is None:
            self.schema = _stable(table.schema)
        return table.cast(self.schema)

    def _new_file(self, host: str) -> _OpenFile:
        part = self.directory / f"{HOST_COLUMN}={urllib.parse.quote(host, safe='')}"
        part.mkdir(parents=True, exist_ok=True)
        name = f"part-{self._stem}-{next(self._seq):05d}.parquet"
        assert self.schema is not None
        tmp = str(part / f".{name}.tmp")
        return _OpenFile(tmp, str(part / name), pq.ParquetWriter(tmp, self.schema), self.clock())

    def _close_file(self, host: str) -> None:
        f = self._open.pop(host)
        f.writer.close()
        os.replace(f.tmp, f.final)
        self.files.append(f.final)

    def poll(self) -> None:
        """Close the files open for max_seconds, also when no rows came since (a quiet
        probe's rows become readable on time)."""
        now = self.clock()
        for host, f in list(self._open.items()):
            if now - f.opened >= self.max_seconds:
                try:
                    self._close_file(host)
                except (OSError, pa.ArrowException) as exc:
                    raise SaveError(
                        f"--save could not finish a file in {self.directory}: {exc}"
                    ) from None

    def close(self) -> None:
        """Close every open file (renamed to its final name); the first failure is raised."""
        failure: Exception | None = None
        for host in list(self._open):
            try:
                self._close_file(host)
            except (OSError, pa.ArrowException) as exc:
                failure = failure or exc
        if failure is not None:
            raise SaveError(f"--save could not finish a file in {self.directory}: {failure}")

    def describe(self) -> str:
        n = len(self.files) + len(self._open)
        return f"saved to {self.directory}: {self.rows:,} rows in {n} file{'' if n == 1 else 's'}"


class _OpenFile:
    def __init__(self, tmp: str, final: str, writer: Any, opened: float) -> None:
        self.tmp, self.final, self.writer, self.opened = tmp, final, writer, opened
        self.bytes = 0


def _stable(schema: pa.Schema) -> pa.Schema:
    fields = []
    for f in schema:
        t = f.type
        if pa.types.is_dictionary(t):
            t = pa.dictionary(pa.int32(), pa.string())
        elif pa.types.is_null(t) or pa.types.is_large_string(t):
            t = pa.string()
        fields.append(pa.field(f.name, t, nullable=True))
    # the pandas metadata: nullable Int64/UInt64 and categories read back as they were
    return pa.schema(fields, metadata=schema.metadata)


def take(run: Any, sink: Sink, batch: Any, final: bool) -> None:
    """One batch of `run` into `sink` (and, when `final`, the files closed). A write that
    fails stops the run (its rows stay in memory) and is said in the run's summary."""
    if sink.failed is None:
        try:
            if batch.rows:
                sink.write(batch.frame)
            else:
                sink.poll()
        except SaveError as exc:
            sink.failed = str(exc)
            run.stop_event.set()
    if final:
        try:
            sink.close()
        except SaveError as exc:
            sink.failed = sink.failed or str(exc)


def notes(run: Any) -> list[str]:
    """What a run's summary says about its dataset (--save), if it has one."""
    sink = getattr(run, "saved", None)
    if sink is None:
        return []
    said = [sink.describe()]
    if sink.failed:
        said.append(f"saving stopped the run: {sink.failed}")
    keep = run.parser.columns_store.keep
    if keep is not None and run.parser.row_count > keep:
        said.append(f"the frame keeps the last {keep:,} rows")
    return said
