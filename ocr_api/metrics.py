"""Prometheus metrics: what the service counts, and ``/metrics`` to scrape them.

Under gunicorn every worker is a process of its own, and so is the job consumer: with ``PROMETHEUS_MULTIPROC_DIR``
set (start_production.sh sets it to a directory private to the run) each process writes its samples there and a
scrape of any worker adds up all of them, prometheus_client's multiprocess mode. Without it (``python app.py``,
the tests) the process's own registry is served. The job queue's depth and its oldest job's age are read from the
queue at scrape time, since every process shares that queue.

``/metrics`` is open to clients on loopback (after TRUSTED_PROXIES: the client nginx names, not nginx) and needs an
API key from anyone else when API_KEYS is set (ocr_api/access.py); it never counts against RATE_LIMIT.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from ocr_api.engines.base import GUARD_VERIFIED, without_credentials

logger = logging.getLogger(__name__)

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
    "Time a page ready to send waited for a slot of MAX_PAGES_IN_FLIGHT (jobs wait; requests are refused instead).",
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 15, 60, 300),
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

metrics_routes = Blueprint("metrics", __name__)


@metrics_routes.get("/metrics")
def scrape() -> Response:
    """Every metric of every process of this node, in Prometheus' text format."""
    return Response(generate_latest(current_app.extensions["ocr_metrics"]), content_type=CONTENT_TYPE_LATEST)


def install_metrics(app: Flask) -> None:
    """Serve ``/metrics`` from the registry this process scrapes: the multiprocess files, or its own."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ProcessRegistry())
    registry.register(JobQueueCollector(app))
    registry.register(EngineCollector(app))
    app.extensions["ocr_metrics"] = registry
    app.register_blueprint(metrics_routes)


class _ProcessRegistry:
    """This process's default registry, served beside the queue's collector."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class JobQueueCollector:
    """The job queue's depth and the age of its oldest queued job, read from the shared queue when scraped."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("ocr_jobs_queued", "Jobs waiting in the queue for a consumer.")
        oldest = GaugeMetricFamily(
            "ocr_jobs_oldest_queued_age_seconds", "Age of the oldest job still waiting; 0: none."
        )
        try:
            queued, age = self._read()
        except (OSError, sqlite3.Error, RedisError) as exc:  # the queue is down: the other metrics still answer
            logger.warning("metrics: the job queue cannot be read: %s", exc)
            return
        depth.add_metric([], queued)
        oldest.add_metric([], age)
        yield depth
        yield oldest

    def _read(self) -> tuple[int, float]:
        from ocr_api.jobs import jobs_of

        settings = self.app.extensions["ocr_service"].settings
        # A node that never had a job has no queue file: a scrape does not make one.
        if not settings.redis_url and not (Path(settings.jobs_dir) / "queue.db").exists():
            return 0, 0.0
        queue = jobs_of(self.app).queue
        waiting = queue.waiting_job_ids()
        if not waiting:
            return 0, 0.0
        # The first in line is the oldest: the queue is first in, first out.
        first = queue.store.get(waiting[0])
        age = time.time() - first.created_at if first is not None else 0.0
        return len(waiting), round(max(0.0, age), 3)


class EngineCollector:
    """The engine as the process answering the scrape last saw it: each vLLM server of the remote engine healthy or
    not, and the repetition guard's start-up check wherever pages are generated."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self) -> Iterator[Metric]:
        engine = self.app.extensions["ocr_service"].engine
        servers = getattr(engine, "servers", None)
        if servers:
            healthy = GaugeMetricFamily(
                "ocr_engine_server_healthy",
                "1 while a vLLM server passes its health checks and calls.",
                labels=["server"],
            )
            for server in servers:
                healthy.add_metric([without_credentials(server.url)], 1.0 if server.healthy else 0.0)
            yield healthy
        guarded = GaugeMetricFamily(
            "ocr_engine_guard_verified",
            "1 once the engine refused the guard check's request (ngram_size 0) as only the repetition guard does; "
            "0 while it answered it (no guard) or was not checked. server: a vLLM server's URL, or in-process.",
            labels=["server"],
        )
        for place, check in engine.guard_checks().items():
            guarded.add_metric([without_credentials(place)], 1.0 if check.state == GUARD_VERIFIED else 0.0)
        yield guarded
