"""Several targets in one cell (``--target lab,lab:b,ssh://root@web1``): one stap with one
``--remote`` per host. SystemTap itself compiles once per distinct kernel and runs the module on
every remote (main.cxx, remote.cxx); a remote that dies mid-run ends only its own session, the
others run to their end (seen on the lab: tests/lab/test_fleet_lab.py).

One stap means one compile side: hosts whose stap prefixes differ other than by their
``--remote`` (lab guests compile in the lab's chroot, ssh hosts with this machine's stap) cannot
share a run and are refused with that reason. Plain commands (kallsyms, BTF) go to the first host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from stapmagic.errors import OptionError
from stapmagic.targets import Target

REMOTE = "--remote="


def _split_remotes(prefix: Sequence[str]) -> tuple[list[str], list[str], int]:
    """(prefix without its --remote items, those items, where the first one was)."""
    rest: list[str] = []
    remotes: list[str] = []
    at = -1
    for item in prefix:
        if item.startswith(REMOTE):
            if at < 0:
                at = len(rest)
            remotes.append(item)
        else:
            rest.append(item)
    return rest, remotes, at


@dataclass(frozen=True)
class FleetTarget(Target):
    """`members` run (remote index i = members[i]); `hosts` is every target the user listed, in
    order (the host column's categories, rows or not); `notes` say why a host does not run;
    `kernels` maps each kernel release to its hosts once pre-flight has asked them."""

    members: tuple[Target, ...]
    asked: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)
    kernels: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    kind: ClassVar[str] = "fleet"

    def __post_init__(self) -> None:
        if not self.members:
            raise OptionError("a target list needs at least one host that runs")

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.asked or tuple(str(m) for m in self.members)

    @property
    def remote_names(self) -> tuple[str, ...]:
        """The host of each remote index (remote_id()), in --remote order."""
        return tuple(str(m) for m in self.members)

    @classmethod
    def parse(cls, text: str) -> Target | None:
        if "," not in text:
            return None
        from stapmagic.targets import parse_target

        members: list[Target] = []
        for item in (t.strip() for t in text.split(",")):
            if not item:
                raise OptionError(f"target list {text!r} has an empty item: name each host once")
            member = parse_target(item)
            if isinstance(member, FleetTarget):
                raise AssertionError(item)  # no comma left in an item
            if member.kind == "local":
                raise OptionError(
                    f"target list {text!r}: 'local' cannot be one of several hosts (stap runs "
                    "it without a remote); list ssh://HOST for this machine instead"
                )
            if member in members:
                raise OptionError(f"target list {text!r} names {item} twice: name each host once")
            members.append(member)
        return cls(tuple(members))

    @classmethod
    def from_url(cls, url: str | None) -> Target:
        if url is None:
            raise OptionError("a target list needs its hosts: HOST,HOST,...")
        found = cls.parse(url)
        if found is None:
            raise OptionError(f"{url!r} is one host, not a list")
        return found

    def __str__(self) -> str:
        return ",".join(self.hosts)

    @property
    def where(self) -> str:
        return f"the hosts {', '.join(self.remote_names)}"

    @property
    def down_hint(self) -> str:
        return next((m.down_hint for m in self.members if m.down_hint), "")

    def stap_prefix(self, *, require_stap: bool = True) -> list[str]:
        base: list[str] | None = None
        first = ""
        remotes: list[str] = []
        at = -1
        for member in self.members:
            rest, own, where = _split_remotes(member.stap_prefix(require_stap=require_stap))
            if not own:
                raise OptionError(f"{member} is not reached through a stap --remote")
            if base is None:
                base, first, at = rest, str(member), where
            elif rest != base:
                raise OptionError(
                    f"{first} and {member} cannot share one stap: stap compiles for them in "
                    f"different places ({' '.join(base[:2])}... and {' '.join(rest[:2])}...; "
                    "lab guests compile in the lab's chroot, ssh hosts with this machine's "
                    "stap); list them in separate cells"
                )
            remotes += own
        assert base is not None
        return [*base[:at], *remotes, *base[at:]]

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return self.members[0].exec_argv(argv)

    def compile_argv(self, argv: Sequence[str]) -> list[str]:
        return self.members[0].compile_argv(argv)

    def workload(self, command: str) -> str:
        return self.members[0].workload(command)

    def end_workload(self, argv: Sequence[str]) -> None:
        for member in self.members:
            member.end_workload(argv)

    def stap_version(self) -> str:
        return self.members[0].stap_version()

    def kernel_release(self) -> str:
        return ", ".join(f"{m}: {m.kernel_release()}" for m in self.members)

    def problem(self) -> str | None:
        """None when every host answers, else which do not and why."""
        bad = [(m, m.problem()) for m in self.members]
        said = [f"{m} does not answer ({why})" for m, why in bad if why is not None]
        return "; ".join(said) or None

    def can_run_stap(self) -> tuple[bool, str]:
        found = [(m, *m.can_run_stap()) for m in self.members]
        if all(ok for _, ok, _ in found):
            return True, "; ".join(why for _, _, why in found)
        return False, "; ".join(f"{m}: {why}" for m, ok, why in found if not ok)

    def post_mortem(self) -> list[str]:
        out: list[str] = []
        for member in self.members:
            out += [f"{member}: {note}" for note in member.post_mortem()]
        return out

    def kallsyms_lines(self, names: Sequence[str]) -> list[str]:
        return self.members[0].kallsyms_lines(names)
