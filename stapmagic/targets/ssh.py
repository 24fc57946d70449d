"""A host reached with stap's own ``--remote=ssh://...``: stap compiles here, pass 5 runs there
through stapsh; plain commands go through ``ssh``.

stapsh starts staprun in a scratch directory, and staprun runs the ``-c`` command there, in
stapsh's process group (runtime/staprun/start_cmd: split by wordexp(3) and exec'd, or
``sh -c CMD`` when it holds shell metacharacters). Two consequences, both handled from this
side for every ssh target (the lab's staprun wrapper does the same inside its guest):

- a relative path in ``-c`` would resolve in that scratch directory: the command is wrapped so
  it runs in the login directory, where ``ssh HOST cmd`` runs too;
- an interrupted run (stapsh's ``quit``) unloads the module but leaves the workload running:
  the wrapper puts the workload in a session of its own and writes its process group id to a
  file in the login directory; after the run, :meth:`SshTarget.end_workload` ends that group
  over the exec channel (SIGTERM, then SIGKILL) and removes the file.

The user's command stays one argv item throughout: it is the last argument of a fixed script,
never pasted into one.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from stapmagic.errors import OptionError
from stapmagic.targets import Target, _stap_version, check_arg, local_stap_version, which_stap

SSH_FORM = "ssh://[user@]host[:port]"
# POSIX-portable user names (plus the common '.'); no leading '-' (it would be an ssh option).
_USER = r"[A-Za-z_][A-Za-z0-9_.-]{0,31}"
# DNS names / IPv4 literals: labels of letters, digits and '-', not starting or ending with '-'.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})*"
_SSH_URL = re.compile(
    rf"ssh://(?:(?P<user>{_USER})@)?(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?/?"
)

# --- the -c wrapper ----------------------------------------------------------------------
# staprun splits the wrapper with wordexp (every metacharacter in it is quoted, so no shell
# is involved) and execs setsid: the workload and its children get a process group of their
# own (the inner sh's $$, whether or not setsid had to fork), apart from stapsh and staprun.
# staprun's child is no group leader, so setsid execs in place and target() stays the
# workload's pid; -w waits should it have to fork (util-linux setsid). No leading `exec`:
# wordexp would make it the program. $0 is the pid file, $1 the user's command (run by sh -c,
# as staprun itself runs a command with metacharacters), each one argument.
_INNER = (
    'cd || { echo "stapmagic: cannot change to the login directory" >&2; exit 126; }; '
    '{ echo $$ > "$0"; } 2>/dev/null || echo "stapmagic: cannot write $0 in the login '
    'directory: an interrupted run may leave this command running" >&2; '
    'exec sh -c "$1"'
)
_HEAD = ["setsid", "-w", "sh", "-c", _INNER]
_PIDFILE = re.compile(r"\.stapmagic-c-[0-9a-f]{16}\.pgid")
# Run over the exec channel after the run (in the login directory): end the group, drop the file.
_END = (
    'f=$1; [ -f "$f" ] || exit 0; p=$(cat "$f"); rm -f "$f"; '
    'case $p in ""|*[!0-9]*) exit 0;; esac; '
    'kill -s TERM -- "-$p" 2>/dev/null || exit 0; i=0; '
    'while kill -s 0 -- "-$p" 2>/dev/null && [ $i -lt 10 ]; do sleep 0.2; i=$((i+1)); done; '
    'kill -s KILL -- "-$p" 2>/dev/null; exit 0'
)


def wrap_workload(command: str, pidfile: str | None = None) -> str:
    """The ``-c`` string for `command` on an ssh target (see the module docstring)."""
    check_arg("-c command", command)
    pidfile = pidfile or f".stapmagic-c-{secrets.token_hex(8)}.pgid"
    if not _PIDFILE.fullmatch(pidfile):
        raise OptionError(f"bad workload pid file name {pidfile!r}")
    return shlex.join([*_HEAD, pidfile, command])


def workload_pidfile(argv: Sequence[str]) -> str | None:
    """The pid file of the wrapped ``-c`` in a stap command line, if it has one."""
    for i, item in enumerate(argv[:-1]):
        if item == "-c" and argv[i + 1].startswith("setsid -w sh -c "):
            try:
                words = shlex.split(argv[i + 1])
            except ValueError:
                return None
            if (
                len(words) == len(_HEAD) + 2
                and words[: len(_HEAD)] == _HEAD
                and _PIDFILE.fullmatch(words[len(_HEAD)])
            ):
                return words[len(_HEAD)]
    return None


def parse_ssh_url(url: str) -> tuple[str | None, str, int | None]:
    """``ssh://[user@]host[:port]`` -> (user, host, port); OptionError saying what is wrong."""
    m = _SSH_URL.fullmatch(url)
    if m is None:
        raise OptionError(_ssh_problem(url))
    port: int | None = None
    if m.group("port") is not None:
        port = int(m.group("port"))
        if not 1 <= port <= 65535:
            raise OptionError(
                f"ssh port {port} is out of range (1-65535) in {url!r}; use {SSH_FORM}"
            )
    return m.group("user"), m.group("host"), port


