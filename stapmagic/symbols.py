"""A target's kernel functions, for Tab completion and `%kfind`: fetched in one command,
cached per target and kernel release.

Three sources, each a check `%kfind` shows as a column: /proc/kallsyms (text symbols: the
functions), tracefs' available_filter_functions (what ftrace, and so a kprobe's usual
neighbours, can attach to) and debugfs' kprobes/blacklist (functions kprobes refuse). A
source the target does not have (no tracefs, no debugfs, not root) is None: unknown, never
"no". `__pfx_*` padding symbols and `.cold` fragments are not functions anyone probes: hidden.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from pandas.api.extensions import ExtensionArray

from .errors import ReplayError, SpecError, StapMagicError
from .spec import parse_spec

if TYPE_CHECKING:
    from .kbtf import KernelBTF

__all__ = [
    "SymbolSet",
    "cached",
    "fetch",
    "find",
    "hidden",
    "matching",
    "parse_fetch_output",
    "recorded",
]

# One fixed command (no user input in it): the release, then the three sources, each after
# a marker line. Only text symbols of kallsyms are sent (name and [module]), a third of it.
_MARK = "@@stapmagic-symbols"
_SOURCES = ("kallsyms", "traceable", "blacklist")
FETCH_SCRIPT = (
    f"uname -r; echo {_MARK} kallsyms; "
    "awk '$2 ~ /^[tTwW]$/ {print $3, $4}' /proc/kallsyms; "
    f"echo {_MARK} traceable; "
    "cat /sys/kernel/tracing/available_filter_functions 2>/dev/null"
    " || cat /sys/kernel/debug/tracing/available_filter_functions 2>/dev/null"
    f" || echo {_MARK} missing; "
    f"echo {_MARK} blacklist; "
    f"cat /sys/kernel/debug/kprobes/blacklist 2>/dev/null || echo {_MARK} missing"
)
_PFX = "__pfx_"
_MODULE = re.compile(r"\[([^\]\s]+)\]")


def hidden(name: str) -> bool:
    """Padding symbols (`__pfx_F`, the bytes before F on kernels with call padding) and
    compiler-split `.cold` fragments: listed by kallsyms, never what a user means."""
    return name.startswith(_PFX) or ".cold" in name


@dataclass(frozen=True)
class SymbolSet:
    """A target's functions: name -> module ("" for the kernel itself); the traceable and
    blacklisted names (None when the target did not say)."""

    release: str
    functions: dict[str, str]
    traceable: frozenset[str] | None
    blacklist: frozenset[str] | None

    def names(self) -> list[str]:
        """Function names worth offering (sorted, hidden ones left out)."""
        return sorted(n for n in self.functions if not hidden(n))


def _first_word(line: str) -> str:
    return line.split(None, 1)[0] if line.strip() else ""


def parse_fetch_output(text: str) -> SymbolSet:
    """The SymbolSet FETCH_SCRIPT's output describes."""
    lines = text.splitlines()
    release = lines[0].strip() if lines else ""
    sections: dict[str, list[str] | None] = {}
    current: list[str] | None = None
    for line in lines[1:]:
        if line.startswith(_MARK):
            word = line[len(_MARK) :].strip()
            if word == "missing":
                for name in list(sections)[-1:]:
                    sections[name] = None
                current = None
            elif word in _SOURCES:
                current = sections.setdefault(word, [])
            continue
        if current is not None:
            current.append(line)
    functions: dict[str, str] = {}
    for line in sections.get("kallsyms") or []:
        name = _first_word(line)
        if name:
            m = _MODULE.search(line)
            functions.setdefault(name, m.group(1) if m else "")
    traceable_lines = sections.get("traceable")
    traceable = (
        None
        if traceable_lines is None
        else frozenset(_first_word(ln) for ln in traceable_lines if ln.strip())
    )
    black_lines = sections.get("blacklist")
    blacklist = (
        None
        if black_lines is None
        else frozenset(ln.split()[1] for ln in black_lines if len(ln.split()) >= 2)
    )
    return SymbolSet(release, functions, traceable, blacklist)


def fetch(run: Callable[[list[str]], str]) -> SymbolSet:
    """Ask the target (`run(argv)` -> stdout, e.g. `Target.run`) for its symbols."""
    return parse_fetch_output(run(["sh", "-c", FETCH_SCRIPT]))


_CACHE: dict[str, SymbolSet] = {}
_LOCK = threading.Lock()


def cached(key: str, run: Callable[[list[str]], str], refresh: bool = False) -> SymbolSet:
    """The SymbolSet of target `key` (what the user wrote: local, lab, ssh://...), fetched
    on first use (or `refresh`). A target booted into another kernel is a new key only
    after a refresh: the release is in the set, for the caller to show."""
    with _LOCK:
        found = _CACHE.get(key)
    if found is None or refresh:
        found = fetch(run)
        with _LOCK:
            _CACHE[key] = found
    return found


