"""Overload: drive the service past its admission bound and count what happened to every request.

Starts the STAND-IN engine (ocr_dev/stand_in_engine.py: no model, 1 s a page) and ``start_production.sh``
against it (gunicorn, the remote engine), then runs ``clients`` threads that each send ``rounds`` one-page
requests back to back. Admission capacity is WORKERS x MAX_PAGES_IN_FLIGHT pages; the default load is twice
that. Reports requests tried, accepted, refused (503 overloaded, with how fast), lost (no answer, a 500, any
other status: must be 0), pages the engine decoded (must equal the accepted), and worker memory before/after.

    .venv/bin/python -m bench.overload            # prints the table docs/RELIABILITY.md quotes

The driver lives here, in the development package, because tests/test_overload.py runs it too.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests
from PIL import Image

from ocr_dev.servers import environment, gunicorn_workers, memory_mib, metric, running, stand_in_engine


@dataclass
class Outcome:
    status: int  # 0: no HTTP answer at all
    code: str | None
    seconds: float
    retry_after: str | None = None


@dataclass
class Report:
    """What happened to every request of an overload run."""

    capacity_pages: int
    clients: int
    outcomes: list[Outcome] = field(default_factory=list)
    engine_pages: int = 0
    worker_rss_mib: dict[str, list[float]] = field(default_factory=dict)
    uploads_left: int = 0

    @property
    def accepted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    @property
    def refused(self) -> list[Outcome]:
        return [o for o in self.outcomes if (o.status, o.code) == (503, "overloaded")]

    @property
    def lost(self) -> list[Outcome]:
        return [o for o in self.outcomes if o not in self.accepted and o not in self.refused]

    def lines(self) -> list[str]:
        def spread(outcomes: list[Outcome]) -> str:
            times = sorted(o.seconds for o in outcomes) or [0.0]
            return f"median {statistics.median(times):.3f} s, max {times[-1]:.3f} s"

        return [
            f"capacity {self.capacity_pages} pages in flight; {self.clients} clients "
            f"(load {self.clients / self.capacity_pages:g}x)",
            f"tried {len(self.outcomes)}, accepted {len(self.accepted)}, refused {len(self.refused)}, "
            f"lost {len(self.lost)} {dict(Counter((o.status, o.code) for o in self.lost))}",
            f"refused answered in: {spread(self.refused)}; Retry-After {sorted({o.retry_after for o in self.refused})}",
            f"accepted answered in: {spread(self.accepted)}",
            f"pages the engine decoded: {self.engine_pages} (accepted requests: {len(self.accepted)})",
            f"worker RSS MiB before -> after: {self.worker_rss_mib}",
            f"files left in uploads/: {self.uploads_left}",
        ]


def page_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def drive(url: str, clients: int, rounds: int) -> list[Outcome]:
    """Run ``clients`` threads sending ``rounds`` requests each; return every request's outcome."""
    image = page_png()
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            for _ in range(rounds):
                started = time.monotonic()
                try:
                    response = session.post(f"{url}/ocr", files={"file": ("page.png", image)}, timeout=120)
                    code = response.json().get("code") if response.status_code != 200 else None
                    outcome = Outcome(response.status_code, code, time.monotonic() - started)
                    outcome.retry_after = response.headers.get("Retry-After")
                except requests.RequestException as exc:
                    outcome = Outcome(0, type(exc).__name__, time.monotonic() - started)
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def run(
    workers: int = 2, pages_in_flight: int = 4, load: float = 2.0, rounds: int = 5, workdir: Path | None = None
) -> Report:
    """Start the stand-in and the service, drive them at ``load`` x capacity, and report."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="ocr-overload-"))
    capacity = workers * pages_in_flight
    clients = round(capacity * load)
    report = Report(capacity_pages=capacity, clients=clients)
    with stand_in_engine(step_ms=50, tokens_per_page=20) as engine_url:  # 1 s a page
        env = environment(
            workdir,
            OCR_ENGINE_URL=engine_url,
            WORKERS=str(workers),
            THREADS=str(clients),  # enough threads that admission, not gunicorn, is the bound under test
            MAX_PAGES_IN_FLIGHT=str(pages_in_flight),
        )
        log = workdir / "production.log"
        url = f"http://127.0.0.1:{env['PORT']}"
        with running("start_production.sh", env, log, timeout_s=300) as process:
            pids = gunicorn_workers(process.pid)
            drive(url, clients, rounds=1)  # warm up every thread of every worker (allocator arenas, connections)
            before = {pid: memory_mib(pid) for pid in pids}
            pages_before = metric(engine_url, "stand_in:pages_done_total")
            report.outcomes = drive(url, clients, rounds)
            report.engine_pages = int(metric(engine_url, "stand_in:pages_done_total") - pages_before)
            after = {pid: memory_mib(pid) for pid in pids}
            report.worker_rss_mib = {str(pid): [before[pid], after[pid]] for pid in pids}
    report.uploads_left = len(list(Path(env["UPLOAD_FOLDER"]).iterdir()))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pages-in-flight", type=int, default=4)
    parser.add_argument("--load", type=float, default=2.0, help="clients as a multiple of the capacity")
    parser.add_argument("--rounds", type=int, default=5, help="requests each client sends")
    args = parser.parse_args()
    print("STAND-IN engine (no model, 1 s a page); the service under gunicorn with the remote engine")
    for line in run(args.workers, args.pages_in_flight, args.load, args.rounds).lines():
        print(line)


if __name__ == "__main__":
    main()
