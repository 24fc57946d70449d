"""runner.py: targets, the stap command line, and the pty read loop.

The loop is exercised against tests/fakestap/fakestap.py, a stand-in for PROCESS HANDLING
only (streaming, signals, exit codes, fds); nothing here proves anything about SystemTap.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from stapmagic import runner
from stapmagic.errors import OptionError, StapNotFound
from stapmagic.runner import RunStatus, StapProcess, Target, exec_argv, parse_target, run, stap_argv

FAKE_DIR = Path(__file__).resolve().parent / "fakestap"
FAKE = str(FAKE_DIR / "fakestap.py")
SCRIPT = 'probe kprobe.function("tcp_v4_connect") { printf("%d\\n", pid()) }'


def fake(*args: str) -> list[str]:
    return [sys.executable, FAKE, *args]


class Collector:
    """on_chunk that keeps every chunk and when it arrived."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.times: list[float] = []

    def __call__(self, data: bytes) -> None:
        assert isinstance(data, bytes) and data
        self.chunks.append(data)
        self.times.append(time.monotonic())

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def lines(self) -> list[str]:
        return self.data.decode().split("\r\n")


def child_zombies() -> list[int]:
    """Our children that exited but were never reaped."""
    me = os.getpid()
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        state, ppid = rest[0], int(rest[1])
        if ppid == me and state == "Z":
            zombies.append(int(entry))
    return zombies


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------------------
# targets


@pytest.mark.parametrize(
    ("text", "kind", "url"),
    [
        ("local", "local", None),
        (" LAB ", "lab", None),
        ("ssh://root@stapmagic-lab", "ssh", "ssh://root@stapmagic-lab"),
        ("ssh://root@127.0.0.1:10022", "ssh", "ssh://root@127.0.0.1:10022"),
        ("ssh://stapvm", "ssh", "ssh://stapvm"),
        ("ssh://a_b.c-d@host-1.example.org:22", "ssh", "ssh://a_b.c-d@host-1.example.org:22"),
    ],
)
def test_parse_target_accepts(text, kind, url):
    t = parse_target(text)
    assert t == Target(kind, url)


def test_target_parts():
    t = parse_target("ssh://root@127.0.0.1:10022")
    assert (t.user, t.host, t.port, t.destination) == ("root", "127.0.0.1", 10022, "root@127.0.0.1")
    assert parse_target("ssh://vm").destination == "vm"
    assert parse_target("ssh://vm").port is None
    assert str(parse_target("lab")) == "lab"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("remote", "unknown target"),
        ("lab; rm -rf /", "unknown target"),
        ("ssh://", "no host"),
        ("ssh://root@host; rm -rf /", "not allowed"),
        ("ssh://root@host name", "not allowed"),
        ("ssh://'root'@host", "not allowed"),
        ('ssh://root@"host"', "not allowed"),
        ("ssh://root@$(id)", "not allowed"),
        ("ssh://root@host`id`", "not allowed"),
        ("ssh://-oProxyCommand=touch@x", "not allowed"),
        ("ssh://-oProxyCommand", "must not start with '-'"),
        ("ssh://root@-host", "must not start with '-'"),
        ("ssh://root@host:0", "out of range"),
        ("ssh://root@host:65536", "out of range"),
        ("ssh://root@host:99999", "out of range"),
        ("ssh://root@host:22x", "port must be a number"),
        ("ssh://root@host:22/path", "no /path"),
        ("ssh://[::1]:22", "not allowed"),
        ("ssh://fe80::1", "IPv6"),
        ("ssh://a@b@c", "more than one '@'"),
        ("ssh://root@ho\nst", "not allowed"),
        ("http://host", "unknown target"),
    ],
)
def test_parse_target_rejects(text, problem):
    with pytest.raises(OptionError) as info:
        parse_target(text)
    msg = str(info.value)
    assert problem in msg
    if text.startswith("ssh://"):
        assert "ssh://[user@]host[:port]" in msg  # names the accepted form


# --------------------------------------------------------------------------------------
# stap_argv


