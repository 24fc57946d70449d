"""The project's exceptions: every domain failure is one of these, so the magic can
turn them into a `UsageError` (or a printed diagnosis) at the edge and nothing else."""

from __future__ import annotations


class StapMagicError(Exception):
    """Base class of every error stapmagic raises on purpose."""


class SpecError(StapMagicError):
    """A probe spec that cannot be turned into a script; points at the bad token.

    `source` is the whole spec line, `pos` the 0-based column of the offending token
    and `length` its width, so the message can underline it.
    """

    def __init__(
        self, message: str, source: str = "", pos: int = 0, length: int = 1, line: int = 1
    ) -> None:
        self.message = message
        self.source = source
        self.pos = pos
        self.length = max(1, length)
        self.line = line
        super().__init__(self.render())

    def render(self) -> str:
        if not self.source:
            return self.message
        caret = " " * self.pos + "^" * self.length
        where = f"line {self.line}, column {self.pos + 1}"
        return f"{self.message} ({where})\n    {self.source}\n    {caret}"


class OptionError(StapMagicError):
    """A magic option with a value that cannot be used (bad -D, bad target URL...)."""


class StapNotFound(StapMagicError):
    """No `stap` executable where the target needs one."""


class LabError(StapMagicError):
    """The lab VM is missing, not built, not running or broken; the message says the fix."""


class BTFError(StapMagicError):
    """BTF that cannot be read (malformed, truncated, unsupported), or a name or member path
    that it does not have; the message says which."""


class ReplayError(StapMagicError):
    """A recording that does not exist, is not a recording, or does not match the spec."""
