"""The job queue's metrics, read from the queue every process shares when /metrics is scraped."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from ocr_api.jobs.queue import JobQueue
from ocr_api.settings import Settings

logger = logging.getLogger(__name__)


class JobQueueCollector:
    """The job queue's depth and the age of its oldest queued job. ``queue`` opens the queue when first asked: a
    node that never had a job has no queue file, and a scrape does not make one."""

    def __init__(self, settings: Settings, queue: Callable[[], JobQueue]):
        self.settings = settings
        self.queue = queue

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
        if not self.settings.redis_url and not (Path(self.settings.jobs_dir) / "queue.db").exists():
            return 0, 0.0
        queue = self.queue()
        waiting = queue.waiting_job_ids()
        if not waiting:
            return 0, 0.0
        # The first in line is the oldest: the queue is first in, first out.
        first = queue.store.get(waiting[0])
        age = time.time() - first.created_at if first is not None else 0.0
        return len(waiting), round(max(0.0, age), 3)
