"""One shared ssh connection (OpenSSH's ControlMaster) per target for this Python process.

Every cell on a remote target used to pay a full ssh handshake before stap's pass 1 (stap's
``--remote=ssh://`` spawns a plain ``ssh -q HOST [-p PORT] /bin/bash -c '...stapsh'``), and
every plain command (kallsyms, the ``-c`` clean-up) another: 1.1-2.2 s each on the lab under
TCG. A master connection kept open in the background makes each of them a new session on an
authenticated connection (~0.2 s).

stap names its ssh by PATH alone and takes no ssh options, so the options travel in two
pieces: a small ``ssh`` wrapper first on stap's PATH (:func:`wrapper_text`; it execs the real
ssh, adding ``-o ControlPath=...`` when :data:`ENV_VAR` is set) and the control path in that
variable. Options on ssh's command line come before its config files, so the user's own
``ControlPath`` (if any) is not consulted for these connections; with no master listening
ssh connects directly, as before (ControlMaster stays ``no`` for every client).

The path is per process (``cm-PID-%C``): sshd caps the sessions one connection carries
(MaxSessions, default 10), so processes never share a master, and stopping ours (``-O
stop``: no new sessions, the running ones finish) never cuts another's run. The master also
ends by itself after :data:`PERSIST_S` idle seconds, should this process die without
stopping it. Files live in the user's cache directory (``~/.cache/stapmagic/ssh``; inside the
lab's chroot, its own ``/root/.cache``).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shlex
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENV_VAR = "STAPMAGIC_SSH_CONTROL"
#: idle seconds after which a master nobody uses ends by itself
PERSIST_S = 600
#: inside the cache directory
SUBDIR = "stapmagic/ssh"


def wrapper_text(real_ssh: str) -> str:
    """The ``ssh`` that stap finds first on its PATH: the real one, plus the control path."""
    ssh = shlex.quote(real_ssh)
    return (
        "#!/bin/sh\n"
        "# Written by stapmagic (stapmagic/targets/sshmux.py): shares one ssh connection per\n"
        f"# target; without ${ENV_VAR} this is plain {real_ssh}.\n"
        f'if [ -n "${{{ENV_VAR}:-}}" ]; then\n'
        f'    exec {ssh} -o "ControlPath=${ENV_VAR}" "$@"\n'
        "fi\n"
        f'exec {ssh} "$@"\n'
    )


def wrapper_dir(cache: str, real_ssh: str) -> str:
    """Directory of the wrapper for `real_ssh` under `cache` (named by its content, so two
    stapmagic versions never overwrite each other's)."""
    digest = hashlib.sha256(wrapper_text(real_ssh).encode()).hexdigest()[:12]
    return f"{cache.rstrip('/')}/{SUBDIR}/bin-{digest}"


def control_path(cache: str, pid: int) -> str:
    """This process's ControlPath template (ssh expands ``%C``: a hash of host, port, user)."""
    return f"{cache.rstrip('/')}/{SUBDIR}/cm-{pid}-%C"


def master_argv(ssh: str, control: str, destination: Sequence[str]) -> list[str]:
    """Start a master: authenticate, then go to the background (``-f``) with no session."""
    return [
        ssh,
        "-f",
        "-N",
        "-o",
        "ControlMaster=yes",
        "-o",
        f"ControlPersist={PERSIST_S}",
        "-o",
        f"ControlPath={control}",
        *destination,
    ]


def control_argv(ssh: str, op: str, control: str, destination: Sequence[str]) -> list[str]:
    """Ask the master at `control` to ``check``, ``stop`` (no new sessions) or ``exit``."""
    if op not in ("check", "stop", "exit"):
        raise ValueError(f"unknown ssh control operation {op!r}")
    return [ssh, "-o", f"ControlPath={control}", "-O", op, *destination]


def install_wrapper(host_dir: Path, real_ssh: str) -> None:
    """Write the wrapper into `host_dir` (idempotent, atomic: a concurrent reader sees the
    old file or the whole new one)."""
    target = host_dir / "ssh"
    text = wrapper_text(real_ssh)
    with contextlib.suppress(OSError):
        if target.read_text() == text:
            return
    host_dir.mkdir(parents=True, exist_ok=True)
    tmp = host_dir / f".ssh.{os.getpid()}.tmp"
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(target)


@dataclass
class Mux:
    """The master for one destination. `prefix` runs a command where stap's ssh runs (the
    lab's chroot, or nothing); `cache` is the cache directory as that ssh sees it, `host_cache`
    the same directory from here; `ssh` is the real ssh there."""

    prefix: tuple[str, ...]
    destination: tuple[str, ...]
    cache: str
    host_cache: Path
    ssh: str = "ssh"
    pid: int = field(default_factory=os.getpid)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _starting: threading.Thread | None = field(default=None, repr=False)

    @property
    def control(self) -> str:
        return control_path(self.cache, self.pid)

    @property
    def bin_dir(self) -> str:
        return wrapper_dir(self.cache, self.ssh)

    def env_items(self) -> list[str]:
        """``NAME=VALUE`` items that make a stap or ssh started with them use this master."""
        return [f"{ENV_VAR}={self.control}"]

    def install(self) -> None:
        rel = Path(self.bin_dir).relative_to(self.cache)
        install_wrapper(self.host_cache / rel, self.ssh)
        (self.host_cache / SUBDIR).chmod(0o700)

    def _run(self, argv: Sequence[str], timeout: float) -> int:
        try:
            # -f keeps ssh's stdio open in the background master: never a pipe here, or
            # this call would wait for the master to end.
            done = subprocess.run(  # noqa: S603 (argv list, no shell)
                [*self.prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
                start_new_session=True,  # a Ctrl-C to the notebook must not end the master
            )
        except (OSError, subprocess.TimeoutExpired):
            return -1
        return done.returncode

    def alive(self) -> bool:
        return self._run(control_argv(self.ssh, "check", self.control, self.destination), 10) == 0

    def start(self, wait: bool = False) -> None:
        """Start the master in the background unless it runs or is starting; until it
        listens, clients connect directly. `wait`: return once it is up (or failed)."""
        with self._lock:
            thread = self._starting
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._start, name="stapmagic-ssh-mux", daemon=True)
                self._starting = thread
                thread.start()
        if wait:
            thread.join()

    def _start(self) -> None:
        (self.host_cache / SUBDIR).mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.alive():
            return
        self._run(master_argv(self.ssh, self.control, self.destination), 60)

    def stop(self, op: str = "stop") -> None:
        self._run(control_argv(self.ssh, op, self.control, self.destination), 10)


_MUXES: dict[tuple[str, ...], Mux] = {}
_REGISTRY_LOCK = threading.Lock()


def get(key: tuple[str, ...], make: Callable[[], Mux]) -> Mux:
    """This process's Mux for `key` (`make` makes it the first time; after a fork, again)."""
    with _REGISTRY_LOCK:
        mux = _MUXES.get(key)
        if mux is None or mux.pid != os.getpid():
            mux = make()
            _MUXES[key] = mux
        return mux


def stop_all() -> None:
    """Stop every master this process started (extension unloaded, interpreter exit)."""
    with _REGISTRY_LOCK:
        muxes = [m for m in _MUXES.values() if m.pid == os.getpid()]
        _MUXES.clear()
    for mux in muxes:
        mux.stop()


def forget(key: tuple[str, ...]) -> Mux | None:
    with _REGISTRY_LOCK:
        return _MUXES.pop(key, None)


atexit.register(stop_all)
