"""--where compiled into the probe handler (script.py + where.py) on the lab kernel: the
events it rejects never leave the kernel. Run as %%stap with the generated script, since the
magic line does not take --where yet; records are read back with wire.parse_record.
(The run is short: fewer lines than the parser keeps aside.)"""

from __future__ import annotations

from stapmagic import wire
from stapmagic.script import ScriptOptions, generate
from stapmagic.spec import parse_spec


def _records(spec_text: str, where: str | None, cell):
    script = generate(parse_spec(spec_text), ScriptOptions(where=where))
    _, err, run = cell('%%stap -q -c "python3 connect_fail.py"\n' + script.text)
    assert err is None, (err, run.messages if run else None)
    pid = next(int(m.split("=")[1]) for m in run.messages if m.startswith("workload pid="))
    # %%stap has no record schema: its parser keeps @@sm1 lines aside as damaged
    recs = [wire.parse_record(line.rstrip(b"\r"), script.probes) for line in run.parser.damaged]
    assert all(r is not None for r in recs), run.messages
    assert recs, run.messages
    return [r for r in recs if r is not None and r.pid == pid]


def test_where_keeps_only_matching_events(cell):
    # connect_fail.py: two good connects (addr_len 16), one AF_UNIX (16), one addrlen 8
    every = _records("tcp_v4_connect _ _ addr_len:int", 'comm == "python3"', cell)
    assert [r.fields[0] for r in every] == [16, 16, 16, 8]
    kept = _records("tcp_v4_connect _ _ addr_len:int", 'addr_len == 16 && comm == "python3"', cell)
    assert [r.fields[0] for r in kept] == [16, 16, 16]  # the addrlen 8 call was dropped


def test_where_on_the_return_value(cell):
    kept = _records("tcp_v4_connect.return:int", "retval < 0", cell)
    assert [(r.fields[0], r.fields[1]) for r in kept] == [(-97, "EAFNOSUPPORT"), (-22, "EINVAL")]