@pytest.fixture
def fake_path(monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKESTAP_PYTHON", sys.executable)
    return str(FAKE_DIR / "stap")


@pytest.fixture
def fake_lab(monkeypatch):
    """Replace stapmagic.lab by a stub, whatever state the real module is in."""
    import stapmagic

    stub = types.ModuleType("stapmagic.lab")
    stub.stap_argv = lambda require_running=True: [
        "chroot",
        "/ROOT",
        "stap",
        "--remote=ssh://stapmagic-lab",
        "-D",
        "STAPCONF_UPROBE_UNREGISTER_EXPORTED",
    ]
    stub.exec_argv = lambda argv: ["lab-exec", "--", *argv]
    monkeypatch.setitem(sys.modules, "stapmagic.lab", stub)
    monkeypatch.setattr(stapmagic, "lab", stub, raising=False)
    return stub


def test_stap_argv_local_minimal(fake_path):
    assert stap_argv(Target("local"), SCRIPT) == [fake_path, "--color=never", "-e", SCRIPT]


def test_stap_argv_local_everything(fake_path):
    argv = stap_argv(
        Target("local"),
        SCRIPT,
        guru=True,
        defines=["MAXACTION=10000", "STP_NO_OVERLOAD"],
        command="python3 /share/bin/tcpconn.py",
        pid=1234,
        verbose=1,
        extra=["-s", "64"],
    )
    assert argv == [
        fake_path,
        "--color=never",
        "-g",
        "-v",
        "-D",
        "MAXACTION=10000",
        "-D",
        "STP_NO_OVERLOAD",
        "-x",
        "1234",
        "-c",
        "python3 /share/bin/tcpconn.py",
        "-s",
        "64",
        "-e",
        SCRIPT,
    ]


def test_stap_argv_verbose_levels(fake_path):
    assert stap_argv(Target("local"), SCRIPT, verbose=2)[2] == "-vv"
    assert "-v" not in stap_argv(Target("local"), SCRIPT, verbose=0)
    with pytest.raises(OptionError):
        stap_argv(Target("local"), SCRIPT, verbose=-1)


def test_stap_argv_lab(fake_lab):
    argv = stap_argv(Target("lab"), SCRIPT, defines=["MAXACTION=5"], command="sh /w.sh")
    assert argv == [
        "chroot",
        "/ROOT",
        "stap",
        "--remote=ssh://stapmagic-lab",
        "-D",
        "STAPCONF_UPROBE_UNREGISTER_EXPORTED",
        "--color=never",
        "-D",
        "MAXACTION=5",
        "-c",
        "sh /w.sh",
        "-e",
        SCRIPT,
    ]


def test_stap_argv_ssh(fake_path):
    t = parse_target("ssh://root@vm:2222")
    assert stap_argv(t, SCRIPT) == [
        fake_path,
        "--remote=ssh://root@vm:2222",
        "--color=never",
        "-e",
        SCRIPT,
    ]


@pytest.mark.parametrize(
    "define",
    [
        "maxaction=1",
        "1ABC=2",
        "FOO=1; rm -rf /",
        "FOO=$(id)",
        "FOO=`id`",
        "FOO=a b",
        "--foo",
        "-DFOO",
        'FOO="x"',
        "FOO='x'",
        "FOO=1\nBAR=2",
        "",
        "=1",
        "FOO BAR",
    ],
)
def test_stap_argv_rejects_bad_defines(fake_path, define):
    with pytest.raises(OptionError) as info:
        stap_argv(Target("local"), SCRIPT, defines=[define])
    assert "-D" in str(info.value)


def test_stap_argv_define_values(fake_path):
    argv = stap_argv(Target("local"), SCRIPT, defines=["A=1.5", "B=-3", "C=x+y", "D="])
    assert argv[2:10] == ["-D", "A=1.5", "-D", "B=-3", "-D", "C=x+y", "-D", "D="]


def test_stap_argv_injection_stays_one_item(fake_path):
    cmd = "sh -c 'echo $(id); rm -rf /tmp/x' ; `reboot` | tee \"q\""
    script = SCRIPT + "\n# ' \" $(id) `id` ; | & \\\n"
    argv = stap_argv(Target("local"), script, command=cmd)
    assert argv[argv.index("-c") + 1] == cmd
    assert argv[-2:] == ["-e", script]
    assert argv.count(cmd) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pid": 0},
        {"pid": -5},
        {"pid": True},
        {"pid": "12"},
        {"command": ""},
        {"command": "   "},
        {"command": "a\x00b"},
        {"extra": "-s 64"},
        {"extra": ["-s", "6\x004"]},
    ],
)
def test_stap_argv_rejects_bad_options(fake_path, kwargs):
    with pytest.raises(OptionError):
        stap_argv(Target("local"), SCRIPT, **kwargs)


def test_stap_argv_rejects_empty_or_nul_script(fake_path):
    for bad in ("", "  \n", "probe begin {}\x00"):
        with pytest.raises(OptionError):
            stap_argv(Target("local"), bad)


