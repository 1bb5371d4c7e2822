"""Running a job in a consumer: every page not yet done goes through the service's page stream, each finished page
is stored at once, and the job's record says how far it got, so that a restart goes on where it stopped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ocr_api.admission import JOB, Sender
from ocr_api.errors import ApiError, ClientGone, EngineNotReady, GatewayTimeout, InferenceFailed
from ocr_api.figures import picture_links
from ocr_api.jobs.queue import HEARTBEAT_S, NOBODY, PlannedRetry
from ocr_api.jobs.searchable import JobPdf
from ocr_api.jobs.store import Job, JobFile, JobStore
from ocr_api.jobs.turns import Turns
from ocr_api.options import OcrOptions
from ocr_api.pipeline import PageOutcome, StreamPage, StreamPaused
from ocr_api.results import FinishedPage
from ocr_api.sources import Source
from ocr_api.tracking import working_for

if TYPE_CHECKING:
    from ocr_api.service import OcrService

logger = logging.getLogger(__name__)

# Failures of the engine, not of a page: the job is run again later (JOB_ENGINE_RETRIES), from where it stopped.
ENGINE_FAILURES = (EngineNotReady, GatewayTimeout, InferenceFailed)


class EngineDown(PlannedRetry):
    """Raised to Huey so that it runs the job again after JOB_RETRY_DELAY_S: a planned retry, which the runner logs
    in one line, not an error (queue.py keeps Huey from logging it with a traceback)."""


class JobRunner:
    """Runs one job to its end (or to the consumer's stop, after which it is queued again)."""

    def __init__(self, service: OcrService, store: JobStore, on_finish: Callable[[Job], None], turns: Turns):
        self.service = service
        self.store = store
        self.on_finish = on_finish
        self.turns = turns

    def __call__(self, job_id: str, retries_left: int, stopping: Callable[[], bool]) -> Job | None:
        """Run the job; return it when it must be queued again (the consumer stopped, or the job gave its place to
        a waiting one), else None."""
        with working_for(f"job:{job_id}"):  # its log lines name the job, as a request's name the request
            try:
                return self._run(job_id, retries_left, stopping)
            finally:
                self.turns.closed(job_id)

    def _run(self, job_id: str, retries_left: int, stopping: Callable[[], bool]) -> Job | None:
        job = self.store.get(job_id)
        if job is None or job.finished:
            return None
        if self.store.cancel_requested(job_id):
            self._end_cancelled(job)
            return None
        now = time.time()
        job.status, job.runs, job.run_started_at, job.heartbeat_at = "running", job.runs + 1, now, now
        job.started_at = job.started_at or now
        job.run_pages_at_start = job.pages_done
        self.store.save(job)
        files = self.store.files(job_id)
        watch = _Watch(self.store, job, stopping)
        self.turns.opened(job_id, job.owner or NOBODY)
        options = self.service.options_from(job.form)
        pdf = JobPdf(self.store, job, files, options, self.service.image_limits) if job.wants_pdf else None
        try:
            return self._run_to_end(job, files, watch, retries_left, pdf)
        finally:
            if pdf is not None:
                pdf.close()

    def _run_to_end(self, job: Job, files: list[JobFile], watch: _Watch, retries_left: int,
                    pdf: JobPdf | None) -> Job | None:  # fmt: skip
        job_id = job.id
        try:
            self._run_pages(job, files, watch, pdf)
        except ClientGone:  # cancelled, or the consumer is stopping
            if watch.cancelled:
                self._end_cancelled(job)
                return None
            logger.info("job %s stopped at %d/%d pages; queued again", job_id, job.pages_done, job.pages_total)
            job.waiting_for = "consumer"
            return job
        except StreamPaused:
            logger.info("job %s gave its place to a waiting job at %d/%d pages; queued again", job_id, job.pages_done,
                        job.pages_total)  # fmt: skip
            job.waiting_for = "turn"
            return job
        except ENGINE_FAILURES as error:
            if retries_left > 0:
                logger.warning("job %s waits for the engine (%s): it runs again in %g s, %d retr%s left", job_id,
                               error.code, self.service.settings.job_retry_delay_s, retries_left,
                               "y" if retries_left == 1 else "ies")  # fmt: skip
                job.status, job.error, job.waiting_for = "queued", {**error.to_dict(), "retrying": True}, "engine"
                self.store.save(job)
                raise EngineDown(error.code) from None
            self._fail_remaining(job, files, error, pdf)
        if pdf is not None:
            job.searchable = pdf.finish()
        self._end(job)
        return None

    def _run_pages(self, job: Job, files: list[JobFile], watch: _Watch, pdf: JobPdf | None) -> None:
        options = self.service.options_from(job.form)
        offsets = _offsets(files)
        with ExitStack() as stack:
            sources: list[Source] = []
            for item in files:
                try:
                    source, _ = self.service.open_upload(self._path(job, item), options, None, for_job=True)
                except (ApiError, OSError):
                    if self.store.cancel_requested(job.id):  # its files were removed under it
                        watch.cancelled = True
                        raise ClientGone() from None
                    raise
                stack.callback(source.close)
                sources.append(source)
            todo = [
                StreamPage((position, index), partial(source.render, index))
                for position, source in enumerate(sources)
                for index in range(len(files[position].page_numbers))
                if not self._stored(job, offsets[position] + index + 1)
            ]
            sender = Sender(JOB, job.owner or NOBODY, job.id)
            pause = partial(self.turns.should_yield, job.id)
            stream = self.service.page_stream(options, watch, job=sender, should_pause=pause)
            # closing(): a failure to store a page ends the stream at once, its pages aborted, its slots freed.
            try:
                with closing(stream.finished(todo)) as finished:
                    if pdf is not None:
                        pdf.catch_up()  # the pages stored by earlier runs
                    for (position, index), outcome in finished:
                        self._record(job, files, (position, index), offsets[position] + index + 1, outcome,
                                     options=options)  # fmt: skip
                        if pdf is not None:
                            pdf.catch_up()
            finally:
                job.engine_ms = round(job.engine_ms + stream.engine_ms, 1)

    def _stored(self, job: Job, page_index: int) -> bool:
        return page_index <= job.pages_ready or self.store.has_page(job.id, page_index)

    def _record(self, job: Job, files: list[JobFile], key: tuple[int, int], page_index: int,
                outcome: PageOutcome, *, options: OcrOptions | None = None) -> None:  # fmt: skip
        """Store a finished page (``key``: its file's position and its own in the file) and count it. Its pictures,
        when asked for, are links: they are made when fetched (Jobs.picture), never stored."""
        position, index = key
        item = files[position]
        entry = FinishedPage(item.page_numbers[index], outcome).entry(item.is_document)
        if options is not None and options.wants_pictures and outcome.reading is not None:
            base = f"{job.links()['self']}/pages/{page_index}"
            entry.update(picture_links(outcome.reading.blocks, base, figures=options.figures,
                                       annotated=options.annotate))  # fmt: skip
        record = {"file": position, "entry": entry}
        if outcome.error is not None:  # its status, so that a job's result answers as /ocr would have
            record["error_status"] = outcome.error.status
        self.store.save_page(job.id, page_index, record)
        job.pages_done += 1
        job.counts[entry["status"]] += 1
        job.pages_retried += entry.get("attempts", 1) > 1
        while job.pages_ready < job.pages_total and self.store.has_page(job.id, job.pages_ready + 1):
            job.pages_ready += 1
        job.heartbeat_at = time.time()
        self.store.save(job)

    def _fail_remaining(self, job: Job, files: list[JobFile], error: ApiError, pdf: JobPdf | None) -> None:
        """The engine stayed down through every retry: each page not done fails with its error, and says so."""
        logger.error("job %s: %s after every retry; %d page(s) fail", job.id, error.code,
                     job.pages_total - job.pages_done)  # fmt: skip
        offsets = _offsets(files)
        for position, item in enumerate(files):
            for index in range(len(item.page_numbers)):
                if not self._stored(job, offsets[position] + index + 1):
                    self._record(job, files, (position, index), offsets[position] + index + 1, PageOutcome(error=error))
                    if pdf is not None:
                        pdf.catch_up()
        job.error = error.to_dict()

    def _end(self, job: Job) -> None:
        failed = job.counts["failed"]
        job.status = "failed" if failed == job.pages_total else "partial" if failed else "succeeded"
        if job.status == "succeeded":
            job.error = None
        job.finished_at = time.time()
        self.store.save(job)
        self.store.mark_finished(job.id)
        logger.info("job %s %s: %d pages in %d run(s)", job.id, job.status, job.pages_total, job.runs)
        self.on_finish(job)

    def _end_cancelled(self, job: Job) -> None:
        job.status, job.finished_at = "cancelled", time.time()
        self.store.save(job)
        self.store.mark_finished(job.id)
        self.store.remove_results(job.id, job.pages_total)
        logger.info("job %s cancelled at %d/%d pages", job.id, job.pages_done, job.pages_total)
        self.on_finish(job)

    def _path(self, job: Job, item: JobFile) -> Path:
        return self.store.directory(job.id) / "uploads" / item.stored


class _Watch:
    """The stream's stop check for a job: the consumer stopping, or the job cancelled; it also beats the heart.

    The cancel flag is read at every check, before each page is sent included: one key's existence in the queue's
    storage, so that no page reaches the engine once DELETE has answered.
    """

    def __init__(self, store: JobStore, job: Job, stopping: Callable[[], bool]):
        self.store, self.job, self.stopping = store, job, stopping
        self.cancelled = False
        self._beat = time.monotonic()

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._beat >= HEARTBEAT_S:
            self._beat = now
            self.job.heartbeat_at = time.time()
            self.store.save(self.job)
        self.cancelled = self.cancelled or self.store.cancel_requested(self.job.id)
        return self.cancelled or self.stopping()


def _offsets(files: list[JobFile]) -> list[int]:
    """Each file's first page index, less one: pages are numbered 1.. over the whole job."""
    offsets, total = [], 0
    for item in files:
        offsets.append(total)
        total += len(item.page_numbers)
    return offsets
