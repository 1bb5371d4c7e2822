"""The engine's metrics, as the process answering /metrics last saw it: each vLLM server of the remote engine healthy
or not, and the repetition guard's start-up check wherever pages are generated."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from ocr_api.engines.base import GUARD_VERIFIED, OcrEngine, without_credentials


class EngineCollector:
    """Read when scraped: the remote engine's servers (``servers``, where the engine has them) and every engine's
    guard checks."""

    def __init__(self, engine: OcrEngine):
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        servers = getattr(self.engine, "servers", None)
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
        for place, check in self.engine.guard_checks().items():
            guarded.add_metric([without_credentials(place)], 1.0 if check.state == GUARD_VERIFIED else 0.0)
        yield guarded
