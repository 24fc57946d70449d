"""A disposable Debian trixie VM (Linux 6.12, SystemTap 5.1) for running real stap scripts.

Why this shape (see /work/shared/reference/README.md, "Trixie"):

* One debootstrapped root tree serves twice. On the host it is a chroot in which stap runs
  passes 1-4 against the guest kernel's own headers (seconds, instead of minutes under TCG);
  turned into an ext4 image it is the guest's root disk, booted with ``-snapshot`` so every boot
  starts from the same state and a crashed or wedged guest costs nothing.
* stap reaches the guest with its own ``--remote=ssh://stapmagic-lab``: pass 5 runs there via
  stapsh and output streams back with the right exit code. The ``ssh://root@127.0.0.1:PORT``
  URL form does not work with stap 5.1, so the chroot's ``/root/.ssh/config`` carries a host
  alias, rewritten with the forwarded port at every boot.
* Stock stap 5.1 modules fail to start on 6.12 (uprobe_unregister was renamed); the
  ``STAPCONF_UPROBE_UNREGISTER_EXPORTED`` define avoids the broken path for kprobe scripts.
* Debian ships a placeholder System.map, so kprobe.function() matches nothing; a copy of the
  guest's /proc/kallsyms (names only matter, so one copy serves every boot) is captured on the
  first boot and kept in the tree where stap looks for it.
* The guest's only network path is a loopback-only forward to its sshd; keys (login and host)
  are generated per image and pinned, passwords are off.

This needs root on the host (debootstrap, chroot, mounts).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from stapmagic.errors import LabError
from stapmagic.targets import kallsyms_symbols, sshmux

__all__ = [
    "LabError",
    "cache_root",
    "recipe_hash",
    "build",
    "up",
    "down",
    "status",
    "is_up",
    "stap_argv",
    "client_argv",
    "exec_argv",
    "detect_accel",
    "main",
]

Log = Callable[[str], object]

SUITE = "trixie"
ARCH = "amd64"
HOST_ALIAS = "stapmagic-lab"
# The default guest; others (``up --name b``) boot the same image through a qcow2 overlay.
DEFAULT_GUEST = "lab"
GUEST_NAME = re.compile(r"[a-z][a-z0-9]{0,15}")
# Bump when lab.py changes what ends up in the tree in a way the labfiles do not capture.
RECIPE_VERSION = "1"
LABFILES = Path(__file__).resolve().parent / "labfiles"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
STAP_DEFINES = ("-D", "STAPCONF_UPROBE_UNREGISTER_EXPORTED")
GUEST_CPUS = 2
GUEST_MEM_MB = 2048
SSH_WAIT_S = {"tcg": 240.0, "kvm": 90.0}
POWEROFF_GRACE_S = 15.0
# A fixed environment inside the chroot: the caller's TMPDIR, PATH or locale may not exist there.
CHROOT_ENV = (
    "/usr/bin/env",
    "-i",
    "HOME=/root",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL=C.UTF-8",
)
KERNEL_CMDLINE = (
    "console=ttyS0,115200 root=/dev/vda rootfstype=ext4 rw fsck.mode=skip net.ifnames=0 "
    # No vsock in this VM: systemd's ssh generator would only probe for it and fail.
    "systemd.ssh_auto=no "
    # A guest oops should end the VM (qemu runs with -no-reboot) rather than hang it.
    "panic=1 oops=panic loglevel=4"
)
INSTALL_HINT = (
    "apt-get install qemu-system-x86 qemu-utils debootstrap e2fsprogs debian-archive-keyring"
)
# executable -> Debian package providing it
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mkfs.ext4": "e2fsprogs",
    "chroot": "coreutils",
    "mount": "mount",
    "umount": "mount",
}
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
STAGES = ("debootstrap", "provision", "image", "kallsyms")


# ---------------------------------------------------------------------------------------------
# paths and recipe


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stapmagic" / "lab"


def _labfiles() -> list[Path]:
    return sorted(p for p in LABFILES.iterdir() if p.is_file())


def recipe_hash() -> str:
    """Names the tree: anything that changes what debootstrap and provisioning produce."""
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, ARCH, "minbase"):
        h.update(part.encode() + b"\0")
    for f in _labfiles():
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _recipe_dir() -> Path:
    return cache_root() / recipe_hash()


def _root_dir() -> Path:
    return _recipe_dir() / "root"


def _image_path() -> Path:
    return _recipe_dir() / "disk.raw"


def _logs_dir() -> Path:
    return _recipe_dir() / "logs"


def check_guest(name: str) -> str:
    if not GUEST_NAME.fullmatch(name):
        raise LabError(f"guest name {name!r}: expected a lowercase letter, then letters or digits")
    return name


def guest_alias(name: str = DEFAULT_GUEST) -> str:
    """The ssh host alias of a guest inside the chroot (stap's --remote=ssh://ALIAS)."""
    return HOST_ALIAS if name == DEFAULT_GUEST else f"{HOST_ALIAS}-{check_guest(name)}"


def _state_path(name: str = DEFAULT_GUEST) -> Path:
    if name == DEFAULT_GUEST:
        return cache_root() / "state.json"
    return cache_root() / f"state-{check_guest(name)}.json"


def _run_dir(name: str = DEFAULT_GUEST) -> Path:
    return cache_root() / ("run" if name == DEFAULT_GUEST else f"run-{check_guest(name)}")


def guests() -> list[str]:
    """Every guest with a state file (the default first)."""
    names = [DEFAULT_GUEST] if _state_path().is_file() else []
    if cache_root().is_dir():
        for f in sorted(cache_root().glob("state-*.json")):
            name = f.name[len("state-") : -len(".json")]
            if GUEST_NAME.fullmatch(name):
                names.append(name)
    return names


def _stage_marker(stage: str) -> Path:
    return _recipe_dir() / f".done-{stage}"


# ---------------------------------------------------------------------------------------------
# host checks


def _which(tool: str) -> str | None:
    path = os.environ.get("PATH", "") + ":" + SBIN_PATH
    return shutil.which(tool, path=path)


def _tool(tool: str) -> str:
    found = _which(tool)
    if found is None:
        raise LabError(
            f"{tool} not found (package {HOST_TOOLS.get(tool, tool)}); install with: {INSTALL_HINT}"
        )
    return found


def _check_host() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (debootstrap, chroot and mounts); run as root")
    missing = [f"{t} ({pkg})" for t, pkg in HOST_TOOLS.items() if _which(t) is None]
    if missing:
        raise LabError(f"missing host tools: {', '.join(missing)}; install with: {INSTALL_HINT}")
    if not KEYRING.is_file():
        raise LabError(f"{KEYRING} missing; install with: {INSTALL_HINT}")


def _mirror_from_apt(etc_apt: Path = Path("/etc/apt")) -> str | None:
    """The Debian archive this host already uses: the only mirror known to be reachable."""
    uris: list[str] = []
    d = etc_apt / "sources.list.d"
    for f in sorted(d.glob("*.sources")) if d.is_dir() else []:
        for line in f.read_text(errors="replace").splitlines():
            if line.strip().lower().startswith("uris:"):
                uris.extend(line.split(":", 1)[1].split())
    lists = [etc_apt / "sources.list"] + (sorted(d.glob("*.list")) if d.is_dir() else [])
    for f in lists:
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = words[1:]
            if words and words[0].startswith("["):
                while words and not words[0].endswith("]"):
                    words = words[1:]
                words = words[1:]
            if words:
                uris.append(words[0])
    for uri in uris:
        if uri.rstrip("/").endswith("/debian") and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return None


def mirror() -> str:
    env = os.environ.get("STAPMAGIC_LAB_MIRROR")
    if env:
        return env.rstrip("/")
    found = _mirror_from_apt()
    if found is None:
        raise LabError(
            "no Debian mirror found in /etc/apt (a URIs:/deb line ending in /debian); "
            "set STAPMAGIC_LAB_MIRROR=<http://.../debian>"
        )
    return found


def detect_accel(
    env: Mapping[str, str] | None = None,
    sys_module: Path = Path("/sys/module"),
    dev_kvm: Path = Path("/dev/kvm"),
    verdict_file: Path | None = None,
) -> tuple[str, str]:
    """Returns (accel, why). A /dev/kvm alone proves nothing: on this kind of host it is a PVM
    device (module kvm_pvm) on which a stock guest kernel hangs, so KVM is chosen only when the
    standard vendor module is loaded, and a KVM boot that once failed is remembered."""
    env = os.environ if env is None else env
    forced = env.get("STAPMAGIC_LAB_ACCEL", "").strip().lower()
    if forced:
        if forced not in ("kvm", "tcg"):
            raise LabError(f"STAPMAGIC_LAB_ACCEL={forced!r}: expected kvm or tcg")
        return forced, "forced by STAPMAGIC_LAB_ACCEL"
    if not dev_kvm.exists():
        return "tcg", f"{dev_kvm} does not exist"
    vendors = [m for m in ("kvm_intel", "kvm_amd") if (sys_module / m).is_dir()]
    if not vendors:
        try:
            others = sorted(p.name for p in sys_module.iterdir() if p.name.startswith("kvm_"))
        except OSError:
            others = []
        which = ", ".join(others) if others else "no kvm_intel/kvm_amd module"
        return "tcg", (
            f"{dev_kvm} exists but is backed by {which}, not kvm_intel/kvm_amd; "
            "a stock kernel hangs on such a device (e.g. PVM)"
        )
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return "tcg", f"{dev_kvm} is not readable and writable by this user"
    if verdict_file is not None and verdict_file.is_file():
        return "tcg", f"a KVM boot failed before ({verdict_file}); delete it to retry KVM"
    return "kvm", f"{vendors[0]} loaded and {dev_kvm} usable"


def _accel_verdict_file() -> Path:
    return cache_root() / "kvm-failed"


# ---------------------------------------------------------------------------------------------
# locking, mounts, processes


_lock_depth = 0


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Other engineers' test runs share the cache: one build/boot/teardown at a time."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(fh, fcntl.LOCK_UN)


def _unescape_mountinfo(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _mounts_under(root: Path) -> list[Path]:
    prefix = str(root.resolve())
    found: list[Path] = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = _unescape_mountinfo(line.split()[4])
            if mp == prefix or mp.startswith(prefix + "/"):
                found.append(Path(mp))
    return found


# (target inside the tree, mount argv after "mount")
_CHROOT_MOUNTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("proc", ("-t", "proc", "proc")),
    ("sys", ("-t", "sysfs", "sysfs")),
    ("dev", ("--bind", "/dev")),
    ("dev/pts", ("--bind", "/dev/pts")),
)


def _mount_chroot(root: Path) -> None:
    mounted = set(_mounts_under(root))
    for rel, args in _CHROOT_MOUNTS:
        target = root.resolve() / rel
        if target in mounted:
            continue
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run([_tool("mount"), *args, str(target)], check=True)  # noqa: S603 (argv list, no shell)


def _chroot_mounted(root: Path) -> bool:
    mounted = set(_mounts_under(root))
    return all(root.resolve() / rel in mounted for rel, _ in _CHROOT_MOUNTS)


def _unmount_chroot(root: Path) -> None:
    """Deepest first; lazy unmount when something (an lingering ssh, a shell) keeps it busy."""
    if not root.exists():
        return
    for mp in sorted(_mounts_under(root), key=lambda p: len(str(p)), reverse=True):
        r = subprocess.run([_tool("umount"), str(mp)], capture_output=True)  # noqa: S603 (argv list, no shell)
        if r.returncode != 0:
            subprocess.run([_tool("umount"), "-l", str(mp)], capture_output=True)  # noqa: S603 (argv list, no shell)
    left = _mounts_under(root)
    if left:
        raise LabError(f"could not unmount {', '.join(map(str, left))}; try: umount -l PATH")


def _safe_rmtree(path: Path) -> None:
    """rmtree descends into bind mounts: removing a tree with /dev bound in it would wipe the
    host's /dev. Refuse unless nothing is mounted below."""
    if not path.exists():
        return
    _unmount_chroot(path)
    if _mounts_under(path):
        raise LabError(f"refusing to delete {path}: something is still mounted below it")
    shutil.rmtree(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_qemu(pid: int, image: str) -> bool:
    """Guards against a recycled pid: only kill the qemu that boots our image."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return any("qemu-system" in a for a in args[:1]) and any(image in a for a in args)


def _chroot_argv(root: Path, argv: Sequence[str]) -> list[str]:
    return [_tool("chroot"), str(root), *CHROOT_ENV, *argv]


def _run_logged(argv: Sequence[str], logfile: Path, log: Log, what: str) -> None:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log(f"lab: {what} (log: {logfile})")
    t0 = time.monotonic()
    with open(logfile, "wb") as fh:
        r = subprocess.run(  # noqa: S603 (argv list, no shell)
            list(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    if r.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-25:]
        raise LabError(
            f"{what} failed (exit {r.returncode}); last lines of {logfile}:\n" + "\n".join(tail)
        )
    log(f"lab: {what} done in {time.monotonic() - t0:.1f} s")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# build


def _release(root: Path) -> str:
    releases = sorted(
        d.name
        for d in (root / "lib/modules").iterdir()
        if (root / "boot" / f"vmlinuz-{d.name}").is_file()
        and (root / "boot" / f"initrd.img-{d.name}").is_file()
    )
    if len(releases) != 1:
        raise LabError(
            f"expected one kernel with vmlinuz and initrd in {root}/boot, found {releases}"
        )
    return releases[0]


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _build_stage(stage: str, root: Path, log: Log) -> None:
    logs = _logs_dir()
    if stage == "debootstrap":
        _safe_rmtree(root)
        root.mkdir(parents=True)
        _run_logged(
            [
                _tool("debootstrap"),
                f"--arch={ARCH}",
                "--variant=minbase",
                f"--keyring={KEYRING}",
                SUITE,
                str(root),
                mirror(),
            ],
            logs / "debootstrap.log",
            log,
            f"debootstrap {SUITE} from {mirror()}",
        )
    elif stage == "provision":
        dest = root / "tmp" / "stapmagic-provision"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for f in _labfiles():
            shutil.copy2(f, dest / f.name)
        _mount_chroot(root)
        try:
            _run_logged(
                _chroot_argv(root, ["/bin/sh", "/tmp/stapmagic-provision/provision.sh"]),
                logs / "provision.log",
                log,
                "install packages and configure the tree (provision.sh)",
            )
        finally:
            _unmount_chroot(root)
        shutil.rmtree(dest, ignore_errors=True)
    elif stage == "image":
        _unmount_chroot(root)
        release = _release(root)
        listing = subprocess.run(  # noqa: S603 (argv list, no shell)
            _chroot_argv(root, ["lsinitramfs", f"/boot/initrd.img-{release}"]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        config = (root / "boot" / f"config-{release}").read_text(errors="replace")
        for mod, option in (
            ("virtio_blk", "VIRTIO_BLK"),
            ("virtio_pci", "VIRTIO_PCI"),
            ("ext4", "EXT4_FS"),
        ):
            if f"CONFIG_{option}=y" in config.splitlines():
                continue  # built into the kernel
            if not re.search(rf"/{mod}\.ko", listing):
                raise LabError(
                    f"initramfs of {release} lacks {mod}.ko; the guest could not mount its root disk"
                )
        size_mb = _tree_bytes(root) * 13 // 10 // (1 << 20) + 1024
        image = _image_path()
        tmp = image.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        _run_logged(
            [
                _tool("mkfs.ext4"),
                "-q",
                "-F",
                "-L",
                "stapmagic-lab",
                "-d",
                str(root),
                str(tmp),
                f"{size_mb}M",
            ],
            logs / "mkfs.log",
            log,
            f"make the {size_mb} MiB root disk image",
        )
        tmp.rename(image)
    else:
        raise AssertionError(stage)


def _capture_kallsyms(state: dict[str, Any], log: Log) -> None:
    """Module symbols included (the [module] column dropped), so kprobe.function() also resolves
    functions of modules loaded in the guest, e.g. ext4_file_open."""
    root = Path(state["root"])
    r = subprocess.run(  # noqa: S603 (argv list, no shell)
        exec_argv(["cat", "/proc/kallsyms"]), capture_output=True, text=True, timeout=120
    )
    if r.returncode != 0:
        raise LabError(f"reading the guest's /proc/kallsyms failed: {r.stderr.strip()}")
    lines = [f"{s.address:016x} {s.type} {s.name}" for s in kallsyms_symbols(r.stdout.splitlines())]
    if len(lines) < 10000 or not any(line.endswith(" tcp_v4_connect") for line in lines):
        raise LabError(f"guest /proc/kallsyms looks wrong ({len(lines)} lines)")
    if all(line.startswith("0000000000000000 ") for line in lines[:100]):
        log(
            "lab: warning: guest kallsyms addresses are hidden (kptr_restrict); names suffice for stap"
        )
    dest = root / "usr/lib/debug/boot" / f"System.map-{state['release']}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(dest)
    log(f"lab: wrote {len(lines)} guest symbols to {dest}")


def _build(force: bool, log: Log, keep_running: bool) -> tuple[Path, dict[str, Any] | None]:
    _check_host()
    root = _root_dir()
    complete = _recipe_dir() / "complete.json"
    if complete.is_file() and not force:
        return root, None
    if force:
        down(log=log)
        for s in STAGES:
            _stage_marker(s).unlink(missing_ok=True)
        complete.unlink(missing_ok=True)
        _image_path().unlink(missing_ok=True)
    _recipe_dir().mkdir(parents=True, exist_ok=True)
    log(f"lab: building recipe {recipe_hash()} in {_recipe_dir()}")
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    for stage in STAGES[:-1]:
        if _stage_marker(stage).is_file():
            continue
        t = time.monotonic()
        _build_stage(stage, root, log)
        timings[stage] = round(time.monotonic() - t, 1)
        _stage_marker(stage).write_text(json.dumps({"seconds": timings[stage]}) + "\n")
    # The System.map can only come from a booted guest.
    down(log=log)
    t = time.monotonic()
    state = _boot(log)
    try:
        _capture_kallsyms(state, log)
    except BaseException:
        down(log=log)
        raise
    timings["first_boot_and_kallsyms"] = round(time.monotonic() - t, 1)
    _stage_marker("kallsyms").write_text("{}\n")
    timings["total_this_run"] = round(time.monotonic() - t0, 1)
    complete.write_text(
        json.dumps(
            {"release": state["release"], "recipe": recipe_hash(), "timings": timings}, indent=1
        )
        + "\n"
    )
    log(f"lab: build complete in {timings['total_this_run']:.1f} s ({timings})")
    _prune_old_recipes(log)
    if keep_running:
        return root, state
    down(log=log)
    return root, None


def _prune_old_recipes(log: Log) -> None:
    """Trees of earlier recipes are ~2 GB each and never used again: remove them."""
    current = _recipe_dir().resolve()
    for child in cache_root().iterdir():
        if (
            child.is_dir()
            and child.resolve() != current
            and re.fullmatch(r"[0-9a-f]{16}", child.name)
            and not _mounts_under(child / "root")
        ):
            log(f"lab: removing the tree of an older recipe: {child}")
            _safe_rmtree(child)


def build(force: bool = False, log: Log = print) -> Path:
    """Returns the root tree; does nothing when the cached tree for this recipe is complete."""
    with _locked():
        root, _ = _build(force, log, keep_running=False)
        return root


# ---------------------------------------------------------------------------------------------
# boot and teardown


def _write_ssh_config(root: Path, port: int) -> None:
    ssh_dir = root / "root/.ssh"
    cfg = "# Written by stapmagic.lab at boot: the forwarded port changes every time.\n"
    cfg += _host_block(HOST_ALIAS, port)
    tmp = ssh_dir / "config.tmp"
    tmp.write_text(cfg)
    tmp.chmod(0o600)
    tmp.rename(ssh_dir / "config")


def _guest_ssh_config_path(root: Path, name: str) -> Path:
    # The default guest's boot rewrites /root/.ssh/config whole; other guests' aliases live in
    # ssh_config.d (Debian's ssh_config includes it), so neither boot erases the other.
    return root / "etc/ssh/ssh_config.d" / f"stapmagic-lab-{check_guest(name)}.conf"


def _host_block(alias: str, port: int) -> str:
    # Every guest boots the same image: the same login key and the same pinned host key.
    return f"""Host {alias}
    HostName 127.0.0.1
    Port {port}
    User root
    IdentityFile /root/.ssh/stapmagic_lab_ed25519
    IdentitiesOnly yes
    HostKeyAlias {HOST_ALIAS}
    HostKeyAlgorithms ssh-ed25519
    UserKnownHostsFile /root/.ssh/stapmagic_lab_known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
    PasswordAuthentication no
    ConnectTimeout 10
    ServerAliveInterval 15
    ServerAliveCountMax 8
    LogLevel ERROR
"""


def guest_ssh_config(name: str, port: int) -> str:
    """An extra guest's alias."""
    head = f"# Written by stapmagic.lab at boot of guest {name}: the forwarded port changes every time.\n"
    return head + _host_block(guest_alias(name), port)


def _write_guest_ssh_config(root: Path, name: str, port: int) -> None:
    if name == DEFAULT_GUEST:
        _write_ssh_config(root, port)
        return
    dest = _guest_ssh_config_path(root, name)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(guest_ssh_config(name, port))
    tmp.chmod(0o644)
    tmp.rename(dest)


def _ssh_ok(root: Path, timeout: float = 20.0, name: str = DEFAULT_GUEST) -> bool:
    try:
        r = subprocess.run(  # noqa: S603 (argv list, no shell)
            _chroot_argv(root, ["ssh", "-o", "ConnectTimeout=5", guest_alias(name), "true"]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def _read_state(name: str = DEFAULT_GUEST) -> dict[str, Any] | None:
    try:
        data = json.loads(_state_path(name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _serial_tail(path: str, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no serial log)"


_CRASH = re.compile(r"\] (BUG: .*|Kernel panic - .*|general protection fault.*|Oops: .*)$")


def guest_crash(serial_log: str) -> str | None:
    """The first oops/BUG/panic line of the guest's serial console, if it crashed."""
    try:
        text = Path(serial_log).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        m = _CRASH.search(line.strip())
        if m:
            return m.group(1)
    return None


def _qemu_argv(
    accel: str,
    root: Path,
    image: Path,
    release: str,
    port: int,
    serial: Path,
    pidfile: Path,
    name: str = DEFAULT_GUEST,
) -> list[str]:
    accel_args = (
        ["-accel", "kvm", "-cpu", "host"]
        if accel == "kvm"
        # One host thread runs both vCPUs: with multi-threaded TCG, a kprobe being removed
        # while another vCPU ran the probed function crashed the guest (NULL call from
        # __inet_stream_connect into tcp_v4_connect's patched entry, right after a stap
        # module unloaded; the reference runs saw the same RIP 0x0 on 6.1). Serialised vCPUs
        # make kernel code patching atomic as on real hardware, and leave a host core to gcc.
        else ["-accel", "tcg,thread=single", "-cpu", "max"]
    )
    return [
        _tool("qemu-system-x86_64"),
        "-name", guest_alias(name),
        "-nodefaults",
        "-no-user-config",
        *accel_args,
        "-smp", str(GUEST_CPUS),
        "-m", str(GUEST_MEM_MB),
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{serial}",
        "-kernel", str(root / "boot" / f"vmlinuz-{release}"),
        "-initrd", str(root / "boot" / f"initrd.img-{release}"),
        "-append", KERNEL_CMDLINE,
        *_disk_args(image),
        # restrict=on: the guest cannot reach the host or the outside; only the forward below in.
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        "-no-reboot",
        "-daemonize",
        "-pidfile", str(pidfile),
    ]  # fmt: skip


def _disk_args(image: Path) -> list[str]:
    """The default guest boots the raw image with -snapshot; another guest boots its own qcow2
    overlay on it (fresh at every boot), so two guests share one image and write nowhere in it."""
    escaped = str(image).replace(",", ",,")
    if image.suffix == ".qcow2":
        return ["-drive", f"file={escaped},if=virtio,format=qcow2"]
    return ["-drive", f"file={escaped},if=virtio,format=raw", "-snapshot"]


def overlay_argv(base: Path, overlay: Path) -> list[str]:
    return [
        _tool("qemu-img"), "create", "-q", "-f", "qcow2",
        "-b", str(base), "-F", "raw", str(overlay),
    ]  # fmt: skip


def _boot(log: Log, name: str = DEFAULT_GUEST) -> dict[str, Any]:
    root = _root_dir()
    release = _release(root)
    accel, why = detect_accel(verdict_file=_accel_verdict_file())
    log(f"lab: accelerator {accel}: {why}")
    run = _run_dir(name)
    run.mkdir(parents=True, exist_ok=True)
    image = _image_path()
    if name != DEFAULT_GUEST:
        overlay = run / "overlay.qcow2"
        overlay.unlink(missing_ok=True)
        subprocess.run(overlay_argv(image, overlay), check=True, capture_output=True)  # noqa: S603 (argv list, no shell)
        image = overlay
    serial = run / "serial.log"
    pidfile = run / "qemu.pid"
    _mount_chroot(root)
    t0 = time.monotonic()
    pid = 0
    port = 0
    for attempt in range(3):
        port = _free_port()
        _write_guest_ssh_config(root, name, port)
        pidfile.unlink(missing_ok=True)
        argv = _qemu_argv(accel, root, image, release, port, serial, pidfile, name)
        r = subprocess.run(  # noqa: S603 (argv list, no shell)
            argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
        )
        if r.returncode == 0:
            pid = int(pidfile.read_text().strip())
            break
        if "forwarding" in r.stderr and attempt < 2:
            continue  # lost the race for the port
        raise LabError(f"qemu failed to start (exit {r.returncode}): {r.stderr.strip()}")
    state: dict[str, Any] = {
        "pid": pid,
        "port": port,
        "accel": accel,
        "accel_reason": why,
        "root": str(root),
        "image": str(image),
        "release": release,
        "serial_log": str(serial),
        "recipe": recipe_hash(),
        "started_at": time.time(),
    }
    if name != DEFAULT_GUEST:
        state["name"] = name
    tmp = _state_path(name).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.rename(_state_path(name))
    log(f"lab: qemu pid {pid} booting {release}, ssh on 127.0.0.1:{port} (serial log: {serial})")
    deadline = t0 + SSH_WAIT_S[accel]
    while True:
        if not _pid_alive(pid):
            down(log=log, name=name)
            raise LabError(
                f"qemu exited during boot; end of {serial}:\n{_serial_tail(str(serial))}"
            )
        if _ssh_ok(root, name=name):
            break
        if time.monotonic() > deadline:
            down(log=log, name=name)
            if accel == "kvm" and not os.environ.get("STAPMAGIC_LAB_ACCEL"):
                _accel_verdict_file().write_text(f"KVM boot did not reach ssh; {time.ctime()}\n")
                log("lab: KVM boot did not answer; remembering that and retrying with TCG")
                return _boot(log, name)
            raise LabError(
                f"guest sshd did not answer within {SSH_WAIT_S[accel]:.0f} s; end of {serial}:\n"
                + _serial_tail(str(serial))
            )
        time.sleep(1.0)
    state["boot_seconds"] = round(time.monotonic() - t0, 1)
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.rename(_state_path(name))
    log(f"lab: up after {state['boot_seconds']:.1f} s boot ({accel})")
    return state


def up(log: Log = print, name: str = DEFAULT_GUEST) -> dict[str, Any]:
    """Idempotent: an already running, answering lab is returned as is. A guest other than the
    default needs the image built (it never builds: that would restart the default guest)."""
    check_guest(name)
    with _locked():
        _check_host()
        if name != DEFAULT_GUEST:
            return _up_extra(log, name)
        state = _read_state()
        if (
            state is not None
            and _pid_alive(int(state["pid"]))
            and _is_our_qemu(int(state["pid"]), state["image"])
        ):
            if state.get("recipe") == recipe_hash():
                _mount_chroot(Path(state["root"]))
                if _ssh_ok(Path(state["root"])):
                    log(f"lab: already up (pid {state['pid']}, port {state['port']})")
                    return state
            log("lab: running lab is stale or not answering; restarting it")
        if state is not None:
            down(log=log)
        _, running = _build(False, log, keep_running=True)
        if running is not None:
            return running
        return _boot(log)


def _up_extra(log: Log, name: str) -> dict[str, Any]:
    state = _read_state(name)
    if (
        state is not None
        and _pid_alive(int(state["pid"]))
        and _is_our_qemu(int(state["pid"]), state["image"])
        and state.get("recipe") == recipe_hash()
    ):
        _mount_chroot(Path(state["root"]))
        if _ssh_ok(Path(state["root"]), name=name):
            log(f"lab: guest {name} already up (pid {state['pid']}, port {state['port']})")
            return state
    if state is not None:
        down(log=log, name=name)
    if not (_recipe_dir() / "complete.json").is_file():
        raise LabError(
            f"the lab image is not built; build it first (python -m stapmagic.lab up), then "
            f"up --name {name}"
        )
    _mount_chroot(_root_dir())
    return _boot(log, name)


def _other_guests_alive(name: str) -> bool:
    for other in guests():
        if other == name:
            continue
        st = _read_state(other)
        if st is not None:
            pid = int(st.get("pid", 0))
            if pid > 0 and _pid_alive(pid) and _is_our_qemu(pid, st.get("image", "")):
                return True
    return False


def down(log: Log = print, name: str = DEFAULT_GUEST) -> None:
    """Idempotent. The disk is a -snapshot (or per-boot qcow2) overlay, so killing qemu loses
    nothing of value; the ssh poweroff first only gives the guest a chance to stop cleanly. The
    chroot stays mounted while another guest runs (its stap compiles there)."""
    check_guest(name)
    with _locked():
        state = _read_state(name)
        roots = {_root_dir()}
        if state is not None:
            roots.add(Path(state["root"]))
            pid = int(state.get("pid", 0))
            if pid > 0 and _pid_alive(pid) and _is_our_qemu(pid, state.get("image", "")):
                log(f"lab: stopping qemu pid {pid}")
                root = Path(state["root"])
                if _chroot_mounted(root):
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        subprocess.run(  # noqa: S603 (argv list, no shell)
                            _chroot_argv(
                                root,
                                [
                                    "ssh",
                                    "-o",
                                    "ConnectTimeout=5",
                                    guest_alias(name),
                                    "systemctl",
                                    "poweroff",
                                ],
                            ),
                            stdin=subprocess.DEVNULL,
                            capture_output=True,
                            timeout=15,
                        )
                deadline = time.monotonic() + POWEROFF_GRACE_S
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.5)
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    if not _pid_alive(pid):
                        break
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                    deadline = time.monotonic() + 5
                    while _pid_alive(pid) and time.monotonic() < deadline:
                        time.sleep(0.2)
        for root in roots:
            if name == DEFAULT_GUEST and _chroot_mounted(root):
                _end_shared_ssh(root)
        if not _other_guests_alive(name):
            for root in roots:
                _unmount_chroot(root)
        _state_path(name).unlink(missing_ok=True)
        if name != DEFAULT_GUEST:
            for root in roots:
                _guest_ssh_config_path(root, name).unlink(missing_ok=True)
            (_run_dir(name) / "overlay.qcow2").unlink(missing_ok=True)


def status(name: str = DEFAULT_GUEST) -> dict[str, Any] | None:
    """The state when qemu runs, the chroot is mounted and the guest's sshd answers, else None."""
    state = _read_state(name)
    if state is None:
        return None
    pid = int(state.get("pid", 0))
    if not (pid > 0 and _pid_alive(pid) and _is_our_qemu(pid, state.get("image", ""))):
        return None
    root = Path(state["root"])
    if not _chroot_mounted(root) or not _ssh_ok(root, name=name):
        return None
    return state


def last_state(name: str = DEFAULT_GUEST) -> dict[str, Any] | None:
    """The state file of the last boot, whether or not that VM still runs."""
    return _read_state(name)


def is_up(name: str = DEFAULT_GUEST) -> bool:
    return status(name) is not None


def up_hint(name: str = DEFAULT_GUEST) -> str:
    return "python -m stapmagic.lab up" + ("" if name == DEFAULT_GUEST else f" --name {name}")


def _running_state(name: str = DEFAULT_GUEST) -> dict[str, Any]:
    """Cheap check (no ssh round trip): stap_argv/exec_argv are called for every run."""
    state = _read_state(name)
    fix = f"start it with: {up_hint(name)}"
    if state is None:
        what = "the lab" if name == DEFAULT_GUEST else f"lab guest {name}"
        raise LabError(f"{what} is not up; {fix}")
    pid = int(state.get("pid", 0))
    if not (pid > 0 and _pid_alive(pid) and _is_our_qemu(pid, state.get("image", ""))):
        crash = guest_crash(str(state.get("serial_log", "")))
        why = f"; the guest kernel crashed: {crash}" if crash else ""
        raise LabError(
            f"the lab's qemu (pid {pid}) is gone{why} (see {state.get('serial_log')}); {fix}"
        )
    if not _chroot_mounted(Path(state["root"])):
        raise LabError(f"the lab's chroot mounts are missing; {fix}")
    return state


def _guest_state(name: str) -> dict[str, Any]:
    # The default guest's call is unchanged (tests stub _running_state without arguments).
    return _running_state() if name == DEFAULT_GUEST else _running_state(name)


def stap_argv(require_running: bool = True, name: str = DEFAULT_GUEST) -> list[str]:
    """Prefix for a stap command line: compiles in the chroot, runs pass 5 in the guest.

    Without `require_running` (a --dry-run) the lab may be down: the line names only the
    recipe's chroot and the host alias, never the boot's port (nor this process's shared
    ssh connection). Every guest's line carries the same shared-ssh items (a list of guests
    is one stap): the wrapper's control path is per destination (%C), so another guest's
    ssh finds no master there and connects directly."""
    stap = ["stap", f"--remote=ssh://{guest_alias(name)}", *STAP_DEFINES]
    if not require_running:
        return _chroot_argv(_root_dir(), stap)
    root = Path(_guest_state(name)["root"])
    return _chroot_argv(root, [*_shared_ssh(root), *stap])


def client_argv(name: str = DEFAULT_GUEST) -> list[str]:
    """Prefix under which a command runs in the lab's chroot: its stap, and its ssh with the
    ``stapmagic-lab`` alias (so ``ssh://stapmagic-lab`` works as a plain ssh target there)."""
    root = Path(_guest_state(name)["root"])
    return _chroot_argv(root, _shared_ssh(root))


def exec_argv(argv: list[str], name: str = DEFAULT_GUEST) -> list[str]:
    """ssh joins its arguments into one remote shell line, hence the quoting."""
    root = Path(_guest_state(name)["root"])
    remote = " ".join(shlex.quote(a) for a in argv)
    return _chroot_argv(root, [*_shared_ssh(root), "ssh", guest_alias(name), "--", remote])


# The chroot's own cache directory and ssh (targets/sshmux.py: one ssh connection per process).
_CHROOT_CACHE = "/root/.cache"
_CHROOT_SSH = "/usr/bin/ssh"


def ssh_mux(root: Path) -> sshmux.Mux:
    """This process's shared ssh connection to the guest (made, not started)."""
    return sshmux.get(
        ("lab", str(root)),
        lambda: sshmux.Mux(
            prefix=tuple(_chroot_argv(root, [])),
            destination=(HOST_ALIAS,),
            cache=_CHROOT_CACHE,
            host_cache=root / _CHROOT_CACHE.lstrip("/"),
            ssh=_CHROOT_SSH,
        ),
    )


def _shared_ssh(root: Path) -> list[str]:
    """env items (after CHROOT_ENV) that route the chroot's ssh, stap's included, through
    this process's master; starts the master in the background if it is not up (until it
    listens, ssh connects directly as before)."""
    mux = ssh_mux(root)
    try:
        mux.install()
    except OSError:
        return []  # a read-only tree: plain ssh, as before
    mux.start()
    path = next(i for i in CHROOT_ENV if i.startswith("PATH="))[len("PATH=") :]
    return [f"PATH={mux.bin_dir}:{path}", *mux.env_items()]


def _end_shared_ssh(root: Path) -> None:
    """Before the guest goes away: end every stapmagic master to it (any process's)."""
    sshmux.forget(("lab", str(root)))
    cache = root / _CHROOT_CACHE.lstrip("/")
    for sock in sorted((cache / sshmux.SUBDIR).glob("cm-*")):
        control = f"{_CHROOT_CACHE}/{sshmux.SUBDIR}/{sock.name}"
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(  # noqa: S603 (argv list, no shell)
                _chroot_argv(root, sshmux.control_argv(_CHROOT_SSH, "exit", control, [HOST_ALIAS])),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
            )


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m stapmagic.lab", description=__doc__.split("\n")[0] if __doc__ else None
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    name_help = (
        f"the guest (default {DEFAULT_GUEST}; another name boots a second guest of the same "
        "image, target lab:NAME)"
    )
    u = sub.add_parser("up", help="build if needed, boot, wait for ssh")
    d = sub.add_parser("down", help="stop the guest (and unmount the chroot if no guest is left)")
    st_p = sub.add_parser(
        "status", help="print the state of every guest; exit 1 if the one asked for is down"
    )
    sh = sub.add_parser("shell", help="interactive ssh into the guest (or run a command there)")
    for sp in (u, d, st_p, sh):
        sp.add_argument("--name", default=DEFAULT_GUEST, type=check_guest, help=name_help)
    sh.add_argument("command", nargs=argparse.REMAINDER)
    b = sub.add_parser("build", help="build the cached root tree and disk image")
    b.add_argument("--force", action="store_true", help="rebuild from scratch")
    args = p.parse_args(argv)
    try:
        if args.cmd == "up":
            t0 = time.monotonic()
            state = up(name=args.name)
            print(json.dumps(state, indent=1))
            print(f"lab: up in {time.monotonic() - t0:.1f} s total")
        elif args.cmd == "down":
            down(name=args.name)
        elif args.cmd == "status":
            st = status(args.name)
            if st is None:
                print("lab: down" if args.name == DEFAULT_GUEST else f"lab: guest {args.name} down")
            else:
                print(json.dumps(st, indent=1))
            for other in guests():
                if other != args.name:
                    ost = status(other)
                    where = f"up (pid {ost['pid']}, port {ost['port']})" if ost else "down"
                    print(f"lab: guest {other} ({guest_alias(other)}): {where}")
            if st is None:
                return 1
        elif args.cmd == "build":
            print(build(force=args.force))
        elif args.cmd == "shell":
            state = _running_state(args.name) if args.name != DEFAULT_GUEST else _running_state()
            alias = guest_alias(args.name)
            cmd = list(args.command)
            if cmd[:1] == ["--"]:
                cmd = cmd[1:]
            if cmd:
                # Like `ssh HOST cmd...`: one argument is the remote command line as written
                # ('cmd; cmd' works); several are joined, each quoted (one word each).
                remote = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
                argv_ = _chroot_argv(Path(state["root"]), ["ssh", alias, "--", remote])
            else:
                term = "TERM=" + os.environ.get("TERM", "vt100")
                argv_ = _chroot_argv(Path(state["root"]), ["env", term, "ssh", "-t", alias])
            os.execvp(argv_[0], argv_)
    except LabError as e:
        print(f"lab: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
