"""Where stap runs: the :class:`Target` protocol and :func:`parse_target`.

A target owns every fact that differs between places stap can run: the stap command prefix,
how to run a plain command there, stap's version and the kernel release, whether it answers,
what to say after a failed run, how a stop reaches stap (its whole process group, or stap
alone), the ``-c`` workload's wrapping and clean-up, and the /proc/kallsyms lookup. One
implementation per module (local.py, ssh.py, lab.py); a new kind of target (several hosts, a
kernel's BTF fetched from the target) is one new module plus one entry in ``_kinds()``.

No pexpect here: runner.py runs stap; this package only runs short plain commands.
"""

from __future__ import annotations

import abc
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from stapmagic.errors import OptionError, StapMagicError, StapNotFound

__all__ = [
    "INSTALL_HINT",
    "KallsymsSymbol",
    "Target",
    "TargetKind",
    "kallsyms_filter",
    "kallsyms_symbols",
    "parse_target",
    "stap_env",
    "which_stap",
]

TargetKind = Literal["local", "lab", "ssh", "fleet"]

INSTALL_HINT = (
    "Install SystemTap and the headers of the running kernel:\n"
    "  Debian/Ubuntu: sudo apt-get install systemtap systemtap-runtime linux-headers-$(uname -r)\n"
    "  Fedora/RHEL:   sudo dnf install systemtap systemtap-runtime kernel-devel-$(uname -r)\n"
    "or run on the stapmagic lab VM instead: --target lab"
)


