"""Run stap: the one place the stap command line is built, and the read loop.

Where stap runs is a :class:`~stapmagic.targets.Target` (stapmagic/targets/); ``Target``,
``parse_target`` and ``stap_env`` are re-exported here.

``stap`` runs under a pseudo-terminal (pexpect; this is the only module that imports it) so
that stap, staprun and the ``-c`` workload line-buffer their output and stdout/stderr keep
their relative order. The pty turns ``\\n`` into ``\\r\\n``; records.py strips it.

Interrupting: Jupyter's stop button sends SIGINT to the kernel process only. stap lives in
its own session (the pty), so it does not see it; :func:`run` forwards ONE SIGINT to stap's
process group (what Ctrl-C in a terminal does), keeps reading so the ``end`` probes' output
and stap's exit messages arrive, and only after ``grace`` seconds escalates to SIGTERM, then
SIGKILL. A second stop during the grace period escalates at once.
"""

from __future__ import annotations

import errno
import gc
import os
import re
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

from stapmagic.errors import OptionError, StapMagicError, StapNotFound
from stapmagic.targets import (
    INSTALL_HINT,
    Target,
    TargetKind,
    check_arg,
    parse_target,
    stap_env,
)

__all__ = [
    "INSTALL_HINT",
    "RunStatus",
    "StapProcess",
    "Target",
    "TargetKind",
    "exec_argv",
    "parse_target",
    "run",
    "run_on_target",
    "stap_argv",
    "stap_env",
]

# --------------------------------------------------------------------------------------
# the stap command line

_DEFINE_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_DEFINE_VALUE = re.compile(r"[A-Za-z0-9_.+-]*")


def _define_argv(define: str) -> str:
    """Validate one ``NAME[=VALUE]`` define and return it as stap's -D argument."""
    check_arg("-D define", define)
    name, eq, value = define.partition("=")
    if not _DEFINE_NAME.fullmatch(name):
        raise OptionError(
            f"bad -D name {name!r} in {define!r}: names are [A-Z_][A-Z0-9_]* "
            "(e.g. -D MAXACTION=10000)"
        )
    if eq and not _DEFINE_VALUE.fullmatch(value):
        raise OptionError(
            f"bad -D value {value!r} for {name}: values are [A-Za-z0-9_.+-]* "
            "(e.g. -D MAXACTION=10000)"
        )
    return f"{name}={value}" if eq else name


def stap_argv(
    target: Target,
    script_text: str,
    *,
    guru: bool = False,
    defines: Iterable[str] = (),
    command: str | None = None,
    pid: int | None = None,
    verbose: int = 0,
    extra: Sequence[str] = (),
    require_stap: bool = True,
) -> list[str]:
    """The stap command line (argv, no shell anywhere) for ``script_text`` on ``target``.

    Layout: ``PREFIX --color=never [-g] [-v...] [-D NAME=VALUE]... [-x PID] [-c CMD]
    [EXTRA...] -e SCRIPT``. PREFIX is ``target.stap_prefix()``: the resolved local ``stap``
    (local), the lab's chroot stap with its remote options (lab) or ``stap --remote=ssh://...``
    (ssh; stap compiles locally and runs pass 5 on the remote). ``command`` is ONE argv item,
    as ``target.workload()`` passes it on: stap (staprun on the target) runs it, never our
    shell. ``extra`` items are passed verbatim before ``-e``.

    A missing local ``stap`` raises :class:`StapNotFound` with the install hint, unless
    ``require_stap=False`` (``--dry-run``: then the bare name ``stap`` is used).
    """
    if not isinstance(target, Target):
        raise OptionError(f"target must be a Target, got {type(target).__name__}")
    check_arg("script", script_text)
    if not script_text.strip():
        raise OptionError("the script is empty")
    argv = target.stap_prefix(require_stap=require_stap)

    # --color[=WHEN] takes an optional argument, so it must be attached with '='
    # (cmdline.cxx: optional_argument; session.cxx: "never" | "auto" | "always", since 2.4).
    # stap passes it on to staprun (buildrun.cxx). Under a pty "auto" would colour.
    argv.append("--color=never")
    if guru:
        argv.append("-g")
    if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose < 0:
        raise OptionError(f"verbose must be a non-negative integer, got {verbose!r}")
    if verbose:
        argv.append("-" + "v" * min(verbose, 5))
    if isinstance(defines, str):
        defines = (defines,)
    for d in defines:
        argv += ["-D", _define_argv(d)]
    if pid is not None:
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise OptionError(f"-x needs a positive process id, got {pid!r}")
        argv += ["-x", str(pid)]
    if command is not None:
        check_arg("-c command", command)
        if not command.strip():
            raise OptionError("-c needs a command")
        argv += ["-c", target.workload(command)]
    if isinstance(extra, str):
        raise OptionError("extra stap options must be a list of argv items, not one string")
    for item in extra:
        argv.append(check_arg("extra stap option", item))
    argv += ["-e", script_text]
    return argv


