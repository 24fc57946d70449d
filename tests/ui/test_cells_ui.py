"""Cells a user runs by hand in JupyterLab (replay mode), checked on what is drawn.

Issue 13: a plain DataFrame keeps its HTML table after `%load_ext stapmagic`; the live view
updates (pointers in hex) before the cell ends; the stop button keeps the rows and says so;
Tab after `%%kprobe tcp_v4_con` offers `tcp_v4_connect`.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from jlab import Browser, JupyterServer, wait_until

NAME = "ui_checks.ipynb"
# A real recording (notebook 5, made on the lab): 8 s at the recorded pace, the first row
# at 4.9 s, the last at 5.7 s, stap's end at 8.1 s.
REPLAY = (
    "%%kprobe --recording 05_guru_module --replay-speed {speed} --guru -o {out} "
    '--cmd-only -c "python3 read_files.py 5 read_files.py"\n'
    "ext4:ext4_file_open inode:ptr filp:ptr"
)
SETUP, PLAIN, LIVE, STOP, TYPING = range(5)
CELLS = {
    SETUP: '%load_ext stapmagic\n%config KprobeMagics.mode = "auto"',
    PLAIN: 'import pandas as pd\n\npd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})',
    LIVE: REPLAY.format(speed=1, out="opens"),
    STOP: REPLAY.format(speed=0.5, out="stopped"),
    TYPING: "",
}
# "13 events", "3 rows": what a live view says when rows have arrived.
COUNTED = re.compile(r"\b([1-9][\d,]*)\s+(?:events|rows)\b")


@pytest.fixture(scope="module")
def checks(jupyter: JupyterServer, browser: Browser, screenshots: Path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELLS[i]) for i in sorted(CELLS)]
    # Without a kernelspec Lab asks which kernel to start.
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(nb, jupyter.root / NAME)
    browser.open(NAME)
    with browser.running(SETUP):
        pass
    yield browser
    browser.screenshot(screenshots / "ui_checks.png")


def _live_text(snapshot_outputs: list[dict]) -> str:
    """The text of the live view: display outputs, not the cell's result."""
    parts = []
    for out in snapshot_outputs:
        if out["output_type"] == "display_data":
            data = out.get("data", {})
            parts.append(str(data.get("text/html") or data.get("text/plain") or ""))
    return "\n".join(parts)


def test_plain_dataframe_keeps_its_html_table_after_load_ext(checks: Browser) -> None:
    with checks.running(PLAIN):
        pass
    cell = checks.cells()[PLAIN]
    results = [o for o in cell.outputs if o["output_type"] == "execute_result"]
    assert results and "text/html" in results[0]["data"], cell.mime_types()
    assert cell.tables == 1


def test_live_view_updates_before_the_cell_ends(checks: Browser) -> None:
    with checks.running(LIVE):
        pass
    run = checks.watched()
    assert run.ended_ms is not None
    counted = [s for s in run.before_end() if COUNTED.search(_live_text(s.outputs))]
    assert counted, "no live view counting rows was drawn before the cell ended:\n" + "\n".join(
        f"{s.t_ms:8.0f} ms {s.text[:120]!r}" for s in run.snapshots
    )
    # The recording's rows come 2.4 s before its end: drawn while the cell still ran.
    assert counted[0].t_ms < run.ended_ms - 1000, (counted[0].t_ms, run.ended_ms)
    drawn = {_live_text(s.outputs) for s in run.before_end()}
    assert len(drawn) >= 3, f"the live view was drawn only {len(drawn)} different ways"
    # stap's "Pass 5: run ..." is the run ending, not a failure to flash before the summary
    assert not [t for t in drawn if "stap failed" in t], drawn


def test_live_view_shows_pointers_in_hex(checks: Browser) -> None:
    if checks.watched().ended_ms is None:  # run alone: run the live cell first
        with checks.running(LIVE):
            pass
    rows = [_live_text(s.outputs) for s in checks.watched().before_end()]
    with_rows = [t for t in rows if "<table" in t or "0xff" in t or re.search(r"\b18\d{18}\b", t)]
    assert with_rows, "the live view never showed rows"
    last = with_rows[-1]
    # a kernel pointer (the recording's inode and file): 0x and 16 hex digits, never its
    # 20-digit decimal (18...)
    shown = re.sub(r"<[^>]+>|\s+", " ", last)[-600:]
    assert re.search(r"\b0xff[0-9a-f]{14}\b", last), shown
    assert not re.search(r"\b18\d{18}\b", last), shown


def test_stop_button_keeps_the_rows_and_says_so(checks: Browser) -> None:
    seen: dict[str, str] = {}
    with checks.running(STOP) as log:

        def rows_shown() -> bool:
            snaps = log().snapshots
            text = _live_text(snaps[-1].outputs) if snaps else ""
            if COUNTED.search(text):
                seen["live"] = snaps[-1].text
                return True
            return False

        wait_until(rows_shown, 120, "the live view to show rows", 0.1)
        checks.click_stop()
    cell = checks.cells()[STOP]
    assert cell.status == "ok" and not cell.errors, (cell.status, cell.errors)
    kept = int(checks.evaluate("len(stopped)"))
    assert kept >= 1
    result = [o for o in cell.outputs if o["output_type"] == "execute_result"]
    assert result and "text/html" in result[-1]["data"] and cell.tables >= 1
    said = cell.text
    assert re.search(r"\b(stopped|interrupted)\b", said, re.I), said
    assert re.search(
        rf"\b{kept} rows?\b.{{0,80}}\bkept\b|\bkept\b.{{0,80}}\b{kept} rows?\b", said, re.I | re.S
    ), f"does not say that the {kept} rows were kept: {said!r}"
    hint = seen["live"]
    assert re.search(r"stop.{0,60}keep", hint, re.I | re.S), (
        f"the live view does not say that stopping keeps the rows: {hint[:400]!r}"
    )


def test_tab_after_a_function_prefix_offers_the_function(checks: Browser) -> None:
    offered = checks.complete(TYPING, "%%kprobe tcp_v4_con")
    assert "tcp_v4_connect" in offered, f"Tab offered {offered}"
