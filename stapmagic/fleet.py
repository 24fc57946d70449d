"""Many hosts in one cell (issue 16): pre-flight per host, the options that mean nothing
across hosts, and the `host` column (remote_id() in every record -> the target as written).

The target list itself is stapmagic/targets/fleet.py (FleetTarget): one stap, one --remote per
host. This module is pure but for `preflight`, which asks each host through its Target.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from stapmagic import diagnose, wire
from stapmagic.errors import OptionError, StapMagicError
from stapmagic.targets import Target, parse_target
from stapmagic.targets.fleet import FleetTarget

__all__ = [
    "build_tree",
    "check_options",
    "host_names",
    "label_hosts",
    "missing_for",
    "preflight",
    "system_maps",
]

# What `uname -r` may print: the release goes into paths looked up on the compile side.
_RELEASE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+~-]{0,99}")


def host_names(target_text: str) -> tuple[str, ...]:
    """The hosts of a target list as written, () for a single target."""
    t = parse_target(target_text)
    return t.hosts if isinstance(t, FleetTarget) else ()


def check_options(target_text: str, *, pid: int | None, aggregate: bool) -> None:
    """OptionError for what several hosts cannot mean."""
    hosts = host_names(target_text)
    if not hosts:
        return
    if pid is not None:
        raise OptionError(
            f"-x {pid} with several hosts ({', '.join(hosts)}): a pid names a process on one "
            "machine only, it means nothing across hosts; probe one host with -x, or use "
            "-c CMD --cmd-only, which runs CMD on every host and keeps its events"
        )
    if aggregate:
        raise OptionError(
            "--hist/--count-by with several hosts: the in-kernel aggregates carry no host yet; "
            "probe the hosts without them (rows have a host column) or one host at a time"
        )


def label_hosts(
    df: pd.DataFrame, names: Sequence[str], categories: Sequence[str] | None = None
) -> pd.DataFrame:
    """`df` with its remote index column (remote_id(): index into `names`) as a categorical
    `host` of the targets as written (`categories`: every host asked for, default `names`),
    placed right after `time`. An index outside `names` becomes NA."""
    if wire.HOST_FIELD not in df.columns:
        return df
    cats = list(categories if categories is not None else names)
    codes = pd.to_numeric(df[wire.HOST_FIELD], errors="coerce")
    mapped = codes.map(lambda i: names[int(i)] if pd.notna(i) and 0 <= i < len(names) else None)
    out = df.drop(columns=[wire.HOST_FIELD])
    host = pd.Categorical(mapped, categories=cats)
    at = 1 if "time" in out.columns else 0
    out.insert(at, wire.HOST_FIELD, pd.Series(host, index=out.index))
    return out


# -- pre-flight ---------------------------------------------------------------------------------


def build_tree(release: str) -> str:
    return f"/lib/modules/{release}/build"


def system_maps(release: str) -> tuple[str, ...]:
    """Where a DWARF-less kprobe.function() finds the kernel's symbols (any one will do)."""
    return (
        f"/boot/System.map-{release}",
        f"/usr/lib/debug/boot/System.map-{release}",
        f"{build_tree(release)}/System.map",
    )


def missing_for(release: str, present: set[str]) -> list[str]:
    """What the compile side lacks for `release`, each with the fix, given the paths it has."""
    out = []
    if build_tree(release) not in present:
        out.append(
            f"no build tree {build_tree(release)} (the kernel's headers: install "
            f"linux-headers-{release} on Debian/Ubuntu, kernel-devel-{release} on Fedora/RHEL, "
            "where stap compiles)"
        )
    if not present.intersection(system_maps(release)):
        out.append(
            f"no System.map for {release} (looked for {', '.join(system_maps(release))}; "
            "copy the host's /proc/kallsyms there as System.map, or install its kernel's "
            "debug symbols)"
        )
    return out


def preflight(target: Target) -> Target:
    """Ask every host of a target list its kernel release before anything runs.

    A host that does not answer is dropped (a note names it and why; the others run). A host
    whose kernel the compile side cannot build for stops the cell with OptionError naming
    the host and the fix. A single target is returned as is."""
    if not isinstance(target, FleetTarget):
        return target
    ready: list[Target] = []
    notes: list[str] = []
    kernels: dict[str, list[str]] = {}
    problems: list[str] = []
    for member in target.members:
        try:
            release = member.run(["uname", "-r"], timeout=30.0).strip()
        except StapMagicError as exc:
            text = str(exc).strip().splitlines()
            notes.append(
                f"{member} did not answer before the run and was left out (no rows from it): "
                f"{text[-1] if text else type(exc).__name__}"
            )
            continue
        if not _RELEASE.fullmatch(release):
            problems.append(f"{member}: `uname -r` printed {release!r}, not a kernel release")
            continue
        if release not in kernels:
            wanted = [build_tree(release), *system_maps(release)]
            lacks = missing_for(release, member.compile_side_paths(wanted))
            if lacks:
                problems.append(f"{member} runs kernel {release}: " + "; ".join(lacks))
                continue
        kernels.setdefault(release, []).append(str(member))
        ready.append(member)
    if problems:
        raise OptionError(
            "stap cannot compile for every host, nothing was run:\n  " + "\n  ".join(problems)
        )
    if not ready:
        raise OptionError("no host answers: " + "; ".join(notes))
    return FleetTarget(
        tuple(ready),
        asked=target.hosts,
        notes=tuple(notes),
        kernels={k: tuple(v) for k, v in kernels.items()},
    )


def as_recorded(target: Target, argv: Sequence[str]) -> Target:
    """A replay's target list: the hosts whose --remote the recorded stap line has (a host
    left out by pre-flight then is left out now), without asking any host."""
    if not isinstance(target, FleetTarget):
        return target
    remotes = set(argv)
    kept = tuple(
        m
        for m in target.members
        if any(r in remotes for r in m.stap_prefix(require_stap=False) if r.startswith("--remote="))
    )
    if not kept or len(kept) == len(target.members):
        return target
    return FleetTarget(kept, asked=target.hosts)


def host_report(target: Target, df: pd.DataFrame, *, failed: bool) -> list[str]:
    """After a live run on several hosts: the hosts pre-flight left out, and (when stap did
    not end cleanly) each host that no longer answers, named with the cause and its rows."""
    if not isinstance(target, FleetTarget):
        return []
    out = list(target.notes)
    if not failed:
        return out
    hosts = df[wire.HOST_FIELD] if wire.HOST_FIELD in df.columns else None
    for member in target.members:
        why = member.problem()
        if why is None:
            continue
        name = str(member)
        mine = df[hosts == name] if hosts is not None else df.iloc[0:0]
        last = ""
        if len(mine) and "time" in mine.columns:
            last = f", the last at {mine['time'].iloc[-1]}"
        out.append(
            f"{name} stopped answering during the run ({why}): its rows end there "
            f"({len(mine)} rows{last}); the other hosts ran on to their end"
        )
    return out


def warnings(notes: Sequence[str]) -> list[diagnose.Diagnosis]:
    """host_report's notes as the warnings a run that went well still shows."""
    return [diagnose.Diagnosis("fleet_host", n, (), "warning") for n in notes]
