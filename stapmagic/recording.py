"""Record a stap run to one file and replay it through the same pipeline.

A recording is JSON lines (UTF-8), one object per line:

1. the header: ``{"format": "stapmagic-recording", "version": 1, ...}`` with what was asked
   (``kind`` kprobe|stap, ``spec`` text, ``options``), what ran (``script``, ``argv``,
   ``target``), where (``kernel_release`` from ``uname -r`` on the target, ``stap_version``
   from ``stap -V`` with the same stap the run used), ``kallsyms`` (the target's
   /proc/kallsyms lines the spec was resolved against, for MODULE:FUNCTION probes),
   ``started`` (Unix time) and ``stapmagic_version``;
2. one ``{"t": SECONDS, "data": BASE64}`` per chunk of stap's raw output, in arrival order,
   ``t`` counted from the start of the run. stap runs under a pty, so stdout and stderr are
   ONE stream here, merged in the order they arrived (``"streams": "pty-merged"``);
3. the end: ``{"end": {"exit_status", "signal", "interrupted", "escalated", "duration"}}``.

Replaying feeds the chunks to a fresh parser through ``pipeline.execute`` (``source=``), so
the DataFrame, messages, diagnoses and live view come out of the same code as a live run.
A recording is only replayed for the cell that made it: same kind, spec and options (the
target, -q and the grace period aside), and the script this stapmagic generates from them
must be the recorded one; otherwise :class:`ReplayError` names the difference.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as _dt
import json
import math
import os
import re
import threading
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import __version__, btfrecord, fleet, options, pipeline, runner, targets
from .errors import ReplayError, StapMagicError

__all__ = [
    "FORMAT",
    "SUFFIX",
    "VERSION",
    "Chunk",
    "End",
    "Header",
    "KallsymsCapture",
    "Plan",
    "Player",
    "Recorder",
    "Recording",
    "check_match",
    "describe",
    "load",
    "mode_for",
    "plan",
    "prepare_replay",
    "recording_path",
    "stap_version",
    "target_can_run_stap",
    "unusable",
]

FORMAT = "stapmagic-recording"
VERSION = 1
SUFFIX = ".jsonl"
STREAMS = "pty-merged"
Kind = Literal["kprobe", "stap"]
MODES = ("live", "record", "replay", "auto")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")

# datetime's limit (9999-12-31): `started` is shown as a date.
_MAX_STARTED = 253402300799.0
_SIGNALS = range(1, 65)
_ESCALATIONS = (None, "SIGTERM", "SIGKILL")


class _Bad(Exception):
    """What is wrong with one line of a recording; load() adds the file and line."""


def _js(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):  # an integer of thousands of digits, deep nesting
        text = f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"`{name}` must be a string, not {_js(value)}")
    return value


def _strs(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"`{name}` must be a list of strings, not {_js(value)}")
    return value


def _number(value: Any) -> float | None:
    """A JSON number as a finite float, else None (bools, strings, NaN, 1e400, 10**400)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _seconds(value: Any, name: str, high: float = math.inf) -> float:
    number = _number(value)
    if number is None or not 0 <= number <= high:
        upto = "" if high == math.inf else f" to {high:.0f}"
        raise _Bad(f"`{name}` must be a number of seconds from 0{upto}, not {_js(value)}")
    return number


def _kind(value: Any, name: str) -> str:
    if value not in ("kprobe", "stap"):
        raise _Bad(f'`{name}` must be "kprobe" or "stap", not {_js(value)}')
    return str(value)


def _target(value: Any, name: str) -> str:
    try:
        runner.parse_target(_str(value, name))
    except StapMagicError as exc:
        raise _Bad(f"`{name}`: {exc}") from None
    return str(value)


def _argv(value: Any, name: str) -> list[str]:
    if not _strs(value, name):
        raise _Bad(f"`{name}` is empty")
    return value  # type: ignore[no-any-return]


