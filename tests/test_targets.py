"""stapmagic.targets: the Target protocol, its local/ssh/lab implementations, the kallsyms
parser, and the ssh -c workload wrapping.

The ssh tests run against the fake stap (tests/fakestap, process handling only) and an
"exec channel" that runs the command locally the way sshd does (the joined command line, by
sh, in the login directory): no sshd and no network. tests/lab/test_targets_lab.py shows the
same on the lab reached as a plain ssh target.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from stapmagic import pipeline, runner
from stapmagic.errors import OptionError, SpecError, StapNotFound
from stapmagic.spec import parse_spec
from stapmagic.targets import (
    Target,
    kallsyms_filter,
    kallsyms_symbols,
    parse_target,
    which_stap,
)
from stapmagic.targets.lab import LabTarget
from stapmagic.targets.local import LocalTarget
from stapmagic.targets.ssh import SshTarget, workload_pidfile, wrap_workload

FAKE_DIR = Path(__file__).resolve().parent / "fakestap"
SCRIPT = 'probe begin { printf("x\\n") }'


def _fakestap():
    spec = importlib.util.spec_from_file_location("fakestap", FAKE_DIR / "fakestap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


staprun_argv = _fakestap().staprun_argv


def run_cell(ip, text):
    result = ip.run_cell(text)
    return result.error_before_exec or result.error_in_exec


# --------------------------------------------------------------------------------------
# the protocol


def test_parse_target_gives_one_implementation_per_kind():
    assert type(parse_target("local")) is LocalTarget
    assert type(parse_target(" LAB ")) is LabTarget
    ssh = parse_target("SSH://root@vm:2222")
    assert type(ssh) is SshTarget and ssh.url == "ssh://root@vm:2222"
    # the earlier constructor still works and gives the same objects
    assert Target("local") == parse_target("local") and Target("lab") == LabTarget()
    assert Target("ssh", "ssh://vm") == parse_target("ssh://vm")
    assert runner.Target is Target and runner.parse_target is parse_target
    assert [str(t) for t in (Target("local"), Target("lab"), ssh)] == [
        "local",
        "lab",
        "ssh://root@vm:2222",
    ]
    assert [t.kind for t in (Target("local"), Target("lab"), ssh)] == ["local", "lab", "ssh"]
    assert [t.group_signals for t in (Target("local"), Target("lab"), ssh)] == [True, False, False]
    assert Target("local").url is None and Target("lab").url is None


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("bogus",), "unknown target kind"),
        (("ssh",), "needs a URL"),
        (("local", "ssh://x"), "takes no URL"),
        (("lab", "ssh://x"), "takes no URL"),
        (("ssh", "ssh://a b"), "not allowed"),
    ],
)
def test_target_constructor_checks_like_before(args, problem):
    with pytest.raises(OptionError, match=problem):
        Target(*args)


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_empty_target_is_refused(text):
    with pytest.raises(OptionError, match="empty target"):
        parse_target(text)


@pytest.mark.parametrize("text", ["''", '""', "' '"])
def test_empty_target_option_is_a_usage_error(ip, capsys, text):
    """`--target ''` was taken as "not given" and fell back to the configured target."""
    err = run_cell(ip, f"%%kprobe --dry-run --target {text} tcp_v4_connect")
    assert isinstance(err, UsageError), err
    assert "empty target" in str(err)
    assert capsys.readouterr().out == ""


def test_ssh_target_via_a_prefix():
    t = SshTarget("ssh://stapmagic-lab", via=("chroot", "/R", "env", "-i"))
    assert t.stap_prefix() == ["chroot", "/R", "env", "-i", "stap", "--remote=ssh://stapmagic-lab"]
    assert t.exec_argv(["uname", "-r"]) == [
        "chroot",
        "/R",
        "env",
        "-i",
        "ssh",
        "-o",
        "BatchMode=yes",
        "--",
        "stapmagic-lab",
        "uname",
        "-r",
    ]
    assert t == SshTarget("ssh://stapmagic-lab")  # the same place


def test_lab_target_delegates_to_the_lab_module(monkeypatch):
    import stapmagic

    stub = types.ModuleType("stapmagic.lab")
    stub.stap_argv = lambda require_running=True: [
        "chroot",
        "/ROOT",
        "/usr/bin/stap",
        "--remote=ssh://x",
        "-D",
        "Y",
    ]
    stub.exec_argv = lambda argv: ["lab-exec", *argv]
    stub.is_up = lambda: False
    stub.last_state = lambda: {"serial_log": "/x/serial.log"}
    stub.guest_crash = lambda serial: "Kernel panic - not syncing"
    monkeypatch.setitem(sys.modules, "stapmagic.lab", stub)
    monkeypatch.setattr(stapmagic, "lab", stub, raising=False)
    lab = LabTarget()
    assert lab.exec_argv(["true"]) == ["lab-exec", "true"]
    assert lab.stap_prefix()[-3:] == ["--remote=ssh://x", "-D", "Y"]
    assert lab.can_run_stap() == (False, "the lab VM is not running (python -m stapmagic.lab up)")
    notes = lab.post_mortem()
    assert len(notes) == 1 and "guest kernel crashed (Kernel panic" in notes[0]
    assert lab.where == "the lab VM"


# --------------------------------------------------------------------------------------
# a stap whose interpreter is missing (issue 11 section 4)


@pytest.fixture
def broken_stap(monkeypatch, tmp_path):
    """A `stap` on PATH (and nothing else) that the kernel cannot exec."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stap = bindir / "stap"
    stap.write_text("#!/nonexistent/python\nprint('never')\n")
    stap.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return stap