def exec_argv(target: Target, argv: Sequence[str]) -> list[str]:
    """argv that runs the plain command ``argv`` on ``target`` (no local shell involved)."""
    return target.exec_argv(argv)


def run_on_target(
    target: Target, argv: Sequence[str], *, timeout: float = 60.0, ok_codes: tuple[int, ...] = (0,)
) -> str:
    """Run a short plain command on `target` and return its stdout (OptionError on failure)."""
    return target.run(argv, timeout=timeout, ok_codes=ok_codes)


# --------------------------------------------------------------------------------------
# the process

_READ_SIZE = 65536
_READ_MAX = 1 << 20  # one read() call returns at most this much (drains what is ready)
_PTY_SIZE = (1000, 32000)  # rows, cols: nothing on the far side wraps or truncates lines


def _child_setup() -> None:  # pragma: no cover - runs in the forked child
    # Python ignores SIGPIPE and may ignore/handle SIGINT; ignored signals survive exec, so
    # give stap (and the -c workload) the default dispositions and an empty signal mask.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


class StapProcess:
    """One child under a pty: spawn, read, signal its process group, reap."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        linger: float = 1.0,
        group_signals: bool = True,
    ) -> None:
        import pexpect

        # Remote stap (--remote=ssh://) must get SIGINT alone: signalling its group also hits
        # its ssh child, which dies at once and cuts the channel the `end` output and the
        # module unload travel over (seen on the lab: SIGINT to the group always escalated).
        self.group_signals = group_signals

        argv = [check_arg("argv item", a) for a in argv]
        if not argv:
            raise OptionError("empty argv")
        self.argv: tuple[str, ...] = tuple(argv)
        self.linger = linger
        self._eof = False
        self._closed = False
        self._dead_since: float | None = None
        self._last_data = time.monotonic()
        failure: StapMagicError | None = None
        try:
            self._child: Any = pexpect.spawn(
                argv[0],
                list(argv[1:]),
                env=dict(stap_env() if env is None else env),
                cwd=cwd,
                echo=False,
                encoding=None,
                dimensions=_PTY_SIZE,
                preexec_fn=_child_setup,
                use_poll=True,
            )
        except pexpect.ExceptionPexpect as exc:
            if "not found" in str(exc) or "not executable" in str(exc):
                failure = StapNotFound(
                    f"cannot run {argv[0]!r}: not found or not executable.\n{INSTALL_HINT}"
                )
            else:
                failure = StapMagicError(f"cannot start {argv[0]!r}: {exc}")
        except OSError as exc:  # exec failed in the child (bad interpreter, EACCES...)
            why = exc.strerror or str(exc)
            if exc.errno == errno.ENOENT and os.path.exists(argv[0]):
                why = f"{why} (the file exists: is its #! interpreter missing?)"
            failure = StapNotFound(f"cannot run {argv[0]!r}: {why}")
        if failure is not None:
            # ptyprocess left the half-made PtyProcess (pty fd, exited child) in a reference
            # cycle through its exception's traceback; collect it now so its __del__ closes
            # the fd and reaps the child instead of whenever the cyclic GC runs next.
            gc.collect()
            raise failure
        # the child is a session and process-group leader (forkpty -> setsid), so its pid
        # is its process group id. Never signal our own group by accident.
        self.pid: int = int(self._child.pid)
        self._pgid: int | None = self.pid if self.pid != os.getpgrp() else None
        ptyproc = getattr(self._child, "ptyproc", None)
        if ptyproc is not None:  # we reap ourselves; no fixed sleeps in close()
            ptyproc.delayafterclose = 0.0
            ptyproc.delayafterterminate = 0.05
        self._poll = select.poll()
        self._poll.register(self._child.child_fd, select.POLLIN | select.POLLPRI)

    # --- reading -------------------------------------------------------------------------

    @property
    def eof(self) -> bool:
        return self._eof

    def read(self, timeout: float) -> bytes | None:
        """Wait up to ``timeout`` seconds for output.

        Returns the bytes that are ready (up to 1 MiB, read in 64 KiB reads), ``b""`` when
        nothing came yet, ``None`` at EOF: every holder of the pty closed it, or the child
        exited and nothing more arrived for ``linger`` seconds (a background grandchild may
        keep the pty open forever).
        """
        if self._eof or self._closed:
            return None
        got = bytearray()
        wait_ms = max(0, int(timeout * 1000))
        while len(got) < _READ_MAX:
            try:
                ready = self._poll.poll(wait_ms if not got else 0)
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                ready = []
            if not ready:
                break
            try:
                data = os.read(self._child.child_fd, _READ_SIZE)
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: Linux's "all slave fds closed"
                    raise
                data = b""
            if not data:
                self._eof = True
                break
            got += data
        now = time.monotonic()
        if got:
            self._last_data = now
            return bytes(got)
        if self._eof:
            return None
        if not self.isalive():
            if self._dead_since is None:
                self._dead_since = now
            if now - max(self._dead_since, self._last_data) >= self.linger:
                self._eof = True
                return None
        return b""

    # --- state ---------------------------------------------------------------------------

    def isalive(self) -> bool:
        """Whether the child runs; reaps it (non-blocking) once it exited."""
        if self._closed:
            return False
        try:
            return bool(self._child.isalive())
        except Exception:  # ECHILD: someone else reaped it (SIGCHLD ignored, ...)
            return False

    @property
    def exitstatus(self) -> int | None:
        self.isalive()
        status = self._child.exitstatus
        return None if status is None else int(status)

    @property
    def signalstatus(self) -> int | None:
        self.isalive()
        sig = self._child.signalstatus
        return None if sig is None else int(sig)

    # --- signals -------------------------------------------------------------------------

    def _signal(self, sig: int) -> bool:
        """Send ``sig`` to the child's process group (stap, staprun/stapio, the -c workload,
        as Ctrl-C in a terminal does); to the child alone while the group does not exist yet."""
        if self._closed:
            return False
        if self._pgid is not None and (self.group_signals or sig == signal.SIGKILL):
            try:
                os.killpg(self._pgid, sig)
                return True
            except ProcessLookupError:
                pass
            except PermissionError:
                pass
        if self.isalive():
            try:
                os.kill(self.pid, sig)
                return True
            except ProcessLookupError:
                return False
        return False

    def interrupt(self) -> bool:
        """SIGINT: stap stops, runs its ``end`` probes, prints their output, exits."""
        return self._signal(signal.SIGINT)

    def terminate(self) -> bool:
        return self._signal(signal.SIGTERM)

    def kill(self) -> bool:
        return self._signal(signal.SIGKILL)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the child to exit; True when it has."""
        deadline = time.monotonic() + timeout
        while self.isalive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, grace: float = 1.0) -> None:
        """Stop the child if it still runs (SIGTERM, then SIGKILL), reap it, close the pty.

        Idempotent; never raises for a child that cannot be killed (it is left to init)."""
        if self._closed:
            return
        try:
            if self.isalive():
                self.terminate()
                if not self.wait(grace):
                    self.kill()
                    self.wait(max(grace, 1.0))
        finally:
            self._closed = True
            if not self._child_alive():
                self._end_group(min(grace, 0.5))
            try:
                self._poll.unregister(self._child.child_fd)
            except (KeyError, ValueError, OSError):
                pass
            try:
                self._child.close(force=True)
            except Exception:  # PtyProcessError: unkillable (D state); the fd is closed anyway
                fd = getattr(self._child, "child_fd", -1)
                if isinstance(fd, int) and fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    def _child_alive(self) -> bool:
        """isalive() even after close() began (it then answers False)."""
        try:
            return bool(self._child.isalive())
        except Exception:  # ECHILD: reaped elsewhere
            return False

    def _end_group(self, wait: float) -> None:
        """stap has exited: end what it left in its process group (a ``-c`` workload's
        ``nohup cmd &``, which the pty's hangup does not stop): SIGTERM, SIGKILL after `wait`
        seconds. The group id cannot be reused while any member lives."""
        if self._pgid is None:
            return
        try:
            os.killpg(self._pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return  # nobody left
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(self._pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.02)
        try:
            os.killpg(self._pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> StapProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# the loop


@dataclass(frozen=True)
class RunStatus:
    """How a run ended. ``exit_status`` is None when the process died of a signal
    (``signal``); ``interrupted`` says we forwarded a stop (SIGINT); ``escalated`` whether
    we had to go further. ``command_status``: how the ``-c`` command ended when stap
    reported it failed (its exit status, or ``-signal``), filled in from stap's messages
    after the run; None when stap reported nothing (it exited 0, or there was none)."""

    exit_status: int | None
    signal: int | None
    interrupted: bool
    escalated: Literal["SIGTERM", "SIGKILL"] | None
    duration: float
    argv: Sequence[str] = field(default=())
    command_status: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def __repr__(self) -> str:
        # argv carries the whole generated script (stap -e): `_kprobe.status` shows one line.
        argv = [
            a if len(a) <= 60 and "\n" not in a else f"<{len(a)} chars: _kprobe.script_text>"
            for a in self.argv
        ]
        return (
            f"RunStatus(exit_status={self.exit_status!r}, signal={self.signal!r}, "
            f"interrupted={self.interrupted!r}, escalated={self.escalated!r}, "
            f"duration={self.duration:.1f}, command_status={self.command_status!r}, "
            f"argv={argv!r})"
        )

    @property
    def returncode(self) -> int | None:
        """subprocess-style: the exit status, or ``-signal``."""
        if self.exit_status is not None:
            return self.exit_status
        return -self.signal if self.signal is not None else None


class _SigintCatcher:
    """While active (main thread only, and only when SIGINT would raise KeyboardInterrupt),
    SIGINT just counts. A KeyboardInterrupt raised mid-read could drop bytes already read
    from the pty; a counter cannot. The previous handler is restored on exit."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def take(self) -> int:
        n, self.count = self.count, 0
        return n

    def __enter__(self) -> _SigintCatcher:
        if threading.current_thread() is threading.main_thread():
            try:
                previous = signal.getsignal(signal.SIGINT)
                if previous is signal.default_int_handler:
                    signal.signal(signal.SIGINT, self._handler)
                    self._previous, self._installed = previous, True
            except (ValueError, OSError):  # pragma: no cover - not the main interpreter
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


class _Escalation:
    """SIGINT once; after ``grace`` SIGTERM; after another ``grace`` SIGKILL. A further
    stop request skips the wait for the next step."""

    def __init__(self, proc: StapProcess, grace: float) -> None:
        self.proc = proc
        self.grace = grace
        self.level = 0  # 0 nothing sent, 1 SIGINT, 2 SIGTERM, 3 SIGKILL
        self.interrupted = False
        self.escalated: Literal["SIGTERM", "SIGKILL"] | None = None
        self.deadline: float | None = None

    def request(self) -> None:
        """A stop request (Ctrl-C, the stop event)."""
        if self.level == 0:
            self.interrupted = True
            self.proc.interrupt()
            self.level = 1
            self.deadline = time.monotonic() + self.grace
        else:
            self._step()

    def arm(self) -> None:
        """Start the clock without a SIGINT (the output ended but the process lingers)."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.grace

    def _step(self) -> None:
        if self.level < 2:
            self.proc.terminate()
            self.level, self.escalated = 2, "SIGTERM"
        elif self.level == 2:
            self.proc.kill()
            self.level, self.escalated = 3, "SIGKILL"
        else:
            self.level = 4  # given up
        self.deadline = time.monotonic() + self.grace

    def check(self) -> bool:
        """Escalate when the deadline passed. Returns True once even SIGKILL did not end
        the output (a stuck grandchild holds the pty): time to stop reading."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self._step()
        return self.level >= 4


def run(
    argv: Sequence[str],
    on_chunk: Callable[[bytes], None],
    *,
    stop: threading.Event | None = None,
    grace: float = 5.0,
    tick: Callable[[], None] | None = None,
    tick_interval: float = 0.2,
    env: Mapping[str, str] | None = None,
    linger: float = 1.0,
    group_signals: bool = True,
    target: Target | None = None,
) -> RunStatus:
    """Run ``argv`` under a pty until its output ends; feed every chunk to ``on_chunk``.

    ``tick`` is called at most every ``tick_interval`` seconds, with or without new data
    (the records parser flushes and the live view updates there). A stop - SIGINT to this
    process (Jupyter's stop button; intercepted without raising while run() is active in the
    main thread), a KeyboardInterrupt raised by a callback, or ``stop`` being set - sends
    SIGINT to stap ONCE and keeps reading until EOF so the ``end`` probes' output arrives;
    after ``grace`` seconds SIGTERM, after another ``grace`` SIGKILL; another stop request
    skips the wait. Every byte read is passed on; the child is reaped and the pty closed
    whatever happens. A SIGINT or KeyboardInterrupt sets ``stop`` too, so the caller (its
    live view) knows the run is ending. Exceptions from the callbacks (other than KeyboardInterrupt) stop the
    child and propagate.

    With a ``target``, its ``group_signals`` replaces the argument of that name, and once stap
    has exited ``target.end_workload(argv)`` ends what is left of the ``-c`` workload there.
    """
    argv = list(argv)
    if target is not None:
        group_signals = target.group_signals
    started = time.monotonic()
    poll_interval = max(0.005, min(0.05, tick_interval))
    stop_seen = False
    stop_ticked = False
    last_tick = started
    # SIGINT only counts from here on: while spawning, reading, and while closing (a stop
    # pressed during close() must not leave the pty open or the child unreaped).
    with _SigintCatcher() as sigint:
        proc = StapProcess(argv, env=env, linger=linger, group_signals=group_signals)
        esc = _Escalation(proc, grace)
        try:
            eof = False
            while True:
                try:
                    requests = sigint.take()
                    if stop is not None and not stop_seen and stop.is_set():
                        stop_seen = True
                        requests += 1
                    elif requests and stop is not None and not stop_seen:
                        # The stop button: the event tells the caller (its live view) too.
                        stop_seen = True
                        stop.set()
                    for _ in range(requests):
                        esc.request()
                    if esc.check():
                        break
                    if not eof:
                        chunk = proc.read(poll_interval)
                        if chunk is None:
                            eof = True
                        elif chunk:
                            on_chunk(chunk)
                    # Before the end-of-output check: a stop seen in this pass reaches the
                    # caller's tick (its live view) even when stap ends at once.
                    if tick is not None:
                        now = time.monotonic()
                        if stop_seen != stop_ticked or now - last_tick >= tick_interval:
                            last_tick = now
                            stop_ticked = stop_seen
                            tick()
                    if eof:
                        if not proc.isalive():
                            break
                        esc.arm()  # the pty closed but the process has not exited yet
                        time.sleep(poll_interval / 5)
                except KeyboardInterrupt:
                    if stop is not None and not stop_seen:
                        stop_seen = True
                        stop.set()
                    esc.request()
        finally:
            try:
                proc.close(grace=grace)  # instant when the child already exited
            finally:
                if target is not None:
                    target.end_workload(argv)
    return RunStatus(
        exit_status=proc.exitstatus,
        signal=proc.signalstatus,
        interrupted=esc.interrupted,
        escalated=esc.escalated,
        duration=time.monotonic() - started,
        argv=tuple(argv),
    )