def _fits(value: Any, tp: Any) -> bool:
    """Whether JSON `value` is what options_json writes for a field of type `tp`."""
    if tp is type(None):
        return value is None
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return any(_fits(value, arg) for arg in typing.get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return _number(value) is not None
    if tp is str:
        return isinstance(value, str)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(
            _fits(v, a) for v, a in zip(value, args, strict=True)
        )
    return False


def _options(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"`{name}` must be an object, not {_js(value)}")
    hints = typing.get_type_hints(pipeline.ProbeOptions)
    for key, item in value.items():
        # An option this stapmagic does not know is left to check_match (it differs).
        if key in hints and not _fits(item, hints[key]):
            raise _Bad(f"option `{key}` must be {_type_name(hints[key])}, not {_js(item)}")
    return value


def _type_name(tp: Any) -> str:
    """How a ProbeOptions field type looks in JSON, for the error message."""
    if tp is type(None):
        return "null"
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of ({_type_name(args[0])})"
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _btf(value: Any, name: str) -> list[dict[str, Any]]:
    try:
        return btfrecord.check(value)
    except btfrecord.BadResolution as exc:
        raise _Bad(f"`{name}`: {exc}") from None


def _started(value: Any, name: str) -> float:
    return _seconds(value, name, _MAX_STARTED)


_HEADER_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "kind": _kind,
    "spec": _str,
    "options": _options,
    "script": _str,
    "argv": _argv,
    "target": _target,
    "kernel_release": _str,
    "stap_version": _str,
    "started": _started,
    "kallsyms": _strs,
    "btf": _btf,
    "stapmagic_version": _str,
}


# -- the file ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """What was asked, what ran, and where (the first line of a recording)."""

    kind: Kind
    spec: str
    options: dict[str, Any]
    script: str
    argv: list[str]
    target: str
    kernel_release: str
    stap_version: str
    started: float
    kallsyms: list[str] = field(default_factory=list)
    # the cell's BTF resolution (btfrecord.py): a replay needs no target's BTF
    btf: list[dict[str, Any]] = field(default_factory=list)
    stapmagic_version: str = __version__

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "streams": STREAMS,
            **dataclasses.asdict(self),
        }

    @classmethod
    def from_json(cls, obj: Any) -> Header:
        """The header from its JSON object, every field checked (_Bad says what is wrong)."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise _Bad(f'not a stapmagic recording (no "format": "{FORMAT}" header)')
        version = obj.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise _Bad(f"`version` must be a whole number, not {_js(version)}")
        if version > VERSION:
            raise _Bad(
                f"a version {version} recording, made by a newer stapmagic; this one "
                f"reads version {VERSION}: upgrade stapmagic, or re-record it"
            )
        if version < VERSION:
            raise _Bad(
                f"a version {version} recording; this stapmagic reads version "
                f"{VERSION}: re-record it"
            )
        if obj.get("streams", STREAMS) != STREAMS:
            raise _Bad(f"`streams` must be {STREAMS!r}, not {_js(obj.get('streams'))}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - set(fields) - {"format", "version", "streams"})
        if unknown:
            raise _Bad(f"unknown header field `{unknown[0]}`")
        values: dict[str, Any] = {}
        for name, f in fields.items():
            if name not in obj:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise _Bad(f"the header has no `{name}`")
                continue
            values[name] = _HEADER_CHECKS[name](obj[name], name)
        return cls(**values)


@dataclass(frozen=True)
class Chunk:
    """Bytes stap wrote (stdout and stderr merged by the pty), `t` seconds into the run."""

    t: float
    data: bytes


@dataclass(frozen=True)
class End:
    """How the recorded run ended (runner.RunStatus without the argv)."""

    exit_status: int | None
    signal: int | None
    interrupted: bool
    escalated: Literal["SIGTERM", "SIGKILL"] | None
    duration: float

    @classmethod
    def of(cls, status: runner.RunStatus | None, duration: float) -> End:
        if status is None:
            return cls(None, None, False, None, duration)
        return cls(
            status.exit_status, status.signal, status.interrupted, status.escalated, status.duration
        )

    def status(self, argv: Sequence[str]) -> runner.RunStatus:
        return runner.RunStatus(
            exit_status=self.exit_status,
            signal=self.signal,
            interrupted=self.interrupted,
            escalated=self.escalated,
            duration=self.duration,
            argv=tuple(argv),
        )


@dataclass(frozen=True)
class Recording:
    path: Path
    header: Header
    chunks: tuple[Chunk, ...]
    end: End

    @property
    def output(self) -> bytes:
        """stap's whole output as it arrived."""
        return b"".join(c.data for c in self.chunks)


