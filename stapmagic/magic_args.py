"""IPython's ``magic_arguments`` decorators with types.

IPython.core.magic_arguments carries no annotations, so under mypy strict each use would make
the decorated magic untyped. These are the same objects, seen through a typed signature: a
decorator that returns the function it was given (IPython attaches the argparse parser to it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from IPython.core import magic_arguments as _ma

__all__ = ["argument", "magic_arguments"]

F = TypeVar("F", bound=Callable[..., Any])


def magic_arguments(name: str | None = None) -> Callable[[F], F]:
    """``IPython.core.magic_arguments.magic_arguments``: builds the parser (``func.parser``)."""
    make = cast("Callable[[str | None], Callable[[F], F]]", _ma.magic_arguments)
    return make(name)


def argument(*flags: str, **kwargs: Any) -> Callable[[F], F]:
    """``IPython.core.magic_arguments.argument``: one ``add_argument(*flags, **kwargs)``."""
    make = cast("Callable[..., Callable[[F], F]]", _ma.argument)
    return make(*flags, **kwargs)
