"""Document jobs: queued with Huey, run through the page stream by a consumer, their state shared by every process."""

from __future__ import annotations

from ocr_api.jobs.queue import JobQueue
from ocr_api.jobs.service import JobNotFound, Jobs, JobUpload, StorageUnavailable
from ocr_api.jobs.store import Job

__all__ = ["Job", "JobNotFound", "JobQueue", "JobUpload", "Jobs", "StorageUnavailable"]
