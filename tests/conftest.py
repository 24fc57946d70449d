from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Verbatim captures of real stap runs, copied from the team's shared reference set (README there).
REFERENCE = REPO / "tests" / "fixtures" / "reference"


@pytest.fixture(scope="session")
def reference() -> Callable[[str], Path]:
    """`reference("stap-5.1-linux-6.12/r_h.stdout")`: the path of a real stap capture in
    tests/fixtures/reference/. A missing capture fails the test: it never skips."""

    def path(name: str) -> Path:
        found = REFERENCE / name
        if not found.is_file():
            pytest.fail(
                f"reference capture {name} is not in {REFERENCE}: copy it verbatim from "
                "the shared reference set and list it in the README there",
                pytrace=False,
            )
        return found

    return path


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


@pytest.fixture(autouse=True)
def _no_host_btf(request, monkeypatch):
    """A bare `%%kprobe FUNCTION` asks the target for its BTF; the unit tests' local target
    is this host, whose kernel is not the one under test: it has none, unless a test gives
    one (lab tests use the real target's)."""
    if "lab" in request.fixturenames:
        return
    from stapmagic import kbtf, pipeline

    def no_btf(target, modules):
        raise kbtf.NoBTF("no BTF in the unit tests (tests/conftest.py)")

    monkeypatch.setattr(pipeline, "target_btf", no_btf)
    monkeypatch.setattr(pipeline, "_BTF_SEEN", {})
