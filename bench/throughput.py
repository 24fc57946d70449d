"""Benchmark 2 (issue 6): no throttling. Does the magic take every record stap delivers?

Two probes, each run twice side by side on the lab kernel:

* through the magic's pipeline (`pipeline.execute`: stap under a pty, the magic's
  RecordParser, its 0.2 s flush tick), counting rows in the DataFrame, and
* with `stap -o FILE` (staprun writes the probe output straight to a file in the guest: no
  stapsh, no ssh, no pty, no parser), counting well-formed record lines in that file in the
  guest.

Probes:

* a timer probe (`timer.ms(1)`) printing K `@@sm1` records per tick, each with a sequence
  number; K is a `-G` module parameter, so one compiled module serves the whole sweep. The
  sequence numbers show gaps (records stap dropped before they reached the pty) apart from
  losses between the pty and the DataFrame (raw `@@sm1` lines the pty delivered vs rows +
  damaged lines in the parser);
* a real function: the magic's own `%%kprobe ksys_read fd:int buf:ptr count:ulong` script under
  `dd if=/dev/zero of=/dev/null bs=1 count=N` (N reads), rows of comm `dd` compared.

A rate is held when rows / file lines >= 0.9 and no record is lost between the pty and the
DataFrame. The sweep raises K until two rates in a row are not held.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from bench import labbench as L
from stapmagic import pipeline
from stapmagic.schema import Column, ProbeSchema

TICKS = 2000  # timer.ms(1) firings per run: 2 s when the timer keeps up
SWEEP = (1, 10, 20, 50, 100, 200, 400)
HELD_RATIO = 0.9
DD_READS = 100_000
DEFINES = ("MAXACTION=1000000",)  # the K-record loop is many statements per tick
GUEST_FILE = "/tmp/stapmagic_bench_throughput.out"

SCHEMA = ProbeSchema("tick", (Column("seq", "int"),), False)

# A %%stap-style script printing the magic's own record format (DESIGN.md, "Record
# format"): @@sm1, probe index 0, time, pid, tid, cpu, comm, then one field: seq.
TIMER_SCRIPT = r"""# stapmagic bench: K records per timer tick, numbered
global k = 1, ticks_max = 2000
global seq, ticks, t_first, t_last
probe timer.ms(1) {
	if (ticks >= ticks_max) next
	now = gettimeofday_ns()
	if (!ticks) t_first = now
	ticks++
	for (i = 0; i < k; i++) {
		seq++
		printf("@@sm1\t0\t%d\t%d\t%d\t%d\t%s\t%d\t@@\n",
			now, pid(), tid(), cpu(), text_str(execname()), seq)
	}
	if (ticks == ticks_max) {
		t_last = now
		exit()
	}
}
probe end {
	printf("bench: emitted=%d ticks=%d span_ns=%d\n", seq, ticks, t_last - t_first)
}
"""

_END = re.compile(r"bench: emitted=(\d+) ticks=(\d+) span_ns=(-?\d+)")


def _end_line(text: str) -> tuple[int, int, int] | None:
    m = _END.search(text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def count_file(path: str, nfields: int, comm: str | None = None) -> dict[str, Any]:
    """Count record lines in a guest file (in the guest: it may be hundreds of MB)."""
    prog = (
        'BEGIN { FS = "\\t" } '
        '$1 == "@@sm1" { n++; if (NF == nf && $NF == "@@" && (want == "" || $7 == want)) ok++ } '
        "/^bench: emitted=/ { end = $0 } "
        'END { printf "%d %d\\n", n, ok; print end }'
    )
    out = L.guest(
        "awk", "-v", f"nf={nfields}", "-v", f"want={comm or ''}", prog, path, timeout=600
    ).splitlines()
    n, ok = (int(x) for x in out[0].split())
    return {"lines": n, "ok": ok, "end": _end_line("\n".join(out[1:]))}


def count_bytes(data: bytes, nfields: int, comm: str | None = None) -> dict[str, Any]:
    """The same count as count_file, of stap output captured on the host."""
    lines = data.split(b"\n")
    rec = [ln.rstrip(b"\r") for ln in lines if ln.startswith(b"@@sm1")]
    want = comm.encode() if comm else None
    ok = 0
    for ln in rec:
        f = ln.split(b"\t")
        if len(f) == nfields and f[-1] == b"@@" and (want is None or f[6] == want):
            ok += 1
    return {"lines": len(rec), "ok": ok, "end": _end_line(data.decode(errors="replace"))}


def _pipeline_figures(res: L.PipelineResult, comm: str | None = None) -> dict[str, Any]:
    df = res.frame
    rows_all = len(df)
    rows = int((df["comm"] == comm).sum()) if comm else rows_all
    msgs = "\n".join(res.messages) + "\n" + L.damaged_text(res.parser)
    first, last = res.parser.arrivals.get(b"@@sm1"), res.parser.last_record
    out: dict[str, Any] = {
        "ok": rows,
        "rows_all": rows_all,
        "damaged": res.run.damaged,
        "raw": res.parser.raw_records,
        "pty_loss": res.parser.raw_records - rows_all - res.run.damaged,
        "transport_failures": L.transport_failures(msgs),
        "lost": L.lost_messages(msgs),
        "overload": L.overloaded(msgs),
        "rc_ok": res.run.ok,
        "wall": res.wall,
        "end": _end_line(msgs),
        "dd": _dd_seconds(msgs),
        "text": msgs,
        "exit": res.run.status.exit_status if res.run.status else None,
        "drain": _drain(res.parser.raw_records, first, last),
    }
    if "seq" in df.columns and rows_all:
        out["unique"] = int(df["seq"].nunique())
    return out


def _drain(n: int, first: float | None, last: float | None) -> float | None:
    """Records per second from the first to the last record's arrival on the host."""
    if first is None or last is None or last - first < 0.05:
        return None
    return n / (last - first)


