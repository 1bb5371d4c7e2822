"""A job's pictures fetched in parallel: what they cost the gunicorn workers.

``./start_production.sh`` (2 workers x 4 threads, nginx in front) against the stand-in engine (every page a figure
and a text block); a job of 8 posters (a 62 KB PDF of 6320 x 6320-pixel pages) with ``figures=true annotate=true``;
once it has finished, its 16 pictures fetched 8 at a time. Prints the workers' resident memory before, their peaks
(VmHWM) during the fetches, and how long the 16 took. Stand-in engine: nothing here is recognition or GPU speed.

    .venv/bin/python -m bench.job_pictures        # about 1 minute
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from ocr_dev.servers import (
    environment,
    fetch_job_pictures,
    gunicorn_workers,
    memory_mib,
    reset_peak_memory,
    run_poster_job,
    stand_in_engine,
    start,
    stop,
    wait_ready,
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
            job = run_poster_job(url, engine_url)
            workers = gunicorn_workers(process.pid)
            before = {pid: memory_mib(pid, "VmRSS") for pid in workers}
            for pid in workers:
                reset_peak_memory(pid)
            started = time.monotonic()
            statuses = fetch_job_pictures(url, job)
            took = time.monotonic() - started
            peaks = {pid: memory_mib(pid, "VmHWM") for pid in workers}
            print(
                json.dumps(
                    {
                        "statuses": statuses,
                        "rss_before_mib": list(before.values()),
                        "peak_mib": list(peaks.values()),
                        "seconds": round(took, 1),
                    }
                )
            )
        finally:
            stop(process)


if __name__ == "__main__":
    main()
