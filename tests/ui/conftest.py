"""The UI suite: JupyterLab in headless Chromium (marker `ui`; `ui` and `lab` for live cells).

One jupyter server and one browser per session, both ended in the fixtures' teardown,
which pytest runs even when a test fails or the run is interrupted.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from jlab import CHROMEDRIVER, CHROMIUM, Browser, JupyterServer, copy_notebooks

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "out" / "ui"

# The lab fixture (skip or fail when the VM is down, reboot after a crash in CI) is
# tests/lab's: one owner, reused here for the live cells.
_spec = importlib.util.spec_from_file_location(
    "stapmagic_tests_lab_conftest", REPO / "tests" / "lab" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_lab_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_lab_conftest)
lab = _lab_conftest.lab


def _asked_for_ui(config) -> bool:
    """-m names `ui`, or a path into tests/ui was given."""
    if re.search(r"\bui\b", config.option.markexpr or ""):
        return True
    here = Path(__file__).resolve().parent
    return any(Path(arg.split("::")[0]).resolve().is_relative_to(here) for arg in config.args)


def pytest_collection_modifyitems(config, items):
    # The browser suite takes minutes: `pytest -m "not lab"` (the unit tests, run often on
    # 2 shared cores) leaves it out; it runs when asked for by marker or path (./dev test).
    # Live UI cells are `lab` too and follow the lab lane.
    skipped = []
    for item in items:
        if "/tests/ui/" in str(item.fspath):
            item.add_marker(pytest.mark.ui)
            if "lab" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.lab)
            elif not _asked_for_ui(config):
                skipped.append(item)
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [i for i in items if i not in skipped]


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory) -> Iterator[JupyterServer]:
    """`jupyter lab` serving copies of notebooks/ (replay mode: STAPMAGIC_MODE=replay)."""
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(tool):
            pytest.fail(
                f"{tool} is missing: apt-get install chromium chromium-driver "
                "(./dev test installs them)",
                pytrace=False,
            )
    work = tmp_path_factory.mktemp("jupyter")
    copy_notebooks(REPO / "notebooks", work / "root")
    server = JupyterServer(work, REPO, env={"STAPMAGIC_MODE": "replay"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def browser(jupyter, tmp_path_factory) -> Iterator[Browser]:
    b = Browser(jupyter, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
