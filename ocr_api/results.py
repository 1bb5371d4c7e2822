"""A request's results, built once from the page outcomes and serialized here, for images and documents alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ocr_api.errors import ApiError
from ocr_api.pipeline import PageOutcome
from ocr_api.reading import blocks_as_dicts, usage

# Between the pages of a document in the top-level text, as DeepSeek's own PDF script separates them.
PAGE_SEPARATOR = "\n\n<--- Page Split --->\n\n"


@dataclass(frozen=True)
class FinishedPage:
    """A page's number in its document (None for an image) and its outcome."""

    number: int | None
    outcome: PageOutcome

    def fields(self) -> dict[str, Any]:
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

    @property
    def text(self) -> str:
        return self.outcome.reading.text if self.outcome.reading else ""


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

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "text": PAGE_SEPARATOR.join(page.text for page in self.pages),
            "image_path": self.image_path,
            "prompt": self.prompt,
            "task": self.task,
            "filename": self.filename,
        }
        if not self.is_document:
            (page,) = self.pages
            body.update(page.fields(), image=self.source)
        else:
            body.update(self._document_fields())
        body.update(engine=self.engine, model=self.model, timing=self.timing)
        return body

    def _document_fields(self) -> dict[str, Any]:
        entries = []
        for page in self.pages:
            width, height = page.outcome.size
            entry = {"page": page.number, **page.fields()}
            if page.outcome.reading is not None:
                entry.update(width=width, height=height)
            entries.append(entry)
        statuses = [entry["status"] for entry in entries]
        readings = [page.outcome.reading for page in self.pages if page.outcome.reading is not None]
        truncated = statuses.count("truncated")
        return {
            "finish_reason": "length" if truncated else "stop",
            "truncated": truncated > 0,
            "pages_total": len(self.pages),
            "pages_failed": statuses.count("failed"),
            "pages_truncated": truncated,
            "pages_repetitive": statuses.count("repetitive"),
            "pages_retried": sum(page.outcome.attempts > 1 for page in self.pages),
            "usage": usage([reading.output for reading in readings]),
            "guard": readings[0].output.guard.to_dict() if readings else None,
            "markdown": PAGE_SEPARATOR.join(entry.get("markdown", "") for entry in entries),
            "document": self.source,
            "pages": entries,
        }


@dataclass(frozen=True)
class FileError:
    """A file of a batch that could not be processed, with the error it would have had alone."""

    filename: str
    error: ApiError

    def to_dict(self) -> dict[str, Any]:
        return {"filename": self.filename, "status": self.error.status, **self.error.to_dict()}
