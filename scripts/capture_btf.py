#!/usr/bin/env python3
"""Capture the lab kernel's BTF and bpftrace's view of it, as fixtures for tests/test_btf.py.

    .venv/bin/python scripts/capture_btf.py [--target lab] [--module ext4] [--out tests/fixtures/btf]

Writes, from the running target (the lab needs `python -m stapmagic.lab up`):

- ``vmlinux.btf.xz``, ``MODULE.btf.xz``: /sys/kernel/btf/vmlinux and /sys/kernel/btf/MODULE,
  byte for byte, xz-compressed;
- ``meta.json``: the kernel release, /proc/version, bpftrace's version, each blob's sha256;
- ``bpftrace_fentry.txt.xz``: ``bpftrace -lv 'fentry:vmlinux:*'`` and ``'fentry:MODULE:*'``
  (every traceable BTF function with its parameters: the prototype oracle);
- ``offsets.json``: ``offsetof``/``sizeof`` as bpftrace computes them for the member paths
  in OFFSET_PATHS (the member-offset oracle).

Nothing here is edited by hand: rerun the script to refresh the fixtures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (struct, member path): paths through anonymous unions/structs, nested structs, arrays.
OFFSET_PATHS: tuple[tuple[str, str], ...] = (
    ("sock", "__sk_common.skc_dport"),
    ("sock", "__sk_common.skc_daddr"),
    ("sock", "__sk_common.skc_rcv_saddr"),
    ("sock", "__sk_common.skc_num"),
    ("sock", "__sk_common.skc_family"),
    ("sock", "__sk_common.skc_state"),
    ("sock", "__sk_common.skc_net"),
    ("sock", "sk_rcvbuf"),
    ("sock", "sk_sndbuf"),
    ("sock", "sk_protocol"),
    ("sock", "sk_type"),
    ("sock", "sk_err"),
    ("sock_common", "skc_dport"),
    ("sock_common", "skc_portpair"),
    ("sock_common", "skc_addrpair"),
    ("inet_sock", "inet_sport"),
    ("inet_sock", "inet_saddr"),
    ("inet_sock", "sk.__sk_common.skc_dport"),
    ("sockaddr_in", "sin_port"),
    ("sockaddr_in", "sin_addr.s_addr"),
    ("sockaddr", "sa_family"),
    ("path", "mnt"),
    ("path", "dentry"),
    ("dentry", "d_name"),
    ("dentry", "d_name.name"),
    ("dentry", "d_name.len"),
    ("dentry", "d_name.hash"),
    ("dentry", "d_name.hash_len"),
    ("dentry", "d_inode"),
    ("dentry", "d_parent"),
    ("dentry", "d_iname"),
    ("file", "f_path"),
    ("file", "f_path.dentry"),
    ("file", "f_flags"),
    ("file", "f_mode"),
    ("file", "f_pos"),
    ("file", "f_inode"),
    ("inode", "i_ino"),
    ("inode", "i_size"),
    ("inode", "i_mode"),
    ("inode", "i_sb"),
    ("task_struct", "pid"),
    ("task_struct", "tgid"),
    ("task_struct", "comm"),
    ("task_struct", "__state"),
    ("task_struct", "real_parent"),
    ("sk_buff", "len"),
    ("sk_buff", "data_len"),
    ("sk_buff", "protocol"),
    ("sk_buff", "data"),
    ("sk_buff", "sk"),
    ("sk_buff", "__cloned_offset"),  # zero-length markers in front of bitfield bytes
    ("sk_buff", "__pkt_type_offset"),
    ("sk_buff", "__mono_tc_offset"),
    ("msghdr", "msg_namelen"),
    ("super_block", "s_id"),
    ("qstr", "name"),
    ("qstr", "len"),
)
SIZE_STRUCTS: tuple[str, ...] = (
    "sock",
    "sock_common",
    "inet_sock",
    "sockaddr_in",
    "path",
    "dentry",
    "file",
    "inode",
    "task_struct",
    "sk_buff",
    "qstr",
)


def _guest_bytes(argv: list[str], timeout: float) -> bytes:
    from stapmagic import runner

    full = runner.exec_argv(runner.Target("lab"), argv)
    done = subprocess.run(full, capture_output=True, timeout=timeout, check=False)  # noqa: S603
    if done.returncode != 0:
        raise SystemExit(
            f"{argv} failed on the target (exit {done.returncode}): "
            f"{done.stderr.decode(errors='replace')[-2000:]}"
        )
    return done.stdout


def _offsets_program() -> str:
    lines = ["BEGIN {"]
    for struct, path in OFFSET_PATHS:
        lines.append(
            f'  printf("offsetof %s %s %d\\n", "{struct}", "{path}", '
            f"offsetof(struct {struct}, {path}));"
        )
    for struct in SIZE_STRUCTS:
        lines.append(f'  printf("sizeof %s %d\\n", "{struct}", sizeof(struct {struct}));')
    lines.append("  exit();")
    lines.append("}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--module",
        action="append",
        default=None,
        help="a loaded module whose split BTF to capture too (default: ext4)",
    )
    p.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "btf")
    p.add_argument(
        "--offsets-only",
        action="store_true",
        help="only refresh offsets.json (the kernel must be the one captured)",
    )
    args = p.parse_args(argv)
    modules = args.module or ["ext4"]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    if args.offsets_only:
        _capture_offsets(out)
        return 0
    meta: dict[str, object] = {
        "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "release": _guest_bytes(["uname", "-r"], 60).decode().strip(),
        "version": _guest_bytes(["cat", "/proc/version"], 60).decode().strip(),
        "bpftrace": _guest_bytes(["bpftrace", "--version"], 60).decode().strip(),
        "blobs": {},
    }
    blobs: dict[str, str] = {}
    for name in ["vmlinux", *modules]:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise SystemExit(f"not a module name: {name!r}")
        data = _guest_bytes(["cat", f"/sys/kernel/btf/{name}"], 300)
        (out / f"{name}.btf.xz").write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        blobs[name] = hashlib.sha256(data).hexdigest()
        print(f"{name}: {len(data)} bytes, sha256 {blobs[name][:16]}", flush=True)
    meta["blobs"] = blobs

    listing = b""
    for name in ["vmlinux", *modules]:
        t = time.monotonic()
        listing += _guest_bytes(["bpftrace", "-lv", f"fentry:{name}:*"], 3600)
        print(f"bpftrace -lv fentry:{name}:* in {time.monotonic() - t:.0f} s", flush=True)
    (out / "bpftrace_fentry.txt.xz").write_bytes(lzma.compress(listing, preset=9))
    print(f"listing: {listing.count(b'fentry:')} functions, {len(listing)} bytes", flush=True)

    _capture_offsets(out)
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"done in {time.monotonic() - t0:.0f} s -> {out}")
    return 0


def _capture_offsets(out: Path) -> None:
    text = _guest_bytes(["bpftrace", "-e", _offsets_program()], 600).decode()
    offsets: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "offsetof":
            offsets[f"{parts[1]}:{parts[2]}"] = int(parts[3])
        elif len(parts) == 3 and parts[0] == "sizeof":
            sizes[parts[1]] = int(parts[2])
    if len(offsets) != len(OFFSET_PATHS) or len(sizes) != len(SIZE_STRUCTS):
        raise SystemExit(f"bpftrace printed {len(offsets)} offsets, {len(sizes)} sizes:\n{text}")
    (out / "offsets.json").write_text(
        json.dumps({"offsetof": offsets, "sizeof": sizes}, indent=1, sort_keys=True) + "\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
