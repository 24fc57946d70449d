"""The teaching notebooks run top to bottom from their recordings (mode replay), as in CI
and on Binder; the asserts inside them are the checks. Their outputs are stripped in git."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from stapmagic import notebooks, recording

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
PROBE_CELL = re.compile(r"^%%(kprobe|stap)\b", re.M)


def test_the_series_is_there():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_", "07_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    assert not notebooks.has_outputs(nb), f"python -m stapmagic.notebooks strip {path}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_probe_cells_name_existing_recordings(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and PROBE_CELL.search(c.source)]
    assert cells
    for source in cells:
        m = re.search(r"--recording[= ]+(\S+)", source)
        assert m, f"probe cell without --recording NAME:\n{source}"
        recording.load(recording.recording_path(m.group(1), NOTEBOOK_DIR / "recordings"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_replay_mode(path, monkeypatch, tmp_path):
    # No stap and no lab here: a replay must not need either.
    monkeypatch.setenv("PATH", f"{Path(__import__('sys').executable).parent}:/usr/bin:/bin")
    nb = notebooks.execute(path, mode="replay", target="local", timeout=120)
    first = next(c for c in nb.cells if c.cell_type == "code")
    text = "".join(o.get("text", "") for o in first.outputs)
    assert "mode auto -> replay" in text, text
    replays = probe_cells = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        # IPython shows a magic's UsageError as stderr text, not as an error output.
        errors = [
            o
            for o in cell.outputs
            if o.output_type == "error" or (o.output_type == "stream" and "UsageError:" in o.text)
        ]
        if "raises-exception" in cell.metadata.get("tags", []):
            assert errors, f"this cell is meant to fail:\n{cell.source}"
        else:
            assert not errors, f"{cell.source}\n{errors}"
        if PROBE_CELL.search(cell.source):
            probe_cells += 1
            # The run's summary (with its REPLAY note) is a display, its messages a stream.
            out = "".join(
                o.get("text", "")
                if o.output_type == "stream"
                else o.get("data", {}).get("text/plain", "")
                for o in cell.outputs
                if o.output_type in ("stream", "display_data")
            )
            assert "REPLAY of recordings/" in out, out
            replays += 1
    assert replays == probe_cells >= 1
    nbformat.write(nb, tmp_path / path.name)  # the executed notebook stays a valid notebook


def test_binder_conditions_replay_automatically(tmp_path):
    """As on mybinder.org: no STAPMAGIC_* settings and no stap: `auto` picks replay by
    itself and the first cell says so."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("STAPMAGIC_")}
    env["PATH"] = str(Path(sys.executable).parent)  # nothing else: surely no stap
    nb = notebooks.execute(NOTEBOOKS[0], timeout=120, env=env)
    first = next(c for c in nb.cells if c.cell_type == "code")
    text = "".join(o.get("text", "") for o in first.outputs)
    assert "mode auto -> replay (stap cannot run here: no `stap` on PATH)" in text, text
