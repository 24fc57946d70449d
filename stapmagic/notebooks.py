"""Run, strip and check the teaching notebooks.

    python -m stapmagic.notebooks run NB [--output OUT] [--mode MODE] [--target TARGET]
    python -m stapmagic.notebooks strip NB...     # drop outputs in place (what git keeps)
    python -m stapmagic.notebooks check NB...     # exit 1 if a notebook has outputs

`run` executes NB top to bottom with nbclient in a fresh kernel started in NB's directory
(so `--recording NAME` finds `recordings/NAME.jsonl` next to it). `--mode` and `--target`
become the kernel's STAPMAGIC_MODE / STAPMAGIC_TARGET (default: this process's), which the
notebooks' `%config KprobeMagics.mode = "auto"` and the magic's default target obey.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .recording import MODES

__all__ = ["execute", "has_outputs", "main", "strip"]


def strip(nb: Any) -> Any:
    """Remove outputs and execution counts (in place; returns `nb`)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    return nb


def has_outputs(nb: Any) -> bool:
    return any(
        cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
        for cell in nb.cells
    )


def execute(
    path: str | os.PathLike[str],
    *,
    mode: str | None = None,
    target: str | None = None,
    timeout: float = 1200.0,
    env: Mapping[str, str] | None = None,
) -> Any:
    """Execute the notebook at `path` and return it with its outputs.

    Raises nbclient's CellExecutionError for the first failing cell (cells tagged
    `raises-exception` may fail); the notebook as far as it ran is in the error's `nb`.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb_path = Path(path).resolve()
    nb = nbformat.read(nb_path, as_version=4)
    kernel_env = dict(os.environ if env is None else env)
    if mode is not None:
        kernel_env["STAPMAGIC_MODE"] = mode
    if target is not None:
        kernel_env["STAPMAGIC_TARGET"] = target
    # Plots go to the notebook (inline), never to a window.
    kernel_env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(nb_path.parent)}},
    )
    try:
        client.execute(env=kernel_env)
    except CellExecutionError as exc:
        exc.nb = nb  # type: ignore[attr-defined]
        raise
    return nb


def _run(args: argparse.Namespace) -> int:
    import nbformat
    from nbclient.exceptions import CellExecutionError

    t0 = time.monotonic()
    status = 0
    try:
        nb = execute(args.notebook, mode=args.mode, target=args.target, timeout=args.timeout)
    except CellExecutionError as exc:
        nb = getattr(exc, "nb", None)
        print(f"{args.notebook}: a cell failed:\n{exc}", file=sys.stderr)
        status = 1
    took = time.monotonic() - t0
    if args.output and nb is not None:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
        print(f"{args.notebook}: executed notebook written to {out}")
    if status == 0:
        print(f"{args.notebook}: every cell ran ({took:.1f} s)")
    return status


def _strip(paths: Sequence[str]) -> int:
    import nbformat

    for p in paths:
        nb = nbformat.read(p, as_version=4)
        if has_outputs(nb):
            nbformat.write(strip(nb), p)
            print(f"{p}: outputs stripped")
    return 0


def _check(paths: Sequence[str]) -> int:
    import nbformat

    bad = [p for p in paths if has_outputs(nbformat.read(p, as_version=4))]
    for p in bad:
        print(f"{p} has outputs: python -m stapmagic.notebooks strip {p}", file=sys.stderr)
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m stapmagic.notebooks",
        description=__doc__.split("\n")[0] if __doc__ else None,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute a notebook top to bottom (nbclient)")
    r.add_argument("notebook")
    r.add_argument("--output", "-o", help="write the executed notebook here")
    r.add_argument(
        "--mode", choices=MODES, help="STAPMAGIC_MODE for the kernel (default: the environment's)"
    )
    r.add_argument("--target", help="STAPMAGIC_TARGET for the kernel: local, lab, ssh://...")
    r.add_argument("--timeout", type=float, default=1200.0, help="seconds per cell")
    s = sub.add_parser("strip", help="remove outputs in place")
    s.add_argument("notebooks", nargs="+")
    c = sub.add_parser("check", help="fail if a notebook has outputs")
    c.add_argument("notebooks", nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "run":
        return _run(args)
    if args.cmd == "strip":
        return _strip(args.notebooks)
    return _check(args.notebooks)


if __name__ == "__main__":
    sys.exit(main())
