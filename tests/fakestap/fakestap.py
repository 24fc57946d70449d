#!/usr/bin/env python3
"""A stand-in for stap, for PROCESS-HANDLING tests only (streaming, signals, exit codes).

It never probes anything and proves nothing about SystemTap; like pexpect's own fake ssh
it only behaves like a process that prints, waits, handles signals and exits.

    fakestap.py MODE [ARGS...]

Modes:
  stream GATE         print "line 1", wait until the file GATE exists (max 10 s; else
                      print "TIMEOUT" and exit 3), print "line 2" and a last line with no
                      newline, exit 0
  mixed               records on stdout interleaved with messages on stderr, partial last line
  sigint [READY]      print BEGIN and "hit N" every 20 ms; on SIGINT print "END hits=N",
                      exit 0 (like stap's end probe); touch READY after the first hit
  ignore-int          like sigint, but SIGINT only prints "ignoring SIGINT"; SIGTERM kills
  ignore-int-term     ignores SIGINT and SIGTERM (prints a line for each): only SIGKILL works
  segv N              print N lines, then die of SIGSEGV
  exit CODE [TEXT]    print TEXT (default "bye"), exit CODE
  flood N             print N numbered lines as fast as possible, exit 0
  background PIDFILE  start a grandchild that keeps the pty open (sleeps 30 s; its pid goes
                      to PIDFILE), print "parent done", exit 0 at once
  linger-exit         close stdout/stderr (pty EOF) but keep running 30 s
  leave-child PIDFILE start a child that stays in our process group, ignores SIGHUP and
                      holds nothing of the pty (sleeps 30 s; its pid goes to PIDFILE), print
                      "parent done", exit 0 at once
  stap ARGS...        pretend to be `stap`: print "ARGV <json of ARGS>" and exit 0. With
                      FAKESTAP_REMOTE_SCRATCH set and a `-c CMD`, pretend to be
                      `stap --remote` (stapsh + staprun on another machine): run CMD as
                      staprun does (staprun_argv) in that scratch directory, in another session (not our process group:
                      it is "over there") but not as a group leader (staprun's child is
                      none), HOME=FAKESTAP_REMOTE_HOME; print "CHILD PID" (that session's
                      leader), exit 0 when CMD ends, or on SIGINT print "END" and exit 0
                      leaving it running (stapio's `quit` does that)
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time


def out(text: str, end: str = "\n", stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(text + end)
    stream.flush()


def hits_loop(on_int, on_term=None, ready: str | None = None) -> None:
    state = {"n": 0}
    signal.signal(signal.SIGINT, lambda s, f: on_int(state))
    if on_term is not None:
        signal.signal(signal.SIGTERM, lambda s, f: on_term(state))
    out("BEGIN")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state["n"] += 1
        out(f"hit {state['n']}")
        if ready and state["n"] == 1:
            open(ready, "w").close()
        time.sleep(0.02)
    out("TIMEOUT")
    sys.exit(3)


def staprun_argv(command: str) -> list[str]:
    """How staprun runs `stap -c COMMAND` (runtime/staprun start_cmd): split like a shell
    would (wordexp(3); shlex here) and exec'd, or `sh -c COMMAND` when it holds an unquoted
    shell metacharacter."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    if any(tok and set(tok) <= set("();<>|&") for tok in lex):
        return ["sh", "-c", command]
    return shlex.split(command)


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    if mode == "stream":
        gate = args[0]
        out("line 1")
        deadline = time.monotonic() + 10
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                out("TIMEOUT")
                return 3
            time.sleep(0.01)
        out("line 2")
        out("last line without newline", end="")
        return 0
    if mode == "mixed":
        for i in range(3):
            out(f"@@sm1\t0\t{i}\t1\t1\t0\tpython3\t@@")
            out(f"WARNING: message {i}", stream=sys.stderr)
            time.sleep(0.01)
        out("partial", end="")
        return 0
    if mode in ("sigint", "ignore-int", "ignore-int-term"):

        def end(state):
            out(f"END hits={state['n']}")
            sys.exit(0)

        def ignore_int(state):
            out("ignoring SIGINT")

        def ignore_term(state):
            out("ignoring SIGTERM")

        if mode == "sigint":
            hits_loop(end, ready=args[0] if args else None)
        elif mode == "ignore-int":
            hits_loop(ignore_int)
        else:
            hits_loop(ignore_int, ignore_term)
        return 0
    if mode == "segv":
        for i in range(int(args[0])):
            out(f"row {i}")
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(5)
        return 4
    if mode == "exit":
        out(args[1] if len(args) > 1 else "bye")
        return int(args[0])
    if mode == "flood":
        n = int(args[0])
        w = sys.stdout.write
        for i in range(n):
            w(f"@@sm1\t0\t{i}\t@@\n")
        sys.stdout.flush()
        return 0
    if mode == "background":
        pid = os.fork()
        if pid == 0:  # the grandchild keeps the pty (fds 0-2) open
            time.sleep(30)
            os._exit(0)
        with open(args[0], "w") as f:
            f.write(str(pid))
        out("parent done")
        return 0
    if mode == "leave-child":
        pid = os.fork()
        if pid == 0:  # like `nohup cmd &`: survives the pty's hangup, keeps our group
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            time.sleep(30)
            os._exit(0)
        with open(args[0] + ".tmp", "w") as f:
            f.write(str(pid))
        os.rename(args[0] + ".tmp", args[0])
        out("parent done")
        return 0
    if mode == "linger-exit":
        out("closing output")
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        time.sleep(30)
        return 0
    if mode == "stap" and os.environ.get("FAKESTAP_RUN_COMMAND") == "1":
        return stap_running_command(args)
    if mode == "stap":
        out("Pass 5: starting run.", stream=sys.stderr)
        out("ARGV " + json.dumps(args))
        scratch = os.environ.get("FAKESTAP_REMOTE_SCRATCH")
        if scratch and "-c" in args:
            import subprocess

            env = dict(os.environ, HOME=os.environ.get("FAKESTAP_REMOTE_HOME", "/"))
            # like staprun's child: no group leader (an sh in a session of its own runs it)
            child = subprocess.Popen(  # noqa: S603
                [
                    "sh",
                    "-c",
                    '"$@" & wait $!',
                    "sh",
                    *staprun_argv(args[args.index("-c") + 1]),
                ],
                cwd=scratch,
                env=env,
                start_new_session=True,
            )

            def end(signum, frame):
                out("END")
                os._exit(0)

            signal.signal(signal.SIGINT, end)
            out(f"CHILD {child.pid}")
            return 0 if child.wait() == 0 else 1
        return 0
    out(f"fakestap: unknown mode {mode!r}", stream=sys.stderr)
    return 2


