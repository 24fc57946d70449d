"""The target kernel's BTF, read over the target's own channel (a local file, the lab, ssh)
and cached per kernel build: the blobs under ~/.cache/stapmagic/btf/blobs/SHA256.btf, their
indexes next to them (btf.load). One round trip asks the target for the blobs' sha256; only a
build not seen before is copied."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from stapmagic import btf, targets
from stapmagic.errors import BTFError

__all__ = ["KernelBTF", "NoBTF", "kernel_btf"]

BTF_DIR = "/sys/kernel/btf"
_MODULE = re.compile(r"[A-Za-z0-9_]+\Z")
_SHA_LINE = re.compile(r"([0-9a-f]{64}) [ *](?:\S*/)?([A-Za-z0-9_]+)\Z")


class NoBTF(BTFError):
    """The target kernel has no BTF (or not for that module)."""


class _Channel(Protocol):
    def exec_argv(self, argv: Sequence[str]) -> list[str]: ...


@dataclass
class KernelBTF:
    """vmlinux's BTF and the modules' split BTF read so far."""

    vmlinux: btf.BTF
    modules: dict[str, btf.BTF] = field(default_factory=dict)

    def functions(self, name: str, module: str | None = None) -> list[btf.Function]:
        """FUNC entries called `name`: in `module`'s BTF when given, else in vmlinux, then in
        the modules read."""
        if module is not None:
            mod = self.modules.get(module)
            if mod is None:
                raise NoBTF(f"no BTF read for module {module}")
            return mod.functions(name)
        found = self.vmlinux.functions(name)
        if found:
            return found
        return [f for m in self.modules.values() for f in m.functions(name)]

    def object(self, func: btf.Function) -> btf.BTF:
        return self.vmlinux if func.obj == "vmlinux" else self.modules[func.obj]


def _bytes(target: _Channel, argv: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    try:
        return targets.capture(target.exec_argv(argv), timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BTFError(f"could not run {' '.join(argv)} on the target: {exc}") from None


def kernel_btf(
    target: _Channel,
    modules: Iterable[str] = (),
    *,
    cache_dir: Path | None = None,
    timeout: float = 300.0,
) -> KernelBTF:
    """vmlinux's BTF (and each module's) from `target`; NoBTF when the kernel has none."""
    mods = list(dict.fromkeys(modules))
    for m in mods:
        if not _MODULE.match(m) or m == "vmlinux":
            raise BTFError(f"not a module name: {m!r}")
    names = ["vmlinux", *mods]
    paths = [f"{BTF_DIR}/{n}" for n in names]
    done = _bytes(target, ["sha256sum", *paths], timeout)
    sums: dict[str, str] = {}
    for line in done.stdout.decode(errors="replace").splitlines():
        hit = _SHA_LINE.match(line.strip())
        if hit:
            sums[hit.group(2)] = hit.group(1)
    if "vmlinux" not in sums:
        err = done.stderr.decode(errors="replace").strip()
        raise NoBTF(
            f"the target kernel has no BTF ({BTF_DIR}/vmlinux: "
            f"{err or 'not readable'}): it needs CONFIG_DEBUG_INFO_BTF; without it, "
            "give each argument as NAME:TYPE"
        )
    root = cache_dir or btf.default_cache_dir()
    blobs = root / "blobs"

    def blob(name: str) -> bytes:
        sha = sums[name]
        path = blobs / f"{sha}.btf"
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == sha:
                return data
        except OSError:
            pass
        got = _bytes(target, ["cat", f"{BTF_DIR}/{name}"], timeout)
        if got.returncode != 0:
            raise NoBTF(
                f"could not read {BTF_DIR}/{name} on the target: "
                f"{got.stderr.decode(errors='replace').strip()}"
            )
        data = got.stdout
        if hashlib.sha256(data).hexdigest() != sha:
            raise BTFError(
                f"{BTF_DIR}/{name} changed while it was read (or the copy is damaged): try again"
            )
        try:
            blobs.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            pass  # no cache: the next run copies it again
        return data

    vmlinux = btf.load(blob("vmlinux"), cache_dir=root)
    kb = KernelBTF(vmlinux)
    for m in mods:
        if m not in sums:
            raise NoBTF(f"module {m} has no BTF on the target ({BTF_DIR}/{m}): is it loaded?")
        kb.modules[m] = btf.load(blob(m), base=vmlinux, name=m, cache_dir=root)
    return kb
