"""olmOCR-Bench's layout and its scorer's report, for bench/quality.py and its tests: which pages a benchmark
directory's tests name, where a candidate's markdown for each goes, and the scorer run on a candidate and read.

The scorer itself runs in .venv-quality (ocr_dev/olmocr_scorer.py); nothing here needs more than the standard library.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCORER_PYTHON = REPO / ".venv-quality" / "bin" / "python"


@dataclass(frozen=True, order=True)
class BenchPage:
    """One page a test names: its PDF (relative to ``pdfs/``) and its number."""

    pdf: str
    page: int

    def output(self, candidate: Path, repeat: int = 1) -> Path:
        """Where the scorer reads this page's markdown for a candidate."""
        return candidate / f"{self.pdf.removesuffix('.pdf')}_pg{self.page}_repeat{repeat}.md"


def bench_pages(directory: Path) -> list[BenchPage]:
    """Every page the ``*.jsonl`` tests name, and page 1 of every PDF (the scorer's baseline test), sorted."""
    pages = {BenchPage(path.relative_to(directory / "pdfs").as_posix(), 1)
             for path in (directory / "pdfs").rglob("*.pdf")}  # fmt: skip
    for tests in directory.glob("*.jsonl"):
        for line in tests.read_text().splitlines():
            if line.strip():
                test = json.loads(line)
                pages.add(BenchPage(test["pdf"], int(test.get("page", 1))))
    return sorted(pages)


@dataclass
class Score:
    """One candidate's results as the scorer printed them."""

    overall: float
    by_type: dict[str, tuple[float, int]]
    by_jsonl: dict[str, tuple[int, int]]
    failed: set[str]

    def to_dict(self) -> dict[str, object]:
        return {"overall": self.overall, "by_type": self.by_type, "by_jsonl": self.by_jsonl,
                "failed": sorted(self.failed)}  # fmt: skip


def parse_scorer_output(output: str, name: str) -> Score:
    """The candidate's section of the scorer's report: failed tests, the summary's overall and per-type figures."""
    section = output.split(f"\nCandidate: {name}\n", 1)[1]
    failed = set(re.findall(r"\[FAIL\] Test (\S+) on ", section.split("Average Score:", 1)[0]))
    summary = output.split("Final Summary", 1)[1].split(f"{name}", 1)[1]
    overall = float(re.search(r"Average Score: ([\d.]+)%", summary)[1])  # type: ignore[index]
    types = re.findall(r"^\s+(\w+)\s*: ([\d.]+)% average pass rate over (\d+) tests", summary, re.MULTILINE)
    jsonls = re.findall(r"^\s+(\S+)\s*: [\d.]+% \((\d+)/(\d+) tests\)", summary, re.MULTILINE)
    by_type = {kind: (float(pct), int(count)) for kind, pct, count in types}
    by_jsonl = {jsonl: (int(passed), int(total)) for jsonl, passed, total in jsonls}
    return Score(overall, by_type, by_jsonl, failed)


def score(directory: Path, name: str) -> Score:
    """Run olmOCR-Bench's scorer on the candidate ``name`` and read its results."""
    command = [str(SCORER_PYTHON), "-m", "ocr_dev.olmocr_scorer", "--dir", str(directory), "--candidate", name]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False,
                         env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"the scorer failed ({run.returncode}): {run.stderr[-2000:]}")
    return parse_scorer_output(run.stdout, name)