def _file_figures(rc: int, text: str, wall: float, counts: dict[str, Any]) -> dict[str, Any]:
    return {
        **counts,
        "rc": rc,
        "exit": rc,
        "wall": wall,
        "transport_failures": L.transport_failures(text),
        "lost": L.lost_messages(text),
        "overload": L.overloaded(text),
        "dd": _dd_seconds(text),
        "text": text,
    }


def compare(
    text: str,
    schemas: tuple[ProbeSchema, ...],
    *,
    command: str | None = None,
    extra: tuple[str, ...] = (),
    defines: tuple[str, ...] = (),
    comm: str | None = None,
    host: bool = True,
) -> dict[str, Any]:
    """One script three ways, one after the other: `stap -o FILE` in the guest, stap's
    stdout to a host file (the transport without pty and parser), the magic's pipeline."""
    nfields = 7 + len(schemas[0].columns) + 1
    L.guest("rm", "-f", GUEST_FILE)
    rc, out, wall = L.stap_to_file(text, GUEST_FILE, command=command, extra=extra, defines=defines)
    f = _file_figures(rc, out, wall, count_file(GUEST_FILE, nfields, comm))
    L.guest("rm", "-f", GUEST_FILE)
    h = None
    if host:
        rc, data, err, wall, span = L.stap_to_host(
            text, command=command, extra=extra, defines=defines
        )
        counts = count_bytes(data, nfields, comm)
        h = _file_figures(rc, err + data.decode(errors="replace")[-4000:], wall, counts)
        h["drain"] = _drain(counts["lines"], *(span or (None, None)))
    run = L.script_run(text, command=command, extra=extra, defines=defines)
    m = _pipeline_figures(L.run_pipeline(run, schemas), comm)
    return {"file": f, "host": h, "magic": m}


def timer_pair(k: int, ticks: int = TICKS, host: bool = True) -> dict[str, Any]:
    """One K, same module (K and the tick count are -G module parameters)."""
    gvals = ("-G", f"k={k}", "-G", f"ticks_max={ticks}")
    pair = compare(TIMER_SCRIPT, (SCHEMA,), extra=gvals, defines=DEFINES, host=host)
    pair["k"], pair["ticks"] = k, ticks
    return pair


def judge(pair: dict[str, Any]) -> dict[str, Any]:
    f, m = pair["file"], pair["magic"]
    ratio = m["ok"] / f["ok"] if f["ok"] else float("nan")
    end = m.get("end") or f.get("end")
    rate = None
    if end and end[2] > 0:
        rate = end[0] / (end[2] / 1e9)  # records the probe emitted per second of ticks
    # a timer run counts only when the reference (-o FILE) ran all its ticks: when stap
    # itself aborts (overload) there is no rate to compare at
    complete = "k" not in pair or bool(f.get("end") and f["end"][1] == pair.get("ticks"))
    held = (
        bool(f["ok"])
        and complete
        and ratio >= HELD_RATIO
        and m["pty_loss"] == 0
        and not m["overload"]
    )
    # records the probe emitted that never reached the pty (stap's own drops, early ends)
    gaps = end[0] - m["unique"] if end and "unique" in m else None
    return {"ratio": ratio, "rate": rate, "held": held, "gaps": gaps, "complete": complete}


