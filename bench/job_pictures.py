"""A job's pictures fetched in parallel: what they cost the gunicorn workers.

``./start_production.sh`` (2 workers x 4 threads, nginx in front) against the stand-in engine (every page a figure
and a text block); a job of 8 posters (a 62 KB PDF of 6320 x 6320-pixel pages) with ``figures=true annotate=true``;
once it has finished, its 16 pictures fetched 8 at a time. Prints the workers' resident memory before, their peaks
(VmHWM) during the fetches, and how long the 16 took. Stand-in engine: nothing here is recognition or GPU speed.

    .venv/bin/python -m bench.job_pictures        # about 1 minute
"""

from __future__ import annotations

import concurrent.futures
import json
import tempfile
import time
from pathlib import Path

import requests

from ocr_dev.inputs import make_pdf
from ocr_dev.servers import (
    environment,
    gunicorn_workers,
    memory_mib,
    reset_peak_memory,
    stand_in_engine,
    start,
    stop,
    wait_ready,
    wait_until,
)

FIGURE_PAGE = (
    "<|ref|>image<|/ref|><|det|>[[0, 0, 499, 499]]<|/det|>\n<|ref|>text<|/ref|><|det|>[[0, 600, 999, 700]]<|/det|>\nHi"
)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="job-pictures-"))
    with stand_in_engine(step_ms=10, tokens_per_page=5) as engine_url:
        env = environment(tmp, OCR_ENGINE_URL=engine_url, WORKERS="2", THREADS="4")
        log = tmp / "production.log"
        process = start("start_production.sh", env, log)
        url = f"http://127.0.0.1:{env['PORT']}"
        try:
            wait_ready(url, process, log, timeout_s=300)
            requests.post(f"{engine_url}/stand-in/text", json={"text": FIGURE_PAGE}, timeout=5).raise_for_status()
            posters = make_pdf(8, size=(3160, 3160))  # 6320 x 6320 pixels at 144 dpi
            posted = requests.post(f"{url}/jobs", files={"file": ("posters.pdf", posters)},
                                   data={"figures": "true", "annotate": "true"}, timeout=60)  # fmt: skip
            job = posted.json()["id"]
            wait_until(lambda: requests.get(f"{url}/jobs/{job}", timeout=10).json()["status"] == "succeeded", 300)
            workers = gunicorn_workers(process.pid)
            before = {pid: memory_mib(pid, "VmRSS") for pid in workers}
            for pid in workers:
                reset_peak_memory(pid)
            pictures = [f"{url}/jobs/{job}/pages/{index}/{name}" for index in range(1, 9)
                        for name in ("annotated.png", "figures/1.png")]  # fmt: skip
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda picture: requests.get(picture, timeout=600).status_code, pictures))
            took = time.monotonic() - started
            peaks = {pid: memory_mib(pid, "VmHWM") for pid in workers}
            print(json.dumps({"pdf_bytes": len(posters), "statuses": statuses, "rss_before_mib": list(before.values()),
                              "peak_mib": list(peaks.values()), "seconds": round(took, 1)}))  # fmt: skip
        finally:
            stop(process)


if __name__ == "__main__":
    main()
