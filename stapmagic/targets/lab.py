"""The lab VM (stapmagic/lab.py): stap compiles in the image's chroot and runs pass 5 in the
guest through stap's ssh remote. The guest's staprun wrapper already runs ``-c`` in the lab's
work directory and ends what is left of it, so the command is passed as written.

stapmagic.lab is imported when used: it pulls in the VM machinery, which nothing else needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from stapmagic.errors import OptionError
from stapmagic.targets import Target, check_arg


@dataclass(frozen=True)
class LabTarget(Target):
    kind: ClassVar[str] = "lab"

    @classmethod
    def parse(cls, text: str) -> Target | None:
        return cls() if text.lower() == "lab" else None

    @classmethod
    def from_url(cls, url: str | None) -> Target:
        if url is not None:
            raise OptionError("target 'lab' takes no URL")
        return cls()

    def __str__(self) -> str:
        return "lab"

    @property
    def where(self) -> str:
        return "the lab VM"

    @property
    def down_hint(self) -> str:
        return " (python -m stapmagic.lab status)"

    def stap_prefix(self, *, require_stap: bool = True) -> list[str]:
        from stapmagic import lab

        return list(lab.stap_argv(require_running=require_stap))

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        from stapmagic import lab

        items = [check_arg("command argument", a) for a in argv]
        if not items:
            raise OptionError("empty command")
        return list(lab.exec_argv(items))

    def can_run_stap(self) -> tuple[bool, str]:
        from stapmagic import lab

        if lab.is_up():
            return True, "the lab VM is up"
        return False, "the lab VM is not running (python -m stapmagic.lab up)"

    def post_mortem(self) -> list[str]:
        """Say so if the VM itself died (e.g. the guest kernel crashed)."""
        from stapmagic import lab

        if lab.is_up():
            return []
        state = lab.last_state()
        serial = str(state.get("serial_log", "")) if state else ""
        crash = lab.guest_crash(serial) if serial else None
        what = f"the guest kernel crashed ({crash})" if crash else "the lab VM is no longer running"
        return [
            f"{what}; serial console: {serial or 'n/a'}; restart it with "
            "`python -m stapmagic.lab up` (a disposable VM: nothing is lost but this run)"
        ]
