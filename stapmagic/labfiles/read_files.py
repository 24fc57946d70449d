"""Workload: open and read a file N times (default 100); prints its pid first.

Each round is one openat() of an ext4 file (the lab's root filesystem) and one read().
"""
import os
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
path = sys.argv[2] if len(sys.argv) > 2 else "/etc/os-release"
print(f"workload pid={os.getpid()}", flush=True)
for _ in range(n):
    with open(path, "rb", buffering=0) as f:
        f.read(4096)
print(f"read {path} {n} times", flush=True)
