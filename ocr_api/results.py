"""A request's results, built once from the page outcomes and serialized here, for images and documents alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ocr_api.errors import ApiError
from ocr_api.pipeline import PageOutcome
from ocr_api.reading import blocks_as_dicts
from ocr_api.searchable_pdf import PageText, Part, SearchablePdf
from ocr_api.shapes import BatchResult, DocumentPage, DocumentResult, FileFailure, ImageResult, PageFields
from ocr_api.text_layer import hocr_document, hocr_page, page_lines

# Between the pages of a document in the top-level text, as DeepSeek's own PDF script separates them.
PAGE_SEPARATOR = "\n\n<--- Page Split --->\n\n"


@dataclass(frozen=True)
class FinishedPage:
    """A page's number in its document (None for an image) and its outcome."""

    number: int | None
    outcome: PageOutcome

    def fields(self) -> PageFields:
        """The page's own fields: the same for an image's body and a document's ``pages`` entry."""
        reading, outcome = self.outcome.reading, self.outcome
        if reading is None:
            return {"status": "failed", **(outcome.error.to_dict() if outcome.error else {})}
        return {
            "status": reading.status,
            "text": reading.text,
            "markdown": reading.markdown,
            "blocks": blocks_as_dicts(reading.blocks),
            "raw_output": reading.output.text,
            "finish_reason": reading.output.finish_reason,
            "truncated": reading.truncated,
            "repetition_loop": reading.repetition_loop,
            "attempts": outcome.attempts,
            "usage": reading.usage(),
            "max_tokens": reading.output.max_tokens,
            "guard": reading.output.guard.to_dict(),
            **outcome.pictures,
        }

    def entry(self, is_document: bool) -> PageFields | DocumentPage:
        """The page as its file's result holds it: its fields, and for a document page its number and size."""
        if not is_document:
            return self.fields()
        entry: DocumentPage = {"page": self.number, **self.fields()}  # type: ignore[typeddict-item]
        if self.outcome.reading is not None:
            width, height = self.outcome.size
            entry.update(width=width, height=height)
        return entry


@dataclass(frozen=True)
class FileResult:
    """The OCR result of one accepted file: an image (one page) or a document (its selected pages)."""

    filename: str
    image_path: str
    prompt: str
    task: str | None
    source: dict[str, Any]  # what the file was: image format and mode, or the document's page count and dpi
    pages: tuple[FinishedPage, ...]
    is_document: bool
    engine: str
    model: str
    timing: dict[str, float] = field(default_factory=dict)
    rendition: Rendition | None = None  # output=pdf or hocr: the answer instead of the JSON

    def to_dict(self) -> ImageResult | DocumentResult:
        head = {"image_path": self.image_path, "prompt": self.prompt, "task": self.task, "filename": self.filename}
        tail = {"engine": self.engine, "model": self.model, "timing": self.timing}
        entries = [page.entry(self.is_document) for page in self.pages]
        return file_body(head, entries, self.source, self.is_document, tail)


def file_body(
    head: dict[str, Any], entries: list[dict[str, Any]], source: dict[str, Any], is_document: bool,
    tail: dict[str, Any],
) -> ImageResult | DocumentResult:  # fmt: skip
    """The one body of a file's result, from its page entries: what /ocr returns and a job's result holds."""
    body: Any = {"text": PAGE_SEPARATOR.join(entry.get("text", "") for entry in entries), **head}
    if not is_document:
        (entry,) = entries
        body.update(entry, image=source)
    else:
        body.update(_document_fields(entries, source))
    body.update(tail)
    return body


# A document's status is the worst of its pages', in this order (pages_failed and the others say how many).
WORST_FIRST = ("failed", "repetitive", "truncated", "ok")


def _document_fields(entries: list[dict[str, Any]], source: dict[str, Any]) -> dict[str, Any]:
    statuses = [entry["status"] for entry in entries]
    read = [entry for entry in entries if entry["status"] != "failed"]
    truncated = statuses.count("truncated")
    prompt = sum(entry["usage"]["prompt_tokens"] for entry in read)
    completion = sum(entry["usage"]["completion_tokens"] for entry in read)
    return {
        "status": next((status for status in WORST_FIRST if status in statuses), "ok"),
        "finish_reason": "length" if truncated else "stop",
        "truncated": truncated > 0,
        "pages_total": len(entries),
        "pages_failed": statuses.count("failed"),
        "pages_truncated": truncated,
        "pages_repetitive": statuses.count("repetitive"),
        "pages_retried": sum(entry.get("attempts", 1) > 1 for entry in entries),
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "guard": read[0]["guard"] if read else None,
        "markdown": PAGE_SEPARATOR.join(entry.get("markdown", "") for entry in entries),
        "document": source,
        "pages": entries,
    }


@dataclass(frozen=True)
class Rendition:
    """A file's result as a document of its own (``output=pdf`` or ``hocr``), and which of its pages (1-based) have
    no text from the model: those that failed, and PDF pages that kept the text they had."""

    media_type: str
    data: bytes
    filename: str
    failed_pages: tuple[int, ...]
    kept_text_pages: tuple[int, ...] = ()


def page_text(outcome: PageOutcome) -> PageText | None:
    """What the text layer of a finished page is made from; None for a page that failed."""
    reading = outcome.reading
    return None if reading is None else PageText(reading.blocks, reading.text, outcome.size)


def searchable_pdf(result: FileResult, part: Part) -> Rendition:
    """The file's pages (``part``: where the file is) with their text under them, built in memory."""
    writer = SearchablePdf(None, [part])
    try:
        for page in result.pages:
            writer.add(page_text(page.outcome))
        progress = writer.finish()
    finally:
        writer.close()
    assert writer.data is not None
    return Rendition("application/pdf", writer.data, _renamed(result.filename, "pdf"), tuple(progress.failed),
                     tuple(progress.kept_text))  # fmt: skip


def hocr(result: FileResult, dpi: float | None) -> Rendition:
    """The file's pages as hOCR: each page's lines, and its words placed along them."""
    pages, failed = [], []
    for number, page in enumerate(result.pages):
        text = page_text(page.outcome)
        if text is None:
            failed.append(number + 1)
        lines = page_lines(text.blocks, text.text, page.outcome.size) if text is not None else []
        pages.append(hocr_page(lines, page.outcome.size, number, dpi))
        # a failed page is there, empty, so that page numbers keep their place
    return Rendition("text/html; charset=utf-8", hocr_document(pages).encode(), _renamed(result.filename, "hocr"),
                     tuple(failed))  # fmt: skip


def _renamed(filename: str, extension: str) -> str:
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    return f"{stem or 'result'}.{extension}"


@dataclass(frozen=True)
class FileError:
    """A file of a batch that could not be processed, with the error it would have had alone."""

    filename: str
    error: ApiError

    def to_dict(self) -> FileFailure:
        """A batch's entry for the file: ``status`` is "failed", as a page's, and ``http_status`` the status the file
        would have had alone; ``text`` is empty, so that every entry has the earlier contract's text."""
        return {"filename": self.filename, "status": "failed", "http_status": self.error.status, "text": "",
                **self.error.to_dict()}  # fmt: skip


def batch_body(entries: list[ImageResult | DocumentResult | FileFailure]) -> BatchResult:
    """What /ocr/batch answers, and a job of several files holds: each file's result or error, in upload order."""
    failed = sum("http_status" in entry for entry in entries)
    return {"results": entries, "total": len(entries), "succeeded": len(entries) - failed, "failed": failed}
