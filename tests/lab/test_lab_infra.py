"""The lab VM itself: reachable, the right kernel, stap works end to end, nothing exposed.

Tests marked ``lab`` need a running lab (``python -m stapmagic.lab up``) and skip otherwise;
the others are pure unit tests of host-side decisions.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from stapmagic import lab

_UP: bool | None = None


def _lab_up() -> bool:
    global _UP
    if _UP is None:
        _UP = lab.is_up()
    return _UP


@pytest.fixture
def state() -> dict[str, object]:
    if not _lab_up():
        pytest.skip("lab is not up (start it with: python -m stapmagic.lab up)")
    st = lab.status()
    assert st is not None
    return st


def _run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (argv list, no shell)
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.mark.lab
def test_ssh_runs_commands_with_arguments_intact(state: dict[str, object]) -> None:
    r = _run(lab.exec_argv(["printf", "%s|", "a b", "it's", "$HOME", "*"]))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "a b|it's|$HOME|*|"


@pytest.mark.lab
def test_guest_kernel_is_6_12(state: dict[str, object]) -> None:
    r = _run(lab.exec_argv(["uname", "-r"]))
    assert r.returncode == 0, r.stderr
    release = r.stdout.strip()
    assert release.startswith("6.12"), release
    assert release == state["release"]


@pytest.mark.lab
def test_stap_remote_trivial_script(state: dict[str, object]) -> None:
    r = _run([*lab.stap_argv(), "-e", 'probe begin { printf("hello\\n"); exit() }'], timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n"


@pytest.mark.lab
def test_qemu_listens_on_loopback_only(state: dict[str, object]) -> None:
    r = _run(["ss", "-H", "-ltnup"])
    assert r.returncode == 0, r.stderr
    mine = [line for line in r.stdout.splitlines() if re.search(rf"pid={state['pid']}\b", line)]
    assert mine, f"no listening socket of qemu pid {state['pid']} in:\n{r.stdout}"
    for line in mine:
        local = line.split()[4]
        assert local == f"127.0.0.1:{state['port']}", line


@pytest.mark.lab
def test_ssh_key_private_and_pinned(state: dict[str, object]) -> None:
    ssh = Path(str(state["root"])) / "root/.ssh"
    key = ssh / "stapmagic_lab_ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ssh.stat().st_mode) == 0o700
    config = (ssh / "config").read_text()
    assert "StrictHostKeyChecking yes" in config
    assert f"Port {state['port']}" in config
    known = (ssh / "stapmagic_lab_known_hosts").read_text().split()
    host_pub = (Path(str(state["root"])) / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    assert known[1:3] == host_pub[0:2]


@pytest.mark.lab
def test_guest_refuses_passwords(state: dict[str, object]) -> None:
    r = _run(lab.exec_argv(["sshd", "-T"]))
    assert r.returncode == 0, r.stderr
    settings = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    assert settings["passwordauthentication"] == "no"
    assert settings["permitrootlogin"] in ("prohibit-password", "without-password")


@pytest.mark.lab
def test_state_file_shape_when_up() -> None:
    path = lab.cache_root() / "state.json"
    if not path.exists():
        pytest.skip("lab not up")
    st = json.loads(path.read_text())
    assert {"pid", "port", "accel", "root", "release"} <= set(st)


# --- accelerator choice (no lab needed) ---------------------------------------------------------


def _fake_sys(tmp_path: Path, modules: list[str]) -> tuple[Path, Path]:
    sysmod = tmp_path / "sys_module"
    sysmod.mkdir()
    for m in modules:
        (sysmod / m).mkdir()
    dev = tmp_path / "kvm"
    dev.write_text("")
    return sysmod, dev


def test_accel_pvm_device_means_tcg(tmp_path: Path) -> None:
    sysmod, dev = _fake_sys(tmp_path, ["kvm", "kvm_pvm"])
    accel, why = lab.detect_accel(env={}, sys_module=sysmod, dev_kvm=dev)
    assert accel == "tcg"
    assert "kvm_pvm" in why


def test_accel_no_dev_kvm_means_tcg(tmp_path: Path) -> None:
    sysmod, _ = _fake_sys(tmp_path, ["kvm", "kvm_intel"])
    accel, _why = lab.detect_accel(env={}, sys_module=sysmod, dev_kvm=tmp_path / "absent")
    assert accel == "tcg"


def test_accel_vendor_module_means_kvm_unless_it_failed_before(tmp_path: Path) -> None:
    sysmod, dev = _fake_sys(tmp_path, ["kvm", "kvm_amd"])
    assert lab.detect_accel(env={}, sys_module=sysmod, dev_kvm=dev)[0] == "kvm"
    failed = tmp_path / "kvm-failed"
    failed.write_text("x")
    assert lab.detect_accel(env={}, sys_module=sysmod, dev_kvm=dev, verdict_file=failed)[0] == "tcg"


def test_accel_env_override(tmp_path: Path) -> None:
    sysmod, dev = _fake_sys(tmp_path, ["kvm", "kvm_pvm"])
    assert (
        lab.detect_accel(env={"STAPMAGIC_LAB_ACCEL": "kvm"}, sys_module=sysmod, dev_kvm=dev)[0]
        == "kvm"
    )
    with pytest.raises(lab.LabError):
        lab.detect_accel(env={"STAPMAGIC_LAB_ACCEL": "hvf"}, sys_module=sysmod, dev_kvm=dev)


def test_accel_on_this_host_is_tcg() -> None:
    if os.environ.get("STAPMAGIC_LAB_ACCEL"):
        pytest.skip("overridden by STAPMAGIC_LAB_ACCEL")
    if Path("/sys/module/kvm_intel").is_dir() or Path("/sys/module/kvm_amd").is_dir():
        pytest.skip("this host has a standard KVM module")
    assert lab.detect_accel(env={})[0] == "tcg"


# --- mirror discovery (no lab needed) -----------------------------------------------------------


def test_mirror_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: x\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian/\nSuites: y\n"
    )
    assert lab._mirror_from_apt(tmp_path) == "http://mirror.invalid/debian"
    (d / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "# c\ndeb [signed-by=/k.gpg arch=amd64] http://m.invalid/debian bookworm main\n"
    )
    assert lab._mirror_from_apt(tmp_path) == "http://m.invalid/debian"
    (tmp_path / "sources.list").write_text("deb http://m.invalid/ubuntu x main\n")
    assert lab._mirror_from_apt(tmp_path) is None


def test_recipe_hash_is_stable() -> None:
    assert lab.recipe_hash() == lab.recipe_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", lab.recipe_hash())