def test_missing_stap_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    for target in (Target("local"), parse_target("ssh://root@vm")):
        with pytest.raises(StapNotFound) as info:
            stap_argv(target, SCRIPT)
        msg = str(info.value)
        assert "apt-get install systemtap systemtap-runtime linux-headers-$(uname -r)" in msg
        assert "dnf install" in msg
        assert "--target lab" in msg


def test_dry_run_needs_no_stap(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert stap_argv(Target("local"), SCRIPT, require_stap=False) == [
        "stap",
        "--color=never",
        "-e",
        SCRIPT,
    ]


def test_run_of_missing_program_raises_stap_not_found(tmp_path):
    with pytest.raises(StapNotFound):
        run([str(tmp_path / "no-such-stap")], lambda b: None)


def test_failed_exec_leaks_nothing(tmp_path):
    bad = tmp_path / "stap"
    bad.write_text("#!/nonexistent/interpreter\n")
    bad.chmod(0o755)
    before = open_fds()
    for _ in range(3):
        with pytest.raises(StapNotFound, match="interpreter"):
            run([str(bad)], lambda b: None)
    assert open_fds() == before
    assert child_zombies() == []


def test_stap_argv_reaches_the_process_verbatim(fake_path):
    """The argv stap_argv builds arrives byte-exact in the child: no shell in between."""
    script = 'probe begin { printf("a b\\t$(id) `x` \'q\' \\"d\\"\\n"); exit() }'
    cmd = "python3 -c 'print(1)'; echo $HOME"
    argv = stap_argv(Target("local"), script, command=cmd, defines=["MAXACTION=7"])
    got = Collector()
    status = run(argv, got)
    assert status.exit_status == 0
    line = next(x for x in got.lines if x.startswith("ARGV "))
    assert json.loads(line[5:]) == argv[1:]


# --------------------------------------------------------------------------------------
# exec_argv


def test_exec_argv_local_is_identity():
    assert exec_argv(Target("local"), ["cat", "/proc/kallsyms"]) == ["cat", "/proc/kallsyms"]


def test_exec_argv_lab(fake_lab):
    assert exec_argv(Target("lab"), ["uname", "-r"]) == ["lab-exec", "--", "uname", "-r"]


def test_exec_argv_ssh_quotes_for_the_remote_shell():
    argv = ["grep", "tcp_v4; rm -rf /", "$(id) `id` 'x' \"y\"", "/proc/kallsyms"]
    out = exec_argv(parse_target("ssh://root@vm:2222"), argv)
    assert out[:7] == ["ssh", "-p", "2222", "-o", "BatchMode=yes", "--", "root@vm"]
    # what the remote shell will see, once ssh joins the items with spaces
    assert shlex.split(" ".join(out[7:])) == argv
    out = exec_argv(parse_target("ssh://vm"), ["true"])
    assert out == ["ssh", "-o", "BatchMode=yes", "--", "vm", "true"]


# --------------------------------------------------------------------------------------
# the environment


def test_stap_env():
    env = runner.stap_env({"PATH": "/bin", "LC_ALL": "de_DE.UTF-8", "TERM": "xterm-256color"})
    assert env == {"PATH": "/bin", "LANG": "de_DE.UTF-8", "LC_MESSAGES": "C", "TERM": "dumb"}


# --------------------------------------------------------------------------------------
# the loop


def test_streaming_first_chunk_arrives_before_exit(tmp_path):
    gate = tmp_path / "gate"
    got = Collector()

    def on_chunk(data: bytes) -> None:
        got(data)
        if b"line 1" in got.data:
            gate.touch()  # the fake only goes on (and exits) once we saw line 1

    status = run(fake("stream", str(gate)), on_chunk)
    assert status.exit_status == 0 and status.signal is None
    assert not status.interrupted and status.escalated is None
    assert b"TIMEOUT" not in got.data
    assert got.data == b"line 1\r\nline 2\r\nlast line without newline"
    assert len(got.chunks) >= 2


def test_mixed_lines_crlf_and_partial_last_line():
    got = Collector()
    status = run(fake("mixed"), got)
    assert status.exit_status == 0
    expected = []
    for i in range(3):
        expected += [f"@@sm1\t0\t{i}\t1\t1\t0\tpython3\t@@", f"WARNING: message {i}"]
    assert got.lines == [*expected, "partial"]
    assert got.data.count(b"\r\n") == 6  # the pty's ONLCR: every \n became \r\n


def test_flood_is_read_in_large_chunks_without_loss():
    n = 200_000
    got = Collector()
    status = run(fake("flood", str(n)), got)
    assert status.exit_status == 0
    lines = got.data.split(b"\r\n")
    assert lines[-1] == b""
    assert lines[:-1] == [f"@@sm1\t0\t{i}\t@@".encode() for i in range(n)]
    assert max(len(c) for c in got.chunks) > 4096  # not byte by byte


def test_exit_status_is_reported():
    got = Collector()
    status = run(fake("exit", "7", "failing"), got)
    assert status.exit_status == 7 and status.signal is None
    assert status.returncode == 7 and not status.ok
    assert got.lines[0] == "failing"
    assert isinstance(status, RunStatus)
    assert status.argv == tuple(fake("exit", "7", "failing"))
    assert status.duration > 0


def _hits(lines: list[str]) -> list[int]:
    return [int(x.split()[1]) for x in lines if x.startswith("hit ")]


def _assert_clean_end(lines: list[str]) -> None:
    """BEGIN, hit 1..N without a gap, then END hits=N: nothing lost before or after."""
    assert lines[0] == "BEGIN"
    hits = _hits(lines)
    assert hits == list(range(1, len(hits) + 1))
    ends = [x for x in lines if x.startswith("END hits=")]
    assert ends == [f"END hits={hits[-1]}"]


def test_stop_event_sends_sigint_and_keeps_the_end_output():
    got = Collector()
    stop = threading.Event()

    def on_chunk(data: bytes) -> None:
        got(data)
        if b"hit 3\r\n" in got.data:
            stop.set()

    status = run(fake("sigint"), on_chunk, stop=stop, grace=10)
    assert status.interrupted and status.escalated is None
    assert status.exit_status == 0 and status.signal is None
    _assert_clean_end(got.lines)
    assert status.duration < 5


def test_keyboard_interrupt_from_a_callback_keeps_all_rows():
    got = Collector()
    raised = []

    def tick() -> None:
        if b"hit 3\r\n" in got.data and not raised:
            raised.append(True)
            raise KeyboardInterrupt

    status = run(fake("sigint"), got, tick=tick, tick_interval=0.01, grace=10)
    assert raised
    assert status.interrupted and status.escalated is None and status.exit_status == 0
    _assert_clean_end(got.lines)


def test_sigint_to_this_process_is_forwarded_not_raised():
    """Jupyter's stop button: SIGINT to the kernel process, while run() reads."""
    got = Collector()
    sent = []

    def on_chunk(data: bytes) -> None:
        got(data)
        if b"hit 3\r\n" in got.data and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    status = run(fake("sigint"), on_chunk, grace=10)
    assert sent and status.interrupted and status.escalated is None
    _assert_clean_end(got.lines)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_sigint_ignored_escalates_to_sigterm_after_grace():
    got = Collector()
    stop = threading.Event()

    def on_chunk(data: bytes) -> None:
        got(data)
        if b"hit 3\r\n" in got.data:
            stop.set()

    t0 = time.monotonic()
    status = run(fake("ignore-int"), on_chunk, stop=stop, grace=0.5)
    assert status.interrupted and status.escalated == "SIGTERM"
    assert status.signal == signal.SIGTERM and status.exit_status is None
    assert "ignoring SIGINT" in got.lines
    hits = _hits(got.lines)
    assert hits == list(range(1, len(hits) + 1)) and len(hits) > 3  # kept running: data kept
    assert time.monotonic() - t0 < 5


def test_sigint_and_sigterm_ignored_escalate_to_sigkill():
    got = Collector()
    stop = threading.Event()

    def on_chunk(data: bytes) -> None:
        got(data)
        if b"hit 1\r\n" in got.data:  # its handlers are installed by then
            stop.set()

    status = run(fake("ignore-int-term"), on_chunk, stop=stop, grace=0.4)
    assert status.interrupted and status.escalated == "SIGKILL"
    assert status.signal == signal.SIGKILL
    assert "ignoring SIGTERM" in got.lines
    assert got.lines[0] == "BEGIN"


def test_second_interrupt_escalates_at_once():
    got = Collector()
    raised = []

    def tick() -> None:
        if b"hit 3\r\n" in got.data and len(raised) < 2:
            if not raised or b"ignoring SIGINT" in got.data:
                raised.append(True)
                raise KeyboardInterrupt

    t0 = time.monotonic()
    status = run(fake("ignore-int"), got, tick=tick, tick_interval=0.01, grace=30)
    assert len(raised) == 2
    assert status.escalated == "SIGTERM" and status.signal == signal.SIGTERM
    assert time.monotonic() - t0 < 10  # did not wait for the 30 s grace


def test_crash_reports_the_signal_and_keeps_the_data():
    got = Collector()
    status = run(fake("segv", "5"), got)
    assert status.signal == signal.SIGSEGV and status.exit_status is None
    assert status.returncode == -signal.SIGSEGV
    assert not status.interrupted and status.escalated is None
    assert [x for x in got.lines if x] == [f"row {i}" for i in range(5)]


def test_grandchild_holding_the_pty_does_not_hang_the_run(tmp_path):
    pidfile = tmp_path / "pid"
    got = Collector()
    t0 = time.monotonic()
    try:
        status = run(fake("background", str(pidfile)), got, linger=0.3)
        assert status.exit_status == 0
        assert "parent done" in got.lines
        assert time.monotonic() - t0 < 10
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_child_left_in_stap_group_is_ended_by_the_runner(tmp_path):
    """stap exits, leaving a child in its process group that survives the pty's hangup: the
    runner's own clean-up ends it (the test never signals it, except to clean up a failure)."""
    pidfile = tmp_path / "pid"
    got = Collector()
    try:
        status = run(fake("leave-child", str(pidfile)), got)
        assert status.exit_status == 0 and "parent done" in got.lines
        child = int(pidfile.read_text())
        deadline = time.monotonic() + 2
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _running(child), "the child stap left in its group survived the run"
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_output_closed_but_process_alive_is_terminated():
    got = Collector()
    status = run(fake("linger-exit"), got, grace=0.3)
    assert "closing output" in got.lines
    assert status.escalated == "SIGTERM" and status.signal == signal.SIGTERM
    assert not status.interrupted


def test_callback_exception_stops_the_child_and_propagates():
    def on_chunk(data: bytes) -> None:
        raise RuntimeError("parser bug")

    before = open_fds()
    with pytest.raises(RuntimeError, match="parser bug"):
        run(fake("sigint"), on_chunk)
    assert child_zombies() == []
    assert open_fds() == before


def test_no_leaked_fds_or_zombies(tmp_path):
    before = open_fds()
    stop = threading.Event()
    stop.set()
    for argv, kwargs in [
        (fake("exit", "0"), {}),
        (fake("exit", "3"), {}),
        (fake("segv", "2"), {}),
        (fake("sigint"), {"stop": stop}),
        (fake("ignore-int-term"), {"stop": stop, "grace": 0.2}),
        (fake("mixed"), {}),
    ]:
        run(argv, lambda b: None, **kwargs)
    assert child_zombies() == []
    assert open_fds() == before


def test_stap_process_api():
    before = open_fds()
    proc = StapProcess(fake("sigint"))
    try:
        data = b""
        deadline = time.monotonic() + 10
        while b"hit 2" not in data and time.monotonic() < deadline:
            chunk = proc.read(0.1)
            assert chunk is not None
            data += chunk
        assert proc.isalive()
        assert proc.interrupt()
        while (chunk := proc.read(0.1)) is not None:
            data += chunk
        assert b"END hits=" in data
        assert proc.read(0.1) is None  # stays at EOF
        assert proc.wait(5)
        assert proc.exitstatus == 0 and proc.signalstatus is None
    finally:
        proc.close()
    proc.close()  # idempotent
    assert not proc.kill()  # nothing to signal any more
    assert open_fds() == before
    assert child_zombies() == []


def test_sigint_sets_the_stop_event_for_the_caller():
    """The stop button reaches run() as SIGINT; the caller's view learns it from `stop`
    (set once: it does not count as a second request, which would escalate to SIGTERM)."""
    got = Collector()
    stop = threading.Event()
    seen_in_tick: list[bool] = []

    def on_chunk(data: bytes) -> None:
        got(data)
        if b"hit 3\r\n" in got.data and not stop.is_set() and not seen_in_tick:
            seen_in_tick.append(False)
            os.kill(os.getpid(), signal.SIGINT)

    def tick() -> None:
        if seen_in_tick and stop.is_set():
            seen_in_tick.append(True)

    status = run(fake("sigint"), on_chunk, stop=stop, tick=tick, tick_interval=0.01, grace=10)
    assert status.interrupted and status.escalated is None and stop.is_set()
    assert True in seen_in_tick
    _assert_clean_end(got.lines)