def test_stap_with_missing_interpreter_is_stap_not_found(broken_stap):
    with pytest.raises(StapNotFound, match="#! interpreter /nonexistent/python is missing"):
        which_stap()
    with pytest.raises(StapNotFound):
        runner.stap_argv(Target("local"), SCRIPT)
    assert which_stap(required=False) == str(broken_stap)  # --dry-run still shows it
    ok, why = Target("local").can_run_stap()
    assert not ok and "interpreter" in why


def test_env_interpreter_without_its_program_is_stap_not_found(monkeypatch, tmp_path):
    stap = tmp_path / "stap"
    stap.write_text("#!/usr/bin/env no-such-python-xyz\n")
    stap.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")
    with pytest.raises(StapNotFound, match="no-such-python-xyz"):
        which_stap()


@pytest.mark.parametrize("bg", ["", "--bg "])
def test_stap_with_missing_interpreter_is_a_usage_error_in_a_cell(ip, broken_stap, bg):
    """Before: StapNotFound escaped the magic; with --bg the run ended "0 rows", no word why."""
    ip.user_ns.pop("_kprobe", None)
    err = run_cell(ip, f"%%kprobe -q {bg}tcp_v4_connect sk:ptr")
    assert isinstance(err, UsageError), err
    assert "interpreter" in str(err) and str(broken_stap) in str(err)
    assert "_kprobe" not in ip.user_ns  # no run was started


# --------------------------------------------------------------------------------------
# /proc/kallsyms


def test_kallsyms_symbols_parse_and_skip_malformed_lines():
    lines = [
        "ffffffff81a2b3c0 T tcp_v4_connect",
        "ffffffffc0a01000 t ext4_file_open\t[ext4]",
        "0000000000000000 W weak_fn [mod_x]",
        "ffffffff82000000 D some_data",
        "zzzz T tcp_v4_connect",  # not hex
        "ffffffff81a2b3c0",  # truncated
        "ffffffff81a2b3c0 T",  # no name
        "",
        "ffffffff81a2b3c0 TT tcp_v4_connect",  # bad type
        "ffffffff81a2b3c0 T a b c",  # trailing junk
        "1" * 40 + " T tcp_v4_connect",  # address beyond 64 bits
        "ffffffffc0a01000 t ext4_file_open [ext4",  # unclosed module
    ]
    syms = kallsyms_symbols(lines)
    assert [(s.address, s.type, s.name, s.module, s.is_text) for s in syms] == [
        (0xFFFFFFFF81A2B3C0, "T", "tcp_v4_connect", "", True),
        (0xFFFFFFFFC0A01000, "t", "ext4_file_open", "ext4", True),
        (0, "W", "weak_fn", "mod_x", True),
        (0xFFFFFFFF82000000, "D", "some_data", "", False),
    ]
    assert [s.name for s in kallsyms_symbols(lines, ["ext4_file_open"])] == ["ext4_file_open"]
    assert kallsyms_filter(lines, ["tcp_v4_connect"]) == ["ffffffff81a2b3c0 T tcp_v4_connect"]


def _spec(text: str):
    return parse_spec(text, guru=True, first_line=text)


@pytest.mark.parametrize(
    "garbage",
    [
        ["zzzz t ext4_file_open [ext4]"],
        ["ffffffffc0a01000"],
        ["ext4_file_open"],
        ["", "  ", "\x00\x01"],
        ["ffffffffc0a01000 t"],
    ],
)
def test_malformed_kallsyms_answer_is_a_spec_error_not_a_traceback(garbage):
    """Before: resolve_modules did int(parts[0], 16) and parts[1] on whatever came back."""
    spec = _spec("ext4:ext4_file_open")
    with pytest.raises(SpecError, match="no function ext4_file_open"):
        pipeline.resolve_modules(
            spec, Target("local"), guru=True, lookup=lambda t, names: list(garbage)
        )


