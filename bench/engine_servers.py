"""Several vLLM servers behind one service (OCR_ENGINE_URL a list): does a second server add its capacity?

Two STAND-IN engines (ocr_dev/stand_in_engine.py, no model), each decoding at most ``--batch`` pages at once (one
step every 20 ms, 50 tokens a page: one second a page, so a server does ``batch`` pages a second at most). One
PDF of ``--pages`` pages through the service in-process (the remote engine, every page admitted at once), in the
same run against:

- **one**: the first server alone;
- **two**: both servers;
- **two, one killed**: both, the second killed a second into the document (its pages go to the first).

Reports seconds and pages/s for each and the ratio of two to one (2.0 would be the second server's whole capacity).

    .venv/bin/python -m bench.engine_servers                  # 128 pages, batch 16 (about a minute)
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import requests

from ocr_dev.inputs import make_pdf
from ocr_dev.servers import serve_service, stand_in_process

STEP_MS, TOKENS = 20, 50


def run(
    engine_urls: list[str], pdf: bytes, pages: int, work: Path, *, kill_after_s: float = 0,
    victim: subprocess.Popen | None = None,
) -> float:  # fmt: skip
    """Seconds for the whole PDF through a fresh service on ``engine_urls``; every page must come back ok."""
    with serve_service(work, ",".join(engine_urls), max_pages_in_flight=pages, engine_batch_pages=pages,
                       max_pdf_pages=pages) as url:  # fmt: skip
        if victim is not None:
            threading.Timer(kill_after_s, victim.kill).start()
        started = time.perf_counter()
        response = requests.post(f"{url}/ocr", files={"file": ("doc.pdf", pdf)}, timeout=600)
        seconds = time.perf_counter() - started
    response.raise_for_status()
    statuses = [page["status"] for page in response.json()["pages"]]
    assert statuses == ["ok"] * pages, statuses
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pages", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="pages each stand-in decodes at once")
    args = parser.parse_args()
    pdf = make_pdf(args.pages, size=(200, 200))
    extra = ["--max-batch", str(args.batch)]
    with (
        tempfile.TemporaryDirectory() as work,
        stand_in_process(STEP_MS, TOKENS, extra=extra) as (first, _),
        stand_in_process(STEP_MS, TOKENS, extra=extra) as (second, second_process),
    ):
        one = run([first], pdf, args.pages, Path(work) / "one")
        two = run([first, second], pdf, args.pages, Path(work) / "two")
        killed = run([first, second], pdf, args.pages, Path(work) / "killed", kill_after_s=1.0, victim=second_process)
    ceiling = 1000 / (STEP_MS * TOKENS) * args.batch
    print(f"{args.pages} pages, stand-ins of {args.batch} pages at once ({ceiling:.0f} pages/s each at most)")
    for name, seconds in (("one server", one), ("two servers", two), ("two, one killed after 1 s", killed)):
        print(f"  {name:28s} {seconds:6.2f} s  {args.pages / seconds:6.1f} pages/s")
    print(f"  two / one: {one / two:.2f}x the pages per second")


if __name__ == "__main__":
    main()
