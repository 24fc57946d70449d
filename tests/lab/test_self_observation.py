"""No self-observation by default (issue 13): on an idle guest, `vfs_read` rows used to be
almost all stapmagic's own transport (stapsh, sshd-session); --include-self shows them."""

from __future__ import annotations

import re

from stapmagic.selfskip import SELF_LINE

STAP_TOOLS = ("stapio", "staprun", "stapsh")


def _own(run) -> dict[int, str]:
    line = next(m for m in run.messages if m.startswith(SELF_LINE))
    return {int(p): n for p, n in re.findall(r"(\d+):(\S+)", line[len(SELF_LINE) :])}


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
