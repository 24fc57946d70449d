"""The shared ssh connection (stapmagic/targets/sshmux.py): the wrapper stap finds as `ssh`,
the master's command lines, and how the lab routes its ssh through it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from stapmagic import lab
from stapmagic.targets import sshmux


def _fake_ssh(tmp_path: Path) -> Path:
    """A stand-in for the real ssh that logs its argv, one line per call."""
    log = tmp_path / "ssh.log"
    fake = tmp_path / "real-ssh"
    fake.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {log}\necho >> {log}\n')
    fake.chmod(0o755)
    return fake


def _calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "ssh.log"
    if not log.exists():
        return []
    return [ln.rstrip("|").split("|") for ln in log.read_text().splitlines()]


def test_wrapper_adds_the_control_path_only_when_asked(tmp_path):
    real = _fake_ssh(tmp_path)
    bin_dir = tmp_path / "bin"
    sshmux.install_wrapper(bin_dir, str(real))
    wrapper = bin_dir / "ssh"
    assert os.access(wrapper, os.X_OK)
    # stap's own argv for its remote (remote.cxx: ssh -q HOST [-p PORT] CMD)
    stap_args = ["-q", "stapmagic-lab", "/bin/bash -c 'exec stapsh'"]
    env = {"PATH": "/usr/bin:/bin"}
    subprocess.run([str(wrapper), *stap_args], env=env, check=True)  # noqa: S603
    cp = "/c/stapmagic/ssh/cm-7-%C"
    subprocess.run([str(wrapper), *stap_args], env={**env, sshmux.ENV_VAR: cp}, check=True)  # noqa: S603
    plain, shared = _calls(tmp_path)
    assert plain == stap_args
    assert shared == ["-o", f"ControlPath={cp}", *stap_args]


def test_install_wrapper_is_idempotent_and_named_by_content(tmp_path):
    sshmux.install_wrapper(tmp_path / "b", "/usr/bin/ssh")
    first = (tmp_path / "b" / "ssh").stat().st_mtime_ns
    sshmux.install_wrapper(tmp_path / "b", "/usr/bin/ssh")
    assert (tmp_path / "b" / "ssh").stat().st_mtime_ns == first
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["ssh"]  # no temp file left
    a = sshmux.wrapper_dir("/root/.cache", "/usr/bin/ssh")
    b = sshmux.wrapper_dir("/root/.cache/", "/usr/local/bin/ssh")
    assert a.startswith("/root/.cache/stapmagic/ssh/bin-") and a != b


def test_control_path_is_per_process_and_per_destination():
    assert sshmux.control_path("/root/.cache", 42) == "/root/.cache/stapmagic/ssh/cm-42-%C"
    assert sshmux.control_path("/c", 1) != sshmux.control_path("/c", 2)


def test_master_and_control_argv():
    argv = sshmux.master_argv("/usr/bin/ssh", "/c/cm-1-%C", ["stapmagic-lab"])
    assert argv[0] == "/usr/bin/ssh" and argv[-1] == "stapmagic-lab"
    assert {"-f", "-N", "ControlMaster=yes", "ControlPath=/c/cm-1-%C"} <= set(argv)
    assert f"ControlPersist={sshmux.PERSIST_S}" in argv
    assert sshmux.control_argv("ssh", "stop", "/c/x", ["h"]) == [
        "ssh", "-o", "ControlPath=/c/x", "-O", "stop", "h",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown ssh control operation"):
        sshmux.control_argv("ssh", "forward", "/c/x", ["h"])


def test_mux_starts_once_checks_first_and_stop_all_stops_it(tmp_path, monkeypatch):
    real = _fake_ssh(tmp_path)  # exits 0: `-O check` says a master runs
    monkeypatch.setattr(sshmux, "_MUXES", {})
    mux = sshmux.get(
        ("t",),
        lambda: sshmux.Mux(
            prefix=(), destination=("h",), cache=str(tmp_path), host_cache=tmp_path, ssh=str(real)
        ),
    )
    assert sshmux.get(("t",), lambda: pytest.fail("made twice")) is mux
    mux.start(wait=True)
    assert _calls(tmp_path) == [["-o", f"ControlPath={mux.control}", "-O", "check", "h"]]
    real.write_text(real.read_text() + "exit 255\n")
    mux.start(wait=True)  # check fails now: start a master
    assert _calls(tmp_path)[-1] == sshmux.master_argv(str(real), mux.control, ["h"])[1:]
    sshmux.stop_all()
    assert _calls(tmp_path)[-1] == ["-o", f"ControlPath={mux.control}", "-O", "stop", "h"]
    assert sshmux._MUXES == {}


def test_lab_routes_stap_and_plain_ssh_through_the_master(tmp_path, monkeypatch):
    monkeypatch.setattr(lab, "_running_state", lambda: {"root": str(tmp_path)})
    monkeypatch.setattr(sshmux, "_MUXES", {})
    started = []
    monkeypatch.setattr(sshmux.Mux, "start", lambda self, wait=False: started.append(self))
    mux = lab.ssh_mux(tmp_path)
    for argv in (lab.stap_argv(), lab.exec_argv(["uname", "-r"]), lab.client_argv()):
        assert argv[1] == str(tmp_path)  # the chroot stays where tests look for it
        env = argv[argv.index("-i") + 1 :]
        paths = [i for i in env if i.startswith("PATH=")]
        # the last PATH= wins in env(1): the wrapper's directory first
        assert paths[-1].startswith(f"PATH={mux.bin_dir}:")
        assert f"{sshmux.ENV_VAR}={mux.control}" in env
    stap = lab.stap_argv()
    assert stap[stap.index("stap") + 1] == "--remote=ssh://stapmagic-lab"
    wrapper = tmp_path / mux.bin_dir.lstrip("/") / "ssh"
    assert wrapper.read_text() == sshmux.wrapper_text("/usr/bin/ssh")
    assert started and all(m is mux for m in started)


def test_lab_dry_run_line_has_no_shared_connection(monkeypatch):
    monkeypatch.setattr(sshmux, "_MUXES", {})
    argv = lab.stap_argv(require_running=False)
    assert not any(a.startswith(sshmux.ENV_VAR) for a in argv)
    assert sshmux._MUXES == {}


def test_lab_down_ends_every_master_to_the_guest(tmp_path, monkeypatch):
    socks = tmp_path / "root/.cache" / sshmux.SUBDIR
    socks.mkdir(parents=True)
    for name in ("cm-11-abc", "cm-12-def", "bin-0123"):
        (socks / name).touch()
    ran: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: ran.append(argv))
    lab._end_shared_ssh(tmp_path)
    ends = [a[a.index("-O") - 1 :] for a in ran]
    assert ends == [
        ["ControlPath=/root/.cache/stapmagic/ssh/cm-11-abc", "-O", "exit", "stapmagic-lab"],
        ["ControlPath=/root/.cache/stapmagic/ssh/cm-12-def", "-O", "exit", "stapmagic-lab"],
    ]
