"""No self-observation by default (issue 13): on an idle guest, `vfs_read` rows used to be
almost all stapmagic's own transport (stapsh, sshd-session); --include-self shows them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from stapmagic.selfskip import SELF_LINE

STAP_TOOLS = ("stapio", "staprun", "stapsh")


def _own_from(lines) -> dict[int, str]:
    """pid -> name of what the run's begin probe skipped (its SELF_LINE message)."""
    line = next(m for m in lines if m.startswith(SELF_LINE))
    return {int(p): n for p, n in re.findall(r"(\d+):(\S+)", line[len(SELF_LINE) :])}


def _own(run) -> dict[int, str]:
    return _own_from(run.messages)


def test_vfs_read_skips_the_transport_unless_asked(cell) -> None:
    df, err, run = cell("%%kprobe -T 4 vfs_read file:ptr")
    assert err is None, err
    own = _own(run)
    assert {"stapio", "staprun", "stapsh", "sshd-session"} <= set(own.values()), own
    assert not set(df["pid"]) & set(own), df[df["pid"].isin(own)]
    assert not [c for c in df["comm"].unique() if str(c).startswith(STAP_TOOLS)]
    df, err, run = cell("%%kprobe -T 4 --include-self vfs_read file:ptr")
    assert err is None, err
    assert not any(m.startswith(SELF_LINE) for m in run.messages)
    assert set(df["comm"]) & {"stapsh", "sshd-session"}, df["comm"].value_counts().to_dict()


def test_a_users_own_login_above_staprun_is_not_skipped(lab) -> None:
    """The local case's shape: stapio's ancestors are stap's tools, then the user's own
    processes. Here the module the magic would run is started by hand from a root login
    (`ssh lab staprun MODULE`, bash execs it): stapio's parent is the staprun wrapper and
    its parent the user's sshd-session, which carries no stapsh. The walk must skip stapio
    and staprun only, and the user's session keeps its vfs_read rows."""
    from stapmagic import wire
    from stapmagic.script import ScriptOptions, generate
    from stapmagic.spec import parse_spec

    script = generate(parse_spec("", first_line="vfs_read file:ptr"), ScriptOptions(duration=4))
    compiled = subprocess.run(  # noqa: S603 (argv list)
        [*lab.stap_argv(), "-p4", "-e", script.text],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr.decode(errors="replace")[-2000:]
    module = compiled.stdout.decode().strip().splitlines()[-1]
    assert module.endswith(".ko"), compiled.stdout
    root = Path(lab.last_state()["root"])
    data = (root / module.lstrip("/")).read_bytes()
    # staprun names the module after the file: it must keep stap's name (stap_HASH.ko)
    guest_ko = f"/tmp/{Path(module).name}"
    copy = subprocess.run(  # noqa: S603
        lab.exec_argv(["sh", "-c", 'cat > "$0"', guest_ko]),
        input=data,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert copy.returncode == 0, copy.stderr
    try:
        # -R: a name of its own, so another run of the same script cannot clash
        ran = subprocess.run(  # noqa: S603
            lab.exec_argv(["staprun", "-R", guest_ko]),
            capture_output=True,
            timeout=300,
            check=False,
        )
    finally:
        subprocess.run(lab.exec_argv(["rm", "-f", guest_ko]), timeout=120, check=False)  # noqa: S603
    out = ran.stdout.decode(errors="replace")
    assert ran.returncode == 0, (out[-1000:], ran.stderr.decode(errors="replace")[-1000:])
    own = _own_from(out.splitlines())
    assert set(own.values()) <= {"stapio", "staprun"} and "stapio" in own.values(), own
    rows = [wire.parse_record(line.encode(), script.probes) for line in out.splitlines()]
    comms = {r.comm for r in rows if r is not None}
    pids = {r.pid for r in rows if r is not None}
    assert "sshd-session" in comms, comms  # the user's login relaying staprun's output
    assert not pids & set(own), own
