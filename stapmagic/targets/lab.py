"""The lab VM (stapmagic/lab.py): stap compiles in the image's chroot and runs pass 5 in the
guest through stap's ssh remote. The guest's staprun wrapper already runs ``-c`` in the lab's
work directory and ends what is left of it, so the command is passed as written.

stapmagic.lab is imported when used: it pulls in the VM machinery, which nothing else needs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from stapmagic.errors import OptionError
from stapmagic.targets import Target, check_arg

# The same rule as stapmagic.lab.GUEST_NAME (not imported: that module pulls in the VM).
_GUEST = re.compile(r"lab:(?P<name>[a-z][a-z0-9]{0,15})")
DEFAULT_GUEST = "lab"


@dataclass(frozen=True)
class LabTarget(Target):
    """``lab`` (the default guest) or ``lab:NAME`` (another guest, ``lab up --name NAME``)."""

    kind: ClassVar[str] = "lab"
    name: str = DEFAULT_GUEST

    @classmethod
    def parse(cls, text: str) -> Target | None:
        t = text.lower()
        if t == "lab":
            return cls()
        if not t.startswith("lab:"):
            return None
        m = _GUEST.fullmatch(t)
        if m is None or m.group("name") == DEFAULT_GUEST:
            raise OptionError(
                f"lab guest {text!r}: expected lab:NAME, NAME a lowercase letter then letters or "
                "digits (the guest of python -m stapmagic.lab up --name NAME)"
            )
        return cls(m.group("name"))

    @classmethod
    def from_url(cls, url: str | None) -> Target:
        if url is not None:
            raise OptionError("target 'lab' takes no URL")
        return cls()

    def __str__(self) -> str:
        return "lab" if self.name == DEFAULT_GUEST else f"lab:{self.name}"

    def _guest(self) -> dict[str, Any]:
        # The default guest's calls stay as they were (no name argument).
        return {} if self.name == DEFAULT_GUEST else {"name": self.name}

    @property
    def where(self) -> str:
        return "the lab VM" if self.name == DEFAULT_GUEST else f"the lab VM {self.name}"

    @property
    def down_hint(self) -> str:
        return " (python -m stapmagic.lab status)"

    def _up_hint(self) -> str:
        return "python -m stapmagic.lab up" + (
            "" if self.name == DEFAULT_GUEST else f" --name {self.name}"
        )

    def stap_prefix(self, *, require_stap: bool = True) -> list[str]:
        from stapmagic import lab

        return list(lab.stap_argv(require_running=require_stap, **self._guest()))

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        from stapmagic import lab

        items = [check_arg("command argument", a) for a in argv]
        if not items:
            raise OptionError("empty command")
        return list(lab.exec_argv(items, **self._guest()))

    def compile_argv(self, argv: Sequence[str]) -> list[str]:
        """stap compiles in the lab's chroot."""
        from stapmagic import lab

        return [*lab.client_argv(**self._guest()), *argv]

    def can_run_stap(self) -> tuple[bool, str]:
        from stapmagic import lab

        if lab.is_up(**self._guest()):
            return True, f"{self.where} is up"
        return False, f"{self.where} is not running ({self._up_hint()})"

    def post_mortem(self) -> list[str]:
        """Say so if the VM itself died (e.g. the guest kernel crashed)."""
        from stapmagic import lab

        if lab.is_up(**self._guest()):
            return []
        state = lab.last_state(**self._guest())
        serial = str(state.get("serial_log", "")) if state else ""
        crash = lab.guest_crash(serial) if serial else None
        what = (
            f"the guest kernel crashed ({crash})" if crash else f"{self.where} is no longer running"
        )
        return [
            f"{what}; serial console: {serial or 'n/a'}; restart it with "
            f"`{self._up_hint()}` (a disposable VM: nothing is lost but this run)"
        ]
