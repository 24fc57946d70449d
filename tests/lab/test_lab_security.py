"""Security of the lab, beyond what test_lab_infra.py checks (qemu's listening sockets, the
client key's mode and pinning, sshd refusing passwords): how qemu is started, every private
key of the image, keys per image, no account with a password, and signed packages only.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from stapmagic import lab as labmod
from stapmagic import runner

LAB = runner.Target("lab")
# apt settings that would accept unsigned or unverifiable packages
INSECURE_APT = re.compile(
    r"trusted\s*=\s*yes|allow-insecure\s*=\s*yes|allow-weak\s*=\s*yes|AllowUnauthenticated|"
    r"AllowInsecureRepositories|AllowDowngradeToInsecureRepositories|allow-unauthenticated|"
    r"--no-check-gpg|force-yes",
    re.IGNORECASE,
)


@pytest.fixture
def state(lab):
    st = lab.status()
    assert st is not None
    return st


@pytest.fixture
def root(state) -> Path:
    return Path(str(state["root"]))


def qemu_argv(state) -> list[str]:
    return Path(f"/proc/{state['pid']}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_qemu_exposes_only_a_loopback_ssh_forward(state):
    argv = qemu_argv(state)
    assert "qemu-system" in argv[0]
    nets = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert len(nets) == 1, nets
    opts = nets[0].split(",")
    assert opts[0] == "user" and "restrict=on" in opts  # the guest reaches nothing outside
    forwards = [o for o in opts if o.startswith("hostfwd=")]
    assert forwards == [f"hostfwd=tcp:127.0.0.1:{state['port']}-:22"]
    # no other way in: no VNC/SPICE display, no monitor or QMP or gdb socket, no other NIC
    assert argv[argv.index("-display") + 1] == "none"
    assert argv[argv.index("-monitor") + 1] == "none"
    for flag in ("-vnc", "-spice", "-qmp", "-gdb", "-s", "-net", "-chardev", "-incoming"):
        assert flag not in argv, flag
    assert argv[argv.index("-serial") + 1].startswith("file:")
    assert "-snapshot" in argv  # the disk image is never written by the guest


def test_every_private_key_of_the_image_is_0600(root):
    keys = [
        root / "root/.ssh/stapmagic_lab_ed25519",
        *sorted((root / "etc/ssh").glob("ssh_host_*_key")),
    ]
    assert len(keys) >= 2
    for key in keys:
        st = key.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, key
        assert st.st_uid == 0, key
    auth = root / "root/.ssh/authorized_keys"
    assert stat.S_IMODE(auth.stat().st_mode) & 0o022 == 0  # sshd's StrictModes


def test_guest_accepts_exactly_the_image_key(root):
    authorized = [
        ln.split()[:2]
        for ln in (root / "root/.ssh/authorized_keys").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    mine = (root / "root/.ssh/stapmagic_lab_ed25519.pub").read_text().split()[:2]
    assert authorized == [mine]
    live = runner.run_on_target(LAB, ["cat", "/root/.ssh/authorized_keys"]).split()
    assert live[:2] == mine


def _key_material(root: Path) -> dict[str, str]:
    out = {"client": (root / "root/.ssh/stapmagic_lab_ed25519.pub").read_text().split()[1]}
    for pub in sorted((root / "etc/ssh").glob("ssh_host_*_key.pub")):
        out[pub.name] = pub.read_text().split()[1]
    return out


def test_keys_are_made_per_image_not_shipped(root):
    """Generated when the image was built: no key ships with stapmagic, and no two images
    built on this machine share one."""
    shipped = Path(labmod.__file__).parent / "labfiles"
    for f in shipped.rglob("*"):
        if f.is_file():
            text = f.read_text(errors="replace")
            assert "PRIVATE KEY" not in text, f
            for material in _key_material(root).values():
                assert material not in text, f
    images = [
        p
        for p in root.parent.parent.glob("*/root")
        if (p / "root/.ssh").is_dir() and (p / "root/.ssh/stapmagic_lab_ed25519.pub").is_file()
    ]
    others = [p for p in images if p.resolve() != root.resolve()]
    if not others:
        pytest.skip("only one lab image on this machine: nothing to compare")
    mine = set(_key_material(root).values())
    for other in others:
        shared = mine & set(_key_material(other).values())
        assert not shared, f"{other} shares keys with {root}"


def _password_fields(shadow: str) -> dict[str, str]:
    return {ln.split(":")[0]: ln.split(":")[1] for ln in shadow.splitlines() if ln.count(":") >= 2}


def test_no_account_has_a_password(root):
    """root and every other account: '*' or '!...' (locked), in the image and in the guest."""
    for where, shadow in (
        ("image", (root / "etc/shadow").read_text()),
        ("guest", runner.run_on_target(LAB, ["cat", "/etc/shadow"])),
    ):
        fields = _password_fields(shadow)
        assert "root" in fields, where
        usable = {
            user: pw[:3] for user, pw in fields.items() if not (pw == "*" or pw.startswith("!"))
        }
        assert not usable, f"{where}: accounts with a password or an empty one: {usable}"


def test_sshd_allows_keys_only(state):
    settings = dict(
        line.split(" ", 1)
        for line in runner.run_on_target(LAB, ["sshd", "-T"]).splitlines()
        if " " in line
    )
    assert settings["pubkeyauthentication"] == "yes"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["permitemptypasswords"] == "no"
    assert settings.get("hostbasedauthentication", "no") == "no"


def test_image_packages_were_signature_checked(root):
    """debootstrap ran against the Debian archive keyring and checked the Release signature;
    apt in the image verifies signatures (nothing turns the checks off)."""
    logs = root.parent / "logs"
    debootstrap = (logs / "debootstrap.log").read_text(errors="replace")
    assert re.search(r"^I: Valid Release signature \(key id [0-9A-F]+\)$", debootstrap, re.M)
    assert "--no-check-gpg" not in debootstrap
    provision = (logs / "provision.log").read_text(errors="replace")
    for bad in (
        "NO_PUBKEY",
        "is not signed",
        "cannot be authenticated",
        "insecure",
        "--allow-unauthenticated",
    ):
        assert bad not in provision, bad
    assert re.search(r"^Get:\d+ \S+ \S+ InRelease", provision, re.M)  # signed index used

    apt = root / "etc/apt"
    files = [
        apt / "sources.list",
        *apt.glob("sources.list.d/*"),
        *apt.glob("apt.conf.d/*"),
        *apt.glob("apt.conf"),
    ]
    for f in files:
        if f.is_file():
            assert not INSECURE_APT.search(f.read_text(errors="replace")), f
    keyrings = [
        *apt.glob("trusted.gpg.d/debian-archive-*"),
        *(root / "usr/share/keyrings").glob("debian-archive-keyring.*"),
    ]
    assert keyrings, "no Debian archive key in the image: apt could verify nothing"


def test_build_code_keeps_the_checks_on():
    """lab.py passes the archive keyring to debootstrap and never a flag that skips checks."""
    source = Path(labmod.__file__).read_text()
    assert 'f"--keyring={KEYRING}"' in source
    assert labmod.KEYRING == Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    provision = (Path(labmod.__file__).parent / "labfiles/provision.sh").read_text()
    for text in (source, provision):
        assert not INSECURE_APT.search(text)
