"""Job state, kept in the queue's own storage (Huey's key-value store: SQLite under JOBS_DIR, or Redis) so that
every API process and consumer sees the same job; uploads live in the job's directory under JOBS_DIR.

Each job has a record (status and progress: written by the API when it is created, then only by the consumer
that runs it), its files' description (written once), one entry per finished page, and a cancel flag (written
by the API). No two processes write the same key, so no write needs a lock.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from huey import Huey

from ocr_api import shapes
from ocr_api.shapes import JOB_STATUSES, PAGE_STATUSES

logger = logging.getLogger(__name__)

FINISHED = tuple(status for status in JOB_STATUSES if status not in ("queued", "running"))
ACTIVE_MARKER = "active"


@dataclass
class JobFile:
    """One file of a job: where it is stored, what it is, which pages of it the job runs."""

    filename: str
    stored: str  # the file's name in the job's directory
    is_document: bool
    page_numbers: list[int | None]
    source: dict[str, Any]  # the result's ``image`` or ``document`` field
    preparation_ms: float = 0.0  # opening and checking it at submission, as /ocr's timing counts it


@dataclass
class Job:
    """A job's record: what /jobs/<id> reports, and what the consumer needs to run it."""

    id: str
    owner: str | None  # the API key's digest when keys are on: any other key gets 404
    form: dict[str, list[str]]  # the request's fields, parsed again by the consumer
    pages_total: int
    files_total: int
    created_at: float
    status: str = "queued"
    task_id: str = ""
    callback_url: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None  # the running consumer's last sign of life
    pages_done: int = 0
    pages_ready: int = 0  # pages 1..pages_ready are all stored: /pages and /events hand them out in order
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PAGE_STATUSES, 0))
    pages_retried: int = 0
    runs: int = 0  # times a consumer started it (a restart or an engine retry runs it again)
    run_started_at: float | None = None
    run_pages_at_start: int = 0
    engine_ms: float = 0.0
    error: dict[str, Any] | None = None
    callback: dict[str, Any] | None = None  # how the callback went, once sent
    base_url: str = ""  # the service's URL as the client named it, for the links in views and callbacks
    # While queued, what it waits for: "consumer" (a consumer's place: queue_position jobs before it), "turn" (it ran,
    # and gave its place to a job that was waiting) or "engine" (the engine failed; it runs again after a delay).
    waiting_for: str = "consumer"
    # output=pdf, once finished: the 1-based pages of result.pdf without the model's text (failed; kept their own)
    searchable: dict[str, Any] | None = None  # or {"error": why it could not be written}

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def wants_pdf(self) -> bool:
        return [value.strip().lower() for value in self.form.get("output", [])] == ["pdf"]

    def links(self) -> dict[str, str]:
        base = f"{self.base_url.rstrip('/')}/jobs/{self.id}"
        links = {"self": base, "result": f"{base}/result", "pages": f"{base}/pages", "events": f"{base}/events"}
        if self.wants_pdf:
            links["result_pdf"] = f"{base}/result.pdf"
        return links

    def view(self, now: float, queue_position: int | None = None, *, for_callback: bool = False) -> shapes.Job:
        """What GET /jobs/<id> answers, and a callback sends: that one without ``callback``, which tells how its own
        delivery went and so cannot be known while it is sent."""
        body: shapes.Job = {
            "id": self.id,
            "status": self.status,
            "pages_total": self.pages_total,
            "files_total": self.files_total,
            "progress": self.progress(now),
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "runs": self.runs,
        }
        if self.status == "queued":
            body["queue_position"] = queue_position
            body["waiting_for"] = self.waiting_for
        if self.error:
            body["error"] = self.error
        if self.callback_url and not for_callback:
            body["callback"] = self.callback or {"delivered": False}
        body["urls"] = self.links()
        return body

    def progress(self, now: float) -> shapes.JobProgress:
        """Pages done of total, counts per page status, and the rate and time left of the current run."""
        rate = None
        if self.status == "running" and self.run_started_at is not None:
            elapsed = now - self.run_started_at
            done_this_run = self.pages_done - self.run_pages_at_start
            rate = round(done_this_run / elapsed, 3) if elapsed > 0 and done_this_run > 0 else None
        left = self.pages_total - self.pages_done
        return {
            "pages_done": self.pages_done,
            "pages_total": self.pages_total,
            "fraction": round(self.pages_done / self.pages_total, 4) if self.pages_total else 1.0,
            "pages": dict(self.counts),
            "pages_retried": self.pages_retried,
            "pages_per_second": rate,
            "seconds_left": round(left / rate, 1) if rate else None,
        }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


