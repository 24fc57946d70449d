from __future__ import annotations

import os
import time
import warnings

import pytest


def pytest_collection_modifyitems(config, items):
    # Only what needs the VM is `lab`: a test that uses the `lab` fixture, directly or through
    # another (`cell`); host-side tests here run with the unit tests under -m "not lab".
    # Tests marked @pytest.mark.lab by hand keep their mark.
    for item in items:
        if "/tests/lab/" in str(item.fspath) and "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)


@pytest.fixture
def lab():
    """The running lab VM; skip (locally) or fail (in CI, and in `./dev test`, which sets
    STAPMAGIC_LAB_REQUIRED) when it is not up.

    In CI a lab that died since the last test (a guest kernel crash ends qemu) is booted
    again once per death, with a warning naming the crash: the test that saw it has failed
    already, and the rest of the suite still gets a kernel.
    """
    from stapmagic import lab as labmod

    if labmod.is_up():
        return labmod
    if os.environ.get("CI") or os.environ.get("STAPMAGIC_LAB_REQUIRED"):
        state = labmod.last_state()
        crash = labmod.guest_crash(str(state.get("serial_log", ""))) if state else None
        if state is None:
            pytest.fail("the lab VM is not up: .ci/run must boot it (python -m stapmagic.lab up)")
        import shutil
        import time

        serial = str(state.get("serial_log", ""))
        kept = f"{serial}.down-{int(time.time())}"
        if os.path.exists(serial):
            shutil.copy(serial, kept)  # up() starts a new console log
        warnings.warn(
            f"lab VM was down (guest crash: {crash}; console kept in {kept}); booting it again",
            stacklevel=1,
        )
        labmod.up(log=lambda *a: None)
        return labmod
    pytest.skip("lab VM not running: python -m stapmagic.lab up")


@pytest.fixture
def live_run(monkeypatch):
    """The ProbeRun the next cell executes, visible (as `live_run["run"]`) while it runs."""
    from stapmagic import pipeline

    seen: dict = {}
    original = pipeline.execute

    def spy(run, **kw):
        seen["run"] = run
        return original(run, **kw)

    monkeypatch.setattr(pipeline, "execute", spy)
    return seen


@pytest.fixture
def cell(ip, lab):
    """Run a cell against the lab as a notebook does; returns (value, error, run)."""
    ip.run_line_magic("config", 'KprobeMagics.target = "lab"')

    def go(text: str):
        ip.user_ns.pop("_kprobe", None)
        result = ip.run_cell(text)
        return (
            result.result,
            result.error_before_exec or result.error_in_exec,
            ip.user_ns.get("_kprobe"),
        )

    yield go
    ip.run_line_magic("config", 'KprobeMagics.target = "local"')


@pytest.fixture(scope="module")
def guest_b():
    """The second lab guest (`lab:b`), booted for the module's tests and left as found."""
    from stapmagic import lab as labmod

    if not labmod.is_up():
        pytest.skip("the default lab guest is not up")
    was_up = labmod.is_up("b")
    t0 = time.monotonic()
    labmod.up(log=lambda *a: None, name="b")
    print(f"guest b up in {time.monotonic() - t0:.1f} s")
    yield labmod
    # Left as found when it was up before (a developer's guest); the kill test leaves it dead.
    if not was_up or not labmod.is_up("b"):
        labmod.down(log=lambda *a: None, name="b")
