"""The lab reached as a PLAIN ssh target (``ssh://stapmagic-lab``), not as ``--target lab``.

stap runs in the lab's chroot (the host has no stap, and the ``stapmagic-lab`` alias lives in
the chroot's ssh config): ``SshTarget(url, via=lab.client_argv())``. The guest's staprun wrapper
(stapmagic/labfiles/staprun-wrapper.sh) runs ``-c`` in /root/work and ends leftovers of
stapsh's process group; the ssh target's own wrapping overrides both (login directory
/root; a process group of its own, which that wrapper never sees), so what these tests show
is the ssh target's handling, which every ssh host gets.
"""

from __future__ import annotations

import secrets
import threading

import pytest

from stapmagic import runner
from stapmagic.targets.ssh import SshTarget

SCRIPT = 'probe begin { printf("stapmagic-begin\\n") }'
DEFINES = ("STAPCONF_UPROBE_UNREGISTER_EXPORTED",)  # stock stap 5.1 on 6.12: see lab.py


@pytest.fixture
def ssh_lab(lab):
    target = SshTarget("ssh://stapmagic-lab", via=tuple(lab.client_argv()))
    tag = f"stapmagic-t-{secrets.token_hex(4)}"
    yield target, tag
    target.run(["sh", "-c", 'rm -f /root/"$1"* /root/work/"$1"*', "sh", tag], ok_codes=(0, 1))


def _write(target: SshTarget, path: str, content: str) -> None:
    target.run(["sh", "-c", 'printf "%s" "$2" > "$1"', "sh", path, content])


def _ps(target: SshTarget, pids: list[int]) -> str:
    return target.run(
        ["ps", "-o", "pid=,pgid=,comm=", "-p", ",".join(map(str, pids))], ok_codes=(0, 1)
    )


def test_relative_c_path_runs_in_the_login_directory(ssh_lab):
    target, tag = ssh_lab
    _write(target, f"/root/{tag}.sh", f"pwd > {tag}.where\necho ran-in-$(pwd)\n")
    argv = runner.stap_argv(target, SCRIPT, command=f"sh ./{tag}.sh", defines=DEFINES)
    out = bytearray()
    status = runner.run(argv, out.extend, target=target, grace=30)
    text = bytes(out).decode(errors="replace")
    assert status.exit_status == 0, text
    assert "ran-in-/root\r\n" in text, text
    assert target.run(["cat", f"/root/{tag}.where"]).strip() == "/root"
    # the pid file was removed by the clean-up after the run
    assert target.run(["sh", "-c", 'ls -a /root | grep -c "^.stapmagic-c-" || true']).strip() == "0"


def test_interrupted_run_ends_the_workload_on_the_target(ssh_lab):
    target, tag = ssh_lab
    _write(
        target,
        f"/root/{tag}.sh",
        f"echo $$ > {tag}.pids; sleep 600 & echo $! >> {tag}.pids; echo READY; sleep 600\n",
    )
    argv = runner.stap_argv(target, SCRIPT, command=f"sh ./{tag}.sh", defines=DEFINES)
    stop = threading.Event()
    out = bytearray()

    def on_chunk(data: bytes) -> None:
        out.extend(data)
        if b"READY" in out:
            stop.set()

    status = runner.run(argv, on_chunk, stop=stop, target=target, grace=30)
    text = bytes(out).decode(errors="replace")
    assert status.interrupted and stop.is_set(), text
    pids = [int(p) for p in target.run(["cat", f"/root/{tag}.pids"]).split()]
    assert len(pids) == 2
    left = _ps(target, pids)
    assert left.strip() == "", f"the -c workload outlived the interrupted run:\n{left}"