_BTF: dict[tuple[str, tuple[str, ...]], KernelBTF | None] = {}


def cached_btf(
    key: str,
    modules: Iterable[str],
    lookup: Callable[[list[str]], KernelBTF | None],
    refresh: bool = False,
) -> KernelBTF | None:
    """`lookup(modules)` (the target's BTF, None when it has none), kept per target `key`
    and module list like the symbols: a second %kfind asks the target nothing."""
    mods = tuple(sorted(set(modules)))
    with _LOCK:
        hit = (key, mods) in _BTF
        found = _BTF.get((key, mods))
    if not hit or refresh:
        found = lookup(list(mods))
        with _LOCK:
            _BTF[(key, mods)] = found
    return found


_RECORDED: dict[tuple[str, int, int], list[str]] = {}


def recorded(path: str | os.PathLike[str]) -> list[str]:
    """The functions a recording holds of its target, sorted, hidden ones left out: those its
    spec probes and the names of the kallsyms lines it was resolved with (MODULE:FUNCTION
    specs). ReplayError when it is no readable recording."""
    from . import recording, targets

    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ReplayError(f"no recording at {p}: {exc.strerror}") from None
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    with _LOCK:
        found = _RECORDED.get(key)
    if found is None:
        header = recording.load(p).header
        names = {s.name for s in targets.kallsyms_symbols(header.kallsyms)}
        if header.kind == "kprobe":
            try:
                probed = parse_spec(header.spec, guru=bool(header.options.get("guru")))
            except SpecError:
                probed = None
            names.update(pr.function for pr in (probed.probes if probed else ()) if pr.function)
        found = sorted(n for n in names if not hidden(n))
        with _LOCK:
            _RECORDED[key] = found
    return found


def replayable(directory: str | os.PathLike[str]) -> list[str]:
    """The functions every recording in `directory` holds or probes (`recorded`), sorted:
    what a replay there can be asked for. Unreadable recordings are left out."""
    names: set[str] = set()
    for p in sorted(Path(directory).glob("*.jsonl")):
        try:
            names.update(recorded(p))
        except StapMagicError:
            continue
    return sorted(names)


def matching(symbols: SymbolSet, patterns: Iterable[str]) -> list[str]:
    """The function names matching any glob (`tcp_v4_*`; a plain name matches itself),
    sorted, hidden ones left out (traceable names missing from kallsyms included)."""
    pats = [p for p in patterns if p]
    names = set(symbols.functions)
    if symbols.traceable is not None:
        names |= symbols.traceable  # traceable but not in kallsyms: shown, flagged
    return sorted(
        n for n in names if not hidden(n) and any(fnmatch.fnmatchcase(n, p) for p in pats)
    )


def modules_of(symbols: SymbolSet, names: Iterable[str]) -> list[str]:
    """The modules (not the kernel itself) that `names` belong to, sorted."""
    return sorted({symbols.functions.get(n, "") for n in names} - {""})


def find(symbols: SymbolSet, patterns: Iterable[str], btf: KernelBTF | None = None) -> pd.DataFrame:
    """The functions matching any glob pattern, hidden ones left out: name, module, one
    column per check (in_kallsyms, traceable, blacklisted, in_btf; <NA> where the target did
    not say) and the C prototype from `btf` (the kernel's and the modules' it holds)."""
    hits = matching(symbols, patterns)

    def check(known: frozenset[str] | None) -> ExtensionArray:
        return pd.array([None if known is None else n in known for n in hits], dtype="boolean")

    protos = [_prototype(btf, n, symbols.functions.get(n, "")) for n in hits]
    return pd.DataFrame(
        {
            "name": pd.array(hits, dtype="str"),
            "module": pd.array([symbols.functions.get(n, "") for n in hits], dtype="str"),
            "in_kallsyms": pd.array([n in symbols.functions for n in hits], dtype="boolean"),
            "traceable": check(symbols.traceable),
            "blacklisted": check(symbols.blacklist),
            "in_btf": pd.array(
                [None if p is _UNKNOWN else p is not None for p in protos], dtype="boolean"
            ),
            "prototype": pd.array([p if isinstance(p, str) else None for p in protos], dtype="str"),
        }
    )


_UNKNOWN = object()  # the BTF that would say was not read


def _prototype(kb: KernelBTF | None, name: str, module: str) -> str | None | object:
    """`name`'s C prototype (the first FUNC of that name), None when its object's BTF has
    no such function, _UNKNOWN when that BTF was not read."""
    if kb is None:
        return _UNKNOWN
    obj = kb.modules.get(module) if module else kb.vmlinux
    if obj is None:
        return _UNKNOWN
    funcs = obj.functions(name)
    return obj.c_prototype(funcs[0]) if funcs else None
