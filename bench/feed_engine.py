"""How well the service feeds an engine: pages/s end to end against what the engine itself can deliver.

A STAND-IN engine (ocr_dev/stand_in_engine.py: batched-decoding latency, no model) takes vLLM's place. At each
concurrency the script measures, with the same closed-loop clients (each sends its next page when the last
one is answered, ROUNDS pages each):

- the stand-in's own pages/s, driven directly with chat completions (the most any client can get);
- the service as deployed: ./start_production.sh with OCR_ENGINE_URL naming the stand-in (gunicorn, WORKERS
  workers of THREADS threads, the remote engine), driven with multipart /ocr uploads;
- a naive baseline: the same service with one request at a time per worker (THREADS=1), the shape of a
  worker that holds a lock around its model.

With ``--page scan`` every page is a real-size 300-DPI A4 scan (a 3.7 MB JPEG, ocr_dev.inputs.scanned_page)
instead of a 400x300 PNG: driven directly, the stand-in gets the client's own JPEG as a data URL, as a client of
a bare vLLM server would send it; through the service it gets what the service makes of the upload.

    .venv/bin/python -m bench.feed_engine            # about 3 minutes on 2 cores
    .venv/bin/python -m bench.feed_engine --page scan --clients 32 --workers 2
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
from PIL import Image, ImageDraw

from ocr_dev.inputs import A4_300_DPI, scanned_page
from ocr_dev.servers import environment, free_port, start, stop, wait_ready, wait_until

REPO = Path(__file__).resolve().parent.parent


def page_png() -> bytes:
    """A small text-like page: the service decodes and re-encodes it, as it would a scan."""
    image = Image.new("RGB", (400, 300), "white")
    draw = ImageDraw.Draw(image)
    for row in range(12):
        draw.text((20, 20 + row * 22), f"Line {row}: the quick brown fox jumps over the lazy dog", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def closed_loop(send: Callable[[requests.Session], bool], clients: int, rounds: int) -> tuple[float, int]:
    """Run ``clients`` threads sending ``rounds`` pages each; return (pages per second, failures)."""
    failures = 0
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        nonlocal failures
        with requests.Session() as session:
            barrier.wait()
            for _ in range(rounds):
                if not send(session):
                    with lock:
                        failures += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return (clients * rounds - failures) / elapsed, failures


def direct_sender(engine_url: str, page: bytes) -> Callable[[requests.Session], bool]:
    """Chat completions straight to the engine, shaped as the remote engine sends them, with the page's own bytes."""
    mime = "image/jpeg" if page.startswith(b"\xff\xd8") else "image/png"
    data_url = f"data:{mime};base64," + base64.b64encode(page).decode()
    body = {
        "model": "stand-in/deepseek-ocr-2",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": "<image>\nFree OCR."},
                ],
            }
        ],
        "temperature": 0.0,
        "max_tokens": 8192,
    }

    def send(session: requests.Session) -> bool:
        return session.post(f"{engine_url}/v1/chat/completions", json=body, timeout=300).status_code == 200

    return send


def service_sender(service_url: str, page: bytes) -> Callable[[requests.Session], bool]:
    def send(session: requests.Session) -> bool:
        response = session.post(f"{service_url}/ocr", files={"file": ("page", page)}, timeout=300)
        return response.status_code == 200

    return send


class Service:
    """./start_production.sh against the stand-in, as an operator would run it."""

    def __init__(self, engine_url: str, workers: int, threads: int, workdir: Path):
        self.env = environment(
            workdir, OCR_ENGINE_URL=engine_url, WORKERS=str(workers), THREADS=str(threads), LOG_LEVEL="WARNING"
        )
        self.url = f"http://127.0.0.1:{self.env['PORT']}"
        self.log = workdir / "service.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Service:
        self.process = start("start_production.sh", self.env, self.log)
        wait_ready(self.url, self.process, self.log, timeout_s=300)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        stop(self.process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,32,64", help="comma-separated concurrencies")
    parser.add_argument("--rounds", type=int, default=5, help="pages each client sends")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--step-ms", type=float, default=20.0)
    parser.add_argument("--tokens-per-page", type=int, default=100)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--page", choices=("small", "scan"), default="small", help="a 400x300 PNG or a 300-DPI scan")
    parser.add_argument("--no-naive", action="store_true", help="skip the one-thread-per-worker baseline")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.clients.split(",")]
    png = page_png() if args.page == "small" else scanned_page(A4_300_DPI, "JPEG")

    port = free_port()
    stand_in = [sys.executable, "-m", "ocr_dev.stand_in_engine", "--port", str(port), "--step-ms", str(args.step_ms)]
    stand_in += ["--tokens-per-page", str(args.tokens_per_page), "--max-batch", str(args.max_batch)]
    engine = subprocess.Popen(
        stand_in,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    engine_url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        assert engine.stdout is not None
        print(engine.stdout.readline().strip(), flush=True)
        wait_until(lambda: requests.get(f"{engine_url}/health", timeout=1).ok, timeout_s=10)
        page_s = args.tokens_per_page * args.step_ms / 1000
        direct = {c: closed_loop(direct_sender(engine_url, png), c, args.rounds) for c in concurrencies}
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "a").mkdir()
            (workdir / "b").mkdir()
            with Service(engine_url, args.workers, args.threads, workdir / "a") as service:
                served = {c: closed_loop(service_sender(service.url, png), c, args.rounds) for c in concurrencies}
            baseline = {c: (float("nan"), 0) for c in concurrencies}
            if not args.no_naive:
                with Service(engine_url, args.workers, 1, workdir / "b") as naive:
                    baseline = {c: closed_loop(service_sender(naive.url, png), c, args.rounds) for c in concurrencies}
        for c in concurrencies:
            ceiling = min(c, args.max_batch) / page_s
            rows.append((c, ceiling, direct[c], served[c], baseline[c]))
    finally:
        engine.kill()
        engine.wait()
        if engine.stdout is not None:
            engine.stdout.close()

    print()
    print(
        f"stand-in: {args.step_ms:g} ms per step, {args.tokens_per_page} tokens a page ({page_s:g} s), "
        f"batch up to {args.max_batch}; service: {args.workers} workers x {args.threads} threads; "
        f"naive: {args.workers} workers x 1 thread; {args.rounds} pages per client; {os.cpu_count()} CPU cores; "
        f"page: {'400x300 PNG' if args.page == 'small' else f'300-DPI A4 scan, {len(png) / 1e6:.1f} MB JPEG'}"
    )
    print()
    columns = ["clients", "stand-in ceiling (pages/s)", "stand-in direct", "service", "service / direct", "naive"]
    print("| " + " | ".join([*columns, "naive / direct"]) + " |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for c, ceiling, (direct_rate, _), (served_rate, served_fail), (naive_rate, naive_fail) in rows:
        print(
            f"| {c} | {ceiling:.1f} | {direct_rate:.2f} | {served_rate:.2f} | {served_rate / direct_rate:.0%} | "
            f"{naive_rate:.2f} | {naive_rate / direct_rate:.0%} |"
            + (f" failures: service {served_fail}, naive {naive_fail}" if served_fail or naive_fail else "")
        )


if __name__ == "__main__":
    main()
