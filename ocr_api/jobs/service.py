"""Jobs: the facade the /jobs views call. It checks and stores a job's files, queues it, and reads it back."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ocr_api.errors import (
    ApiError,
    BadRequest,
    Conflict,
    InsufficientStorage,
    NotFound,
    Overloaded,
    ServiceUnavailable,
    ShuttingDown,
    TooManyJobs,
    UnprocessableFile,
)
from ocr_api.figures import ANNOTATED, has_figure, picture_png
from ocr_api.jobs import callbacks
from ocr_api.jobs.queue import JobQueue
from ocr_api.jobs.runner import JobRunner
from ocr_api.jobs.searchable import result_pdf
from ocr_api.jobs.store import Job, JobFile
from ocr_api.preparation import EXTENSIONS, sniff_format
from ocr_api.results import FileError, batch_body, file_body
from ocr_api.shapes import JobPages

if TYPE_CHECKING:
    from ocr_api.service import OcrService

logger = logging.getLogger(__name__)

EVENT_POLL_S = 0.5
KEEPALIVE_S = 15.0
MAX_PAGES_PER_CALL = 500
# A job's pictures are made when first fetched, from a page drawn again; what that costs is bounded in each process:
# pages drawn at most this large (a 300-dpi A4 scan, 8.7 M pixels, is drawn whole; a poster is shrunk), this many
# made at once (the others wait, PICTURE_WAIT_S at most, then 503), and each made once (kept with the job's files).
PICTURE_MAX_PIXELS = 12_000_000
PICTURES_AT_ONCE = 2
PICTURE_WAIT_S = 30.0


class JobNotFound(NotFound):
    code = "job_not_found"
    message = "No such job (it may have expired, or belong to another API key)."


class PictureNotFound(NotFound):
    code = "picture_not_found"
    message = (
        "This page has no such picture: the job did not ask for it (figures=true, annotate=true), the page is not "
        "finished or failed, or it has no such figure."
    )


class StorageUnavailable(ServiceUnavailable):
    code = "jobs_storage_unavailable"
    message = "Jobs cannot be stored right now (JOBS_DIR is not writable, or the queue is unreachable)."


@dataclass(frozen=True)
class JobUpload:
    """A file of a job as it arrives: the client's name and a stream of its bytes (spooled, not in memory)."""

    filename: str
    stream: IO[bytes]