def _chunk(obj: dict[str, Any]) -> Chunk:
    if set(obj) != {"t", "data"}:
        raise _Bad(f"a chunk line has exactly `t` and `data`, not {_js(sorted(obj))}")
    t = _seconds(obj["t"], "t")
    data = obj["data"]
    if not isinstance(data, str):
        raise _Bad(f"`data` must be a base64 string, not {_js(data)}")
    try:
        return Chunk(t, base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        raise _Bad(f"`data` is not valid base64: {_js(data)}") from None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _end(value: Any) -> End:
    names = [f.name for f in dataclasses.fields(End)]
    if not isinstance(value, dict) or set(value) != set(names):
        raise _Bad(f"`end` must be an object with exactly {', '.join(names)}; got {_js(value)}")
    status, sig, interrupted = value["exit_status"], value["signal"], value["interrupted"]
    if status is not None and not (_whole(status) and status in range(256)):
        raise _Bad(f"`exit_status` must be null or a whole number 0-255, not {_js(status)}")
    if sig is not None and not (_whole(sig) and sig in _SIGNALS):
        raise _Bad(
            f"`signal` must be null or a signal number {_SIGNALS.start}-"
            f"{_SIGNALS.stop - 1}, not {_js(sig)}"
        )
    if not isinstance(interrupted, bool):
        raise _Bad(f"`interrupted` must be true or false, not {_js(interrupted)}")
    if value["escalated"] not in _ESCALATIONS:
        raise _Bad(
            f'`escalated` must be null, "SIGTERM" or "SIGKILL", not {_js(value["escalated"])}'
        )
    return End(
        status, sig, interrupted, value["escalated"], _seconds(value["duration"], "duration")
    )


def load(path: str | os.PathLike[str]) -> Recording:
    """Read a recording, checking every field; ReplayError (naming the file, the line and
    what is wrong) if it is missing, not a recording, damaged or truncated."""
    p = Path(path)
    if "\0" in str(p):
        raise ReplayError(f"the recording name {str(p)!r} contains a NUL character")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        where = f"; directory {p.parent} does not exist" if not p.parent.is_dir() else ""
        raise ReplayError(
            f"no recording {p} (make it with --record, or in mode record){where}"
        ) from None
    except OSError as exc:
        raise ReplayError(f"cannot read recording {p}: {_oserror(p, exc)}") from None
    header: Header | None = None
    chunks: list[Chunk] = []
    end: End | None = None
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:
            if not line.strip():
                continue
            if end is not None:
                raise _Bad("data after the end line")
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                raise _Bad("not UTF-8 text") from None
            except (ValueError, RecursionError) as exc:
                if header is None:
                    raise _Bad(f"not a stapmagic recording (not JSON: {exc})") from None
                raise _Bad(f"not JSON ({exc})") from None
            if header is None:
                header = Header.from_json(obj)
            elif isinstance(obj, dict) and "end" in obj:
                if len(obj) != 1:
                    raise _Bad(f"the end line must hold only `end`, not {_js(sorted(obj))}")
                end = _end(obj["end"])
            elif isinstance(obj, dict) and ("t" in obj or "data" in obj):
                chunks.append(_chunk(obj))
            else:
                raise _Bad(f"neither a chunk nor the end: {_js(obj)}")
        except _Bad as bad:
            raise ReplayError(f"{p}, line {n}: {bad}") from None
    if header is None:
        raise ReplayError(f"{p} is empty: not a stapmagic recording")
    if end is None:
        raise ReplayError(f"{p} is truncated: the run it recorded never ended (no end line)")
    return Recording(p, header, tuple(chunks), end)


def unusable(path: Path, *, make_parents: bool = False) -> str | None:
    """Why `path` cannot become a recording (None if it can): a NUL in the name, a
    directory of that name, or no writable directory to put it in. `make_parents`: missing
    directories will be created (the recordings directory), so only their nearest existing
    ancestor has to be a writable directory."""
    if "\0" in str(path):
        return f"the name {str(path)!r} contains a NUL character"
    if path.is_dir():
        return f"{path} is a directory: give a file name, e.g. {path / ('run' + SUFFIX)}"
    parent = path.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if existing != parent and not make_parents:
        return f"directory {parent} does not exist: create it first"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"directory {existing} is not writable"
    return None


def _oserror(path: Path, exc: OSError) -> str:
    return unusable(path) or exc.strerror or str(exc)


class Recorder:
    """Writes one run: the header now, each chunk as it arrives, the end line at close.

    The file is written under ``NAME.partial`` and renamed when closed, so an existing
    recording is only replaced by a complete one. A write that fails (disk full, the
    destination gone) stops the recording, not the run: close() then removes the partial
    file and raises ReplayError.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        header: Header,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.header = header
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._error: OSError | None = None
        self.chunks = 0
        self.closed = False
        why = unusable(self.path, make_parents=True)
        if why is not None:
            raise ReplayError(f"cannot record to {self.path}: {why}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._partial.open("w", encoding="utf-8")
        except OSError as exc:
            raise ReplayError(f"cannot record to {self.path}: {_oserror(self.path, exc)}") from None
        self._write(header.to_json())

    def _write(self, obj: Mapping[str, Any]) -> None:
        if self._error is None:
            try:
                self._file.write(json.dumps(obj, ensure_ascii=True, separators=(",", ":")) + "\n")
            except OSError as exc:
                self._error = exc

    def chunk(self, data: bytes) -> None:
        """One chunk of stap's output (the `tap` of pipeline.execute)."""
        t = self._clock() - self._t0
        with self._lock:
            if self.closed:
                return
            self._write({"t": round(t, 6), "data": base64.b64encode(data).decode("ascii")})
            self.chunks += 1

    def close(self, status: runner.RunStatus | None) -> Path:
        """Write the end line and put the file in place; idempotent. ReplayError (and no
        file left behind) if the recording could not be written."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self._write({"end": dataclasses.asdict(End.of(status, self._clock() - self._t0))})
                try:
                    self._file.close()
                    if self._error is not None:
                        raise self._error
                    os.replace(self._partial, self.path)
                except OSError as exc:
                    self._drop()
                    raise ReplayError(
                        f"the recording {self.path} was not saved: {_oserror(self.path, exc)}"
                    ) from None
        return self.path

    def finish(self, status: runner.RunStatus | None) -> Path | None:
        """Close after a run; a run that never started (no output, no exit) leaves no file."""
        if self.chunks == 0 and (
            status is None
            or (status.exit_status is None and status.signal is None and not status.interrupted)
        ):
            self.abandon()
            return None
        return self.close(status)

    def abandon(self) -> None:
        """Drop the partial file (the run never started)."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self._drop()

    def _drop(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # what failed to flush is dropped with the file
        self._partial.unlink(missing_ok=True)


# -- facts about the target -------------------------------------------------------------------


def stap_version(target: runner.Target) -> str:
    """First line of ``stap -V`` from the stap that compiles the scripts for `target` (for the
    lab the chroot's stap; for ssh targets stap compiles locally, so the local one)."""
    return target.stap_version()


def kernel_release(target: runner.Target) -> str:
    return target.kernel_release()


def target_can_run_stap(target: runner.Target) -> tuple[bool, str]:
    """Whether a live run can work on `target`, and why (cheap checks, nothing is compiled)."""
    return target.can_run_stap()


def mode_for(
    mode: str,
    target: runner.Target,
    env: Mapping[str, str] | None = None,
) -> tuple[Literal["live", "record", "replay"], str]:
    """Resolve `mode` (live|record|replay|auto) to what a cell does, with the reason.

    ``auto``: ``$STAPMAGIC_MODE`` when it names another mode (so a notebook that says
    ``auto`` can be run in any mode from outside), else live when the target can run stap,
    else replay.
    """
    env = os.environ if env is None else env
    if mode not in MODES:
        raise ReplayError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "auto":
        outside = env.get("STAPMAGIC_MODE", "").strip().lower()
        if outside and outside != "auto":
            if outside not in MODES:
                raise ReplayError(f"STAPMAGIC_MODE={outside!r}: use one of {', '.join(MODES)}")
            return outside, f"STAPMAGIC_MODE={outside}"  # type: ignore[return-value]
        ok, why = target_can_run_stap(target)
        return ("live", why) if ok else ("replay", f"stap cannot run here: {why}")
    return mode, f"mode {mode}"  # type: ignore[return-value]


def recording_path(name: str, directory: str | os.PathLike[str]) -> Path:
    """``DIRECTORY/NAME.jsonl`` for a --recording NAME (a plain name, no path)."""
    if not _NAME.match(name):
        raise ReplayError(
            f"--recording takes a plain name ([A-Za-z0-9_.-], e.g. 01_connect), not {name!r}"
        )
    where = Path(directory)
    if "\0" in str(where):
        raise ReplayError(f"KprobeMagics.recordings_dir {str(where)!r} contains a NUL character")
    if where.exists() and not where.is_dir():
        raise ReplayError(
            f"KprobeMagics.recordings_dir {str(where)!r} is a file, not a "
            "directory: %config KprobeMagics.recordings_dir = 'DIRECTORY'"
        )
    return where / (name if name.endswith(SUFFIX) else name + SUFFIX)


# -- matching ---------------------------------------------------------------------------------


def spec_text(kind: Kind, first_line: str, body: str) -> str:
    """The cell's spec as recorded: the magic-line spec and the body, as typed."""
    if kind == "stap":
        return body
    if not first_line.strip():
        return body
    return f"{first_line}\n{body}" if body.strip() else first_line


def _spec_lines(kind: Kind, text: str) -> list[str]:
    """Whitespace-insensitive view; kprobe specs also drop blank and comment lines."""
    out = [" ".join(ln.split()) for ln in text.splitlines()]
    if kind == "kprobe":
        return [ln for ln in out if ln and not ln.startswith("#")]
    return [ln for ln in out if ln]


def options_json(opts: pipeline.ProbeOptions) -> dict[str, Any]:
    data = json.loads(json.dumps(dataclasses.asdict(opts)))
    assert isinstance(data, dict)
    return data


def _show(value: Any) -> str:
    return "not given" if value is None or value == [] or value is False else json.dumps(value)


def check_match(
    header: Header, kind: Kind, spec: str, opts: pipeline.ProbeOptions, where: str = "the recording"
) -> None:
    """ReplayError naming the first difference between the cell and the recording."""
    if header.kind != kind:
        raise ReplayError(f"{where} is of a %%{header.kind} cell, this is a %%{kind} cell")
    if _spec_lines(kind, header.spec) != _spec_lines(kind, spec):
        old, new = _spec_lines(kind, header.spec), _spec_lines(kind, spec)
        diff = next(
            (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
            min(len(old), len(new)),
        )
        a = old[diff] if diff < len(old) else "(nothing)"
        b = new[diff] if diff < len(new) else "(nothing)"
        what = "script" if kind == "stap" else "spec"
        raise ReplayError(f"the {what} differs from {where}: recorded `{a}`, this cell `{b}`")
    current = options_json(opts)
    defaults = options_json(pipeline.ProbeOptions())
    # Only the options that change what stap is asked to do (not the target, -q, grace...).
    for opt in options.FIELDS:
        if not opt.compared:
            continue
        rec = header.options.get(opt.name, defaults.get(opt.name))
        now = current.get(opt.name, defaults.get(opt.name))
        if rec != now:
            raise ReplayError(
                f"option {opt.label} differs from {where}: recorded {_show(rec)}, "
                f"this cell {_show(now)}"
            )


class KallsymsCapture:
    """A `lookup` for pipeline.prepare that remembers what the target answered."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, target: runner.Target, names: Sequence[str]) -> list[str]:
        lines = pipeline.kallsyms_lines(target, names)
        self.lines.extend(ln for ln in lines if ln not in self.lines)
        return lines


def _recorded_lookup(header: Header) -> Callable[[runner.Target, Sequence[str]], list[str]]:
    def lookup(target: runner.Target, names: Sequence[str]) -> list[str]:
        return targets.kallsyms_filter(header.kallsyms, names)

    return lookup


def prepare_replay(
    rec: Recording, kind: Kind, first_line: str, body: str, opts: pipeline.ProbeOptions
) -> pipeline.ProbeRun:
    """A ProbeRun for the cell, checked against `rec`, that touches no target."""
    where = str(rec.path)
    check_match(rec.header, kind, spec_text(kind, first_line, body), opts, where)
    opts = dataclasses.replace(opts, target=rec.header.target)

    def recorded_argv(text: str, o: pipeline.ProbeOptions, t: runner.Target) -> list[str]:
        return list(rec.header.argv)

    if kind == "stap":
        run = pipeline.prepare_script(body, opts, build=recorded_argv)
    else:
        run = pipeline.prepare(
            first_line,
            body,
            opts,
            lookup=_recorded_lookup(rec.header),
            build=recorded_argv,
            resolve=lambda spec: btfrecord.apply(spec, rec.header.btf, where),
            preflight=lambda t: fleet.as_recorded(t, rec.header.argv),
        )
    if run.script_text != rec.header.script:
        ours: list[str] = run.script_text.splitlines()
        theirs: list[str] = rec.header.script.splitlines()
        n = next(
            (i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b),
            min(len(ours), len(theirs)),
        )
        raise ReplayError(
            f"the script this stapmagic generates differs from the one in {where} (line {n + 1}"
            f": recorded `{theirs[n] if n < len(theirs) else '(end)'}`, now "
            f"`{ours[n] if n < len(ours) else '(end)'}`): stapmagic changed since the "
            "recording; re-record it (scripts/record_notebooks.py for the notebooks)"
        )
    run.replay_of = where
    return run


def header_for(
    run: pipeline.ProbeRun,
    kind: Kind,
    first_line: str,
    body: str,
    opts: pipeline.ProbeOptions,
    kallsyms: Sequence[str] = (),
) -> Header:
    """The header of a recording of `run` (asks the target for its kernel and stap version)."""
    return Header(
        kind=kind,
        spec=spec_text(kind, first_line, body),
        options=options_json(opts),
        script=run.script_text,
        argv=list(run.argv),
        target=str(run.target),
        kernel_release=kernel_release(run.target),
        stap_version=stap_version(run.target),
        started=time.time(),
        kallsyms=list(kallsyms),
        btf=btfrecord.to_json(run.spec) if run.spec is not None else [],
    )


@dataclass
class Plan:
    """What one cell does with recordings: nothing, record to `record`, or play `replay`."""

    kind: Kind = "kprobe"
    first_line: str = ""
    body: str = ""
    record: Path | None = None
    replay: Recording | None = None
    speed: float = 0.0
    kallsyms: KallsymsCapture = field(default_factory=KallsymsCapture)

    def start_recording(self, run: pipeline.ProbeRun, opts: pipeline.ProbeOptions) -> Recorder:
        assert self.record is not None
        return Recorder(
            self.record,
            header_for(run, self.kind, self.first_line, self.body, opts, self.kallsyms.lines),
        )


def plan(
    kind: Kind,
    first_line: str,
    body: str,
    *,
    record: str | None,
    replay: str | None,
    name: str | None,
    action: str,
    speed: float,
    directory: str | os.PathLike[str],
    dry_run: bool = False,
) -> Plan:
    """The cell's Plan from --record FILE, --replay FILE, --recording NAME and the mode's
    `action` (live|record|replay); loads the recording to replay."""
    if record and replay:
        raise ReplayError("--record and --replay exclude each other")
    if name is not None and (record or replay):
        raise ReplayError(
            "--recording NAME is the notebook form of --record/--replay "
            "(the mode decides which); give only one of them"
        )
    if speed < 0:
        raise ReplayError(f"--replay-speed must be 0 or more, not {speed}")
    p = Plan(kind, first_line, body, speed=speed)
    path: Path | None = Path(replay) if replay else Path(record) if record else None
    if name is not None:
        path = recording_path(name, directory)
    if replay or (name is not None and action == "replay"):
        assert path is not None
        p.replay = load(path)
    elif (record or (name is not None and action == "record")) and not dry_run:
        assert path is not None
        # Refused now, before stap runs, rather than after the run when the file is closed.
        why = unusable(path, make_parents=name is not None)
        if why is not None:
            raise ReplayError(f"cannot record to {path}: {why}")
        p.record = path
    return p


def describe(rec: Recording) -> str:
    """One line saying what is replayed: file, when, which kernel and stap, which target."""
    h = rec.header
    when = _dt.datetime.fromtimestamp(h.started, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"REPLAY of {rec.path} (recorded {when} on Linux {h.kernel_release}, target "
        f"{h.target}, {h.stap_version}); no stap runs here"
    )


# -- playing ----------------------------------------------------------------------------------


class Player:
    """A `source` for pipeline.execute: plays a recording the way runner.run plays stap.

    `speed` 0 (or less) delivers every chunk at once; 1 at the recorded pace; 2 twice as
    fast. A stop (the run's stop event, Ctrl-C) ends the replay early, as interrupted.
    """

    def __init__(
        self,
        rec: Recording,
        speed: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rec = rec
        self.speed = speed
        self._clock = clock
        self._sleep = sleep

    def __call__(
        self,
        argv: Sequence[str],
        on_chunk: Callable[[bytes], None],
        *,
        stop: threading.Event | None = None,
        grace: float = 5.0,
        tick: Callable[[], None] | None = None,
        tick_interval: float = 0.2,
    ) -> runner.RunStatus:
        start = self._clock()
        last_tick = start
        try:
            for chunk in self.rec.chunks:
                if self.speed > 0:
                    due = start + chunk.t / self.speed
                    while True:
                        if stop is not None and stop.is_set():
                            return self._stopped(argv, start)
                        left = due - self._clock()
                        if left <= 0:
                            break
                        self._sleep(min(left, tick_interval))
                        if tick is not None and self._clock() - last_tick >= tick_interval:
                            last_tick = self._clock()
                            tick()
                if stop is not None and stop.is_set():
                    return self._stopped(argv, start)
                on_chunk(chunk.data)
                if tick is not None and self._clock() - last_tick >= tick_interval:
                    last_tick = self._clock()
                    tick()
        except KeyboardInterrupt:
            return self._stopped(argv, start)
        return self.rec.end.status(argv)

    def _stopped(self, argv: Sequence[str], start: float) -> runner.RunStatus:
        return runner.RunStatus(
            exit_status=None,
            signal=None,
            interrupted=True,
            escalated=None,
            duration=self._clock() - start,
            argv=tuple(argv),
        )
