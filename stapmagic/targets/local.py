"""The local machine: stap on PATH, commands run directly, a stop goes to stap's whole group."""

from __future__ import annotations

import grp
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from stapmagic.errors import OptionError, StapNotFound
from stapmagic.targets import Target, check_arg, local_stap_version, which_stap


@dataclass(frozen=True)
class LocalTarget(Target):
    kind: ClassVar[str] = "local"
    group_signals: ClassVar[bool] = True
    remote: ClassVar[bool] = False

    @classmethod
    def parse(cls, text: str) -> Target | None:
        return cls() if text.lower() == "local" else None

    @classmethod
    def from_url(cls, url: str | None) -> Target:
        if url is not None:
            raise OptionError("target 'local' takes no URL")
        return cls()

    def __str__(self) -> str:
        return "local"

    def stap_prefix(self, *, require_stap: bool = True) -> list[str]:
        return [which_stap(require_stap)]

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        items = [check_arg("command argument", a) for a in argv]
        if not items:
            raise OptionError("empty command")
        return items

    def stap_version(self) -> str:
        return local_stap_version()

    def problem(self) -> str | None:
        return None

    def can_run_stap(self) -> tuple[bool, str]:
        if shutil.which("stap") is None:
            return False, "no `stap` on PATH"
        try:
            which_stap()
        except StapNotFound as exc:  # e.g. its #! interpreter is missing
            return False, str(exc).splitlines()[0]
        if os.geteuid() != 0:
            groups = set()
            for gid in os.getgroups():
                try:
                    groups.add(grp.getgrgid(gid).gr_name)
                except KeyError:  # a gid without a name
                    pass
            if not groups & {"stapusr", "stapdev"}:
                return False, "not root and not in the stapusr group"
        release = os.uname().release
        if not Path(f"/lib/modules/{release}/build").exists():
            return False, f"no kernel headers for {release} (/lib/modules/{release}/build)"
        return True, "local stap, root, kernel headers present"
