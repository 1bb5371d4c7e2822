"""What may import what: the service never imports the development tools, those never import the tests, and the
tests never import the benchmarks (what both need lives in ocr_dev/)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tests.conftest import REPO

SERVICE = [REPO / "app.py", REPO / "config.py", *sorted((REPO / "ocr_api").rglob("*.py"))]
TOOLS = [*sorted((REPO / "ocr_dev").glob("*.py")), *sorted((REPO / "bench").glob("*.py"))]
# Code that runs inside vLLM's processes, loaded by name in a Python that has vLLM and what vLLM needs, nothing else.
IN_VLLM = sorted((REPO / "ocr_guard").glob("*.py"))
WHAT_VLLMS_PYTHON_HAS = {"__future__", "collections", "typing", "numpy", "torch", "vllm"}


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", SERVICE, ids=lambda path: str(path.relative_to(REPO)))
def test_the_service_imports_no_development_tool(path):
    assert not _imported(path) & {"tests", "ocr_dev", "bench"}


@pytest.mark.parametrize("path", IN_VLLM, ids=lambda path: str(path.relative_to(REPO)))
def test_the_guard_vllm_loads_imports_only_what_vllms_python_has(path):
    assert _imported(path) <= WHAT_VLLMS_PYTHON_HAS


@pytest.mark.parametrize("path", TOOLS, ids=lambda path: str(path.relative_to(REPO)))
def test_the_tools_and_benchmarks_import_no_test(path):
    assert "tests" not in _imported(path)


@pytest.mark.parametrize("path", sorted((REPO / "tests").glob("*.py")), ids=lambda path: path.name)
def test_the_tests_import_no_benchmark(path):
    assert "bench" not in _imported(path)


def test_no_source_file_is_ignored_by_git():
    """A .gitignore pattern for a runtime directory (jobs/, uploads/) must not swallow a package of the same name."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    sources = [
        str(path.relative_to(REPO)) for path in [*SERVICE, *TOOLS, *IN_VLLM, *sorted((REPO / "tests").glob("*.py"))]
    ]
    assert len(sources) > 50, "the lists found too few files: the test would check nothing"
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *sources], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.split()
    assert ignored == []


def _architecture_section(start: str, end: str) -> str:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    return text.split(start, 1)[1].split(end, 1)[0]


def _named_modules() -> set[str]:
    """Every path the Modules table of docs/ARCHITECTURE.md names in its first column."""
    table = _architecture_section("## Modules", "\n## ")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split(" | ")[0])}


def _modules_with_code() -> list[str]:
    """Every module of the package and the client that holds more than its docstring."""
    paths = [REPO / "app.py", REPO / "config.py"]
    paths += sorted((REPO / "ocr_api").rglob("*.py")) + sorted((REPO / "ocr_client").rglob("*.py")) + IN_VLLM
    with_code = [path for path in paths if len(ast.parse(path.read_text()).body) > 1]
    return [str(path.relative_to(REPO)) for path in with_code]


def test_the_architecture_names_every_module_and_nothing_that_is_gone():
    named = _named_modules()
    folders = {name for name in named if name.endswith("/")}
    unnamed = [
        module
        for module in _modules_with_code()
        if module not in named and not any(module.startswith(folder) for folder in folders)
    ]
    assert unnamed == [], "name them in docs/ARCHITECTURE.md's Modules table"
    assert [name for name in sorted(named) if not (REPO / name).exists()] == []


def test_the_layers_written_down_are_the_ones_lint_imports_enforces():
    table = _architecture_section("<!-- layers:start -->", "<!-- layers:end -->")
    rows = [line for line in table.splitlines()[3:] if line.startswith("|")]
    documented = [sorted(re.findall(r"`([a-z_]+)`", row.split(" | ")[1])) for row in rows]
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [contract["layers"] for contract in contracts if contract["type"] == "layers"]
    enforced = [sorted(name.strip().removeprefix("ocr_api.") for name in layer.split("|")) for layer in layers]
    assert documented == enforced
    top_level = {path.stem if path.is_file() else path.name for path in (REPO / "ocr_api").iterdir()}
    top_level = {name for name in top_level if not name.startswith(("_", ".")) and name not in ("py",)}
    placed = {name for layer in enforced for name in layer}
    packages_and_modules = {
        name for name in top_level if (REPO / "ocr_api" / name).is_dir() or (REPO / "ocr_api" / f"{name}.py").exists()
    }
    assert packages_and_modules - placed == set(), "every module of ocr_api sits in a layer"
