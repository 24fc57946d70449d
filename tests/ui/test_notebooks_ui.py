"""The teaching notebooks, Run All in JupyterLab (replay mode), checked on what is drawn.

Issue 13: one table per `%%kprobe` cell, HTML for every DataFrame, no stderr output for a
cell that worked; each notebook's own asserts hold in the browser too. A screenshot of each
notebook is left in out/ui/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from jlab import Browser, Cell

NOTEBOOKS = sorted(
    p.name for p in (Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb")
)
RUN_TIMEOUT = 600.0


@dataclass
class Ran:
    cells: list[Cell]
    types: dict[int, str]  # execution count -> type of Out[n]

    def code(self) -> list[Cell]:
        return [c for c in self.cells if c.type == "code"]

    def worked(self) -> list[Cell]:
        return [c for c in self.code() if c.status == "ok" and not c.errors]


_RUNS: dict[str, Ran] = {}


@pytest.fixture
def ran(request, browser: Browser, screenshots: Path) -> Ran:
    """The notebook after Run All Cells (run once per session, shared by its tests)."""
    name = request.param
    if name not in _RUNS:
        browser.open(name)
        browser.run_all(RUN_TIMEOUT)
        cells = browser.cells()
        browser.screenshot(screenshots / f"{Path(name).stem}.png")
        _RUNS[name] = Ran(cells, browser.user_types())
    return _RUNS[name]


def _where(cell: Cell) -> str:
    return f"cell {cell.index}: {cell.source.splitlines()[0][:80]!r}"


@pytest.mark.parametrize("ran", NOTEBOOKS, indirect=True)
def test_every_cell_runs_and_its_asserts_hold(ran: Ran) -> None:
    for cell in ran.code():
        assert cell.execution_count is not None, f"{_where(cell)} did not run"
        if "raises-exception" not in cell.tags:
            assert cell.status == "ok" and not cell.errors, (
                f"{_where(cell)}: {cell.status}: {cell.errors or cell.streams('stderr')}"
            )


@pytest.mark.parametrize("ran", NOTEBOOKS, indirect=True)
def test_one_table_per_kprobe_cell(ran: Ran) -> None:
    cells = [c for c in ran.worked() if c.magic == "%%kprobe"]
    assert cells
    drawn = {_where(c): c.tables for c in cells}
    assert all(n == 1 for n in drawn.values()), f"tables drawn per %%kprobe cell: {drawn}"


@pytest.mark.parametrize("ran", NOTEBOOKS, indirect=True)
def test_every_dataframe_is_an_html_table(ran: Ran) -> None:
    frames = [
        c for c in ran.worked() if ran.types.get(c.execution_count or -1) == "pandas.DataFrame"
    ]
    missing = []
    for cell in frames:
        results = [o for o in cell.outputs if o["output_type"] == "execute_result"]
        if not results or "text/html" not in results[-1]["data"] or not cell.tables:
            missing.append(f"{_where(cell)}: {cell.mime_types()}")
    assert not missing, "DataFrames drawn without an HTML table:\n" + "\n".join(missing)


@pytest.mark.parametrize("ran", NOTEBOOKS, indirect=True)
def test_no_stderr_from_a_cell_that_worked(ran: Ran) -> None:
    noisy = [
        f"{_where(c)}: {c.streams('stderr')[:300]!r} (drawn as stderr: {c.stderr_drawn})"
        for c in ran.worked()
        if c.streams("stderr") or c.stderr_drawn
    ]
    assert not noisy, "stderr output in cells that worked:\n" + "\n".join(noisy)