class Jobs:
    """Document jobs of one process: submission and reading here, running in whichever process consumes."""

    def __init__(self, service: OcrService, queue: JobQueue):
        self.service = service
        self.queue = queue
        self.store = queue.store
        self.settings = service.settings
        self._picture_slots = threading.BoundedSemaphore(PICTURES_AT_ONCE)
        self._pictures_lock = threading.Lock()
        self._pictures_in_making: dict[Path, tuple[threading.Lock, int]] = {}

    def runner(self) -> JobRunner:
        """What runs this deployment's jobs on this process's engine (in the consumer)."""
        return JobRunner(self.service, self.store, self._finished, self.queue.turns)

    def _finished(self, job: Job) -> None:
        if job.callback_url:
            self.queue.deliver_callback(job.id)

    # Submission.

    def submit(
        self, uploads: Sequence[JobUpload], form: Mapping[str, list[str]], owner: str | None, base_url: str
    ) -> Job:
        """Check every file as /ocr would, store them under JOBS_DIR and queue the job; raise the first ApiError."""
        if self.service.is_draining():
            raise ShuttingDown()
        if len(uploads) > self.settings.job_max_files:
            raise BadRequest(f"A job holds at most {self.settings.job_max_files} files; got {len(uploads)}.",
                             code="too_many_files")  # fmt: skip
        fields = {key: values for key, values in form.items() if key != "callback_url"}
        options = self.service.options_from(fields)  # 400 for a bad field, before anything is stored
        _check_output(options.output)
        callback_url = (form.get("callback_url") or [""])[0].strip() or None
        if callback_url:
            if not self.settings.callback_secret:
                raise BadRequest("Callbacks are off on this server (CALLBACK_SECRET is not set).",
                                 code="callbacks_disabled")  # fmt: skip
            callbacks.check_url(callback_url, self.settings.callback_allow_private)
        unfinished = self._unfinished_pages(owner)
        if len(unfinished) >= self.settings.key_max_jobs:
            raise TooManyJobs(f"This key has {len(unfinished)} jobs queued or running, as many as this server takes "
                              f"(KEY_MAX_JOBS={self.settings.key_max_jobs}); submit more as they finish.")  # fmt: skip
        job_id = uuid.uuid4().hex
        directory = self.store.directory(job_id) / "uploads"
        try:
            files = self._store_files(uploads, options, directory)
            pages_total = sum(len(item.page_numbers) for item in files)
            self._check_pages(pages_total, sum(unfinished))
            job = Job(job_id, owner, fields, pages_total, len(files), time.time(), callback_url=callback_url,
                      base_url=base_url)  # fmt: skip
            self.store.save_files(job_id, files)
            self.store.mark_active(job_id)
            self.queue.enqueue(job)
        except BaseException as error:
            self._discard(job_id)
            if isinstance(error, ApiError):
                raise
            if isinstance(error, OSError):
                raise _storage_error(error) from None
            if _is_queue_error(error):
                logger.error("the job queue is unreachable: %s", error)
                raise StorageUnavailable() from None
            raise
        logger.info("job %s queued: %d file(s), %d page(s)", job_id, len(files), pages_total)
        return job

    def _check_pages(self, pages_total: int, key_pages_left: int) -> None:
        """Refuse a job of too many pages (422), or one that takes its key past KEY_MAX_JOB_PAGES (429)."""
        if pages_total > self.settings.job_max_pages:
            limit = self.settings.job_max_pages
            raise UnprocessableFile(f"A job runs at most {limit} pages; these files have {pages_total} (select "
                                    "fewer with pages=).", code="too_many_pages")  # fmt: skip
        if key_pages_left + pages_total > self.settings.key_max_job_pages:
            raise TooManyJobs(f"This key's jobs queued or running have {key_pages_left} pages left; with this job's "
                              f"{pages_total} that is more than this server takes (KEY_MAX_JOB_PAGES="
                              f"{self.settings.key_max_job_pages}); submit it as they finish.",
                              code="too_many_job_pages")  # fmt: skip

    def _unfinished_pages(self, owner: str | None) -> list[int]:
        """The pages left of each job of ``owner`` not finished (queued or running)."""
        return [job.pages_total - job.pages_done for job in self.store.active_jobs()
                if job.owner == owner and not job.finished]  # fmt: skip

    def _store_files(self, uploads: Sequence[JobUpload], options: Any, directory: Any) -> list[JobFile]:
        directory.mkdir(parents=True)
        files = []
        for number, upload in enumerate(uploads):
            head = upload.stream.read(4096)
            upload.stream.seek(0)
            kind = sniff_format(head)
            extension = EXTENSIONS[kind] if kind else "pdf" if b"%PDF-" in head[:1024] else "bin"
            path = directory / f"{number:05d}.{extension}"
            with path.open("wb") as handle:
                shutil.copyfileobj(upload.stream, handle, 1 << 20)
            opening_started = time.perf_counter()
            try:
                source, _ = self.service.open_upload(path, options, None, for_job=True)
            except ApiError as error:
                if len(uploads) > 1:
                    error.message = f"{upload.filename or f'file {number + 1}'}: {error.message}"
                raise
            try:
                files.append(
                    JobFile(
                        upload.filename,
                        path.name,
                        source.is_document,
                        source.page_numbers(),
                        source.describe(),
                        round((time.perf_counter() - opening_started) * 1000, 1),
                    )
                )
            finally:
                source.close()
        return files

    def _discard(self, job_id: str) -> None:
        try:
            self.store.remove(job_id)
        except Exception:  # noqa: BLE001 - the queue itself may be what failed; the files go regardless
            shutil.rmtree(self.store.directory(job_id), ignore_errors=True)

    # Reading and cancelling.

    def find(self, job_id: str, owner: str | None) -> Job:
        """The job, if it exists and belongs to this caller; otherwise 404 (whose job it is stays unsaid)."""
        job = self.store.get(job_id) if len(job_id) == 32 and job_id.isalnum() else None
        if job is None or job.owner != owner:
            raise JobNotFound()
        if not job.finished and self.store.cancel_requested(job.id):
            job.status = "cancelled"  # the consumer is stopping it; nothing more will come
        return job

    def view(self, job: Job) -> dict[str, Any]:
        position = self.queue.queue_position(job.task_id) if job.status == "queued" else None
        return job.view(time.time(), position)

    def cancel(self, job: Job) -> dict[str, Any] | None:
        """Cancel a job not finished (its record stays, as cancelled, until JOB_TTL); remove a finished one whole."""
        if job.finished:
            self.store.remove(job.id)
            return None
        self.store.request_cancel(job.id)
        if job.status == "queued":  # no consumer has it: end it here (one that just took it sees the flag)
            self.queue.huey.revoke_by_id(job.task_id, revoke_once=True)
            job.status, job.finished_at = "cancelled", time.time()
            self.store.save(job)
            self.store.mark_finished(job.id)
            self.store.remove_results(job.id, job.pages_total)
        # Running: its consumer ends it within a second and records when; the answer says it ended now.
        job.status, job.finished_at = "cancelled", job.finished_at or time.time()
        return self.view(job)

    def result(self, job: Job) -> tuple[dict[str, Any], int]:
        """The body /ocr (one file) or /ocr/batch (several) would have returned, and its status."""
        if not job.finished:
            return self.view(job), 202
        if job.status == "cancelled":
            raise Conflict("The job was cancelled; it has no result.", code="job_cancelled")
        files = self.store.files(job.id)
        options = self.service.options_from(job.form)
        results: list[dict[str, Any]] = []
        first_error: ApiError | None = None
        index = 0
        for item in files:
            records = [self.store.page(job.id, index + offset + 1) for offset in range(len(item.page_numbers))]
            index += len(item.page_numbers)
            entries = [record["entry"] for record in records if record is not None]
            if len(entries) < len(records):
                raise Conflict("The job's results are gone (removed or expired).", code="job_results_removed")
            if all(entry["status"] == "failed" for entry in entries):
                error = ApiError.rebuilt(records[0].get("error_status", 500), entries[0])  # type: ignore[union-attr]
                first_error = first_error or error
                results.append(FileError(item.filename, error).to_dict())
                continue
            # Not the file's place on this server: where the job keeps it, as /ocr's names its upload's.
            head = {"image_path": f"jobs/{job.id}/{item.stored}",
                    "prompt": options.prompt, "task": options.task, "filename": item.filename}  # fmt: skip
            timing = {
                "preparation_ms": item.preparation_ms,
                "inference_ms": job.engine_ms,
                "total_ms": round(((job.finished_at or 0) - job.created_at) * 1000, 1),
            }
            tail = {"engine": self.service.engine.name, "model": self.service.engine.model_id, "timing": timing}
            results.append(file_body(head, entries, item.source, item.is_document, tail))
        if len(results) == 1:
            if first_error is not None:
                return first_error.to_dict(), first_error.status
            return results[0], 200
        return batch_body(results), 200

    def result_pdf(self, job: Job) -> tuple[Path, dict[str, Any]]:
        """A finished job's searchable PDF (output=pdf), and which of its pages have no text from the model."""
        if not job.wants_pdf:
            raise NotFound("This job was not made with output=pdf; it has no PDF.", code="no_pdf")
        if job.status == "cancelled":
            raise Conflict("The job was cancelled; it has no result.", code="job_cancelled")
        if not job.finished:
            raise Conflict(f"The job is {job.status} ({job.pages_done}/{job.pages_total} pages); its PDF is served "
                           "once every page is done.", code="job_not_finished")  # fmt: skip
        searchable = job.searchable or {}
        if "error" in searchable:
            raise UnprocessableFile(str(searchable["error"]), code="pdf_not_written")
        path = result_pdf(self.store, job.id)
        if not path.exists():
            raise Conflict("The job's results are gone (removed or expired).", code="job_results_removed")
        return path, searchable

    def check_picture(self, job: Job, index: int, kind: str, number: int = 0) -> dict[str, Any]:
        """The finished page's record when it has this picture (asked for, page finished and not failed, the figure
        in its output); PictureNotFound otherwise. Reads the record only: nothing is drawn."""
        record = self.store.page(job.id, index) if 1 <= index <= job.pages_total else None
        options = self.service.options_from(job.form)
        wanted = options.annotate if kind == ANNOTATED else options.figures
        if record is None or not wanted or record["entry"]["status"] == "failed":
            raise PictureNotFound()
        if kind != ANNOTATED and not has_figure(record["entry"]["raw_output"], number):
            raise PictureNotFound()
        return record

    def picture(self, job: Job, index: int, kind: str, number: int = 0) -> bytes:
        """One picture of the job's finished page ``index`` as PNG bytes, as /ocr makes it, from the job's stored
        file and the page's output: made once (drawn at most PICTURE_MAX_PIXELS, by at most PICTURES_AT_ONCE threads
        of this process at a time), then kept with the job's files until the job is removed."""
        record = self.check_picture(job, index, kind, number)
        kept = self.store.directory(job.id) / "pictures" / f"{index}-{kind}-{number}.png"
        with contextlib.suppress(FileNotFoundError):
            return kept.read_bytes()
        with self._making(kept):  # a second client of the same picture waits for it rather than making it again
            with contextlib.suppress(FileNotFoundError):
                return kept.read_bytes()
            if not self._picture_slots.acquire(timeout=PICTURE_WAIT_S):
                raise Overloaded("Every slot for making pictures is busy; try again after the time in Retry-After.")
            try:
                png = self._draw_picture(job, record, index, kind, number)
            finally:
                self._picture_slots.release()
            kept.parent.mkdir(parents=True, exist_ok=True)
            partial = kept.with_suffix(f".{uuid.uuid4().hex}.part")
            partial.write_bytes(png)
            partial.replace(kept)  # whole or not at all, whoever reads it (another process too)
        return png

    @contextlib.contextmanager
    def _making(self, picture: Path) -> Iterator[None]:
        """Hold the lock of one picture while it is made in this process."""
        with self._pictures_lock:
            lock, users = self._pictures_in_making.get(picture, (threading.Lock(), 0))
            self._pictures_in_making[picture] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._pictures_lock:
                lock, users = self._pictures_in_making[picture]
                if users == 1:
                    del self._pictures_in_making[picture]
                else:
                    self._pictures_in_making[picture] = (lock, users - 1)

    def _draw_picture(self, job: Job, record: dict[str, Any], index: int, kind: str, number: int) -> bytes:
        options = self.service.options_from(job.form)
        files = self.store.files(job.id)
        position = record["file"]
        first = 1 + sum(len(item.page_numbers) for item in files[:position])  # the file's first page's index
        path = self.store.directory(job.id) / "uploads" / files[position].stored
        source, _ = self.service.open_upload(path, options, None, for_job=True, max_pixels=PICTURE_MAX_PIXELS)
        try:
            page = source.render(index - first)
        finally:
            source.close()
        png = picture_png(page.image, record["entry"]["raw_output"], kind, number)
        if png is None:
            raise PictureNotFound()
        return png

    def pages(self, job: Job, after: int, limit: int) -> JobPages:
        """The finished pages after the ``after``-th, in page order, at most ``limit`` of them."""
        limit = min(limit, MAX_PAGES_PER_CALL)  # 0: the status and counts alone
        stop = min(job.pages_ready, after + limit)
        names = self._filenames(job)
        items = [self._page_item(job, index, names) for index in range(after + 1, stop + 1)]
        items = [item for item in items if item is not None]
        next_after = items[-1]["index"] if items else after
        if job.status == "cancelled":  # its pages were removed: nothing more will come, and the loop is over
            next_after = max(next_after, job.pages_ready)
        body: JobPages = {
            "id": job.id, "status": job.status, "pages_total": job.pages_total, "pages_ready": job.pages_ready,
            "after": after, "next_after": next_after, "pages": items,
        }  # fmt: skip
        if job.error:  # why it waits (the engine down, retrying) or failed, as its view says: pollers see it here
            body["error"] = job.error
        return body

    def _filenames(self, job: Job) -> list[str]:
        """The job's files' names, read once per call: each page item names its file."""
        return [item.filename for item in self.store.files(job.id)]

    def _page_item(self, job: Job, index: int, names: list[str]) -> dict[str, Any] | None:
        record = self.store.page(job.id, index)
        if record is None:
            return None
        return {"index": index, "file": record["file"], "filename": names[record["file"]], "page": None,
                **record["entry"]}  # fmt: skip

    def events(self, job: Job, owner: str | None, after: int) -> Iterator[str]:
        """Server-Sent Events: each finished page (id: its index), progress as it changes, then one ``end``."""
        names = self._filenames(job)
        cursor, last_progress, quiet_since = after, None, time.monotonic()
        while True:
            sent = False
            while cursor < job.pages_ready and job.status != "cancelled":
                item = self._page_item(job, cursor + 1, names)
                if item is None:
                    break
                cursor += 1
                sent = True
                yield _event("page", item, event_id=str(cursor))
            view = self.view(job)
            progress = (view["status"], view["progress"]["pages_done"])
            if progress != last_progress:
                last_progress, sent = progress, True
                yield _event("progress", view)
            if job.finished and (cursor >= job.pages_ready or job.status == "cancelled"):
                yield _event("end", view, event_id="end")
                return
            if sent:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"  # a comment: proxies see traffic, clients ignore it
            time.sleep(EVENT_POLL_S)
            try:
                job = self.find(job.id, owner)
            except JobNotFound:  # removed meanwhile (DELETE of a finished job, or expired)
                yield _event("end", {"id": job.id, "status": "removed"}, event_id="end")
                return


def _check_output(output: str) -> None:
    if output == "hocr":
        raise BadRequest("A job answers JSON, or a searchable PDF with output=pdf; hOCR comes from /ocr.",
                         code="output_not_supported")  # fmt: skip


def _event(name: str, data: dict[str, Any], event_id: str | None = None) -> str:
    lines = [f"event: {name}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


def _storage_error(error: OSError) -> ApiError:
    logger.error("could not store a job under JOBS_DIR: %s", error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InsufficientStorage()
    return StorageUnavailable()


def _is_queue_error(error: BaseException) -> bool:
    """A failure of the queue's storage (Redis unreachable, SQLite locked or unwritable)."""
    return isinstance(error, (sqlite3.Error, RedisError))
