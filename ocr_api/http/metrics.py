"""``/metrics``: every metric of this node in Prometheus' text format (the definitions: ocr_api/metrics.py).

With ``PROMETHEUS_MULTIPROC_DIR`` set (start_production.sh) the samples every worker and the job consumer write there
are added up; without it (``python app.py``, the tests) the process's own registry is served. The collectors that
read something when scraped (the job queue, the engine) are handed over by the app factory. ``/metrics`` is open to
clients on loopback (after TRUSTED_PROXIES: the client nginx names, not nginx) and needs an API key from anyone else
when API_KEYS is set (ocr_api/http/access.py); it never counts against RATE_LIMIT.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ocr_api.metrics import MULTIPROCESS_DIR_ENV

metrics_routes = Blueprint("metrics", __name__)


@metrics_routes.get("/metrics")
def scrape() -> Response:
    """Every metric of every process of this node, in Prometheus' text format."""
    return Response(generate_latest(current_app.extensions["ocr_metrics"]), content_type=CONTENT_TYPE_LATEST)


def install_metrics(app: Flask, collectors: Sequence[Collector]) -> None:
    """Serve ``/metrics`` from the registry this process scrapes (the multiprocess files, or its own) and
    ``collectors``."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ProcessRegistry())
    for collector in collectors:
        registry.register(collector)
    app.extensions["ocr_metrics"] = registry
    app.register_blueprint(metrics_routes)


class _ProcessRegistry:
    """This process's default registry, served beside the collectors."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
