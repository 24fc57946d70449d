#!/usr/bin/python3
"""stapmagic lab: /usr/bin/staprun (the packaged one is diverted to staprun.distrib).

Two things the stock staprun does not do for a remote (`stap --remote`) run:
- stapsh starts staprun in its scratch directory, so `stap -c "python3 connect_a_few.py"`
  would look for the script there: run in /root/work, where the lab keeps its workloads
  (module paths, relative to the scratch directory, are made absolute first);
- when the run is stopped (SIGINT -> stapsh `quit`), stapio unloads the module but leaves the
  -c command running, re-parented to init and holding the ssh channel open, so the host's
  stap never sees the end of its output. stapsh, this wrapper, staprun/stapio and the -c
  command share stapsh's process group (seen with ps on the lab): whatever else is left of
  that group when staprun exits is ended here.
"""
import os
import signal
import subprocess
import sys

REAL = "/usr/bin/staprun.distrib"
args = [os.path.abspath(a) if a.endswith(".ko") and not a.startswith("/") else a
        for a in sys.argv[1:]]
os.chdir("/root/work")
child = subprocess.Popen([REAL, *args])


def forward(sig, _frame):
    try:
        child.send_signal(sig)
    except ProcessLookupError:
        pass


for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, forward)
while True:
    try:
        rc = child.wait()
        break
    except InterruptedError:
        continue


def leftovers(pgid):
    """Members of process group `pgid` other than its leader (stapsh) and this wrapper."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in (os.getpid(), pgid):
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except ProcessLookupError:
                pass
    return pids


# Only a run with a -c command has one to end; stapio also calls `staprun -d MODULE` (through
# this wrapper) to unload, and that instance must leave the group alone.
for sig in (signal.SIGTERM, signal.SIGKILL) if "-c" in args else ():
    left = leftovers(os.getpgrp())
    if not left:
        break
    for pid in left:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    if sig == signal.SIGTERM:
        import time

        time.sleep(0.5)
sys.exit(rc if rc >= 0 else 128 - rc)
