"""One ssh connection per process to the lab (stapmagic/targets/sshmux.py): stap's own ssh
(``--remote``, pass 5 via stapsh) and the plain commands ride the master's TCP connection,
seen from the guest as the same client port in $SSH_CONNECTION; a plain ssh of its own
(the control) arrives on another."""

from __future__ import annotations

import subprocess
from pathlib import Path

from stapmagic import runner
from stapmagic.targets import Target

SCRIPT = 'probe begin { printf("stapmagic-begin\\n") }'
SHOW = 'sh -c "echo conn=\\$SSH_CONNECTION"'


def _conn(text: str) -> str:
    line = next(ln for ln in text.splitlines() if ln.startswith("conn="))
    return line[len("conn=") :].strip()


def test_stap_and_plain_commands_share_the_master(lab):
    root = Path(lab._running_state()["root"])
    mux = lab.ssh_mux(root)
    mux.start(wait=True)
    assert mux.alive()
    target = Target("lab")
    plain = _conn(target.run(["sh", "-c", "echo conn=$SSH_CONNECTION"]))
    out = bytearray()
    status = runner.run(runner.stap_argv(target, SCRIPT, command=SHOW), out.extend, target=target)
    text = bytes(out).decode(errors="replace")
    assert status.exit_status == 0, text
    assert "stapmagic-begin" in text, text
    assert _conn(text) == plain, text  # same client address and port: the master's connection
    own = subprocess.run(  # noqa: S603 (argv list, no shell)
        lab._chroot_argv(
            root, ["ssh", "-o", "ConnectTimeout=120", lab.HOST_ALIAS, "echo conn=$SSH_CONNECTION"]
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    assert _conn(own.stdout) != plain  # a connection of its own: another client port
