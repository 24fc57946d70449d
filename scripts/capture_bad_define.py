#!/usr/bin/env python3
"""Capture what stap prints when a -D value passes stapmagic's check but breaks compilation.

    .venv/bin/python scripts/capture_bad_define.py [NAME=VALUE ...]

For each define (default: MAXSKIPPED=1x and MAXACTION=abc, both [A-Za-z0-9_.+-]* as
runner's -D check allows), builds the magic's own command line for
`%%kprobe --target lab -D NAME=VALUE tcp_v4_connect` and runs it on the lab, stdout and
stderr kept apart (as in shared/reference), into tests/fixtures/captures/bad_define_NAME.*:
.cmd (the define and the argv after the lab's prefix), .stdout, .stderr, .rc. Needs the lab
up (python -m stapmagic.lab up); pass 4 runs on the host, so the guest runs nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "captures"
DEFAULT = ("MAXSKIPPED=1x", "MAXACTION=abc")


def capture(define: str) -> Path:
    from stapmagic import pipeline, runner

    opts = pipeline.ProbeOptions(target="lab", defines=(define,))
    run = pipeline.prepare("tcp_v4_connect", "", opts)
    done = subprocess.run(  # noqa: S603 - argv built by runner.stap_argv, no shell
        run.argv,
        capture_output=True,
        timeout=900,
        check=False,
        stdin=subprocess.DEVNULL,
        env=runner.stap_env(),
    )
    name = define.partition("=")[0]
    base = OUT / f"bad_define_{name}"
    OUT.mkdir(parents=True, exist_ok=True)
    # the argv from stap on (the lab's chroot prefix is this machine's), script included
    at = max(i for i, a in enumerate(run.argv) if a.endswith("stap") or a == "stap")
    base.with_suffix(".cmd").write_text(
        json.dumps({"define": define, "argv": run.argv[at:]}, indent=1) + "\n"
    )
    base.with_suffix(".stdout").write_bytes(done.stdout)
    base.with_suffix(".stderr").write_bytes(done.stderr)
    base.with_suffix(".rc").write_text(f"{done.returncode}\n")
    return base


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    for define in argv or DEFAULT:
        base = capture(define)
        print(f"{define}: {base}.* (rc {base.with_suffix('.rc').read_text().strip()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
