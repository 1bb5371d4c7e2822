"""olmOCR-Bench through the service, scored by olmOCR-Bench's own scorer: the harness's plumbing, proven here.

The sample (../shared/quality/olmocr-bench-sample: 21 PDFs, 99 tests, and olmOCR's own outputs for its pages) is
scored twice: olmOCR's outputs as they are, and the same outputs written as DeepSeek-OCR writes a page (grounded
blocks with boxes, tables as HTML: ocr_dev/deepseek_markup.py), answered page by page by the STAND-IN engine and
read through the service by the harness as a user runs it (``python -m bench.quality``, one POST /ocr per page). The
service must lose nothing: every test passes through the service exactly when it passes on the outputs themselves.
No model runs: this proves the harness and the service's handling of text, tables and formulas, not recognition.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ocr_dev.deepseek_markup import as_deepseek_output
from ocr_dev.olmocr_bench import SCORER_PYTHON, bench_pages, parse_scorer_output
from ocr_dev.servers import serve_service, stand_in_engine
from tests.conftest import REPO

pytestmark = pytest.mark.slow

SAMPLE = Path(os.environ.get("OCR_QUALITY_DIR", REPO.parent / "shared" / "quality" / "olmocr-bench-sample"))
DIRECT = "olmocr_pipeline"  # olmOCR's own outputs, scored as they are

if not SCORER_PYTHON.exists() or not SAMPLE.exists():
    if os.environ.get("CI"):
        raise RuntimeError(".venv-quality or the benchmark sample is missing: scripts/run_tests.sh installs the first")
    pytest.skip("olmOCR-Bench's scorer (.venv-quality) or its sample is not here", allow_module_level=True)


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bench"
    shutil.copytree(SAMPLE / "pdfs", directory / "pdfs")
    for tests in SAMPLE.glob("*.jsonl"):
        shutil.copy2(tests, directory / tests.name)
    shutil.copytree(SAMPLE / DIRECT, directory / DIRECT)
    return directory


@pytest.fixture
def stand_in() -> Iterator[str]:
    with stand_in_engine(step_ms=1, tokens_per_page=5) as url:
        yield url


def harness(*arguments: str) -> subprocess.CompletedProcess[str]:
    """bench/quality.py as a user runs it."""
    run = subprocess.run([sys.executable, "-m", "bench.quality", *arguments], cwd=REPO, capture_output=True, text=True,
                         timeout=900, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run


def test_the_service_loses_nothing_olmocr_bench_scores_through_it(bench_dir: Path, stand_in: str, tmp_path: Path):
    pages = bench_pages(bench_dir)
    assert len({page.pdf for page in pages}) == 21
    # In the harness's order (one page at a time): each page answered with olmOCR's output in DeepSeek-OCR's markup.
    outputs = [page.output(bench_dir / DIRECT) for page in pages]
    answers = [as_deepseek_output(path.read_text()) if path.exists() else "" for path in outputs]
    requests.post(f"{stand_in}/stand-in/answers", json={"answers": answers}, timeout=5).raise_for_status()
    with serve_service(tmp_path / "service", stand_in, runaway_retries=0) as url:
        read = harness(str(bench_dir), "--url", url, "--name", "service", "--concurrency", "1", "--no-score")
    assert f"[{len(pages)}/{len(pages)}]" in read.stderr  # progress, page by page
    assert all(page.output(bench_dir / "service").exists() for page in pages)

    scored = {}
    for name in (DIRECT, "service"):
        shown = harness(str(bench_dir), "--score-only", "--name", name, "--json", str(tmp_path / f"{name}.json"))
        assert f"{name}: " in shown.stdout
        scored[name] = json.loads((tmp_path / f"{name}.json").read_text())
    direct, through = scored[DIRECT], scored["service"]
    assert direct["by_jsonl"]["dataset.jsonl"] == [87, 99]  # olmOCR's outputs, as the sample's README reports
    # Every test that passes on the outputs passes through the service, and no other.
    assert through["failed"] == direct["failed"]
    assert (through["by_jsonl"], through["overall"]) == (direct["by_jsonl"], direct["overall"])
    print(f"\n{shown.stdout}")


def test_a_stopped_run_goes_on_where_it_stopped(bench_dir: Path, stand_in: str, tmp_path: Path):
    pages = bench_pages(bench_dir)
    candidate = bench_dir / "service"
    first = pages[0].output(candidate)
    first.parent.mkdir(parents=True)
    first.write_text("written by an earlier run")
    with serve_service(tmp_path / "service", stand_in) as url:
        read = harness(str(bench_dir), "--url", url, "--name", "service", "--no-score", "--concurrency", "4")
    assert f"1 of {len(pages)} pages already written" in read.stderr
    assert first.read_text() == "written by an earlier run"  # not read again
    assert all(page.output(candidate).exists() for page in pages)
    assert not list(candidate.rglob("*.tmp"))


def test_the_scorers_report_is_read_as_it_prints_it():
    report = """
Candidate: mine
  [FAIL] Test a_01 on a page 1 average pass ratio: 0.000 (0/1 repeats passed). Ex: whatever
  Average Score: 50.0% (95% CI: [0.0%, 100.0%]) over 2 tests.

============================================================
Final Summary with 95% Confidence Intervals:
mine                 : Average Score: 50.0% ± 10.0% (average of per-JSONL scores)
    present : 50.0% average pass rate over 2 tests

    Results by JSONL file:
        dataset.jsonl                 : 50.0% (1/2 tests)
"""
    result = parse_scorer_output(report, "mine")
    assert (result.overall, result.failed) == (50.0, {"a_01"})
    assert result.by_type == {"present": (50.0, 2)}
    assert result.by_jsonl == {"dataset.jsonl": (1, 2)}


def _bench_in_a_bare_checkout(tmp_path: Path, module: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench.MODULE`` from a checkout where nothing was set up (no .venv-quality, no .venv-vllm)."""
    checkout = tmp_path / "checkout"
    for package in ("bench", "ocr_dev", "ocr_client", "ocr_api"):
        shutil.copytree(
            REPO / package, checkout / package, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
        )
    return subprocess.run([sys.executable, "-m", f"bench.{module}", *arguments], cwd=checkout, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_the_harness_says_what_is_wrong_with_its_setup_and_fails(tmp_path: Path, bench_dir: Path):
    missing = harness_run(str(tmp_path / "no-such-folder"))
    assert missing.returncode == 2
    assert "is not olmOCR-Bench's layout" in missing.stderr
    assert "0 of 0" not in missing.stdout + missing.stderr
    unscored = _bench_in_a_bare_checkout(tmp_path, "quality", str(bench_dir), "--score-only")
    assert unscored.returncode == 2
    assert "scorer is not installed (.venv-quality is missing)" in unscored.stderr
    assert "ensure_quality_venv" in unscored.stderr
    assert "Traceback" not in unscored.stderr
    vllm_columns = _bench_in_a_bare_checkout(tmp_path, "fidelity")
    assert vllm_columns.returncode != 0
    assert "vLLM's columns need vLLM's CPU build in .venv-vllm (missing)" in vllm_columns.stderr
    assert "--no-vllm" in vllm_columns.stderr


def harness_run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.quality", *arguments], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
