"""%kfind's BTF columns (issue 13): `in_btf` and the function's C prototype as btf.py renders
it, against the lab kernel's own BTF (tests/fixtures/btf)."""

from __future__ import annotations

import lzma
from functools import cache
from pathlib import Path

import pandas as pd
import pytest

from stapmagic import btf, kbtf, pipeline, symbols
from stapmagic.errors import BTFError

FIX = Path(__file__).parent / "fixtures" / "btf"
CONNECT = "int tcp_v4_connect(struct sock *sk, struct sockaddr *uaddr, int addr_len)"


@cache
def kernel() -> kbtf.KernelBTF:
    vmlinux = btf.BTF.parse(lzma.decompress((FIX / "vmlinux.btf.xz").read_bytes()))
    ext4 = btf.BTF.parse(
        lzma.decompress((FIX / "ext4.btf.xz").read_bytes()), base=vmlinux, name="ext4"
    )
    return kbtf.KernelBTF(vmlinux, {"ext4": ext4})


@pytest.fixture(autouse=True)
def _fresh_btf_cache(monkeypatch) -> None:
    monkeypatch.setattr(symbols, "_BTF", {})


def symbol_set() -> symbols.SymbolSet:
    return symbols.parse_fetch_output(
        "6.12.117+deb13-amd64\n@@stapmagic-symbols kallsyms\n"
        "tcp_v4_connect\n__pfx_tcp_v4_connect\ntcp_v4_connect.cold\ntcp_v4_stapmagic_nobtf\n"
        "ext4_file_open [ext4]\nnf_nat_setup_info [nf_nat]\n"
        "@@stapmagic-symbols traceable\ntcp_v4_connect\next4_file_open\n"
        "@@stapmagic-symbols blacklist\n"
    )


def test_prototype_and_in_btf_from_the_kernels_btf() -> None:
    df = symbols.find(symbol_set(), ["tcp_v4_*", "ext4_file_open", "nf_nat_*"], btf=kernel())
    assert list(df.columns) == [
        "name",
        "module",
        "in_kallsyms",
        "traceable",
        "blacklisted",
        "in_btf",
        "prototype",
    ]
    rows = df.set_index("name")
    assert list(rows.index) == [
        "ext4_file_open",
        "nf_nat_setup_info",
        "tcp_v4_connect",
        "tcp_v4_stapmagic_nobtf",
    ]
    assert rows.loc["tcp_v4_connect", "prototype"] == CONNECT
    assert rows.loc["tcp_v4_connect", "in_btf"]
    ext4 = kernel().modules["ext4"]
    assert rows.loc["ext4_file_open", "prototype"] == ext4.c_prototype(
        ext4.functions("ext4_file_open")[0]
    )
    assert rows.loc["ext4_file_open", "prototype"].startswith("int ext4_file_open(struct inode *")
    # vmlinux's BTF was read and does not have it: False, no prototype
    assert df["in_btf"].notna()[df["name"] == "tcp_v4_stapmagic_nobtf"].all()
    assert not rows.loc["tcp_v4_stapmagic_nobtf", "in_btf"]
    assert pd.isna(rows.loc["tcp_v4_stapmagic_nobtf", "prototype"])
    # nf_nat's BTF was not read: unknown, never "no"
    assert pd.isna(rows.loc["nf_nat_setup_info", "in_btf"])
    assert pd.isna(rows.loc["nf_nat_setup_info", "prototype"])


def test_without_btf_the_columns_are_unknown() -> None:
    df = symbols.find(symbol_set(), ["tcp_v4_*"])
    assert df["in_btf"].isna().all() and df["prototype"].isna().all()


def test_kfind_magic_reads_the_targets_btf(ip, monkeypatch) -> None:
    asked: list[list[str]] = []

    def fake_btf(target, modules):
        asked.append(list(modules))
        return kernel()

    monkeypatch.setattr(pipeline, "target_btf", fake_btf)
    monkeypatch.setitem(symbols._CACHE, "local", symbol_set())
    df = ip.run_line_magic("kfind", "tcp_v4_* ext4_file_open --target local")
    assert asked == [["ext4"]]  # the modules of the functions found, nothing else
    rows = df.set_index("name")
    assert rows.loc["tcp_v4_connect", "prototype"] == CONNECT
    assert not [n for n in rows.index if n.startswith("__pfx_")]
    again = ip.run_line_magic("kfind", "tcp_v4_* ext4_file_open --target local")
    assert asked == [["ext4"]], "a second %kfind asks the target again"
    assert again.equals(df)


def test_cached_btf_asks_once_per_target_and_modules_until_refresh() -> None:
    asked: list[list[str]] = []

    def lookup(mods: list[str]) -> kbtf.KernelBTF | None:
        asked.append(mods)
        return None  # no BTF is an answer too: not asked again

    assert symbols.cached_btf("t", ["ext4"], lookup) is None
    symbols.cached_btf("t", ["ext4"], lookup)
    symbols.cached_btf("u", ["ext4"], lookup)
    symbols.cached_btf("t", ["ext4"], lookup, refresh=True)
    assert asked == [["ext4"], ["ext4"], ["ext4"]]


def test_kfind_magic_without_btf_still_lists(ip, monkeypatch) -> None:
    def no_btf(target, modules):
        raise kbtf.NoBTF("the target kernel has no BTF")

    monkeypatch.setattr(pipeline, "target_btf", no_btf)
    monkeypatch.setitem(symbols._CACHE, "local", symbol_set())
    df = ip.run_line_magic("kfind", "tcp_v4_* --target local")
    assert "tcp_v4_connect" in list(df["name"]) and df["in_btf"].isna().all()


@pytest.mark.parametrize("error", [kbtf.NoBTF("module nf_nat has no BTF"), BTFError("damaged")])
def test_a_module_without_btf_keeps_vmlinux_prototypes(ip, monkeypatch, error) -> None:
    def lookup(target, modules):
        if modules:
            raise error
        return kbtf.KernelBTF(kernel().vmlinux)

    monkeypatch.setattr(pipeline, "target_btf", lookup)
    monkeypatch.setitem(symbols._CACHE, "local", symbol_set())
    rows = ip.run_line_magic("kfind", "tcp_v4_connect nf_nat_* --target local").set_index("name")
    assert rows.loc["tcp_v4_connect", "prototype"] == CONNECT
    assert pd.isna(rows.loc["nf_nat_setup_info", "in_btf"])
