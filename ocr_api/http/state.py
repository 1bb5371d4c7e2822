"""What the app holds, for the views: the service the factory was given, and the jobs it opens on first use."""

from __future__ import annotations

import threading

from flask import Flask, current_app

from ocr_api.jobs import JobQueue, Jobs
from ocr_api.service import OcrService

_jobs_lock = threading.Lock()


def current_service() -> OcrService:
    """The service of the app handling the current request."""
    return current_app.extensions["ocr_service"]


def jobs_of(app: Flask) -> Jobs:
    """The app's jobs, opened on first use: a service that never sees a job never creates JOBS_DIR or its queue."""
    with _jobs_lock:
        jobs = app.extensions.get("ocr_jobs")
        if jobs is None:
            service = app.extensions["ocr_service"]
            jobs = app.extensions["ocr_jobs"] = Jobs(service, JobQueue(service.settings))
        return jobs
