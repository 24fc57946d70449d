"""Tables for the lab benchmarks (2-4), called by run.py's dispatcher.

Each function runs its benchmark, prints its tables, and appends its headline figures to
`summary` as (benchmark, figure, value, note) rows. NoLab means: skip with that message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bench import labbench as L

Table = Callable[..., str]
Summary = list[tuple[str, str, str, str]]

_versions_printed = False


def _indent(text: str) -> str:
    return "\n".join("  " + ln for ln in text.splitlines())


def _start(table: Table) -> None:
    """Check the lab; print the guest's versions once per process."""
    global _versions_printed
    L.require_lab()
    if not _versions_printed:
        print(_indent(table(L.versions())))
        _versions_printed = True


def _rate(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return f"{x / 1000:.0f}k/s" if x >= 1000 else f"{x:.0f}/s"


def _best_held(pairs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The held run of the highest rate, or None."""
    held = [p for p in pairs if p["held"]]
    return max(held, key=lambda p: p["rate"] or 0) if held else None


def throughput(table: Table, summary: Summary) -> None:
    from bench import throughput as T

    _start(table)
    res = T.run(out=lambda s: print("  " + s))

    def lost(*xs: dict[str, Any]) -> str:
        return "/".join(str(x["lost"] + x["transport_failures"]) if x else "-" for x in xs)

    def rows_of(pairs: Sequence[dict[str, Any]], guard: str) -> list[list[str]]:
        rows = []
        for p in pairs:
            f, h, m = p["file"], p["host"] or {}, p["magic"]
            rows.append(
                [
                    f"timer K={p['k']}/ms{guard}",
                    _rate(p["rate"]),
                    str(f["ok"]),
                    str(h.get("ok", "-")),
                    str(m["ok"]),
                    str(m["damaged"]),
                    str(m["pty_loss"]),
                    lost(f, h, m),
                    _rate(h.get("drain")),
                    _rate(m.get("drain")),
                    f"{p['ratio']:.3f}",
                    "yes" if p["held"] else "no: " + p["why"],
                ]
            )
        return rows

    rows = rows_of(res["timer"], "") + rows_of(res["no_guard"], " no guard")
    for r in res["real"]:
        f, h, m = r["file"], r["host"] or {}, r["magic"]
        rows.append(
            [
                f"ksys_read, dd x{r['n']}",
                "-",
                str(f["ok"]),
                str(h.get("ok", "-")),
                str(m["ok"]),
                str(m["damaged"]),
                str(m["pty_loss"]),
                lost(f, h, m),
                _rate(h.get("drain")),
                _rate(m.get("drain")),
                f"{r['ratio']:.3f}",
                "yes" if r["held"] else "no",
            ]
        )
    print(
        table(
            rows,
            [
                "probe",
                "emitted",
                "-o FILE",
                "host pipe",
                "magic rows",
                "damaged",
                "pty loss",
                "stap lost f/h/m",
                "drain host",
                "drain magic",
                "ratio",
                "held (>=0.9, no pty loss)",
            ],
        )
    )
    best = _best_held(res["timer"])
    print(
        f"  highest timer rate held: {_rate(best['rate']) if best else 'none'}"
        + (f" (K={best['k']}/ms)" if best else "")
    )
    best_ng = _best_held(res["no_guard"])
    if res["no_guard"]:
        print(
            f"  highest rate held with -D STP_NO_OVERLOAD: "
            f"{_rate(best_ng['rate']) if best_ng else 'none'}"
        )
        summary.append(
            (
                "throughput",
                "highest rate held, stap's overload guard off",
                _rate(best_ng["rate"]) if best_ng else "none",
                f"K={best_ng['k']}/ms" if best_ng else "",
            )
        )
    pty_loss = sum(p["magic"]["pty_loss"] for p in [*res["timer"], *res["no_guard"], *res["real"]])
    print(f"  records lost between the pty and the DataFrame, all runs: {pty_loss}")
    summary.append(
        (
            "throughput",
            "highest timer rate held (ratio >= 0.9, no pty loss)",
            _rate(best["rate"]) if best else "none",
            f"K={best['k']}/ms" if best else "",
        )
    )
    summary.append(
        ("throughput", "records lost pty -> DataFrame (all runs)", str(pty_loss), "target 0")
    )
    # delivery speed: the magic vs a plain pipe reading the same transport, run by run, over
    # the runs that moved at least 100k records both ways (shorter ones are mostly start-up)
    pairs = [
        (p["magic"]["drain"], p["host"]["drain"])
        for p in [*res["timer"], *res["no_guard"]]
        if p["host"]
        and p["magic"].get("drain")
        and p["host"].get("drain")
        and p["magic"]["ok"] >= 100_000
        and p["host"]["ok"] >= 100_000
    ]
    if pairs:
        ratio = L.med([m / h for m, h in pairs])
        print(
            f"  delivery on the host (first to last record), runs with >= 100k records: magic "
            f"{_rate(L.med([m for m, _ in pairs]))}, plain pipe "
            f"{_rate(L.med([h for _, h in pairs]))}; magic / pipe per run, median {ratio:.2f}"
        )
        summary.append(
            (
                "throughput",
                "delivery speed: magic / plain pipe (median of runs)",
                f"{ratio:.2f}x",
                f"{_rate(L.med([m for m, _ in pairs]))} sustained",
            )
        )
    ratios = [r["ratio"] for r in res["real"]]
    summary.append(
        (
            "throughput",
            "ksys_read under dd: magic rows / -o FILE lines",
            " ".join(f"{x:.2f}" for x in ratios),
            "target >= 0.9",
        )
    )


def first_event(table: Table, summary: Summary) -> list[str]:
    from bench import first_event as F

    _start(table)
    res = F.run(out=lambda s: print("  " + s))
    warm = [w["first_row"] for w in res["warm"] if w["first_row"] is not None]
    bpf = [b["first_event"] for b in res["bpftrace"] if b["first_event"] is not None]
    cold = res["cold"]["first_row"]
    wm, bm = L.med(warm), L.med(bpf)
    inside = res["inside"]
    st_in = L.med(
        [
            g["staprun"]["first"]
            for g in inside
            if g.get("staprun") and g["staprun"]["first"] is not None
        ]
    )
    bt_in = L.med(
        [
            g["bpftrace"]["first"]
            for g in inside
            if g.get("bpftrace") and g["bpftrace"]["first"] is not None
        ]
    )
    c0 = res["cold"]

    def part(what: str) -> float | None:
        xs = [w[what] for w in res["warm"] if w.get(what) is not None]
        return L.med(xs) if xs else None

    rows = [
        ["ssh round trip to the guest, fresh connection (median)", L.fmt_s(L.med(res["ssh"])), ""],
        [
            "ssh round trip over the shared connection (median)",
            L.fmt_s(L.med(res.get("ssh_shared") or [float("nan")])),
            "",
        ],
        [
            "stapmagic cold, the session's first cell (no shared ssh yet)",
            L.fmt_s(res["first_cell"]["first_row"]),
            L.ratio(res["first_cell"]["first_row"], bm),
        ],
        ["stapmagic cold (compile)", L.fmt_s(cold), L.ratio(cold, bm)],
        ["  cold: Pass 1 line at the pty", L.fmt_s(c0.get("pass1")), ""],
        ["  cold: Pass 4 (compiled) line", L.fmt_s(c0.get("pass4")), ""],
        ["  cold: Pass 5 (run) starts", L.fmt_s(c0.get("pass5")), ""],
        ["  cold: first @@sm1 byte at the pty", L.fmt_s(c0.get("first_record")), ""],
        [f"stapmagic warm (median of {len(warm)})", L.fmt_s(wm), L.ratio(wm, bm)],
        ["  warm: Pass 1 line at the pty (median)", L.fmt_s(part("pass1")), ""],
        ["  warm: Pass 5 (run) starts (median)", L.fmt_s(part("pass5")), ""],
        ["  warm: first @@sm1 byte at the pty (median)", L.fmt_s(part("first_record")), ""],
        [f"bpftrace (median of {len(bpf)})", L.fmt_s(bm), "1.00x"],
        ["inside the guest: staprun, cached module", L.fmt_s(st_in), L.ratio(st_in, bt_in)],
        ["inside the guest: bpftrace", L.fmt_s(bt_in), "1.00x"],
    ]
    print(table(rows, ["time to first event", "seconds", "vs bpftrace"]))
    cached = all(w["cached"] for w in res["warm"])
    print(
        f"  warm runs used stap's cache (Pass 4: using cached): {cached}; cold compiled: "
        f"{res['cold']['compiled']}"
    )
    summary.append(
        (
            "first-event",
            "warm start / bpftrace (host clock, incl. ssh)",
            L.ratio(wm, bm),
            f"{L.fmt_s(wm)} vs {L.fmt_s(bm)}; goal < 1",
        )
    )
    summary.append(("first-event", "cold start / bpftrace", L.ratio(cold, bm), L.fmt_s(cold)))
    summary.append(
        (
            "first-event",
            "inside the guest: staprun / bpftrace",
            L.ratio(st_in, bt_in),
            f"{L.fmt_s(st_in)} vs {L.fmt_s(bt_in)}",
        )
    )

    def bare(a: float | None, b: float | None) -> str:
        r = L.ratio(a, b)
        return r[:-1] if r.endswith("x") else "nan"

    return [
        f"first_event_cold_vs_bpftrace={bare(cold, bm)}",
        f"first_event_warm_vs_bpftrace={bare(wm, bm)}",
    ]


def aggregation(table: Table, summary: Summary) -> list[str]:
    from bench import aggregation as A

    _start(table)
    res = A.run(out=lambda s: print("  " + s))
    rows = []
    for s in A.summarize(res):
        rows.append(
            [
                s["name"],
                L.fmt_s(s["median"]),
                str(s["n_ok"]),
                f"{s['slowdown']:.2f}x" if s["slowdown"] else "-",
                f"{s['us_per_hit']:.2f}" if s["us_per_hit"] == s["us_per_hit"] else "-",
            ]
        )
    print(
        table(
            rows,
            [
                f"dd bs=1 count={res['n']} in the guest",
                "median dd time",
                "runs",
                "slowdown",
                "extra us/hit",
            ],
        )
    )
    by = {s["name"]: s for s in A.summarize(res)}
    for name in ("records", "rec->file", "rec->pipe", "hist", "bpftrace", "bt-print"):
        if name in by and by[name]["slowdown"]:
            summary.append(
                (
                    "aggregation",
                    f"slowdown of dd: {name}",
                    f"{by[name]['slowdown']:.2f}x",
                    f"{by[name]['us_per_hit']:.2f} us/hit",
                )
            )
    if "hist" in by and "records" in by and by["hist"]["us_per_hit"]:
        summary.append(
            (
                "aggregation",
                "per-hit cost: records / hist",
                f"{by['records']['us_per_hit'] / by['hist']['us_per_hit']:.1f}x",
                "",
            )
        )
    if "hist" in by and "bpftrace" in by and by["bpftrace"]["us_per_hit"]:
        summary.append(
            (
                "aggregation",
                "per-hit cost: stap hist / bpftrace hist",
                f"{by['hist']['us_per_hit'] / by['bpftrace']['us_per_hit']:.2f}x",
                "",
            )
        )
    lines = []
    for other, key in (("rec->file", "file"), ("rec->pipe", "pipe")):
        if "records" in by and other in by and by[other]["us_per_hit"]:
            r = by["records"]["us_per_hit"] / by[other]["us_per_hit"]
            summary.append(("aggregation", f"per-hit cost: records / {other}", f"{r:.2f}x", ""))
            lines.append(f"per_hit_magic_vs_{key}={r:.2f}")
    return lines


def fleet(table: Table, summary: Summary) -> None:
    """The cost of a second host (bench/fleet.py): fleet / single, first row and per hit."""
    from bench import fleet as F

    _start(table)
    res = F.run(out=lambda s: print("  " + s))
    single, many = res[F.TARGETS[0]], res[F.TARGETS[1]]

    def firsts(r: dict[str, Any]) -> list[float]:
        return [f["first_row"] for f in r["first"] if f["first_row"] is not None]

    def hits(r: dict[str, Any]) -> list[float]:
        return [x for h in r["hit"] for x in h["per_hit_us"]]

    f1, f2 = L.med(firsts(single)), L.med(firsts(many))
    h1, h2 = L.med(hits(single)), L.med(hits(many))
    rows = [
        ["first row, module cached (median)", L.fmt_s(f1), L.fmt_s(f2), L.ratio(f2, f1)],
        ["per hit, dd's time / hits (median, us)", f"{h1:.1f}", f"{h2:.1f}", L.ratio(h2, h1)],
    ]
    print(table(rows, ["", "lab", "lab,lab:b", "fleet / single"]))
    summary.append(("fleet", "first row: two hosts / one", L.ratio(f2, f1), f"{f1:.2f} s single"))
    summary.append(("fleet", "per hit: two hosts / one", L.ratio(h2, h1), f"{h1:.1f} us single"))
