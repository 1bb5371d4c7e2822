"""olmOCR-Bench through a running service (or any OpenAI-compatible server), scored by olmOCR-Bench's own scorer.

Give it a directory in olmOCR-Bench's layout (``pdfs/``, the ``*.jsonl`` tests): every page a test names is read,
its markdown written where the scorer reads a candidate's (``DIR/<name>/<pdf>_pg<page>_repeat1.md``), then the
scorer (``olmocr.bench.benchmark`` from PyPI, in ``.venv-quality``, its browser pointed at Debian's Chromium:
ocr_dev/olmocr_scorer.py) scores that candidate and the overall and per-category results are printed. A run that
stops goes on where it stopped: pages already written are not read again (delete the candidate's folder to start
over). Each page's progress is printed as it is written.

How pages are read:

- ``--via pages`` (default): one ``POST /ocr`` per page (``pages=N``), ``--concurrency`` at a time;
- ``--via jobs``: one ``POST /jobs`` per PDF with the pages it needs, waited on; for many-page documents;
- ``--via openai``: the page rendered here (PyMuPDF at ``--dpi``, as DeepSeek's PDF script renders it) and sent as
  a chat completion with the DeepSeek recipe (``vllm_xargs`` guard, special tokens kept) to ``--url``/v1, a bare
  ``vllm serve`` or this service's ``/v1``; its raw output made markdown by the service's own interpretation. So the
  service and vLLM driven directly are compared on the same pages, by the same scorer, in one run each.

    .venv/bin/python -m bench.quality ~/olmOCR-Bench/bench_data --url http://gpu-box:5000 --name service
    .venv/bin/python -m bench.quality ~/olmOCR-Bench/bench_data --via openai --url http://gpu-box:8000 \\
        --model deepseek-ai/DeepSeek-OCR-2 --name vllm-direct
    .venv/bin/python -m bench.quality DIR --score-only --name service     # score what is written

docs/QUALITY.md says what the settings (DPI, mode, prompt, image fidelity) cost and how to compare them.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from ocr_client.client import FINISHED, Client
from ocr_dev.olmocr_bench import SCORER_PYTHON, BenchPage, Score, bench_pages, score

# DeepSeek-OCR-2's guard as the authors' PDF script sets it (20/50; their image script 20/90, the service's default);
# 128821 and 128822 are <td> and </td> in the real tokenizer.
RECIPE_XARGS = {"ngram_size": 20, "window_size": 50, "whitelist_token_ids": [128821, 128822]}
DEFAULT_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


# --- how a page is read ---

Reader = Callable[[Path, BenchPage], str]


def service_page_reader(client: Client, fields: dict[str, str]) -> Reader:
    """One POST /ocr per page: the page's markdown (its text, for tasks without layout)."""

    def read(pdf: Path, page: BenchPage) -> str:
        result = client.ocr(pdf, pages=str(page.page), **fields)
        entry = result["pages"][0]
        return entry.get("markdown") or entry.get("text") or ""

    return read


def service_job_reader(client: Client, fields: dict[str, str], pages: list[BenchPage]) -> Reader:
    """One job per PDF, with every page it needs; the first page asked of a PDF waits for its job."""
    wanted: dict[str, list[int]] = {}
    for page in pages:
        wanted.setdefault(page.pdf, []).append(page.page)
    done: dict[str, dict[int, str]] = {}
    locks: dict[str, threading.Lock] = {pdf: threading.Lock() for pdf in wanted}

    def read(pdf: Path, page: BenchPage) -> str:
        with locks[page.pdf]:
            if page.pdf not in done:
                numbers = ",".join(map(str, sorted(wanted[page.pdf])))
                job = client.submit_job(pdf, pages=numbers, **fields)
                if client.wait_for_job(job["id"])["status"] not in FINISHED[:2]:  # succeeded, partial
                    raise RuntimeError(f"the job for {page.pdf} did not succeed")
                entries = client.job_pages(job["id"], limit=500)["pages"]
                done[page.pdf] = {entry["page"]: entry.get("markdown") or entry.get("text") or "" for entry in entries}
        return done[page.pdf][page.page]

    return read


def openai_reader(url: str, model: str, prompt: str, *, dpi: int, api_key: str | None, max_tokens: int) -> Reader:
    """The page rendered here and sent as a chat completion with the DeepSeek recipe; the answer's markup made
    markdown by the service's own interpretation (ocr_api/interpretation.py)."""
    import pymupdf

    from ocr_api.interpretation import parse_blocks, to_markdown

    session = requests.Session()
    if api_key:
        session.headers["Authorization"] = f"Bearer {api_key}"

    def read(pdf: Path, page: BenchPage) -> str:
        with pymupdf.open(pdf) as document:
            pixmap = document.load_page(page.page - 1).get_pixmap(dpi=dpi, alpha=False)
            image, size = pixmap.tobytes("png"), (pixmap.width, pixmap.height)
        image_url = "data:image/png;base64," + base64.b64encode(image).decode()
        body = {
            "model": model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": prompt},
            ]}],
            "temperature": 0.0,
            "max_tokens": max_tokens,
            "skip_special_tokens": False,
            "vllm_xargs": RECIPE_XARGS,
        }  # fmt: skip
        response = session.post(f"{url.rstrip('/')}/v1/chat/completions", json=body, timeout=600)
        response.raise_for_status()
        raw = response.json()["choices"][0]["message"]["content"] or ""
        return to_markdown(parse_blocks(raw, *size))

    return read


# --- reading, resumable ---