def test_well_formed_line_among_garbage_still_resolves():
    spec = _spec("ext4:ext4_file_open")
    lines = ["zzzz t ext4_file_open [ext4]", "ffffffffc0a01000 t ext4_file_open [ext4]"]
    out = pipeline.resolve_modules(spec, Target("local"), guru=True, lookup=lambda t, names: lines)
    assert out.probes[0].address == 0xFFFFFFFFC0A01000


@dataclass(frozen=True)
class CannedTarget(LocalTarget):
    """A local target whose `grep` answers with canned text (what a broken target sends)."""

    answer: str = ""

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["printf", "%s", self.answer]


def test_kallsyms_lines_from_a_target_drop_malformed_lines():
    t = CannedTarget(
        "garbage T ext4_file_open\nffffffffc0a01000 t ext4_file_open [ext4]\n"
        "ffff t\nffffffff81000000 T other\n"
    )
    assert t.kallsyms_lines(["ext4_file_open"]) == ["ffffffffc0a01000 t ext4_file_open [ext4]"]
    assert pipeline.kallsyms_lines(t, ["ext4_file_open"]) == t.kallsyms_lines(["ext4_file_open"])


# --------------------------------------------------------------------------------------
# the -c workload on ssh targets (issue 11 section 5)


def test_wrap_keeps_the_command_one_argument():
    """Whatever the command holds, the wrapper passes it on as exactly one argument."""
    cmd = "echo \"a'b\" $(id -u) `true`; printf '%s\\n' x | cat; exit 3 # ' \" \\"
    wrapped = wrap_workload(cmd, ".stapmagic-c-0123456789abcdef.pgid")
    words = shlex.split(wrapped)
    assert words[:4] == ["setsid", "-w", "sh", "-c"]
    assert words[-2:] == [".stapmagic-c-0123456789abcdef.pgid", cmd]
    assert (
        workload_pidfile(["stap", "-c", wrapped, "-e", "x"]) == ".stapmagic-c-0123456789abcdef.pgid"
    )
    assert workload_pidfile(["stap", "-c", cmd, "-e", "x"]) is None
    assert workload_pidfile(["stap", "-e", "-c"]) is None
    with pytest.raises(OptionError):
        wrap_workload("x", "../../etc/passwd")


@pytest.mark.parametrize(
    "cmd",
    [
        'echo "a\'b" "$0" ; printf \'%s|\' 1 \'2 3\' "$HOME" > out.txt',
        "x='; touch pwned; '; echo \"$x\" > out.txt",
        "echo $(printf '%s' '`touch pwned`') > out.txt; exit 7",
        "printf '%s\\n' 'line\nbreak' > out.txt",
    ],
)
def test_wrapped_command_does_exactly_what_the_command_does(tmp_path, cmd):
    """Run as staprun runs -c: the same effect and exit status as the bare command run in
    the login directory, no more (no injection through the wrapper)."""
    results = []
    for i, text in enumerate((cmd, wrap_workload(cmd))):
        home = tmp_path / f"home{i}"
        home.mkdir()
        scratch = tmp_path / f"scratch{i}"
        scratch.mkdir()
        run_in = home if i == 0 else scratch  # the bare command is run where it should be
        done = subprocess.run(  # noqa: S603 (argv list, no shell)
            staprun_argv(text),
            cwd=run_in,
            env={**os.environ, "HOME": str(home)},
            capture_output=True,
            timeout=30,
        )
        files = sorted(p.name for p in home.iterdir() if not p.name.startswith(".stapmagic-c-"))
        written = (home / "out.txt").read_text() if (home / "out.txt").exists() else ""
        results.append((done.returncode, files, written.replace(str(home), "HOME")))
        assert not list(scratch.iterdir())
    assert results[0] == results[1]
    assert "pwned" not in results[1][1]
    assert staprun_argv(wrap_workload(cmd))[0] == "setsid"  # no shell between staprun and it


@dataclass(frozen=True)
class LoopbackSsh(SshTarget):
    """An ssh target whose exec channel is this machine: the command line ssh would send,
    run by sh in the "remote" login directory (what sshd does), without sshd."""

    home: str = "/"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        full = super().exec_argv(argv)
        remote = " ".join(full[full.index("--") + 2 :])  # ssh joins its arguments with spaces
        return ["env", f"HOME={self.home}", "sh", "-c", f"cd && {remote}"]


