"""The project's own wiring: one version, one dependency list, one Python floor, the test
lanes (`-m "not lab"` runs every host-side test), one copy of each lab workload."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import metadata, version
from pathlib import Path

import stapmagic

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def min_python(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r">=\s*3\.(\d+)", spec.strip())
    assert m, f"requires-python {spec!r}: expected >=3.N"
    return 3, int(m.group(1))


def test_version_comes_from_the_package_metadata() -> None:
    assert stapmagic.__version__ == version("stapmagic")
    tree = ast.parse((REPO / "stapmagic" / "__init__.py").read_text())
    literals = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "__version__" for t in node.targets)
        and isinstance(node.value, ast.Constant)
        and node.value.value != "0+unknown"
    ]
    assert not literals, "__version__ is declared in pyproject.toml only"


def test_python_floor_covers_the_dependencies_and_the_tools() -> None:
    floor = min_python(PYPROJECT["project"]["requires-python"])
    # pandas is the dependency with the highest floor (pandas >= 3 needs 3.11)
    assert min_python(metadata("pandas")["Requires-Python"]) <= floor
    assert PYPROJECT["tool"]["ruff"]["target-version"] == f"py3{floor[1]}"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == f"3.{floor[1]}"


def test_binder_installs_the_project_with_its_declared_dependencies() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / "binder" / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert lines == ["-e ."]  # the dependencies are pyproject.toml's, not a copy
    runtime = (REPO / "binder" / "runtime.txt").read_text().strip()
    m = re.fullmatch(r"python-3\.(\d+)", runtime)
    assert m and (3, int(m.group(1))) >= min_python(PYPROJECT["project"]["requires-python"])


def test_not_lab_selects_the_host_side_tests_under_tests_lab() -> None:
    out = subprocess.run(  # noqa: S603 (argv list)
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not lab",
            "tests/lab",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    selected = {line.split("[")[0] for line in out.stdout.splitlines() if "::" in line}
    # host-side: pure decisions, no VM
    assert "tests/lab/test_lab_infra.py::test_accel_pvm_device_means_tcg" in selected, out.stdout
    assert "tests/lab/test_faults.py::test_ending_diagnoses_unreachable_target_is_named" in selected
    # the lab: through `lab`, through `cell` (which uses `lab`), or marked by hand
    assert "tests/lab/test_soak.py::test_repeated_runs_leak_nothing" not in selected
    assert "tests/lab/test_seed_examples.py::test_1_entry_arguments" not in selected
    assert "tests/lab/test_lab_infra.py::test_guest_kernel_is_6_12" not in selected
    assert all(not t.startswith("tests/lab/test_seed_examples.py") for t in selected)


def test_lab_workloads_have_one_copy() -> None:
    """The workloads live in stapmagic/labfiles/ (the lab installs them in /root/work);
    notebooks/ only links to them, so a notebook run from its directory finds them too."""
    labfiles = REPO / "stapmagic" / "labfiles"
    for path in sorted((REPO / "notebooks").glob("*.py")):
        assert path.is_symlink(), f"{path} is a copy: link it to {labfiles / path.name}"
        assert path.resolve() == (labfiles / path.name).resolve()
    named = set()
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        named.update(re.findall(r"python3 (\w+\.py)", nb.read_text()))
    assert named and all((labfiles / name).is_file() for name in named), named