def stap_running_command(args: list[str]) -> int:
    """Mode `stap` with FAKESTAP_RUN_COMMAND=1 (opt-in: other tests pass hostile -c
    commands): print "ARGV <json>", copy the file FAKESTAP_RECORDS (if set) to stdout, run
    the -c command (split like a shell word list, no shell) and end as stapio and stap do
    when it failed (staprun/mainloop.c chld_proc and cleanup_and_exit; main.cxx):
    "WARNING: Child process exited with status N" or "... with signal N (NAME)", then
    "Pass 5: run failed.  [man error::pass5]", exit 1. Exit 0 when it succeeded."""
    import shlex
    import subprocess

    out("Pass 5: starting run.", stream=sys.stderr)
    out("ARGV " + json.dumps(args))
    records = os.environ.get("FAKESTAP_RECORDS")
    if records:
        with open(records, "rb") as f:
            sys.stdout.buffer.write(f.read())
        sys.stdout.flush()
    if "-c" not in args:
        return 0
    command = shlex.split(args[args.index("-c") + 1])  # the test's own, opted in
    rc = subprocess.run(command, check=False).returncode  # noqa: S603
    if rc == 0:
        return 0
    if rc < 0:
        out(
            f"WARNING: Child process exited with signal {-rc} ({signal.strsignal(-rc)})",
            stream=sys.stderr,
        )
    else:
        out(f"WARNING: Child process exited with status {rc}", stream=sys.stderr)
    out("Pass 5: run failed.  [man error::pass5]", stream=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