def _ssh_problem(url: str) -> str:
    """Say what is wrong with an ssh URL, as precisely as we can."""
    form = f"; the accepted form is {SSH_FORM}, e.g. ssh://root@stapmagic-lab:10022"
    rest = url[len("ssh://") :] if url.startswith("ssh://") else url
    if not url.startswith("ssh://"):
        return f"an ssh target must start with ssh://, got {url!r}{form}"
    bad = sorted({c for c in rest if not (c.isascii() and (c.isalnum() or c in "_.-@:/"))})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"ssh target {url!r} contains characters that are not allowed ({shown}){form}"
    if not rest or rest.startswith("@") or rest.startswith(":"):
        return f"ssh target {url!r} has no host{form}"
    if rest.startswith("-") or "@-" in rest:
        return f"ssh target {url!r}: user and host must not start with '-'{form}"
    if rest.count("@") > 1:
        return f"ssh target {url!r} has more than one '@'{form}"
    hostport = rest.split("@", 1)[-1].rstrip("/")
    if "/" in hostport:
        return f"ssh target {url!r}: stap's ssh remote takes no /path{form}"
    if hostport.count(":") > 1 or hostport.startswith("["):
        return (
            f"ssh target {url!r}: IPv6 literals are not supported (stap splits host:port at "
            f"the first ':'){form}"
        )
    if ":" in hostport and not hostport.rsplit(":", 1)[1].isdigit():
        return f"ssh target {url!r}: the port must be a number{form}"
    return f"ssh target {url!r} is not a valid user/host{form}"


@dataclass(frozen=True)
class SshTarget(Target):
    """``url`` = ``ssh://[user@]host[:port]``. ``via``: a command prefix under which the local
    stap and ssh run (e.g. a chroot holding the ssh config and the compiler), empty for this
    machine's own."""

    url: str
    via: tuple[str, ...] = field(default=(), compare=False)

    kind: ClassVar[str] = "ssh"

    def __post_init__(self) -> None:
        parse_ssh_url(self.url)

    @classmethod
    def parse(cls, text: str) -> Target | None:
        if not text.lower().startswith("ssh://"):
            return None
        return cls("ssh://" + text[len("ssh://") :])

    @classmethod
    def from_url(cls, url: str | None) -> Target:
        if url is None:
            raise OptionError(f"an ssh target needs a URL of the form {SSH_FORM}")
        return cls(url)

    def __str__(self) -> str:
        return self.url

    @property
    def user(self) -> str | None:
        return parse_ssh_url(self.url)[0]

    @property
    def host(self) -> str:
        return parse_ssh_url(self.url)[1]

    @property
    def port(self) -> int | None:
        return parse_ssh_url(self.url)[2]

    @property
    def destination(self) -> str:
        """``user@host`` (or ``host``) for ssh's command line."""
        user, host, _ = parse_ssh_url(self.url)
        return f"{user}@{host}" if user else host

    def stap_prefix(self, *, require_stap: bool = True) -> list[str]:
        stap = [*self.via, "stap"] if self.via else [which_stap(require_stap)]
        return [*stap, f"--remote={self.url}"]

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """ssh joins its arguments into one remote shell line, so each item is shell-quoted."""
        items = [check_arg("command argument", a) for a in argv]
        if not items:
            raise OptionError("empty command")
        out = [*self.via, "ssh"]
        if self.port is not None:
            out += ["-p", str(self.port)]
        out += ["-o", "BatchMode=yes", "--", self.destination]
        return out + [shlex.quote(a) for a in items]

    def compile_argv(self, argv: Sequence[str]) -> list[str]:
        return [*self.via, *argv]

    def stap_version(self) -> str:
        if self.via:
            return _stap_version([*self.via, "stap", "-V"])
        return local_stap_version()

    def workload(self, command: str) -> str:
        return wrap_workload(command)

    def end_workload(self, argv: Sequence[str]) -> None:
        pidfile = workload_pidfile(argv)
        if pidfile is None:
            return
        try:
            self.run(["sh", "-c", _END, "stapmagic-end", pidfile], timeout=30.0)
        except OptionError:
            pass  # unreachable now: nothing more can be done from here
