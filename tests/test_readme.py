"""The README's curl lines, run as written with the real curl against the service (in-process, a fake engine, its job
consumer running): each must work as a reader would paste it, the job lines in their order."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocr_api.http.app import create_app
from ocr_api.service import OcrService
from ocr_dev.inputs import make_pdf, png_bytes
from ocr_dev.servers import serve_with_jobs
from tests.conftest import REPO
from tests.fakes import FakeEngine

README_HOST = "http://localhost:5000"
JOB_ID = "3f0c…"  # the README's placeholder for the id the first job line answers with


def readme_curl_lines() -> list[str]:
    """Every curl command of the README's "Use it" section, comments dropped, in order."""
    section = (REPO / "README.md").read_text().split("## Use it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]
    return [re.sub(r"\s+#.*$", "", line) for line in lines]


@pytest.fixture
def service_url(settings) -> Iterator[str]:
    service = OcrService(settings, FakeEngine())
    service.start()
    with serve_with_jobs(create_app(service=service)) as url:
        yield url


def test_every_curl_line_of_the_readme_works_as_written(service_url: str, tmp_path: Path):
    assert shutil.which("curl"), "the README's commands need curl"
    for name in ("scan.png", "paper.png", "p1.png"):
        (tmp_path / name).write_bytes(png_bytes((320, 240)))
    (tmp_path / "page.jpg").write_bytes(png_bytes((320, 240), fmt="JPEG"))
    for name, pages in (("contract.pdf", 8), ("report.pdf", 2), ("book.pdf", 3), ("scan.pdf", 2)):
        (tmp_path / name).write_bytes(make_pdf(pages))
    lines = readme_curl_lines()
    assert len(lines) == 12, lines
    job_id = ""
    for line in lines:
        command = line.replace(README_HOST, service_url).replace(JOB_ID, job_id)
        # As written, plus -sS and the status on a line of its own at the end.
        run = subprocess.run(["bash", "-c", command + " -sS -w '\\n%{http_code}'"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert run.returncode == 0, (line, run.stderr)
        body, status = run.stdout.rsplit("\n", 1)
        assert status in ("200", "202"), (line, run.stdout[-500:])
        if " -o " in command:  # a searchable PDF, saved where the line says
            saved = tmp_path / command.rsplit(" -o ", 1)[1].split()[0]
            assert saved.read_bytes().startswith(b"%PDF-"), line
        elif "/jobs/" not in command:
            answer = json.loads(body)
            if line.endswith("/jobs"):
                job_id = answer["id"]
            if "prompt=" in line:  # sent literally: not read from a file named "image>..."
                assert answer["prompt"] == "<image>\n<|grounding|>OCR this image."
        elif command.endswith("/events"):
            assert "event: end" in body
        elif command.endswith("/result"):
            assert (status, json.loads(body)["pages_total"]) == ("200", 3)
    assert job_id
