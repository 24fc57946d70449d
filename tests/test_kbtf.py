"""kbtf: the kernel's BTF over a target's channel, cached per build (a local directory
stands in for the target's /sys/kernel/btf; the lab test is tests/lab/test_btf_fields.py)."""

from __future__ import annotations

import pytest
from test_btf import _blob

from stapmagic import kbtf


class DirTarget:
    """A target whose /sys/kernel/btf is a local directory; records the commands run."""

    def __init__(self, root):
        self.root = root
        self.ran: list[list[str]] = []

    def exec_argv(self, argv):
        self.ran.append(list(argv))
        return [a.replace("/sys/kernel/btf", str(self.root)) for a in argv]


@pytest.fixture
def target(tmp_path):
    d = tmp_path / "sys"
    d.mkdir()
    (d / "vmlinux").write_bytes(_blob("vmlinux"))
    (d / "ext4").write_bytes(_blob("ext4"))
    return DirTarget(d)


def test_fetched_once_per_build(target, tmp_path):
    cache = tmp_path / "cache"
    kb = kbtf.kernel_btf(target, ["ext4"], cache_dir=cache)
    assert [r[0] for r in target.ran] == ["sha256sum", "cat", "cat"]
    (f,) = kb.functions("ext4_file_open")
    assert f.obj == "ext4" and kb.object(f).name == "ext4"
    assert kb.functions("tcp_v4_connect")[0].obj == "vmlinux"
    target.ran.clear()
    again = kbtf.kernel_btf(target, ["ext4"], cache_dir=cache)
    assert [r[0] for r in target.ran] == ["sha256sum"]  # same build: nothing copied
    assert again.vmlinux.type_count == kb.vmlinux.type_count


def test_a_new_build_is_copied_again(target, tmp_path):
    cache = tmp_path / "cache"
    kbtf.kernel_btf(target, cache_dir=cache)
    data = bytearray(_blob("vmlinux"))
    data[-2] = ord("x")  # another build: other bytes in a string
    (target.root / "vmlinux").write_bytes(bytes(data))
    target.ran.clear()
    kbtf.kernel_btf(target, cache_dir=cache)
    assert [r[0] for r in target.ran] == ["sha256sum", "cat"]


def test_no_btf(target, tmp_path):
    (target.root / "vmlinux").unlink()
    with pytest.raises(kbtf.NoBTF, match="CONFIG_DEBUG_INFO_BTF"):
        kbtf.kernel_btf(target, cache_dir=tmp_path / "c")


def test_module_without_btf(target, tmp_path):
    with pytest.raises(kbtf.NoBTF, match="module xfs has no BTF"):
        kbtf.kernel_btf(target, ["xfs"], cache_dir=tmp_path / "c")


@pytest.mark.parametrize("bad", ["../etc", "a b", "vmlinux", ""])
def test_module_names_are_checked(target, tmp_path, bad):
    with pytest.raises(kbtf.BTFError, match="not a module name"):
        kbtf.kernel_btf(target, [bad], cache_dir=tmp_path / "c")
    assert target.ran == []
