"""Tab completion in `%%kprobe` cells, through IPython's completer API (so JupyterLab, the
classic notebook, VS Code and the terminal all get it): function names from the target's
symbols, option names, types after `NAME:` and after `FUNCTION.return:`.

`complete()` is pure: the cell, the cursor, the options (flag -> takes a value) and a
function that returns the target's function names (called only when a name is wanted).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from .spec import ARG_TYPES, RET_TYPES

__all__ = ["MAX_NAMES", "complete"]

MAX_NAMES = 500
_MAGIC = re.compile(r"\s*%%?kprobe\b")
# A word ends at whitespace; within a word `:` separates NAME from TYPE.
_WORD = re.compile(r"\S*\Z")


def _spec_words(words: Sequence[str], options: Mapping[str, bool]) -> list[str]:
    """The words of the magic line that are the spec (options and their values dropped)."""
    spec: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word.startswith("-") and not spec:
            flag = word.split("=", 1)[0]
            skip = options.get(flag, False) and "=" not in word
            continue
        spec.append(word)
    return spec


def complete(
    cell: str,
    line: int,
    column: int,
    *,
    options: Mapping[str, bool],
    functions: Callable[[], Sequence[str]],
) -> tuple[str, list[tuple[str, str]]] | None:
    """(fragment, [(completion, kind)]) at `line`/`column` of a %%kprobe cell, or None
    when the cursor is not in one (or where nothing is to be completed, e.g. -c's value).
    `fragment` is the end of the word being replaced; kinds: function, option, type."""
    lines = cell.split("\n")
    if not lines or not _MAGIC.match(lines[0]) or line >= len(lines):
        return None
    before = lines[line][:column]
    word = _WORD.search(before)
    current = word.group(0) if word else ""
    earlier = before[: len(before) - len(current)].split()
    if line == 0:
        earlier = earlier[1:]  # the magic's name
        if current.startswith("-") and not _spec_words(earlier, options):
            return current, [(f, "option") for f in sorted(options) if f.startswith(current)]
        if (
            earlier
            and earlier[-1] in options
            and options[earlier[-1]]
            and not _spec_words(earlier, options)
        ):
            return None  # an option's value: -c CMD, -o VAR, ...
        spec = _spec_words(earlier, options)
    else:
        if before.lstrip().startswith("#"):
            return None
        spec = earlier
    if ":" in current:
        head, _, frag = current.rpartition(":")
        if not spec:  # the probe word: FUNCTION.return:TYPE, or MODULE:FUNCTION
            if head.endswith((".return", ".call+return")):
                return frag, [(t, "type") for t in RET_TYPES if t.startswith(frag)]
            return _names(frag, functions)
        return frag, [(t, "type") for t in (*ARG_TYPES, "_") if t.startswith(frag)]
    if not spec:
        return _names(current, functions)
    return None


def _names(
    prefix: str, functions: Callable[[], Sequence[str]]
) -> tuple[str, list[tuple[str, str]]]:
    if not prefix:
        return prefix, []  # every kernel function: no use to anyone
    found = [n for n in functions() if n.startswith(prefix)]
    return prefix, [(n, "function") for n in found[:MAX_NAMES]]


def line_option(cell: str, flag: str) -> str | None:
    """The value of `flag` (`--target`, `--replay`, `--recording`) on a cell's magic line."""
    words = cell.split("\n", 1)[0].split()
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(f"{flag}="):
            return word.split("=", 1)[1]
    return None


def line_target(cell: str) -> str | None:
    """The `--target T` of a cell's magic line, if it has one."""
    return line_option(cell, "--target")


def value_flags(parser: object) -> dict[str, bool]:
    """flag -> takes a value, from an argparse parser (the magic's own: one owner)."""
    flags: dict[str, bool] = {}
    for action in getattr(parser, "_actions", ()):
        for flag in action.option_strings:
            if flag not in ("-h", "--help"):
                flags[flag] = action.nargs != 0
    return flags


def ipython_matcher(
    options: Mapping[str, bool], functions: Callable[[str], Sequence[str]]
) -> Callable[..., object]:
    """An IPython (API v2) context matcher for %%kprobe cells; `functions(cell)` gives the
    function names that cell may probe (its target's, or its recording's in a replay)."""
    from IPython.core.completer import CompletionContext, SimpleCompletion, context_matcher

    as_matcher = cast("Callable[[Callable[..., object]], Callable[..., object]]", context_matcher())

    @as_matcher
    def kprobe_matcher(context: CompletionContext) -> dict[str, object]:
        try:
            found = complete(
                context.full_text,
                context.cursor_line,
                context.cursor_position,
                options=options,
                functions=lambda: functions(context.full_text),
            )
        except Exception:  # noqa: BLE001 - a completer must never raise into the editor
            found = None
        if found is None:
            return {"completions": [], "suppress": False}
        fragment, items = found
        result: dict[str, object] = {
            "completions": [SimpleCompletion(text, type=kind) for text, kind in items],
            "suppress": bool(items),
            "ordered": True,
        }
        if context.token.endswith(fragment):
            result["matched_fragment"] = fragment
        return result

    return kprobe_matcher
