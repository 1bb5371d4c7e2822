"""One long PDF against an engine whose pages differ in length: does the service keep the engine fed?

The STAND-IN engine (ocr_dev/stand_in_engine.py, no model) decodes one step every 20 ms for up to 256 requests at
once; page lengths are lognormal around a median of 600 tokens, 5% of the pages run away to the budget and are
answered ``finish_reason: length`` (the service retries those with a stronger guard). In the same run:

- **ideal**: every page sent to the stand-in at once, a runaway sent again the moment it comes back: the shortest
  time this stand-in can take for the document;
- **service**: the PDF through ``./start_server.sh`` with the remote engine (one process, as users start it), with
  ``MAX_PAGES_IN_FLIGHT`` and ``ENGINE_BATCH_PAGES`` at ``--window`` (default 256, the stand-in's batch: every
  admitted page may be in flight; ``--window 32`` is the default settings' window).

Both start the stand-in's length sequence from the same seed, so they draw the same page lengths. With
``--memory`` it also reports the service process's peak RSS (VmHWM) for a 20-page and a 500-page PDF, each in a
fresh process.

    .venv/bin/python -m bench.long_document                 # 200 pages, budget 2048 tokens (about 3 minutes)
    .venv/bin/python -m bench.long_document --pages 100 --window 32
    .venv/bin/python -m bench.long_document --memory
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from ocr_dev.inputs import make_pdf
from ocr_dev.servers import environment, memory_mib, running, stand_in_engine

STEP_MS = 20
MEDIAN_TOKENS = 600
RUNAWAY_SHARE = 0.05
SEED = 11


@contextlib.contextmanager
def long_tail_engine() -> Iterator[tuple[str, Path]]:
    """The long-tail stand-in, and a temporary directory for the runs against it."""
    extra = ["--median-tokens", str(MEDIAN_TOKENS), "--runaway-share", str(RUNAWAY_SHARE), "--seed", str(SEED)]
    with (
        stand_in_engine(step_ms=STEP_MS, tokens_per_page=MEDIAN_TOKENS, extra=extra) as engine_url,
        tempfile.TemporaryDirectory() as work,
    ):
        yield engine_url, Path(work)


def ideal_seconds(engine_url: str, pages: int, budget: int, in_flight: int | None = None) -> float:
    """The stand-in's own best: ``in_flight`` pages at it from the start (default: all), the next sent the moment
    one is answered, each runaway retried at once."""
    requests.post(f"{engine_url}/stand-in/reset", json={"seed": SEED}, timeout=5).raise_for_status()
    body = {"model": "stand-in", "messages": [{"role": "user", "content": "page"}], "max_tokens": budget}
    left = list(range(pages))
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if not left:
                        return
                    left.pop()
                answer = session.post(f"{engine_url}/v1/chat/completions", json=body, timeout=3600).json()
                if answer["choices"][0]["finish_reason"] == "length":  # the service retries a runaway once
                    session.post(f"{engine_url}/v1/chat/completions", json=body, timeout=3600)

    threads = [threading.Thread(target=client) for _ in range(min(pages, in_flight or pages))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def service_seconds(engine_url: str, pages: int, budget: int, window: int, work: Path) -> tuple[float, dict, float]:
    """The same document through ./start_server.sh with the remote engine; also the process's peak RSS in MiB."""
    work.mkdir(parents=True, exist_ok=True)
    requests.post(f"{engine_url}/stand-in/reset", json={"seed": SEED}, timeout=5).raise_for_status()
    env = environment(
        work,
        OCR_ENGINE_URL=engine_url,
        MAX_PDF_PAGES=str(pages),
        MAX_TOKENS=str(budget),
        ENGINE_TIMEOUT_S="3600",
        MAX_PAGES_IN_FLIGHT=str(window),
        ENGINE_BATCH_PAGES=str(window),
        ENGINE_CONNECTIONS=str(window),
        LOG_LEVEL="WARNING",
    )
    pdf = make_pdf(pages)
    with running("start_server.sh", env, work / "server.log", timeout_s=300) as process:
        started = time.monotonic()
        answer = requests.post(
            f"http://127.0.0.1:{env['PORT']}/ocr", files={"file": ("long.pdf", pdf)}, timeout=7200
        )  # fmt: skip
        elapsed = time.monotonic() - started
        peak = memory_mib(process.pid, "VmHWM")
    answer.raise_for_status()
    return elapsed, answer.json(), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--budget", type=int, default=2048, help="MAX_TOKENS: a runaway's length")
    parser.add_argument("--window", type=int, default=256, help="MAX_PAGES_IN_FLIGHT and ENGINE_BATCH_PAGES")
    parser.add_argument("--memory", action="store_true", help="also peak RSS for 20 and 500 pages")
    args = parser.parse_args()
    with long_tail_engine() as (engine_url, work):
        ideal = ideal_seconds(engine_url, args.pages, args.budget)
        served, body, _ = service_seconds(engine_url, args.pages, args.budget, args.window, work / "run")
        peaks = {}
        if args.memory:
            for pages in (20, 500):
                _, _, peaks[pages] = service_seconds(engine_url, pages, args.budget, args.window, work / str(pages))
    statuses: dict[str, int] = {}
    for page in body.get("pages", []):
        statuses[page.get("status", "?")] = statuses.get(page.get("status", "?"), 0) + 1
    print(
        f"STAND-IN engine ({STEP_MS} ms a step, up to 256 at once, lengths lognormal around {MEDIAN_TOKENS} tokens, "
        f"{RUNAWAY_SHARE:.0%} runaways at {args.budget}); {args.pages}-page PDF; window {args.window}; 2 CPU cores"
    )
    print(f"ideal (every page in flight at once): {ideal:.1f} s")
    print(f"service (./start_server.sh, remote engine): {served:.1f} s; pages by status: {statuses}")
    print(f"service / ideal: {ideal / served:.2f} of the ideal")
    if peaks:
        print(f"service process peak RSS: 20 pages {peaks[20]:.0f} MiB, 500 pages {peaks[500]:.0f} MiB "
              f"({peaks[500] / peaks[20]:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
