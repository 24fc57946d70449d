from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab():
    """The running lab VM; skip (locally) or fail (in CI) when it is not up."""
    import os

    from stapmagic import lab as labmod

    if not labmod.is_up():
        if os.environ.get("CI"):
            pytest.fail("the lab VM is not up: .ci/run must boot it (python -m stapmagic.lab up)")
        pytest.skip("lab VM not running: python -m stapmagic.lab up")
    return labmod
