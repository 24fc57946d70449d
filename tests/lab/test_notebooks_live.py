"""The teaching notebooks, run top to bottom live against the lab (mode live): their
asserts hold on the real kernel, and a live run leaves the recordings alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from stapmagic import notebooks

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _recordings() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (NOTEBOOK_DIR / "recordings").iterdir()}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_live_on_the_lab(path, lab, request):
    if "lab:b" in path.read_text():
        request.getfixturevalue("guest_b")  # a fleet notebook: the second guest too
    before = _recordings()
    nb = notebooks.execute(path, mode="live", target="lab", timeout=900)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "mode auto -> live (STAPMAGIC_MODE=live)" in "".join(
        o.get("text", "") for o in first.outputs
    )
    for cell in nb.cells:
        if cell.cell_type == "code":
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            assert "REPLAY" not in text, cell.source
    assert _recordings() == before
