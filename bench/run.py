"""Benchmark dispatcher: `python bench/run.py [NAME ...|all|list]`.

Prints the machine (CPU, cores, Python, pandas, numpy, pyarrow), then each benchmark's
table. Benchmarks that need something absent (e.g. the lab VM) print why and are skipped.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine_info() -> list[tuple[str, str]]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numpy
    import pandas
    import pyarrow

    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1e6:.1f} GB"
    except (OSError, ValueError, IndexError):
        pass
    load = "?"
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    return [
        ("cpu", f"{cpu} x {os.cpu_count()}"),
        ("memory", mem),
        ("load average", load),
        ("python", platform.python_version()),
        ("pandas", pandas.__version__),
        ("numpy", numpy.__version__),
        ("pyarrow", pyarrow.__version__),
        ("platform", platform.platform()),
    ]


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in r] for r in ([header] if header else []) + list(rows)]
    if not cells:
        return ""
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(cells[0]))]
    out = []
    for k, r in enumerate(cells):
        line = "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)
        )
        out.append(line.rstrip())
        if header and k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


class Skip(Exception):
    """Raised by a benchmark that cannot run here; the message says why."""


@dataclass(frozen=True)
class Bench:
    name: str
    doc: str
    fn: Callable[[], None]


def _mb(x: float) -> str:
    return f"{x / 1e6:.1f} MB"


def _ingest(variant: str) -> None:
    from bench import ingest

    res = ingest.run(variant, out=lambda s: print("  " + s))
    n, nbytes = res["records"], res["bytes"]
    rows = []
    labels = {
        "read_csv": "pandas.read_csv (C engine)",
        "ingest": "RecordParser (streaming)",
        "ingest_pyarrow": "  the same, pyarrow path",
    }
    for name in res["times"]:
        ts = res["times"][name]
        best, med = min(ts), statistics.median(ts)
        rows.append(
            [
                labels[name],
                f"{best:.2f} s",
                f"{med:.2f} s",
                f"{n / best / 1e6:.2f} M/s",
                f"{nbytes / best / 1e6:.0f} MB/s",
                f"{min(res['cpu'][name]):.2f} s",
            ]
        )
    print(table(rows, ["", "best", "median", "events/s", "MB/s", "CPU (best)"]))
    print("  (wall time of the interleaved rounds; CPU: process time of all threads)")
    for name, ts in res["times"].items():
        print(f"  {labels[name].strip()}, each round: " + " ".join(f"{t:.2f}" for t in ts))
    print()
    mrows = []
    for name in ("read_csv", "ingest"):
        m = res["memory"][name]
        mrows.append(
            [
                "pandas.read_csv" if name == "read_csv" else "RecordParser",
                _mb(m["rss_peak_extra"]),
                _mb(m["arrow_peak_extra"]),
                _mb(m["frame_bytes"]),
                f"{m['rss_peak_extra'] / m['frame_bytes']:.2f}x",
            ]
        )
    print(table(mrows, ["peak extra memory", "RSS", "pyarrow pool", "final frame", "RSS / frame"]))
    print()
    print(
        f"  ratio (read_csv time / ingest time): best {res['ratio_best']:.2f}, "
        f"median {res['ratio_median']:.2f}"
    )
    cpu_ratio = min(res["cpu"]["read_csv"]) / min(res["cpu"]["ingest"])
    print(f"  CPU ratio (read_csv CPU / ingest CPU): {cpu_ratio:.2f}")
    if "ingest_pyarrow" in res["times"]:
        pa_ratio = min(res["times"]["read_csv"]) / min(res["times"]["ingest_pyarrow"])
        print(f"  without the compiled scanner (pyarrow path): {pa_ratio:.2f}")
    key = "ingest_vs_read_csv" if variant == "dec" else f"ingest_vs_read_csv_{variant}"
    mem = res["memory"]["ingest"]
    RESULT_LINES.append(
        f"ingest_peak_rss_vs_frame{'' if variant == 'dec' else '_' + variant}"
        f"={mem['rss_peak_extra'] / mem['frame_bytes']:.2f}"
    )
    RESULT_LINES.append(f"{key}={res['ratio_best']:.2f}")
    SUMMARY.append(
        (
            "ingest" if variant == "dec" else f"ingest_{variant}",
            "streaming ingest / read_csv throughput (best)",
            f"{res['ratio_best']:.2f}x",
            "target >= 1.0",
        )
    )


# (benchmark, figure, value, note) rows for the table `all` ends with
SUMMARY: list[tuple[str, str, str, str]] = []
# key=value lines, printed last (so `python bench/run.py ingest` ends with
# ingest_vs_read_csv=<ratio>)
RESULT_LINES: list[str] = []


BENCHES: dict[str, Bench] = {}


def register(name: str, doc: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def deco(fn: Callable[[], None]) -> Callable[[], None]:
        BENCHES[name] = Bench(name, doc, fn)
        return fn

    return deco


@register(
    "ingest",
    "benchmark 1: 2M records streamed through RecordParser vs pandas.read_csv (decimal arguments)",
)
def bench_ingest() -> None:
    _ingest("dec")


@register("ingest_hex", "benchmark 1, hex pointer arguments (read_csv needs int(x, 16))")
def bench_ingest_hex() -> None:
    _ingest("hex")


@register("btf", "load and index the lab kernel's vmlinux BTF: cold, and with the index cached")
def bench_btf() -> None:
    from bench import btf as btf_bench

    res = btf_bench.run(out=lambda s: print("  " + s))
    for k, v in res.items():
        RESULT_LINES.append(f"btf_{k}={v:.4f}")


def _lab(fn_name: str) -> None:
    """Run one lab benchmark from bench/labreport.py; no lab -> Skip with the reason."""
    from bench import labbench, labreport
    from stapmagic.errors import StapMagicError

    try:
        lines = getattr(labreport, fn_name)(table, SUMMARY)
        RESULT_LINES.extend(lines or ())
    except labbench.NoLab as e:
        raise Skip(str(e)) from None
    except StapMagicError as e:  # the shared lab went away (or was restarted) mid-run
        up = labbench.lab.is_up()
        raise Skip(
            f"stopped: the lab {'failed a command' if up else 'went down'} mid-run "
            f"({str(e).splitlines()[0]})"
        ) from None


@register(
    "throughput",
    "benchmark 2 (lab): magic rows vs stap -o FILE lines, timer K records/ms "
    "sweep + ksys_read under dd",
)
def bench_throughput() -> None:
    _lab("throughput")


@register("first-event", "benchmark 3 (lab): time to first row, cold and warm, vs bpftrace")
def bench_first_event() -> None:
    _lab("first_event")


@register(
    "aggregation",
    "benchmark 4 (lab): dd slowdown, record per hit vs in-kernel @hist_log vs bpftrace hist()",
)
def bench_aggregation() -> None:
    _lab("aggregation")


@register(
    "fleet",
    "issue 16 (lab, guest b up): a second host's cost, first row and per hit, lab,lab:b / lab",
)
def bench_fleet() -> None:
    _lab("fleet")


DEFAULT_ALL = ["ingest"]


def main(argv: Sequence[str]) -> int:
    names = list(argv) or ["list"]
    if names == ["list"]:
        print(table([[b.name, b.doc] for b in BENCHES.values()], ["benchmark", "what"]))
        print("\nusage: python bench/run.py NAME [NAME...] | all")
        return 0
    if names == ["all"]:
        names = list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; try: python bench/run.py list",
            file=sys.stderr,
        )
        return 2
    print(table(machine_info()))
    status = 0
    for n in names:
        b = BENCHES[n]
        print(f"\n== {b.name}: {b.doc}")
        t = time.perf_counter()
        try:
            b.fn()
        except Skip as e:
            print(f"  skipped: {e}")
            continue
        print(f"  ({time.perf_counter() - t:.1f} s)")
    if len(names) > 1 and SUMMARY:
        print(f"\n== summary ({time.strftime('%Y-%m-%d %H:%M %Z')})")
        print(table(machine_info()))
        try:
            from bench import labbench

            if (
                any(n in ("throughput", "first-event", "aggregation") for n in names)
                and labbench.lab.is_up()
            ):
                print(table(labbench.versions()))
        except Exception as e:  # the versions are a courtesy; the figures are printed
            print(f"(guest versions unavailable: {e})")
        print()
        print(table(SUMMARY, ["benchmark", "figure", "value", "note"]))
    if RESULT_LINES:
        print()
        for line in RESULT_LINES:
            print(line)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
