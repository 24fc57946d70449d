"""`python -m stapmagic.lab shell ...`: the command reaches ssh as ONE command string, as
`ssh HOST cmd...` takes it (issue 11 section 6). No lab needed: the exec is captured, and the
remote string is run by a local sh, which is what the guest's sshd does with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stapmagic import lab


class Exec(Exception):
    pass


@pytest.fixture
def shell(monkeypatch):
    monkeypatch.setattr(lab, "_running_state", lambda: {"root": "/ROOT"})
    monkeypatch.setattr(lab, "_chroot_argv", lambda root, argv: ["chroot", str(root), *argv])

    def execvp(file, argv):
        raise Exec(list(argv))

    monkeypatch.setattr(lab.os, "execvp", execvp)

    def go(*args: str) -> list[str]:
        with pytest.raises(Exec) as info:
            lab.main(["shell", *args])
        return info.value.args[0]

    return go


def _remote(argv: list[str]) -> str:
    assert argv[:3] == ["chroot", "/ROOT", "ssh"] and argv[-3:-1] == [lab.HOST_ALIAS, "--"]
    return argv[-1]


def _sh(remote: str, cwd: Path) -> str:
    return subprocess.run(  # noqa: S603 (argv list, no shell)
        ["sh", "-c", remote],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_one_argument_is_the_command_string_as_written(shell, tmp_path):
    remote = _remote(shell("echo a; echo b | tr b c"))
    assert remote == "echo a; echo b | tr b c"
    assert _sh(remote, tmp_path) == "a\nc\n"


def test_several_arguments_are_joined_quoted(shell, tmp_path):
    words = ["printf", "%s|", "a b", "it's", "$HOME", ";", "*"]
    remote = _remote(shell(*words))
    assert _sh(remote, tmp_path) == "a b|it's|$HOME|;|*|"
    assert _remote(shell("--", *words)) == remote


def test_no_command_is_an_interactive_login(shell):
    argv = shell()
    assert argv[:2] == ["chroot", "/ROOT"] and argv[-3:] == ["ssh", "-t", lab.HOST_ALIAS]
