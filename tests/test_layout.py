"""What may import what: the service never imports the development tools, those never import the tests, and the
tests never import the benchmarks (what both need lives in ocr_dev/)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

SERVICE = [REPO / "app.py", REPO / "config.py", *sorted((REPO / "ocr_api").rglob("*.py"))]
TOOLS = [*sorted((REPO / "ocr_dev").glob("*.py")), *sorted((REPO / "bench").glob("*.py"))]


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
    sources = [str(path.relative_to(REPO)) for path in [*SERVICE, *TOOLS, *sorted((REPO / "tests").glob("*.py"))]]
    assert len(sources) > 50, "the lists found too few files: the test would check nothing"
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *sources], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.split()
    assert ignored == []
