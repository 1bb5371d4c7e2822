"""A long job with annotate=true (as the web page always sends it): the size of /result and /pages, what JOBS_DIR
grows by, and a gunicorn worker's memory, for a short and a long document in one run.

./start_production.sh (2 workers x 4 threads, the job consumer beside them) with a STAND-IN engine (no model: 10
tokens a page, 5 ms a step, every page answered with the same grounded output, a figure and three text blocks, so
every annotated page has boxes drawn). The PDF's pages are dense text (44 lines of 9 pt), so an annotated page's PNG
is the size a real page's is. Per document: the job from POST to its end, then ``GET /result`` (bytes, seconds) and
``GET /pages?limit=500`` (bytes), JOBS_DIR's growth, and each worker's resident memory (VmRSS) before, its peak
(VmHWM) and its RSS after. ``--repo`` runs another checkout's start_production.sh (``git worktree add DIR COMMIT``, its
.venv linked to this one's) with the same engine and documents: the before and after of a change, in one invocation.

    .venv/bin/python -m bench.annotated_job                        # 100 and 1,500 pages, this checkout
    .venv/bin/python -m bench.annotated_job --repo /tmp/before     # the same against another checkout
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pymupdf
import requests

from ocr_dev.servers import REPO, environment, gunicorn_workers, memory_mib, stand_in_engine, wait_ready

GROUNDED = (
    "<|ref|>title<|/ref|><|det|>[[80, 40, 920, 90]]<|/det|>\nA dense page\n"
    "<|ref|>image<|/ref|><|det|>[[80, 120, 500, 400]]<|/det|>\n"
    "<|ref|>text<|/ref|><|det|>[[80, 420, 920, 700]]<|/det|>\nThe first paragraph of the page.\n"
    "<|ref|>text<|/ref|><|det|>[[80, 720, 920, 960]]<|/det|>\nThe second paragraph of the page."
)


def dense_pdf(pages: int) -> bytes:
    """A PDF of ``pages`` A4 pages, each 44 lines of 9-point text."""
    document = pymupdf.open()
    line = "The quick brown fox jumps over the lazy dog, 0123456789, and the service reads it back again."
    for number in range(pages):
        page = document.new_page()
        for row in range(44):
            page.insert_text((50, 60 + row * 17), f"{number + 1}.{row + 1} {line}", fontsize=9)
    data = document.tobytes(garbage=3, deflate=True)
    document.close()
    return data


def directory_mb(path: Path) -> float:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file()) / 1e6


def run(repo: Path, engine_url: str, pages: int, work: Path) -> dict:
    """One job on a fresh start of ``repo``'s start_production.sh; its sizes, times and the workers' memory."""
    work.mkdir(parents=True)
    env = environment(work, OCR_ENGINE_URL=engine_url, WORKERS="2", THREADS="4", JOB_MAX_PAGES=str(pages),
                      MAX_PDF_PAGES="100", LOG_LEVEL="WARNING", ENGINE_TIMEOUT_S="600")  # fmt: skip
    url = f"http://127.0.0.1:{env['PORT']}"
    pdf = dense_pdf(pages)
    log = work / "production.log"
    with log.open("wb") as output:
        process = subprocess.Popen([str(repo / "start_production.sh")], cwd=repo, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    report: dict = {"pages": pages, "pdf_mb": round(len(pdf) / 1e6, 1)}
    try:
        wait_ready(url, process, log, 300)
        workers = gunicorn_workers(process.pid)
        report["workers_before_mib"] = [memory_mib(pid) for pid in workers]
        jobs_before = directory_mb(work / "jobs")
        started = time.monotonic()
        job = requests.post(f"{url}/jobs", files={"file": ("dense.pdf", pdf)}, data={"annotate": "true"}, timeout=600)
        job.raise_for_status()
        links = job.json()["urls"]
        while (view := requests.get(links["self"], timeout=30).json())["status"] in ("queued", "running"):
            time.sleep(1)
        report["job_s"], report["status"] = round(time.monotonic() - started, 1), view["status"]
        report["jobs_dir_growth_mb"] = round(directory_mb(work / "jobs") - jobs_before, 1)
        started = time.monotonic()
        result = requests.get(links["result"], timeout=600)
        report["result_s"] = round(time.monotonic() - started, 2)
        report["result_mb"] = round(len(result.content) / 1e6, 2)
        first = requests.get(f"{links['pages']}?limit=500", timeout=600)
        report["pages_500_mb"] = round(len(first.content) / 1e6, 2)
        report["workers_peak_mib"] = [memory_mib(pid, "VmHWM") for pid in workers]
        report["workers_after_mib"] = [memory_mib(pid) for pid in workers]
        link = first.json()["pages"][0].get("annotated_image_url")
        if link:  # a picture made when asked for: this checkout serves them by URL
            started = time.monotonic()
            picture = requests.get(link, timeout=60)
            report["picture_kb"] = round(len(picture.content) / 1e3)
            report["picture_s"] = round(time.monotonic() - started, 3)
        else:  # inline: the first page's data URL
            report["picture_kb"] = round(len(first.json()["pages"][0]["annotated_image"]) / 1e3)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose start_production.sh runs")
    parser.add_argument("--pages", default="100,1500", help="documents' lengths, comma-separated")
    args = parser.parse_args()
    print(f"STAND-IN engine (no model); {args.repo}'s start_production.sh, 2 workers x 4 threads; 2 CPU cores")
    with stand_in_engine(step_ms=5, tokens_per_page=10) as engine_url, tempfile.TemporaryDirectory() as work:
        requests.post(f"{engine_url}/stand-in/text", json={"text": GROUNDED}, timeout=5).raise_for_status()
        for pages in (int(value) for value in args.pages.split(",")):
            print(json.dumps(run(args.repo.resolve(), engine_url, pages, Path(work) / str(pages))), flush=True)


if __name__ == "__main__":
    main()
