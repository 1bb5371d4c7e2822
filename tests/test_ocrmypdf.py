"""The OCRmyPDF plugin (ocr_client/ocrmypdf_plugin.py): the real OCRmyPDF from PyPI, with Ghostscript and pikepdf,
against the service on loopback, whose stand-in engine answers the held-in page's exact blocks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pikepdf
import pymupdf
import pytest
import requests

from ocr_dev.searchable_pages import TruePage, answer_words, scan, text_pages
from ocr_dev.servers import serve_service, stand_in_engine

OCRMYPDF = Path(sys.executable).with_name("ocrmypdf")
PLUGIN = "ocr_client.ocrmypdf_plugin"

if shutil.which("gs") is None:
    if os.environ.get("CI"):
        raise RuntimeError("Ghostscript is missing: scripts/run_tests.sh installs it (ensure_pdf_tools)")
    pytest.skip("Ghostscript: run scripts/run_tests.sh", allow_module_level=True)


@pytest.fixture(scope="module")
def held_in() -> tuple[bytes, list[TruePage]]:
    return scan(text_pages(), 150)


@pytest.fixture(scope="module")
def page(held_in, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A scanned one-page PDF, and the words of the model's exact answer for it."""
    scanned, truths = held_in
    document = pymupdf.open(stream=scanned, filetype="pdf")
    document.select([0])
    path = tmp_path_factory.mktemp("ocrmypdf") / "scan.pdf"
    document.save(path)
    return path, answer_words(truths)[0]


@pytest.fixture(scope="module")
def engine(held_in) -> Iterator[str]:
    _, truths = held_in
    with stand_in_engine(step_ms=5, tokens_per_page=10) as url:
        requests.post(f"{url}/stand-in/text", json={"text": truths[0].markup}, timeout=5).raise_for_status()
        yield url


@pytest.fixture(scope="module")
def service(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_service(tmp_path_factory.mktemp("service"), engine, api_keys="right-key-0123456789abcdef") as url:
        yield url


def ocrmypdf(*arguments: str | Path, key: str | None = "right-key-0123456789abcdef") -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items() if name != "DEEPSEEK_OCR_API_KEY"}
    if key:
        environment["DEEPSEEK_OCR_API_KEY"] = key
    return subprocess.run([str(OCRMYPDF), "--plugin", PLUGIN, *map(str, arguments)], capture_output=True, text=True,
                          env=environment, timeout=300, check=False)  # fmt: skip


def test_ocrmypdf_makes_a_pdfa_whose_text_is_the_service_s(service: str, page, tmp_path: Path) -> None:
    source, words = page
    output, sidecar = tmp_path / "out.pdf", tmp_path / "out.txt"
    run = ocrmypdf("--deepseek-url", service, "--sidecar", sidecar, source, output)
    assert run.returncode == 0, run.stderr[-2000:]
    with pikepdf.open(output) as made:
        assert made.open_metadata().pdfa_status == "2B"
        assert "DeepSeek-OCR API" in str(made.docinfo.get("/Creator"))
    text = subprocess.run(["pdftotext", str(output), "-"], capture_output=True, text=True, check=True).stdout
    assert text.split() == words
    assert sidecar.read_text().split() == words


def test_skip_text_sends_only_the_pages_without_text(service: str, engine: str, page, tmp_path: Path) -> None:
    source, words = page
    document = pymupdf.open(source)
    digital = document.new_page()
    digital.insert_text((72, 72), "Born digital", fontsize=12)
    mixed = tmp_path / "mixed.pdf"
    document.save(mixed)
    before = len(requests.get(f"{engine}/stand-in/request-ids", timeout=5).json()["request_ids"])
    run = ocrmypdf("--deepseek-url", service, "--skip-text", mixed, tmp_path / "out.pdf")
    assert run.returncode == 0, run.stderr[-2000:]
    after = len(requests.get(f"{engine}/stand-in/request-ids", timeout=5).json()["request_ids"])
    assert after - before == 1  # the scanned page only
    made = pymupdf.open(tmp_path / "out.pdf")
    assert made[0].get_text().split() == words
    assert made[1].get_text().split() == ["Born", "digital"]


def test_a_wrong_key_ends_ocrmypdf_with_the_service_s_message(service: str, page, tmp_path: Path) -> None:
    source, _ = page
    run = ocrmypdf(
        "--deepseek-url",
        service,
        "--deepseek-key",
        "wrong-key-0123456789abcdef",
        source,
        tmp_path / "out.pdf",
        key=None,
    )
    assert run.returncode == 7  # OCRmyPDF's child_process_error
    assert "invalid_api_key" in run.stderr
    assert "refused page 1" in run.stderr
    assert not (tmp_path / "out.pdf").exists()


def test_an_unreachable_service_is_said_so(page, tmp_path: Path) -> None:
    source, _ = page
    run = ocrmypdf("--deepseek-url", "http://127.0.0.1:9", "--deepseek-timeout", "5", source, tmp_path / "out.pdf")
    assert run.returncode == 7
    assert "could not be reached" in run.stderr


def test_the_service_must_be_named(page, tmp_path: Path) -> None:
    source, _ = page
    run = ocrmypdf(source, tmp_path / "out.pdf")
    assert run.returncode == 1  # OCRmyPDF's bad_args
    assert "--deepseek-url" in run.stderr
