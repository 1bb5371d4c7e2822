"""Sharing the engine: a small job and single pages of one key while another key's book runs.

The engine is the STAND-IN (no model) with a bounded batch, as a GPU's is bounded by its memory: at most
``--max-batch`` (8) pages decode at once, each ``--tokens`` (100) steps of ``--step-ms`` (5) ms, the rest wait, in
arrival order or, when the service starts it so, in vLLM's priority order. The service runs in this process with its
defaults (``serve_service``: the job consumer beside the API, as ``./start_server.sh`` runs it), keys A and B on;
with ``--redis`` two services share a real Redis (two consumers), the requests going to the first.

In one run:

- **alone**: key B's 3-page job (from POST to finished) and five single-page ``POST /ocr`` of key B (median), on
  an idle service; then key A's 300-page book alone;
- **shared**: the book again, and once it keeps the engine full, B's five single pages, then B's 3-page job, each
  sent after a random fraction of a page's time (the stand-in's pages, all of one length, finish in step; people
  do not arrive in step with them);
  the engine's fullness (running / max batch, sampled every 0.1 s) while the book runs; the book's time.

The verdict lines are the issue's: the 3-page job within 3x its time alone, a page within 2x, the engine at least
0.85 full, the book within 1.1x its time alone plus the others' pages at the engine's rate.

    .venv/bin/python -m bench.fairness            # about 2 minutes
    .venv/bin/python -m bench.fairness --redis    # two consumers on Redis
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import requests

from ocr_dev.inputs import make_pdf, png_bytes
from ocr_dev.servers import metric_samples, redis_server, serve_service, stand_in_engine

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
FINISHED = {"succeeded", "partial", "failed", "cancelled"}
PAGE_SIDE_PT = 200  # small pages: rendering and sending them is not what is measured
PAGES = 5  # single pages timed, alone and shared (the median counts)


def run_job(url: str, key: str, pages: int) -> str:
    pdf = make_pdf(pages=pages, size=(PAGE_SIDE_PT, PAGE_SIDE_PT))
    answer = requests.post(f"{url}/jobs", files={"files": ("book.pdf", pdf)}, headers=_auth(key), timeout=60)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def wait_job(url: str, key: str, job: str, poll_s: float = 0.05) -> dict:
    while True:
        body = requests.get(f"{url}/jobs/{job}", headers=_auth(key), timeout=30).json()
        if body["status"] in FINISHED:
            return body
        time.sleep(poll_s)


def job_status(url: str, key: str, job: str) -> str:
    return str(requests.get(f"{url}/jobs/{job}", headers=_auth(key), timeout=30).json()["status"])


def timed_job(url: str, key: str, pages: int, after_s: float = 0.0) -> float:
    time.sleep(after_s)
    started = time.monotonic()
    body = wait_job(url, key, run_job(url, key, pages))
    assert body["status"] == "succeeded", body
    took = time.monotonic() - started
    created, began = (datetime.fromisoformat(body[name]) for name in ("created_at", "started_at"))
    print(f"{pages}-page job: {took:.2f} s, {(began - created).total_seconds():.2f} s of it queued", file=sys.stderr)
    return took


def timed_page(url: str, key: str, after_s: float = 0.0) -> float:
    time.sleep(after_s)
    started = time.monotonic()
    answer = requests.post(f"{url}/ocr", files={"file": ("page.png", png_bytes((400, 400)))}, headers=_auth(key),
                           timeout=120)  # fmt: skip
    assert answer.status_code == 200, answer.text
    return time.monotonic() - started


def running_pages(engine_url: str) -> float:
    samples = metric_samples(requests.get(f"{engine_url}/metrics", timeout=5).text)
    return samples[("vllm:num_requests_running", (("model_name", "stand-in"),))]


class Fullness:
    """Samples how many pages the engine decodes, every 0.1 s, until stopped."""

    def __init__(self, engine_url: str):
        self.engine_url, self.samples = engine_url, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(running_pages(self.engine_url))

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.samples


@contextlib.contextmanager
def services(tmp: Path, engine_url: str, redis: bool) -> Iterator[str]:
    """The service (two sharing Redis with ``redis``); yields the first's URL."""
    settings = {"api_keys": f"{KEY_A},{KEY_B}", "max_tokens": 256, "jobs_dir": str(tmp / "jobs")}
    settings["log_level"] = "WARNING"
    with contextlib.ExitStack() as stack:
        if redis:
            settings["redis_url"] = stack.enter_context(redis_server(tmp / "redis"))
            stack.enter_context(serve_service(tmp / "second", engine_url, **settings))
        yield stack.enter_context(serve_service(tmp / "first", engine_url, **settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--step-ms", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--book", type=int, default=300)
    parser.add_argument("--redis", action="store_true", help="two services (two consumers) sharing a real Redis")
    args = parser.parse_args()
    page_s = args.tokens * args.step_ms / 1000
    extra = ["--max-batch", str(args.max_batch), "--scheduling-policy", "priority"]
    # The others come at random moments, not in step with the book's pages (which, all of one length here, finish
    # together): each waits a random fraction of a page's time before it is sent.
    arrivals = random.Random(7)
    tmp = Path(tempfile.mkdtemp(prefix="fairness-"))
    with (
        stand_in_engine(step_ms=args.step_ms, tokens_per_page=args.tokens, extra=extra) as engine_url,
        services(tmp, engine_url, args.redis) as url,
    ):
        timed_page(url, KEY_B)  # warm: connections, first imports
        job_alone = timed_job(url, KEY_B, 3)
        pages_alone = [timed_page(url, KEY_B) for _ in range(PAGES)]
        book_alone = timed_job(url, KEY_A, args.book)

        started = time.monotonic()
        book = run_job(url, KEY_A, args.book)
        while running_pages(engine_url) < args.max_batch:
            time.sleep(0.05)
        fullness = Fullness(engine_url)
        time.sleep(2 * page_s)
        pages_shared = [timed_page(url, KEY_B, after_s=arrivals.uniform(0, page_s)) for _ in range(PAGES)]
        job_shared = timed_job(url, KEY_B, 3, after_s=arrivals.uniform(0, page_s))
        book_ran_throughout = job_status(url, KEY_A, book) == "running"
        assert wait_job(url, KEY_A, book)["status"] == "succeeded"
        book_shared = time.monotonic() - started
        samples = fullness.stop()
    others = (3 + 3) * page_s / args.max_batch  # the time the others' pages take at the engine's rate
    result = {
        "engine": f"stand-in, {args.max_batch} pages at once, {page_s:g} s a page",
        "consumers": 2 if args.redis else 1,
        "book_ran_throughout": book_ran_throughout,
        "job3_alone_s": round(job_alone, 2),
        "job3_shared_s": round(job_shared, 2),
        "job3_ratio": round(job_shared / job_alone, 2),
        "page_alone_s": round(statistics.median(pages_alone), 2),
        "page_shared_s": round(statistics.median(pages_shared), 2),
        "page_ratio": round(statistics.median(pages_shared) / statistics.median(pages_alone), 2),
        "engine_full": round(statistics.mean(samples) / args.max_batch, 3),
        "book_alone_s": round(book_alone, 1),
        "book_shared_s": round(book_shared, 1),
        "book_ratio": round(book_shared / (book_alone + others), 3),
    }
    print(json.dumps(result, indent=1))
    verdict = {
        "job3 within 3x": result["job3_ratio"] <= 3,
        "page within 2x": result["page_ratio"] <= 2,
        "engine at least 0.85 full": result["engine_full"] >= 0.85,
        "book within 1.1x (+ the others' pages)": result["book_ratio"] <= 1.1,
    }
    print(json.dumps(verdict, indent=1))


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


if __name__ == "__main__":
    main()
