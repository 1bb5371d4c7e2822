"""A job's searchable PDF (``output=pdf``): written beside its files as its pages finish, in page order.

Each time the run of finished pages from the first grows, the new pages are added to ``result.pdf.part`` from their
stored entries; the writer saves every few dozen pages and drops what it saved from memory, and keeps its progress
beside the file, so a consumer that stops (or a job that gives its place) goes on from the last save. When the last
page is in, the file becomes ``result.pdf``; the job's directory, and so the PDF, goes when the job does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ocr_api.interpretation import Block
from ocr_api.jobs.store import Job, JobFile, JobStore
from ocr_api.options import OcrOptions
from ocr_api.preparation import ImageLimits
from ocr_api.searchable_pdf import ImagePart, PageText, Part, PdfPart, SearchablePdf

logger = logging.getLogger(__name__)

RESULT_PDF = "result.pdf"


def result_pdf(store: JobStore, job_id: str) -> Path:
    """Where a finished job's searchable PDF is."""
    return store.directory(job_id) / RESULT_PDF


class JobPdf:
    """The searchable PDF of one job being run."""

    def __init__(self, store: JobStore, job: Job, files: list[JobFile], options: OcrOptions, limits: ImageLimits):
        self.store, self.job = store, job
        uploads = store.directory(job.id) / "uploads"
        parts: list[Part] = [_part(uploads / item.stored, item, options, limits) for item in files]
        self.writer = SearchablePdf(store.directory(job.id) / f"{RESULT_PDF}.part", parts)
        self.error: str | None = None  # why the PDF could not be written; the job's JSON result is unaffected

    def catch_up(self) -> None:
        """Add every page stored in order since the last one added."""
        try:
            while self.error is None and self.writer.written < self.job.pages_ready:
                record = self.store.page(self.job.id, self.writer.written + 1)
                if record is None:  # removed under it (a cancel): the run ends at its next check
                    return
                self.writer.add(page_text(record["entry"]))
        except Exception as error:  # noqa: BLE001 - PyMuPDF's errors have no common base; the job goes on
            self._failed(error)

    def finish(self) -> dict[str, Any]:
        """The last pages in, the file is the job's result.pdf; which pages have no text from the model (or why
        there is no PDF)."""
        self.catch_up()
        if self.error is None:
            try:
                progress = self.writer.finish()
                os.replace(self.writer.path, result_pdf(self.store, self.job.id))  # type: ignore[arg-type]
                return {"failed_pages": progress.failed, "kept_text_pages": progress.kept_text}
            except Exception as error:  # noqa: BLE001 - as in catch_up
                self._failed(error)
        return {"error": self.error}

    def _failed(self, error: Exception) -> None:
        logger.exception("job %s: its searchable PDF cannot be written", self.job.id)
        self.error = f"The searchable PDF could not be written: {type(error).__name__}: {str(error)[:200]}"
        self.writer.close()

    def close(self) -> None:
        self.writer.close()


def _part(path: Path, item: JobFile, options: OcrOptions, limits: ImageLimits) -> Part:
    if not item.is_document:
        return ImagePart(path, limits)
    return PdfPart(path, tuple(number - 1 for number in item.page_numbers if number), options.password)


def page_text(entry: dict[str, Any]) -> PageText | None:
    """A stored page entry's text and blocks (None for a failed page); a document page's size is in its entry."""
    if entry.get("status") == "failed":
        return None
    blocks = tuple(Block.from_dict(block) for block in entry.get("blocks", []))
    size = (entry["width"], entry["height"]) if "width" in entry else None
    return PageText(blocks, entry.get("text", ""), size)