def check_arg(what: str, value: str) -> str:
    """`value` itself, if it is a string without NUL (which no argv item can carry)."""
    if not isinstance(value, str):
        raise OptionError(f"{what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise OptionError(f"{what} contains a NUL byte")
    return value


def stap_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment stap runs with: the caller's, plus

    - ``TERM=dumb``: no colours from stap, staprun or gcc on the pty;
    - ``LC_MESSAGES=C``: English messages, which diagnose.py recognises (``LC_ALL``, which
      would override it, is moved to ``LANG`` so the rest of the locale is kept).
    """
    env = dict(os.environ if base is None else base)
    env["TERM"] = "dumb"
    if "LC_ALL" in env:
        lc_all = env.pop("LC_ALL")
        if lc_all:
            env["LANG"] = lc_all
    env["LC_MESSAGES"] = "C"
    return env


def _interpreter_problem(path: str) -> str | None:
    """Why the kernel could not exec the script `path` (its ``#!`` line), or None."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(512)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if not words:
        return "its #! line names no interpreter"
    interp = words[0]
    if not os.access(interp, os.X_OK) or os.path.isdir(interp):
        return f"its #! interpreter {interp} is missing or not executable"
    if os.path.basename(interp) == "env":
        # `#!/usr/bin/env prog`: env looks prog up on PATH (options such as -S are rare)
        prog = next((w for w in words[1:] if not w.startswith("-") and "=" not in w), None)
        if prog is not None and shutil.which(prog) is None:
            return f"its #! line runs {prog!r} through env, and there is no {prog} on PATH"
    return None


def which_stap(required: bool = True) -> str:
    """The local ``stap`` that can really be executed; :class:`StapNotFound` (with the install
    hint) when there is none, or when it is a script whose interpreter is missing.
    ``required=False`` (``--dry-run``) returns the bare name ``stap`` instead of raising."""
    path = shutil.which("stap")
    if path is None:
        if not required:
            return "stap"
        raise StapNotFound(f"stap (SystemTap) was not found on PATH.\n{INSTALL_HINT}")
    problem = _interpreter_problem(path)
    if problem is not None:
        if not required:
            return path
        raise StapNotFound(f"the stap on PATH ({path}) cannot run: {problem}.\n{INSTALL_HINT}")
    return path


# --------------------------------------------------------------------------------------
# /proc/kallsyms: the one parser of its lines


@dataclass(frozen=True)
class KallsymsSymbol:
    """One /proc/kallsyms line: ``ADDRESS TYPE NAME [\\[MODULE\\]]``."""

    address: int
    type: str
    name: str
    module: str  # "" for the kernel itself

    @property
    def is_text(self) -> bool:
        """A function (text, weak): only these are probe points."""
        return self.type.lower() in ("t", "w")


_KALLSYMS_LINE = re.compile(
    r"(?P<addr>[0-9a-fA-F]{1,16})\s+(?P<type>[A-Za-z])\s+(?P<name>\S+)"
    r"(?:\s+\[(?P<module>[^\s\]]+)\])?\s*"
)


def kallsyms_symbols(
    lines: Iterable[str],
    names: Iterable[str] | None = None,
) -> list[KallsymsSymbol]:
    """The well-formed lines among `lines` (for exactly `names`, when given) as symbols.

    Anything else (a damaged or truncated line, a line that is no kallsyms line at all) is
    skipped: a malformed answer from the target means "not found", never a traceback."""
    wanted = None if names is None else set(names)
    out = []
    for line in lines:
        m = _KALLSYMS_LINE.fullmatch(line)
        if m is None or (wanted is not None and m.group("name") not in wanted):
            continue
        out.append(
            KallsymsSymbol(
                int(m.group("addr"), 16), m.group("type"), m.group("name"), m.group("module") or ""
            )
        )
    return out


def kallsyms_filter(lines: Iterable[str], names: Iterable[str]) -> list[str]:
    """The lines of `lines` that are well-formed kallsyms lines for one of `names`."""
    wanted = set(names)
    return [
        ln
        for ln in lines
        if (m := _KALLSYMS_LINE.fullmatch(ln)) is not None and m.group("name") in wanted
    ]


# --------------------------------------------------------------------------------------
# the protocol


class _TargetMeta(abc.ABCMeta):
    """``Target("lab")``, ``Target("ssh", url)``: the constructor of the earlier string switch,
    kept for existing callers; it returns the implementation for that kind."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is Target:
            return _from_kind(*args, **kwargs)
        return super().__call__(*args, **kwargs)


def capture(full: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run an argv made by some `exec_argv`, stdout and stderr kept as bytes. Raises OSError
    or subprocess.TimeoutExpired: each caller says what failed in its own terms."""
    return subprocess.run(  # noqa: S603 (argv list, no shell)
        list(full), capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )


class Target(metaclass=_TargetMeta):
    """Where stap runs. Implementations are frozen dataclasses (equal when they name the
    same place); ``str(target)`` is what the user wrote (``local``, ``lab``, ``ssh://...``)."""

    kind: ClassVar[str]
    #: a stop goes to stap's whole process group (Ctrl-C in a terminal); for a remote target
    #: only stap itself gets it, so it can tell the remote side to stop cleanly
    group_signals: ClassVar[bool] = False
    #: stap reaches this target over a connection (ssh) that can be lost mid-run
    remote: ClassVar[bool] = True
    #: the ``ssh://`` URL of a remote target
    url: str | None = None

    @property
    def where(self) -> str:
        """The target in a sentence ("the connection to {where} was lost")."""
        return str(self)

    @property
    def down_hint(self) -> str:
        """Said after "the target does not answer": how to check it."""
        return ""

    def __str__(self) -> str:
        return self.url or self.kind

    @classmethod
    @abc.abstractmethod
    def parse(cls, text: str) -> Target | None:
        """This kind of target if `text` (stripped, not empty) names one, else None;
        OptionError if it is meant for this kind but malformed."""

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str | None) -> Target:
        """The ``Target(kind, url)`` form."""

    # -- running things there -----------------------------------------------------------

    @abc.abstractmethod
    def stap_prefix(self, *, require_stap: bool = True) -> list[str]:
        """The start of a stap command line for this target (stap and its remote options)."""

    @abc.abstractmethod
    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """argv that runs the plain command `argv` on the target (no local shell involved)."""

    def compile_argv(self, argv: Sequence[str]) -> list[str]:
        """argv that runs `argv` where stap compiles for this target (this machine here)."""
        return list(argv)

    def compile_side_paths(self, paths: Sequence[str]) -> set[str]:
        """Those of `paths` that exist where stap compiles for this target (pre-flight)."""
        test = 'for f in "$@"; do [ -e "$f" ] && printf "%s\\n" "$f"; done; true'
        argv = ["sh", "-c", test, "sh", *(check_arg("path", p) for p in paths)]
        try:
            done = capture(self.compile_argv(argv), timeout=60.0)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OptionError(
                f"could not look for {', '.join(paths)} where stap compiles: {exc}"
            ) from None
        return {ln for ln in done.stdout.decode(errors="replace").splitlines() if ln in paths}

    def run(
        self, argv: Sequence[str], *, timeout: float = 60.0, ok_codes: tuple[int, ...] = (0,)
    ) -> str:
        """Run a short plain command on the target; its stdout (OptionError on failure)."""
        try:
            done = capture(self.exec_argv(argv), timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OptionError(f"could not run {shlex.join(argv)} on the target: {exc}") from None
        if done.returncode not in ok_codes:
            err = done.stderr.decode(errors="replace").strip()
            raise OptionError(
                f"{shlex.join(argv)} failed on the target (exit {done.returncode}): {err}"
            )
        return done.stdout.decode(errors="replace")

    def workload(self, command: str) -> str:
        """The ``-c`` argument stap gets for the user's `command` (see ssh.py)."""
        return command

    def end_workload(self, argv: Sequence[str]) -> None:
        """After the run of `argv` ended: end what is left of its ``-c`` workload, if this
        target can. Never raises."""

    # -- facts ----------------------------------------------------------------------------

    def stap_version(self) -> str:
        """First line of ``stap -V`` from the stap that compiles the scripts."""
        prefix = self.stap_prefix()
        cut = next((i for i, a in enumerate(prefix) if os.path.basename(a) == "stap"), 0)
        return _stap_version([*prefix[: cut + 1], "-V"])

    def kernel_release(self) -> str:
        try:
            return self.run(["uname", "-r"]).strip()
        except StapMagicError as exc:
            return f"unknown ({exc})"

    def problem(self) -> str | None:
        """None when the target answers now, else why not."""
        try:
            self.run(["true"], timeout=30.0)
        except StapMagicError as exc:
            text = str(exc).strip()
            return text.splitlines()[-1] if text else type(exc).__name__
        return None

    def can_run_stap(self) -> tuple[bool, str]:
        """Whether a live run can work here, and why (cheap checks, nothing is compiled)."""
        return True, f"target {self} (not checked)"

    def post_mortem(self) -> list[str]:
        """Notes after a failed run (e.g. the VM died)."""
        return []

    def kallsyms_lines(self, names: Sequence[str]) -> list[str]:
        """The target's /proc/kallsyms lines for exactly these symbol names."""
        argv = ["grep", "-w"]
        for name in names:
            argv += ["-e", check_arg("symbol name", name)]
        # grep exits 1 when nothing matches: an answer, not a failure.
        out = self.run([*argv, "/proc/kallsyms"], ok_codes=(0, 1))
        return kallsyms_filter(out.splitlines(), names)


def _stap_version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(  # noqa: S603 (argv list, no shell)
            list(argv),
            capture_output=True,
            timeout=120,
            check=False,
            env=stap_env(),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (done.stderr + done.stdout).decode(errors="replace")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return first or f"unknown (stap -V exit status {done.returncode})"


def local_stap_version() -> str:
    """``stap -V`` of the stap on PATH (ssh targets compile locally)."""
    try:
        found = which_stap()
    except StapNotFound:
        return "unknown (no runnable stap on PATH)"
    return _stap_version([found, "-V"])


# --------------------------------------------------------------------------------------
# parsing

_ACCEPTED = (
    '"local", "lab", "lab:NAME" or "ssh://[user@]host[:port]", or several (not local) '
    "separated by commas"
)


def _kinds() -> tuple[type[Target], ...]:
    from stapmagic.targets.fleet import FleetTarget
    from stapmagic.targets.lab import LabTarget
    from stapmagic.targets.local import LocalTarget
    from stapmagic.targets.ssh import SshTarget

    # A list first: its first item would otherwise be read as the whole target.
    return (FleetTarget, LocalTarget, LabTarget, SshTarget)


def _from_kind(kind: str, url: str | None = None) -> Target:
    for cls in _kinds():
        if cls.kind == kind:
            return cls.from_url(url)
    raise OptionError(f"unknown target kind {kind!r}; use {_ACCEPTED}")


def parse_target(text: str) -> Target:
    """``"local"`` | ``"lab"`` | ``"ssh://[user@]host[:port]"`` -> a :class:`Target`.

    Strict: anything with spaces, quotes, shell characters, a leading ``-`` or a path is
    rejected with an :class:`OptionError` naming the problem and the accepted form.
    (``ssh://host`` without a user is accepted: an alias from ``~/.ssh/config`` is the form
    that worked with stap's remote mode in the reference runs.)
    """
    if not isinstance(text, str):
        raise OptionError(f"target must be a string: {_ACCEPTED}")
    t = text.strip()
    if not t:
        raise OptionError(f"empty target: name one of {_ACCEPTED}")
    for cls in _kinds():
        found = cls.parse(t)
        if found is not None:
            return found
    raise OptionError(f"unknown target {text!r}; use {_ACCEPTED}")
