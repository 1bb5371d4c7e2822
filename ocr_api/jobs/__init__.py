"""Document jobs: queued with Huey, run through the page stream by a consumer, their state shared by every process."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ocr_api.jobs.queue import JobQueue
from ocr_api.jobs.service import JobNotFound, Jobs, JobUpload, StorageUnavailable
from ocr_api.jobs.store import Job

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["Job", "JobNotFound", "JobQueue", "JobUpload", "Jobs", "StorageUnavailable", "jobs_of"]

_lock = threading.Lock()


def jobs_of(app: Flask) -> Jobs:
    """The app's jobs, opened on first use: a service that never sees a job never creates JOBS_DIR or its queue."""
    with _lock:
        jobs = app.extensions.get("ocr_jobs")
        if jobs is None:
            service = app.extensions["ocr_service"]
            jobs = app.extensions["ocr_jobs"] = Jobs(service, JobQueue(service.settings))
        return jobs
