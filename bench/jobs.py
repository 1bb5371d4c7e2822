"""A 1,000-page PDF as a job through ./start_production.sh: throughput against the engine's ideal, memory, the
time to 202, and what a synchronous /ocr request waits while the job runs.

The engine is the long-tail STAND-IN of bench/long_document.py (no model: 20 ms a decoding step for up to 256
requests at once, page lengths lognormal around 600 tokens, 5% runaways). In one run:

- **ideal**: a client that keeps the stand-in's whole batch busy (256 pages in flight, the next sent the moment one
  is answered, each runaway again at once): its shortest possible time. Sending all 1,000 at once, as
  bench/long_document.py does for 200, is slower here: 1,000 waiting connections cost the stand-in's own Python
  (on the same 2 cores) more than they add;
- **job**: the PDF as a job through ``./start_production.sh`` (gunicorn's workers and the job consumer beside
  them, the stand-in as ``OCR_ENGINE_URL``), with ``JOB_PAGES_IN_FLIGHT`` at ``--job-window``; timed from the
  POST to the job's end (the 202 included), and the time to 202 alone;
- **memory**: the peak RSS (VmHWM) of each worker and of the consumer after the job, against the same for a
  ``--small``-page job (50: it never fills the window) and a ``--fill``-page one (512: twice the window) on
  fresh starts;
- **latency**: a one-page /ocr request (``max_tokens`` 50, so its own decoding is at most a second) on the idle
  service, then repeatedly while the job runs: median and worst.

    .venv/bin/python -m bench.jobs                       # 1,000 pages (about 6 minutes)
    .venv/bin/python -m bench.jobs --pages 300 --job-window 192
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import requests

from bench.long_document import MEDIAN_TOKENS, RUNAWAY_SHARE, SEED, STEP_MS, ideal_seconds, long_tail_engine
from ocr_dev.inputs import make_pdf, png_bytes
from ocr_dev.servers import environment, gunicorn_workers, memory_mib, processes_in_group, running

SYNC_TOKENS = "50"
STAND_IN_BATCH = 256


def consumer_pid(group: int) -> int:
    for pid in processes_in_group(group):
        try:
            if b"ocr_api.jobs.consumer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError("no job consumer in the service's process group")


def ocr_latency(url: str) -> float:
    started = time.monotonic()
    response = requests.post(
        f"{url}/ocr", files={"file": ("p.png", png_bytes((640, 480)))}, data={"max_tokens": SYNC_TOKENS}, timeout=600
    )
    response.raise_for_status()
    return time.monotonic() - started


def run_job(engine_url: str, pages: int, budget: int, job_window: int, work: Path, *, probe: bool) -> dict:
    """One job on a fresh ./start_production.sh; returns its times, the processes' peak RSS, the latencies."""
    work.mkdir(parents=True, exist_ok=True)
    requests.post(f"{engine_url}/stand-in/reset", json={"seed": SEED}, timeout=5).raise_for_status()
    env = environment(
        work,
        OCR_ENGINE_URL=engine_url,
        WORKERS="2",
        THREADS="8",
        MAX_TOKENS=str(budget),
        ENGINE_TIMEOUT_S="3600",
        JOB_MAX_PAGES=str(pages),
        JOB_PAGES_IN_FLIGHT=str(job_window),
        MAX_PAGES_IN_FLIGHT="256",
        ENGINE_BATCH_PAGES="256",
        ENGINE_CONNECTIONS="256",
        LOG_LEVEL="WARNING",
    )
    url = f"http://127.0.0.1:{env['PORT']}"
    pdf = make_pdf(pages)
    report: dict = {"pdf_mb": len(pdf) / 1e6}
    with running("start_production.sh", env, work / "production.log", timeout_s=300) as process:
        if probe:
            requests.post(f"{engine_url}/stand-in/reset", json={"seed": SEED + 1}, timeout=5)
            report["idle"] = [ocr_latency(url) for _ in range(5)]
            requests.post(f"{engine_url}/stand-in/reset", json={"seed": SEED}, timeout=5).raise_for_status()
        started = time.monotonic()
        response = requests.post(f"{url}/jobs", files={"file": ("long.pdf", pdf)}, timeout=600)
        report["to_202"] = time.monotonic() - started
        response.raise_for_status()
        job = response.json()
        busy: list[float] = []
        done = threading.Event()

        def probe_while_running() -> None:
            time.sleep(5)  # the job's window is full by then
            while not done.is_set():
                busy.append(ocr_latency(url))
                time.sleep(1)

        prober = threading.Thread(target=probe_while_running)
        if probe:
            prober.start()
        while (view := requests.get(job["urls"]["self"], timeout=30).json())["status"] in ("queued", "running"):
            time.sleep(0.5)
        report["job_s"] = time.monotonic() - started
        done.set()
        if probe:
            prober.join()
            report["busy"] = busy
        report["status"], report["pages"] = view["status"], view["progress"]["pages"]
        report["workers_mib"] = [memory_mib(pid, "VmHWM") for pid in gunicorn_workers(process.pid)]
        report["consumer_mib"] = memory_mib(consumer_pid(process.pid), "VmHWM")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--small", type=int, default=50, help="pages of a job the memory is compared with")
    parser.add_argument("--fill", type=int, default=512, help="pages of a job that fills the window, the same")
    parser.add_argument("--budget", type=int, default=2048, help="MAX_TOKENS: a runaway's length")
    parser.add_argument("--job-window", type=int, default=256, help="JOB_PAGES_IN_FLIGHT")
    args = parser.parse_args()
    with long_tail_engine() as (engine_url, work):
        ideal = ideal_seconds(engine_url, args.pages, args.budget, in_flight=STAND_IN_BATCH)
        small = run_job(engine_url, args.small, args.budget, args.job_window, work / "small", probe=False)
        fill = run_job(engine_url, args.fill, args.budget, args.job_window, work / "fill", probe=False)
        large = run_job(engine_url, args.pages, args.budget, args.job_window, work / "large", probe=True)
    print(
        f"STAND-IN engine ({STEP_MS} ms a step, up to 256 at once, lengths lognormal around {MEDIAN_TOKENS} tokens, "
        f"{RUNAWAY_SHARE:.0%} runaways at {args.budget}); ./start_production.sh, 2 workers + the consumer; "
        f"JOB_PAGES_IN_FLIGHT {args.job_window}; 2 CPU cores"
    )
    print(f"ideal ({args.pages} pages, the stand-in's batch of {STAND_IN_BATCH} kept full): {ideal:.1f} s")
    print(f"job ({args.pages} pages, {large['pdf_mb']:.1f} MB PDF): {large['job_s']:.1f} s from POST to the end; "
          f"{large['status']}, pages {large['pages']}")  # fmt: skip
    print(f"job / ideal: {ideal / large['job_s']:.2f} of the ideal")
    print(f"time to 202: {large['to_202']:.2f} s ({args.pages} pages), {small['to_202']:.2f} s ({args.small} pages)")
    for name, key in (("consumer", "consumer_mib"), ("workers", "workers_mib")):
        print(f"peak RSS, {name}: {large[key]} MiB ({args.pages} pages) vs {small[key]} MiB ({args.small} pages), "
              f"{fill[key]} MiB ({args.fill} pages)")  # fmt: skip
    for name, base in ((args.small, small), (args.fill, fill)):
        ratio = large["consumer_mib"] / base["consumer_mib"]
        worker_ratio = max(large["workers_mib"]) / max(base["workers_mib"])
        print(f"peak RSS {args.pages} vs {name} pages: consumer {ratio:.2f}x, largest worker {worker_ratio:.2f}x")
    idle, busy = large["idle"], large["busy"]
    print(f"/ocr (1 page, max_tokens {SYNC_TOKENS}): idle median {statistics.median(idle):.2f} s (worst "
          f"{max(idle):.2f}); during the job median {statistics.median(busy):.2f} s (worst {max(busy):.2f}, "
          f"{len(busy)} requests); {statistics.median(busy) / statistics.median(idle):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