@pytest.fixture
def remote(tmp_path, fake_stap_path):
    home = tmp_path / "home"
    scratch = tmp_path / "scratch"
    home.mkdir()
    scratch.mkdir()
    env = runner.stap_env(
        {**os.environ, "FAKESTAP_REMOTE_SCRATCH": str(scratch), "FAKESTAP_REMOTE_HOME": str(home)}
    )
    return types.SimpleNamespace(
        home=home, scratch=scratch, env=env, target=LoopbackSsh("ssh://root@vm", home=str(home))
    )


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_ssh_workload_runs_in_the_login_directory(remote):
    (remote.home / "work.sh").write_text("pwd > where.txt\n")
    argv = runner.stap_argv(remote.target, SCRIPT, command="sh ./work.sh")
    out = bytearray()
    status = runner.run(argv, out.extend, env=remote.env, target=remote.target)
    assert status.exit_status == 0, bytes(out)
    assert (remote.home / "where.txt").read_text().strip() == str(remote.home)
    assert not (remote.scratch / "where.txt").exists()
    assert [p.name for p in remote.home.iterdir() if p.name.startswith(".stapmagic-c-")] == []


def test_interrupted_ssh_run_ends_the_workload_on_the_target(remote):
    """The fake stap leaves its -c command running when interrupted, as stapio does; the
    command is in a session of its own, "over there", so only the target's clean-up can end
    it (the test itself never signals it, except to clean up a failure)."""
    work = remote.home / "work.sh"  # absolute paths: this test is about the clean-up alone
    work.write_text(
        f"echo $$ > {remote.home}/sh.pid; sleep 60 & echo $! > {remote.home}/bg.pid; sleep 60\n"
    )
    argv = runner.stap_argv(remote.target, SCRIPT, command=f"sh {shlex.quote(str(work))}")
    stop = threading.Event()
    out = bytearray()

    def tick() -> None:
        if b"CHILD " in out and (remote.home / "bg.pid").exists():
            stop.set()

    pids: list[int] = []
    try:
        status = runner.run(
            argv,
            out.extend,
            stop=stop,
            env=remote.env,
            target=remote.target,
            grace=5,
            tick=tick,
            tick_interval=0.05,
        )
        assert status.interrupted and b"END" in out
        pids = [
            int(bytes(out).split(b"CHILD ")[1].split()[0]),
            int((remote.home / "bg.pid").read_text()),
        ]
        deadline = time.monotonic() + 3
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, pids)), "the -c workload outlived the interrupted run"
        assert [p.name for p in remote.home.iterdir() if p.name.startswith(".stapmagic-c-")] == []
    finally:  # only if the clean-up failed: leave nothing behind
        if (remote.home / "sh.pid").exists():
            pids.append(int((remote.home / "sh.pid").read_text()))
        for pid in pids:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def test_end_workload_without_a_wrapped_command_asks_nothing(remote, monkeypatch):
    def forbidden(*a, **kw):
        raise AssertionError("asked the target")

    monkeypatch.setattr(LoopbackSsh, "run", forbidden)
    remote.target.end_workload(runner.stap_argv(remote.target, SCRIPT))


def test_the_script_decides_whether_stap_gets_g(monkeypatch):
    """Script.guru (a statement probe at an absolute address) puts -g on stap's command line,
    whatever the options say; a script without one gets no -g unless --guru asks for it."""
    import dataclasses

    real = pipeline.generate
    monkeypatch.setattr(
        pipeline, "generate", lambda spec, o: dataclasses.replace(real(spec, o), guru=True)
    )
    opts = pipeline.ProbeOptions(dry_run=True)
    assert "-g" in pipeline.prepare("tcp_v4_connect", "", opts).argv
    monkeypatch.setattr(pipeline, "generate", real)
    assert "-g" not in pipeline.prepare("tcp_v4_connect", "", opts).argv
    assert "-g" in pipeline.prepare("tcp_v4_connect", "", dataclasses.replace(opts, guru=True)).argv


def test_dry_run_on_the_lab_needs_no_running_lab(ip, monkeypatch, tmp_path, capsys):
    """--dry-run shows the command line where stap cannot run, the lab included: a lab that
    was never booted (an empty cache) must not turn it into an error."""
    from stapmagic import lab

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert not lab.is_up()
    result = ip.run_cell("%%kprobe --dry-run --target lab tcp_v4_connect sk:ptr\n")
    assert result.error_in_exec is None and result.error_before_exec is None, result
    out = capsys.readouterr().out
    assert f"--remote=ssh://{lab.HOST_ALIAS}" in out
    assert str(tmp_path) in out  # the recipe's own chroot, derived, not a boot's state
