"""A live `%%kprobe` cell on the lab VM's kernel, run in JupyterLab (issue 13: "one live cell
on the lab"): the live view is drawn while stap runs, then one table, no stderr."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from jlab import Browser, JupyterServer
from test_cells_ui import COUNTED, _live_text

NAME = "ui_lab_live.ipynb"
SETUP = (
    '%load_ext stapmagic\n%config KprobeMagics.target = "lab"\n%config KprobeMagics.mode = "live"'
)
PROBE = (
    '%%kprobe -o conns --cmd-only -c "python3 connect_a_few.py"\n'
    "tcp_v4_connect sk:ptr uaddr:ptr len:uint"
)
# A first compile under TCG on a busy 2-core host can take minutes.
CELL_TIMEOUT = 600.0


@pytest.mark.ui
@pytest.mark.lab
def test_live_cell_on_the_lab(
    lab, jupyter: JupyterServer, browser: Browser, screenshots: Path
) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(PROBE)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(nb, jupyter.root / NAME)
    browser.open(NAME)
    try:
        with browser.running(0):
            pass
        with browser.running(1, timeout=CELL_TIMEOUT):
            pass
        run = browser.watched()
        cell = browser.cells()[1]
        assert cell.status == "ok" and not cell.errors, (cell.status, cell.text[-2000:])
        assert int(browser.evaluate("len(conns)")) == 3  # the workload's three connects
        assert "lab" in browser.evaluate("_kprobe.target.kind")
        drawn = [_live_text(s.outputs) for s in run.before_end()]
        assert len({t for t in drawn if t}) >= 2, "the live view was not redrawn while it ran"
        assert any(COUNTED.search(t) for t in drawn), "no rows counted before the cell ended"
        assert cell.tables == 1, f"{cell.tables} tables drawn"
        result = [o for o in cell.outputs if o["output_type"] == "execute_result"]
        assert result and "text/html" in result[-1]["data"]
        assert re.search(r"0xff[0-9a-f]{14}", result[-1]["data"]["text/html"])  # sk, uaddr
        assert not cell.streams("stderr") and not cell.stderr_drawn, cell.streams("stderr")
    finally:
        browser.screenshot(screenshots / "ui_lab_live.png")
