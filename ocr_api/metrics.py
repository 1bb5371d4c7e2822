"""Prometheus metrics: what the service counts (the definitions; ``/metrics`` is ocr_api/http/metrics.py).

Under gunicorn every worker is a process of its own, and so is the job consumer: with ``PROMETHEUS_MULTIPROC_DIR``
set (start_production.sh sets it to a directory private to the run) each process writes its samples there and a
scrape of any worker adds up all of them, prometheus_client's multiprocess mode. What is read at scrape time instead
(the job queue's depth, the engine's servers and guard) is collected beside what it reads: ocr_api/jobs/metrics.py,
ocr_api/engines/metrics.py.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384)

REQUESTS = Counter(
    "ocr_requests_total",
    "HTTP requests answered, by route (its URL rule), status and error code (empty when none).",
    ["route", "method", "status", "code"],
)
REQUEST_SECONDS = Histogram(
    "ocr_request_duration_seconds",
    "Time from a request's arrival at a worker to the end of its answer (a stream's last byte).",
    ["route"],
    buckets=SECONDS_BUCKETS,
)
PAGES = Counter(
    "ocr_pages_total",
    "Pages finished, by status: ok, truncated, repetitive, failed; retried counts each run again after a runaway.",
    ["status"],
)
ADMISSION_WAIT_SECONDS = Histogram(
    "ocr_admission_wait_seconds",
    "Time a page ready to send waited for a slot of MAX_PAGES_IN_FLIGHT or the jobs' share of it, by class "
    "(interactive, job): a job waits; a request that has sent no page is refused instead.",
    ["class"],
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 15, 60, 300),
)
PAGES_SENT = Counter(
    "ocr_engine_pages_sent_total",
    "Pages sent to the engine, by class: interactive (/ocr, /ocr/batch, /v1/chat/completions) or job; runaway "
    "retries included.",
    ["class"],
)
ENGINE_SECONDS = Histogram(
    "ocr_engine_page_seconds", "Time one page spent at the engine, from sent to answered.", buckets=SECONDS_BUCKETS
)
PROMPT_TOKENS = Histogram("ocr_prompt_tokens", "Prompt tokens (image and text) of each page.", buckets=TOKEN_BUCKETS)
COMPLETION_TOKENS = Histogram("ocr_completion_tokens", "Tokens generated for each page.", buckets=TOKEN_BUCKETS)
PAGES_IN_FLIGHT = Gauge(
    "ocr_pages_in_flight",
    "Pages at the engine and not yet answered, over every live process.",
    multiprocess_mode="livesum",
)
ADMISSION_REFUSALS = Counter(
    "ocr_admission_refusals_total", "Requests refused with 503 overloaded: MAX_PAGES_IN_FLIGHT was reached."
)
