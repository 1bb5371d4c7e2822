"""The command line client against a running service (in-process, the remote engine on the stand-in): a folder
read, written and summed up; an interrupted run resumed without redoing anything; a service answering 503."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ocr_api.jobs.store import FINISHED as SERVICE_FINISHED
from ocr_client import ApiError, Client
from ocr_client.cli import STATE_FILE, main
from ocr_client.client import FINISHED as CLIENT_FINISHED
from ocr_dev.inputs import make_pdf, png_bytes
from ocr_dev.servers import REPO, serve_service, stand_in_engine, wait_until

pytestmark = pytest.mark.slow

KEY = "cli-key-0123456789abcdef"
CLI = [str(Path(sys.executable).parent / "deepseek-ocr")]


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    # One page at a time, 0.2 s each: a 6-page document takes long enough to be interrupted.
    with stand_in_engine(step_ms=20, tokens_per_page=10, extra=["--max-batch", "1"]) as url:
        yield url


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, stand_in: str) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("cli")
    with serve_service(tmp, stand_in, api_keys=KEY) as url:
        yield url, tmp / "jobs"


def jobs_queued(jobs_dir: Path) -> int:
    """How many jobs the service has been given (each has its folder until JOB_TTL)."""
    folder = jobs_dir / "files"
    return len(list(folder.iterdir())) if folder.exists() else 0


def folder_of_inputs(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png_bytes((320, 240)))
    (root / "sub" / "b.jpg").write_bytes(png_bytes((200, 100), fmt="JPEG"))
    (root / "doc.pdf").write_bytes(make_pdf(3))
    (root / "broken.png").write_bytes(b"this is not an image")
    (root / "notes.txt").write_text("not for OCR")
    return root


def test_a_folder_read_written_summarized_and_a_failure_exits_non_zero(
    served: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, jobs_dir = served
    inputs, out = folder_of_inputs(tmp_path / "in"), tmp_path / "out"
    before = jobs_queued(jobs_dir)
    assert main([str(inputs), "--url", url, "--out", str(out), "--api-key", KEY]) == 1
    captured = capsys.readouterr()
    summary = captured.out
    assert "skipped 1 file(s) that are not images or PDFs: " in captured.err  # notes.txt: said, not silently left
    assert "notes.txt" in captured.err
    for name in ("a.png", "sub/b.jpg", "doc.pdf"):
        assert (out / f"{name}.md").read_text().startswith("stand-in page text"), name
        assert json.loads((out / f"{name}.json").read_text())["filename"] == Path(name).name
    assert json.loads((out / "doc.pdf.json").read_text())["pages_total"] == 3
    assert jobs_queued(jobs_dir) == before + 1  # the PDF went as a job, the images to /ocr
    assert not (out / "broken.png.json").exists()
    assert not (out / "notes.txt.json").exists()  # not a format the service reads: not sent
    assert "unsupported_media_type" in summary
    cells = [cell.strip() for cell in next(line for line in summary.splitlines() if "total" in line).split("│")]
    assert cells[1:7] == ["total", "5", "0", "0", "0", "1 of 4 files failed"]  # ok, truncated, repetitive, failed
    # Again: the finished files are not sent again, nor rewritten; the failed one is tried again and fails again.
    written = {path: path.stat().st_mtime_ns for path in out.rglob("*.json")}
    assert main([str(inputs), "--url", url, "--out", str(out), "--api-key", KEY]) == 1
    assert summary.count("already done") == 0
    assert capsys.readouterr().out.count("already done") == 3
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*.json")} == written
    assert jobs_queued(jobs_dir) == before + 1
    # Other options are another result: every readable input is read again (the PDF as a new job), with them.
    assert main([str(inputs), "--url", url, "--out", str(out), "--api-key", KEY, "--task", "free"]) == 1
    assert capsys.readouterr().out.count("already done") == 0
    assert jobs_queued(jobs_dir) == before + 2
    assert json.loads((out / "a.png.json").read_text())["task"] == "free"
    assert json.loads((out / "doc.pdf.json").read_text())["task"] == "free"
    # The same options again: done; --force reads everything again all the same.
    assert main([str(inputs), "--url", url, "--out", str(out), "--api-key", KEY, "--task", "free"]) == 1
    assert capsys.readouterr().out.count("already done") == 3
    assert main([str(inputs), "--url", url, "--out", str(out), "--api-key", KEY, "--task", "free", "--force"]) == 1
    assert capsys.readouterr().out.count("already done") == 0
    assert jobs_queued(jobs_dir) == before + 3


def test_pdf_writes_each_input_s_searchable_pdf_from_one_reading(served: tuple[str, Path], tmp_path: Path) -> None:
    import pymupdf

    url, jobs_dir = served
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "a.png").write_bytes(png_bytes((320, 240)))
    (inputs / "doc.pdf").write_bytes(make_pdf(3))
    before = jobs_queued(jobs_dir)
    assert main([str(inputs), "--url", url, "--out", str(out), "--api-key", KEY, "--pdf"]) == 0
    assert jobs_queued(jobs_dir) == before + 2  # each input read once, as a job giving its JSON and its PDF
    # the image's page has the model's text under it; the PDF's pages, born digital, keep their own
    for name, pages, text in (("a.png", 1, "stand-in page text"), ("doc.pdf", 3, "Page 1")):
        made = pymupdf.open(out / f"{name}.pdf")
        assert made.page_count == pages
        assert made[0].get_text().startswith(text)
        assert (out / f"{name}.md").read_text().startswith("stand-in page text")
    (out / "a.png.pdf").unlink()  # a PDF missing: that input is not done, and is read again
    assert main([str(inputs), "--url", url, "--out", str(out), "--api-key", KEY, "--pdf"]) == 0
    assert jobs_queued(jobs_dir) == before + 3
    assert (out / "a.png.pdf").exists()


def test_ctrl_c_stops_at_once_says_what_it_left_and_the_next_run_goes_on(served: tuple[str, Path], tmp_path: Path):
    url, jobs_dir = served
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "first.png").write_bytes(png_bytes())
    (inputs / "long.pdf").write_bytes(make_pdf(40))  # 40 pages, one at a time: about 8 s
    before = jobs_queued(jobs_dir)
    command = [*CLI, str(inputs), "--url", url, "--out", str(out), "--api-key", KEY, "--concurrency", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def image_done_and_job_queued() -> bool:
        state = json.loads((out / STATE_FILE).read_text()) if (out / STATE_FILE).exists() else {}
        return len(state.get("done", {})) == 1 and len(state.get("jobs", {})) == 1

    try:
        wait_until(image_done_and_job_queued, timeout_s=30, interval_s=0.05)
        process.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
        stdout, stderr = process.communicate(timeout=5)  # the job has seconds to go: the command does not wait
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)  # its pipes read and closed: nothing left for the next test's collector
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    (queued,) = json.loads((out / STATE_FILE).read_text())["jobs"].values()
    job_id = queued["id"]
    assert "interrupted: 1 of 2 inputs finished" in stderr
    assert f"long.pdf (job {job_id} goes on on the service)" in stderr
    assert not (out / "long.pdf.json").exists()  # nothing written after the interrupt
    second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"waiting on job {job_id}" in " ".join(second.stderr.split())
    assert jobs_queued(jobs_dir) == before + 1
    assert json.loads((out / "long.pdf.json").read_text())["pages_total"] == 40


def test_an_interrupted_run_resumes_without_redoing_anything(served: tuple[str, Path], tmp_path: Path) -> None:
    url, jobs_dir = served
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "first.png").write_bytes(png_bytes())
    (inputs / "long.pdf").write_bytes(make_pdf(8))  # 8 pages, one at a time: about 2 s
    before = jobs_queued(jobs_dir)
    command = [*CLI, str(inputs), "--url", url, "--out", str(out), "--api-key", KEY, "--concurrency", "2"]
    log = (tmp_path / "first-run.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def image_done_and_job_queued() -> bool:
        state = json.loads((out / STATE_FILE).read_text()) if (out / STATE_FILE).exists() else {}
        return len(state.get("done", {})) == 1 and len(state.get("jobs", {})) == 1

    try:
        wait_until(image_done_and_job_queued, timeout_s=30, interval_s=0.05)
        os.killpg(process.pid, signal.SIGKILL)  # as a power cut would: no chance to clean up
    finally:
        process.wait(timeout=10)
        log.close()
    assert not (out / "long.pdf.json").exists()
    image_written = (out / "first.png.json").stat().st_mtime_ns
    second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "waiting on job" in second.stderr  # the first run's job, not a new one
    assert jobs_queued(jobs_dir) == before + 1
    assert (out / "first.png.json").stat().st_mtime_ns == image_written
    assert json.loads((out / "long.pdf.json").read_text())["pages_total"] == 8
    assert json.loads((out / STATE_FILE).read_text())["jobs"] == {}


def test_a_service_answering_503_for_a_while_is_waited_for(stand_in: str, tmp_path: Path) -> None:
    """The real admission bound: one page in flight, held by another client for 3 s; the CLI waits Retry-After."""
    image = tmp_path / "in" / "scan.png"
    image.parent.mkdir()
    image.write_bytes(png_bytes())
    with serve_service(tmp_path, stand_in, api_keys=KEY, max_pages_in_flight=1) as url:
        requests.post(f"{stand_in}/stand-in/mode", json={"mode": "slow", "seconds": 3}, timeout=5)
        try:
            holder = threading.Thread(
                target=requests.post,
                args=(f"{url}/ocr",),
                kwargs={"files": {"file": ("x.png", png_bytes())}, "headers": {"X-API-Key": KEY}, "timeout": 30},
            )
            holder.start()
            wait_until(lambda: requests.get(f"{url}/health", timeout=5).json()["pages_in_flight"] == 1, timeout_s=10)
            requests.post(f"{stand_in}/stand-in/mode", json={"mode": "normal"}, timeout=5)  # the held page stays slow
            command = [
                sys.executable,
                "-m",
                "ocr_client",
                str(image.parent),
                "--url",
                url,
                "--out",
                str(tmp_path / "out"),
            ]
            started = time.monotonic()
            run = subprocess.run(
                command, capture_output=True, text=True, timeout=120, check=False,
                env={**os.environ, "DEEPSEEK_OCR_API_KEY": KEY}, cwd=REPO,
            )  # fmt: skip
            holder.join()
        finally:
            requests.post(f"{stand_in}/stand-in/mode", json={"mode": "normal"}, timeout=5)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "service busy" in run.stderr
    assert "overloaded, HTTP 503" in run.stderr
    assert time.monotonic() - started >= 4  # it waited what Retry-After said (5 s), not a tight loop
    assert (tmp_path / "out" / "scan.png.json").exists()


def test_the_client_gives_up_with_the_api_error_after_its_retries(served: tuple[str, Path]) -> None:
    url, _ = served
    waits: list[float] = []
    client = Client(url, api_key="wrong-key-0123456789", sleep=waits.append)
    with pytest.raises(ApiError) as refused:
        client.job("nope")
    assert (refused.value.status, refused.value.code) == (401, "invalid_api_key")
    assert waits == []  # a 401 is not retried


def test_the_client_knows_the_finished_statuses_the_service_has() -> None:
    assert CLIENT_FINISHED == SERVICE_FINISHED


def test_the_command_is_installed_and_refuses_bad_arguments(tmp_path: Path) -> None:
    for command in (CLI, [sys.executable, "-m", "ocr_client"]):
        shown = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60, check=False)
        assert shown.returncode == 0
        assert "--url" in shown.stdout
    missing = subprocess.run(
        [*CLI, str(tmp_path / "nothing-here")], capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 2
    assert "no such file" in missing.stderr
    (tmp_path / "scan.png").write_bytes(png_bytes())
    unreachable = [*CLI, str(tmp_path / "scan.png"), "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "o")]
    down = subprocess.run(unreachable, capture_output=True, text=True, timeout=60, check=False)
    assert down.returncode == 1
    assert "does not answer" in down.stderr


def test_a_jobs_bar_says_it_is_queued_or_waiting_for_the_engine():
    from ocr_client.cli import job_state

    assert job_state({"status": "queued", "queue_position": 1}) == ": queued"
    assert job_state({"status": "queued", "queue_position": 4}) == ": queued, 3 job(s) ahead"
    waiting = {"status": "queued", "error": {"code": "engine_unavailable", "retrying": True}}
    assert job_state(waiting) == ": waiting, the engine is unavailable (engine_unavailable); it will be tried again"
    assert job_state({"status": "running"}) == ""


def test_start_server_installs_the_deepseek_ocr_command_into_its_environment(tmp_path: Path) -> None:
    """The README's CLI lines after its documented setup: ./start_server.sh installs the project (editable) into the
    environment it runs, so .venv/bin/deepseek-ocr exists. A checkout whose .venv is set up already (its requirement
    stamps present) and whose Python records what it is asked to run stands in for a first start."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for part in ("start_server.sh", "scripts", "ocr_api", "requirements.txt", "pyproject.toml"):
        source = REPO / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, checkout / part)
    bin_dir = checkout / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    asked = tmp_path / "asked"
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$@" >> {asked}\n')
    (bin_dir / "python").chmod(0o755)
    digest = hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest()[:16]
    (checkout / ".venv" / f".installed-{digest}").touch()
    run = subprocess.run([str(checkout / "start_server.sh")], cwd=checkout, capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "OCR_ENGINE_URL": "http://127.0.0.1:9"}, timeout=60,
                         check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert asked.read_text().splitlines() == ["-m pip install --quiet --no-deps -e .", "app.py"]