@dataclass
class Progress:
    total: int
    done: int = 0
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tell(self, page: BenchPage, what: str) -> None:
        with self.lock:
            self.done += 1
            print(f"[{self.done}/{self.total}] {page.pdf} page {page.page}: {what}", file=sys.stderr, flush=True)


def read_pages(directory: Path, candidate: Path, read: Reader, pages: list[BenchPage], concurrency: int) -> Progress:
    """Read every page whose markdown is not written yet, ``concurrency`` at a time, in page order."""
    todo = [page for page in pages if not page.output(candidate).exists()]
    progress = Progress(len(todo))
    print(f"{len(pages) - len(todo)} of {len(pages)} pages already written; reading {len(todo)}", file=sys.stderr)

    def one(page: BenchPage) -> None:
        started = time.monotonic()
        try:
            markdown = read(directory / "pdfs" / page.pdf, page)
        except Exception as error:  # noqa: BLE001 - one page's failure is reported; the run goes on
            progress.failed.append(f"{page.pdf} page {page.page}: {error}")
            progress.tell(page, f"FAILED: {error}")
            return
        target = page.output(candidate)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(".tmp")
        temporary.write_text(markdown)
        temporary.replace(target)  # whole or absent: a stopped run never leaves half a page
        progress.tell(page, f"{len(markdown)} characters in {time.monotonic() - started:.1f} s")

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, todo))
    return progress


# --- scoring ---


def report(name: str, result: Score) -> str:
    lines = [f"{name}: {result.overall:.1f}% overall (olmOCR-Bench's scorer: the average of per-JSONL scores)"]
    lines += [f"  {kind:<9} {pct:5.1f}% of {count} tests" for kind, (pct, count) in sorted(result.by_type.items())]
    lines += [f"  {jsonl:<14} {passed}/{total} passed" for jsonl, (passed, total) in sorted(result.by_jsonl.items())]
    return "\n".join(lines)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="olmOCR-Bench's layout: pdfs/ and the *.jsonl tests")
    parser.add_argument("--url", default="http://localhost:5000", help="the service, or the OpenAI server")
    parser.add_argument("--api-key", default=os.environ.get("DEEPSEEK_OCR_API_KEY"))
    parser.add_argument("--name", default="deepseek-ocr-service", help="the candidate's folder and name")
    parser.add_argument("--via", choices=("pages", "jobs", "openai"), default="pages")
    parser.add_argument("--task", default="markdown", help="the service's task (pages, jobs)")
    parser.add_argument("--prompt", help="a prompt instead of the task (every way)")
    parser.add_argument("--mode", help="the service's resolution mode (pages, jobs)")
    parser.add_argument("--max-tokens", type=int, help="a page's output budget (default: the server's; openai 8192)")
    parser.add_argument("--model", default="deepseek-ai/DeepSeek-OCR-2", help="--via openai: the served model")
    parser.add_argument("--dpi", type=int, default=144, help="--via openai: how pages are rendered (144: DeepSeek's)")
    parser.add_argument("--concurrency", type=int, default=8, help="pages (or PDFs) in flight at once")
    parser.add_argument("--score-only", action="store_true", help="score what is written, read nothing")
    parser.add_argument("--no-score", action="store_true", help="read the pages, do not score")
    parser.add_argument("--json", type=Path, help="also write the candidate's results here (failed tests by id)")
    return parser.parse_args(argv)


def setup_mistake(directory: Path, scoring: bool) -> str | None:
    """What is wrong before anything is read or scored, in the words of what to do about it; None when all is set."""
    if not (directory / "pdfs").is_dir() or not any(directory.glob("*.jsonl")):
        return (f"{directory} is not olmOCR-Bench's layout (a pdfs/ folder and the *.jsonl tests beside it); name "
                "the benchmark's folder, e.g. ../shared/quality/olmocr-bench-sample")  # fmt: skip
    if not bench_pages(directory):
        return f"{directory} names no page: pdfs/ holds no PDF and the tests name none"
    if scoring and not SCORER_PYTHON.exists():
        return (
            f"olmOCR-Bench's scorer is not installed ({SCORER_PYTHON.parent.parent.name} is missing): run "
            "`bash -c '. scripts/bootstrap.sh && ensure_quality_venv'` once (about 700 MB), or pass --no-score"
        )
    return None


def reader_for(args: argparse.Namespace, pages: list[BenchPage]) -> Reader:
    if args.via == "openai":
        return openai_reader(args.url, args.model, args.prompt or DEFAULT_PROMPT, dpi=args.dpi, api_key=args.api_key,
                             max_tokens=args.max_tokens or 8192)  # fmt: skip
    fields = {"prompt": args.prompt} if args.prompt else {"task": args.task}
    if args.max_tokens:
        fields["max_tokens"] = str(args.max_tokens)
    if args.mode:
        fields["mode"] = args.mode
    client = Client(args.url, args.api_key)
    if args.via == "jobs":
        return service_job_reader(client, fields, pages)
    return service_page_reader(client, fields)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    directory = args.directory.resolve()
    candidate = directory / args.name
    mistake = setup_mistake(directory, scoring=not args.no_score)
    if mistake:
        print(f"error: {mistake}", file=sys.stderr)
        return 2
    pages = bench_pages(directory)
    if not args.score_only:
        progress = read_pages(directory, candidate, reader_for(args, pages), pages, args.concurrency)
        if progress.failed:
            print(f"{len(progress.failed)} page(s) failed (run again to retry them):", file=sys.stderr)
            for line in progress.failed:
                print(f"  {line}", file=sys.stderr)
    if args.no_score:
        return 0
    result = score(directory, args.name)
    print(report(args.name, result))
    if args.json:
        args.json.write_text(json.dumps({"name": args.name, **result.to_dict()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
