from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ip():
    """A real InteractiveShell with the extension loaded, as a notebook kernel has it."""
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "stapmagic")
    yield shell
    shell.run_line_magic("unload_ext", "stapmagic")


@pytest.fixture
def fake_stap_path(monkeypatch, tmp_path):
    """Put tests/fakestap first on PATH (process-handling tests only, never proof of probing)."""
    fake_dir = REPO / "tests" / "fakestap"
    monkeypatch.setenv("PATH", f"{fake_dir}{os.pathsep}{os.environ['PATH']}")
    return fake_dir


@pytest.fixture(scope="module", params=["compiled", "pyarrow"])
def scanner(request):
    """Run a module's parser tests once per first parser of a clean batch: the compiled
    scanner, and pyarrow's CSV reader (all an install without a C compiler has)."""
    from stapmagic import records

    saved = records._recscan
    if request.param == "pyarrow":
        records._recscan = None
    yield request.param
    records._recscan = saved
