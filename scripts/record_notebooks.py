#!/usr/bin/env python3
"""Regenerate every teaching-notebook recording from real runs, then check the replays.

    .venv/bin/python scripts/record_notebooks.py [--target lab] [NOTEBOOK ...] [--prune]

Runs each notebook (default: all of notebooks/*.ipynb) top to bottom with nbclient in mode
record, so every cell with `--recording NAME` runs stap on the target and rewrites
notebooks/recordings/NAME.jsonl; then runs it again in mode replay to check that the
recordings carry it. The notebooks themselves are not modified (their outputs stay
stripped). Needs the target up: for the lab, `python -m stapmagic.lab up`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
RECORDINGS = NOTEBOOKS / "recordings"
_NAME = re.compile(r"--recording[= ]+([A-Za-z0-9][A-Za-z0-9_.-]*)")


def referenced(paths: list[Path]) -> set[str]:
    """Recording names used by the notebooks' cells."""
    import nbformat

    names: set[str] = set()
    for p in paths:
        for cell in nbformat.read(p, as_version=4).cells:
            if cell.cell_type == "code":
                names.update(_NAME.findall(cell.source))
    return names


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from nbclient.exceptions import CellExecutionError

    from stapmagic import notebooks, runner
    from stapmagic.recording import SUFFIX, target_can_run_stap

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    p.add_argument("--target", default="lab", help="where to record (default: lab)")
    p.add_argument("--prune", action="store_true", help="delete recordings no notebook refers to")
    args = p.parse_args(argv)
    paths = sorted(args.notebooks) or sorted(NOTEBOOKS.glob("*.ipynb"))
    ok, why = target_can_run_stap(runner.parse_target(args.target))
    if not ok:
        print(f"cannot record on target {args.target}: {why}", file=sys.stderr)
        return 2
    total = time.monotonic()
    failed = 0
    for path in paths:
        for mode in ("record", "replay"):
            t0 = time.monotonic()
            try:
                notebooks.execute(path, mode=mode, target=args.target)
            except CellExecutionError as exc:
                print(
                    f"{path.name}: {mode} FAILED after {time.monotonic() - t0:.0f} s:\n{exc}",
                    file=sys.stderr,
                )
                failed += 1
                break
            print(f"{path.name}: {mode} ok ({time.monotonic() - t0:.0f} s)", flush=True)
    names = referenced(sorted(NOTEBOOKS.glob("*.ipynb")))
    stale = sorted(
        f for f in RECORDINGS.glob(f"*{SUFFIX}") if f.name.removesuffix(SUFFIX) not in names
    )
    for f in stale:
        if args.prune:
            f.unlink()
            print(f"removed unused recording {f.relative_to(REPO)}")
        else:
            print(f"unused recording {f.relative_to(REPO)} (--prune removes it)")
    print(f"{len(paths)} notebooks, {failed} failed, {time.monotonic() - total:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
