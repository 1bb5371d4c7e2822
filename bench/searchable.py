"""Searchable PDFs: how findable and how well placed the text layer is, what it adds to a file and to a page's time,
and a long job's memory while its PDF is written.

The engine is the STAND-IN (no model), answering each page with its exact blocks in DeepSeek-OCR's markup; the
service is ``./start_server.sh`` (one process: the API and the job consumer) with the stand-in as
``OCR_ENGINE_URL``. Nothing here measures recognition: the model's answer is taken as exact, and what is measured is
what the service makes of it.

- **quality**: the held-in pages of ``ocr_dev/searchable_pages.py`` (one column of a sans face at 20 and 11 pt; two
  columns of a serif face at 10 pt; a sans paragraph at 9 pt, a table and a serif paragraph at 14 pt), scanned at
  150 dpi, sent to ``/ocr`` with ``output=pdf`` and as a job: every word of the answer findable by ``pdftotext`` and by
  PyMuPDF, in the answer's order, on its own line (a layer word of the same text over the true word, its middle
  within the true word's height), the pages rendered exactly as the scan's, ``qpdf --check``, bytes added per page;
- **time**: ``/ocr`` with ``output=pdf`` against ``output=json`` on the same pages, alternated (``--repeats``): the
  time the PDF adds per page, and the writer alone (``SearchablePdf``, in this process) per page;
- **memory**: a ``--pages``-page scan (5,000; one 100-dpi page image shared by every page, so that the file stays
  small) as a job with ``output=pdf``, then the same with ``output=json``, then a ``--small``-page one with
  ``output=pdf``, each on a fresh start: the process's peak RSS (VmHWM), and the PDF checked (pages, qpdf, text).

    .venv/bin/python -m bench.searchable                 # about 6 minutes on 2 cores
    .venv/bin/python -m bench.searchable --pages 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path

import pymupdf
import requests

from ocr_api.interpretation import clean_text, parse_blocks
from ocr_api.searchable_pdf import PageText, PdfPart, SearchablePdf
from ocr_dev.searchable_pages import TruePage, answer_words, scan, score, text_pages
from ocr_dev.servers import environment, memory_mib, running, stand_in_engine


def serve(engine_url: str, work: Path, **settings: str) -> tuple[str, AbstractContextManager[subprocess.Popen]]:
    """``./start_server.sh`` on the stand-in, not started yet: its URL, and the context that runs it."""
    work.mkdir(parents=True, exist_ok=True)
    env = environment(work, OCR_ENGINE_URL=engine_url, MAX_TOKENS="4096", JOB_MAX_PAGES="20000",
                      KEY_MAX_JOB_PAGES="100000", **settings)  # fmt: skip
    return f"http://{env['HOST']}:{env['PORT']}", running("start_server.sh", env, work / "server.log", timeout_s=300)


def answer_with(engine_url: str, answers: list[str] | None = None, text: str | None = None) -> None:
    if answers is not None:
        requests.post(f"{engine_url}/stand-in/answers", json={"answers": answers}, timeout=5).raise_for_status()
    requests.post(f"{engine_url}/stand-in/text", json={"text": text}, timeout=5).raise_for_status()


def wait_for_job(url: str, job_id: str) -> dict:
    while True:
        view = requests.get(f"{url}/jobs/{job_id}", timeout=30).json()
        if view["status"] in ("succeeded", "partial", "failed", "cancelled"):
            return view
        time.sleep(0.5)


def quality(engine_url: str, work: Path, scanned: bytes, truths: list[TruePage], repeats: int) -> None:
    markups = [truth.markup for truth in truths]
    url, server = serve(engine_url, work / "quality", ENGINE_BATCH_PAGES="1")  # a page at a time: answers in order
    with server:
        answer_with(engine_url, markups)
        made = requests.post(f"{url}/ocr", files={"file": ("scan.pdf", scanned)}, data={"output": "pdf"}, timeout=600)
        made.raise_for_status()
        report("/ocr output=pdf", score(scanned, made.content, truths))
        answer_with(engine_url, markups)
        job = requests.post(f"{url}/jobs", files={"file": ("scan.pdf", scanned)}, data={"output": "pdf"}, timeout=60)
        wait_for_job(url, job.json()["id"])
        result = requests.get(f"{url}/jobs/{job.json()['id']}/result.pdf", timeout=600)
        result.raise_for_status()
        report("job result.pdf", score(scanned, result.content, truths))
        seconds: dict[str, list[float]] = {"json": [], "pdf": []}
        for _ in range(repeats):
            for output in ("json", "pdf"):
                answer_with(engine_url, markups)
                started = time.perf_counter()
                requests.post(f"{url}/ocr", files={"file": ("scan.pdf", scanned)}, data={"output": output},
                              timeout=600).raise_for_status()  # fmt: skip
                seconds[output].append(time.perf_counter() - started)
        answer_with(engine_url, [])
    pages = len(truths)
    json_s, pdf_s = statistics.median(seconds["json"]), statistics.median(seconds["pdf"])
    print(f"/ocr of {pages} pages, median of {repeats}: json {json_s:.3f} s, pdf {pdf_s:.3f} s "
          f"(x{pdf_s / json_s:.2f}; {(pdf_s - json_s) / pages * 1000:.0f} ms a page)")  # fmt: skip
    path = work / "scan.pdf"
    path.write_bytes(scanned)
    started = time.perf_counter()
    for _ in range(repeats):
        writer = SearchablePdf(None, [PdfPart(path, tuple(range(pages)))])
        for truth in truths:
            writer.add(PageText(tuple(parse_blocks(truth.markup, *truth.size)), clean_text(truth.markup), truth.size))
        writer.finish()
    print(f"the writer alone: {(time.perf_counter() - started) / repeats / pages * 1000:.1f} ms a page")
    first = pymupdf.open(stream=scanned, filetype="pdf")
    first.select([0])
    for count in (1, 10, 200):  # what the layer adds: the font once a file, then each page's lines
        source, target = work / f"long-{count}.pdf", work / f"long-{count}-searchable.pdf"
        source.write_bytes(long_scan(first.tobytes(), count))
        writer = SearchablePdf(target, [PdfPart(source, tuple(range(count)))])
        for _ in range(count):
            writer.add(PageText(tuple(parse_blocks(truths[0].markup, *truths[0].size)), clean_text(truths[0].markup),
                                truths[0].size))  # fmt: skip
        writer.finish()
        added = target.stat().st_size - source.stat().st_size
        print(f"bytes added to a {count}-page file: {added / count:.0f} a page ({truths[0].markup.count('<|ref|>')} "
              "blocks, 91 words a page)")  # fmt: skip


def report(name: str, result: object) -> None:
    print(f"{name}: " + ", ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                                  for key, value in vars(result).items()))  # fmt: skip


def long_scan(truth_page: bytes, pages: int) -> bytes:
    """A ``pages``-page scan whose every page shows one 100-dpi picture (stored once)."""
    source = pymupdf.open(stream=truth_page, filetype="pdf")
    picture = source[0].get_pixmap(dpi=100, colorspace=pymupdf.csGRAY).tobytes("jpeg", jpg_quality=75)
    document = pymupdf.open()
    xref = 0
    for _ in range(pages):
        page = document.new_page(width=612, height=792)
        xref = page.insert_image(page.rect, stream=picture, xref=xref)
    return document.tobytes(garbage=1)


def long_job(engine_url: str, work: Path, scanned: bytes, truth: TruePage, output: str) -> tuple[float, float, int]:
    """One job of the long scan on a fresh start: its seconds, the process's peak RSS (MiB), and the PDF's pages."""
    answer_with(engine_url, [], truth.markup)
    url, server = serve(engine_url, work)
    with server as process:
        started = time.perf_counter()
        job = requests.post(f"{url}/jobs", files={"file": ("long.pdf", scanned)}, data={"output": output}, timeout=300)
        job.raise_for_status()
        view = wait_for_job(url, job.json()["id"])
        seconds = time.perf_counter() - started
        assert view["status"] == "succeeded", view
        peak = memory_mib(process.pid, "VmHWM")
        pages = 0
        if output == "pdf":
            path = work / "result.pdf"
            with requests.get(f"{url}/jobs/{job.json()['id']}/result.pdf", stream=True, timeout=600) as response:
                response.raise_for_status()
                with path.open("wb") as handle:
                    for chunk in response.iter_content(1 << 20):
                        handle.write(chunk)
            check = subprocess.run(["qpdf", "--check", str(path)], capture_output=True, check=False)
            made = pymupdf.open(path)
            pages = made.page_count
            last = made[-1].get_text().split()
            assert check.returncode == 0, check.stdout[-500:]
            assert last == answer_words([truth])[0], last[:10]
    return seconds, peak, pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    scanned, truths = scan(text_pages(), 150)
    engine = stand_in_engine(step_ms=2, tokens_per_page=5, extra=["--max-batch", "256"])
    with tempfile.TemporaryDirectory() as folder, engine as engine_url:
        work = Path(folder)
        quality(engine_url, work, scanned, truths, arguments.repeats)
        first = pymupdf.open(stream=scanned, filetype="pdf")
        first.select([0])
        long = long_scan(first.tobytes(), arguments.pages)
        small = long_scan(first.tobytes(), arguments.small)
        print(f"the {arguments.pages}-page scan: {len(long) / 1e6:.1f} MB")
        for name, data, output in (("pdf", long, "pdf"), ("json", long, "json"), ("pdf-small", small, "pdf")):
            seconds, peak, pages = long_job(engine_url, work / name, data, truths[0], output)
            count = arguments.small if name == "pdf-small" else arguments.pages
            checked = f", PDF of {pages} pages, qpdf clean, last page's text the answer's" if pages else ""
            print(f"job of {count} pages, output={output}: {seconds:.0f} s, peak RSS {peak:.0f} MiB{checked}")


if __name__ == "__main__":
    main()