class JobStore:
    """Reads and writes jobs' records, files and pages; ``root`` (JOBS_DIR) holds each job's uploads."""

    def __init__(self, huey: Huey, root: Path):
        self.huey = huey
        self.root = root

    def directory(self, job_id: str) -> Path:
        return self.root / "files" / job_id

    def job_ids(self) -> list[str]:
        """Every job with files on disk: the index expiry sweeps (shared by every node, as JOBS_DIR is)."""
        files = self.root / "files"
        return sorted(entry.name for entry in files.iterdir()) if files.is_dir() else []

    def active_job_ids(self) -> list[str]:
        """The jobs not finished (queued or running): those whose directory holds the ``active`` marker.

        The warden looks at these every few seconds; a stat each, however many finished jobs are kept.
        """
        return [job_id for job_id in self.job_ids() if (self.directory(job_id) / ACTIVE_MARKER).exists()]

    def active_jobs(self) -> Iterator[Job]:
        """The records of the jobs not finished (a job removed meanwhile is left out)."""
        for job_id in self.active_job_ids():
            job = self.get(job_id)
            if job is not None:
                yield job

    def mark_active(self, job_id: str) -> None:
        (self.directory(job_id) / ACTIVE_MARKER).touch()

    def mark_finished(self, job_id: str) -> None:
        (self.directory(job_id) / ACTIVE_MARKER).unlink(missing_ok=True)

    def save(self, job: Job) -> None:
        self.huey.put(f"job:{job.id}", dataclasses.asdict(job))

    def get(self, job_id: str) -> Job | None:
        record = self.huey.get(f"job:{job_id}", peek=True)
        return Job(**record) if record else None

    def save_files(self, job_id: str, files: list[JobFile]) -> None:
        self.huey.put(f"job:{job_id}:files", [dataclasses.asdict(item) for item in files])

    def files(self, job_id: str) -> list[JobFile]:
        return [JobFile(**item) for item in self.huey.get(f"job:{job_id}:files", peek=True) or []]

    def save_page(self, job_id: str, index: int, page: dict[str, Any]) -> None:
        """Store a finished page; ``index`` counts from 1 over all the job's pages, in upload and page order."""
        self.huey.put(f"job:{job_id}:page:{index}", page)

    def page(self, job_id: str, index: int) -> dict[str, Any] | None:
        return self.huey.get(f"job:{job_id}:page:{index}", peek=True)

    def has_page(self, job_id: str, index: int) -> bool:
        return self.huey.storage.has_data_for_key(f"job:{job_id}:page:{index}")

    def request_cancel(self, job_id: str) -> None:
        self.huey.put(f"job:{job_id}:cancel", True)

    def cancel_requested(self, job_id: str) -> bool:
        return self.huey.storage.has_data_for_key(f"job:{job_id}:cancel")

    def claim_recovery(self, job: Job) -> bool:
        """True for exactly one caller per stale heartbeat: two wardens never both restart the same job."""
        return self.huey.put_if_empty(f"job:{job.id}:recovered:{job.heartbeat_at}", True)

    def remove_results(self, job_id: str, pages_total: int) -> None:
        """Delete the job's uploads, pages and searchable PDF; its record stays until it expires."""
        for index in range(1, pages_total + 1):
            self.huey.delete(f"job:{job_id}:page:{index}")
        shutil.rmtree(self.directory(job_id) / "uploads", ignore_errors=True)
        for leftover in self.directory(job_id).glob("result.pdf*"):
            leftover.unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        """Delete everything of the job: record, files, pages, flags and its directory."""
        job = self.get(job_id)
        if job is not None:
            self.remove_results(job_id, job.pages_total)
            self.huey.delete(f"job:{job_id}:recovered:{job.heartbeat_at}")
        for suffix in ("", ":files", ":cancel"):
            self.huey.delete(f"job:{job_id}{suffix}")
        shutil.rmtree(self.directory(job_id), ignore_errors=True)

    def expire(self, ttl_s: float, now: float | None = None) -> list[str]:
        """Remove the jobs finished more than ``ttl_s`` ago (and leftovers of submissions that never finished)."""
        now = time.time() if now is None else now
        removed = []
        for job_id in self.job_ids():
            job = self.get(job_id)
            if job is None:  # a submission that failed half-way, or a record removed elsewhere
                created = self.directory(job_id).stat().st_mtime if self.directory(job_id).exists() else 0
                expired = now - created > ttl_s
            else:
                expired = job.finished and job.finished_at is not None and now - job.finished_at > ttl_s
            if expired:
                self.remove(job_id)
                removed.append(job_id)
        if removed:
            logger.info("removed %d expired job(s)", len(removed))
        return removed