def real_function_pair(n: int = DD_READS, host: bool = True) -> dict[str, Any]:
    """The magic's generated ksys_read script under dd: rows of dd vs the file's lines."""
    cmd = f"dd if=/dev/zero of=/dev/null bs=1 count={n}"
    opts = pipeline.ProbeOptions(command=cmd, target="lab")
    run = pipeline.prepare(L.KSYS_READ_SPEC, "", opts)
    assert run.script is not None
    pair = compare(run.script_text, run.script.probes, command=cmd, comm="dd", host=host)
    pair["n"] = n
    pair.update(judge(pair))
    d = pair["magic"]["dd"]
    pair["rate"] = pair["magic"]["ok"] / d if d else None
    return pair


_DD = re.compile(r"copied, ([0-9.]+) s")


def _dd_seconds(text: str) -> float | None:
    m = _DD.search(text)
    return float(m.group(1)) if m else None


def _why_not(pair: dict[str, Any]) -> str:
    f, m = pair["file"], pair["magic"]
    why = []
    if not pair.get("complete", True):
        why.append("-o FILE run ended early")
    if f["overload"] or m["overload"]:
        why.append("stap aborted: probe overhead exceeded threshold")
    if m.get("exit") not in (0, None) and not why:
        why.append(f"stap exit status {m['exit']}")
    if m["pty_loss"]:
        why.append(f"{m['pty_loss']} records lost between pty and DataFrame")
    if pair["ratio"] == pair["ratio"] and pair["ratio"] < HELD_RATIO:
        why.append(f"ratio {pair['ratio']:.2f} < {HELD_RATIO}")
    return "; ".join(why) or "-"


def sweep(
    ks: tuple[int, ...], defines: tuple[str, ...], out: Callable[[str], None], ticks: int = TICKS
) -> list[dict[str, Any]]:
    """Raise K until two rates in a row are not held."""
    pairs: list[dict[str, Any]] = []
    misses = 0
    for k in ks:
        t = time.perf_counter()
        gvals = ("-G", f"k={k}", "-G", f"ticks_max={ticks}")
        pair = compare(TIMER_SCRIPT, (SCHEMA,), extra=gvals, defines=defines)
        pair["k"], pair["ticks"] = k, ticks
        pair.update(judge(pair))
        pair["why"] = "-" if pair["held"] else _why_not(pair)
        pairs.append(pair)
        f, h, m = pair["file"], pair["host"] or {"ok": "-"}, pair["magic"]
        out(
            f"K={k}/ms: file {f['ok']} (lost {f['lost']}), host {h['ok']}, magic {m['ok']} "
            f"rows (raw {m['raw']}, damaged {m['damaged']}, lost {m['lost']}), ratio "
            f"{pair['ratio']:.3f}, seq gaps {pair['gaps']}: "
            f"{'held' if pair['held'] else 'NOT held: ' + pair['why']} "
            f"({time.perf_counter() - t:.0f} s)"
        )
        misses = 0 if pair["held"] else misses + 1
        if misses >= 2:
            break
    return pairs


def run(out: Callable[[str], None] = print, reps: int = 2) -> dict[str, Any]:
    """The timer sweep (stap's defaults), the sweep again without stap's overload guard
    from the first K that overloaded, and `reps` real-function triples."""
    pairs = sweep(SWEEP, DEFINES, out)
    first_over = next((p["k"] for p in pairs if "overhead" in p["why"]), None)
    no_guard: list[dict[str, Any]] = []
    if first_over is not None:
        out(
            f"again with -D STP_NO_OVERLOAD from K={first_over}/ms "
            "(the transport's limit, not stap's overload guard)"
        )
        no_guard = sweep(
            tuple(k for k in SWEEP if k >= first_over), (*DEFINES, "STP_NO_OVERLOAD"), out
        )
    real = []
    for i in range(reps):
        t = time.perf_counter()
        r = real_function_pair()
        real.append(r)
        f, h, m = r["file"], r["host"] or {"ok": "-"}, r["magic"]
        out(
            f"ksys_read under dd x{r['n']} #{i + 1}: file {f['ok']} (lost {f['lost']}, dd "
            f"{f['dd']} s), host {h['ok']}, magic {m['ok']} rows of dd (raw {m['raw']}, "
            f"damaged {m['damaged']}, pty loss {m['pty_loss']}, lost {m['lost']}, dd {m['dd']}"
            f" s), ratio {r['ratio']:.3f} ({time.perf_counter() - t:.0f} s)"
        )
    return {"timer": pairs, "no_guard": no_guard, "real": real}
