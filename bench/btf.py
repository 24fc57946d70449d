"""Load and index the lab kernel's vmlinux BTF (tests/fixtures/btf/vmlinux.btf.xz, 4.9 MB):
cold (parse and index), cached (index from ~/.cache/stapmagic/btf, in a temporary directory
here), and the first lookup of a prototype and a member path after each.

    python bench/btf.py            (or: python bench/run.py btf)
"""

from __future__ import annotations

import lzma
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURE = ROOT / "tests" / "fixtures" / "btf" / "vmlinux.btf.xz"
ROUNDS = 5


def run(out: Callable[[str], None] = print) -> dict[str, float]:
    from stapmagic import btf

    data = lzma.decompress(FIXTURE.read_bytes())
    out(f"vmlinux BTF: {len(data) / 1e6:.2f} MB")

    def use(b: btf.BTF) -> None:
        b.bpftrace_listing(["tcp_v4_connect"])
        (f,) = b.functions("tcp_finish_connect")
        b.resolve_field(f.params[0].type, btf.parse_path("sk->__sk_common.skc_dport")[2])

    res: dict[str, list[float]] = {"cold": [], "cached": [], "first_use": []}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        for i in range(ROUNDS):
            for f in cache.iterdir():
                f.unlink()
            t = time.perf_counter()
            btf.load(data, cache_dir=cache)
            res["cold"].append(time.perf_counter() - t)
            t = time.perf_counter()
            cached = btf.load(data, cache_dir=cache)
            res["cached"].append(time.perf_counter() - t)
            t = time.perf_counter()
            use(cached)
            res["first_use"].append(time.perf_counter() - t)
            out(
                f"round {i + 1}: cold {res['cold'][-1] * 1e3:.0f} ms, cached "
                f"{res['cached'][-1] * 1e3:.0f} ms, first prototype + member path "
                f"{res['first_use'][-1] * 1e3:.1f} ms"
            )
    summary = {f"{k}_best_s": min(v) for k, v in res.items()}
    summary.update({f"{k}_median_s": statistics.median(v) for k, v in res.items()})
    return summary


def main() -> None:
    s = run()
    for k, v in s.items():
        print(f"btf_{k}={v:.4f}")


if __name__ == "__main__":
    main()
