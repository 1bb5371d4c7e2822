"""OcrService: owns the engine, prepares uploads, runs them as one batch and shapes the results."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from PIL import Image

from config import Settings
from ocr_api.admission import Admission
from ocr_api.documents import PdfLimits, is_pdf, open_pdf, render_page, select_pages
from ocr_api.engines import (
    Cancelled,
    EngineLoadError,
    EngineOutput,
    EngineRequest,
    EngineTimeout,
    EngineUnavailable,
    OcrEngine,
    PromptTooLong,
    build_engine,
)
from ocr_api.engines.base import RESOLUTION_MODES, StopCheck
from ocr_api.errors import (
    ApiError,
    BadRequest,
    ClientGone,
    EngineNotReady,
    GatewayTimeout,
    InferenceFailed,
    ShuttingDown,
    UnprocessableFile,
)
from ocr_api.figures import annotate, crop_figures
from ocr_api.interpretation import clean_text, looks_repetitive, parse_blocks, to_markdown
from ocr_api.preparation import EXTENSIONS, ImageLimits, decode_image, sniff_format
from ocr_api.prompts import resolve_prompt
from ocr_api.uploads import UploadStore

logger = logging.getLogger(__name__)

MAX_FILENAME_CHARS = 255


@dataclass(frozen=True)
class UploadedFile:
    """A file as the client sent it; ``filename`` is only echoed back, never used as a path."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class OcrOptions:
    """Validated per-request options."""

    prompt: str
    task: str | None
    max_tokens: int
    pages: str | None = None  # PDF page selection such as "1-3,7"; checked against each document
    mode: str = "gundam"
    figures: bool = False  # return image regions cropped from the page, inline
    annotate: bool = False  # return a copy of the page with the boxes drawn, inline
    password: str | None = field(default=None, repr=False)  # for encrypted PDFs; never logged


# Between the pages of a document in the top-level text, as DeepSeek's own PDF script separates them.
PAGE_SEPARATOR = "\n\n<--- Page Split --->\n\n"


@dataclass
class PageOutcome:
    """One page of a file: its number in the document (None for an image), size, and output or error."""

    number: int | None
    width: int = 0
    height: int = 0
    output: EngineOutput | None = None
    error: ApiError | None = None
    attempts: int = 1  # more than 1 when the page ran away and was run again (RUNAWAY_RETRIES)
    figures: list[dict[str, Any]] | None = None
    annotated_image: str | None = None

    def draw(self, image: Image.Image, figures: bool, annotated: bool) -> None:
        """Make the pictures asked for from this page's image while it is still in memory."""
        blocks = parse_blocks(self.output.text, self.width, self.height) if self.output else []
        if figures:
            self.figures = crop_figures(image, blocks)
        if annotated:
            self.annotated_image = annotate(image, blocks)

    def pictures(self) -> dict[str, Any]:
        """Return the pictures made for this page, keyed as in the response."""
        made = {"figures": self.figures, "annotated_image": self.annotated_image}
        return {key: value for key, value in made.items() if value is not None}

    @property
    def text(self) -> str:
        return clean_text(self.output.text) if self.output else ""

    @property
    def truncated(self) -> bool:
        return self.output is not None and self.output.finish_reason == "length"

    @property
    def repetition_loop(self) -> bool:
        return looks_repetitive(self.text)

    @property
    def status(self) -> str:
        """failed (no output), truncated (token limit), repetitive (ends in a loop) or ok, in that priority."""
        if self.output is None:
            return "failed"
        if self.truncated:
            return "truncated"
        return "repetitive" if self.repetition_loop else "ok"

    def markdown_and_blocks(self) -> tuple[str, list[dict[str, Any]]]:
        """Return the page's markdown and its layout blocks in pixels of this page's image."""
        if self.output is None:
            return "", []
        blocks = parse_blocks(self.output.text, self.width, self.height)
        return to_markdown(blocks), [block.to_dict() for block in blocks]

    def to_dict(self) -> dict[str, Any]:
        """Return the page as an entry of a document's ``pages``."""
        if self.output is None:
            return {"page": self.number, "status": "failed", **(self.error.to_dict() if self.error else {})}
        markdown, blocks = self.markdown_and_blocks()
        return {
            "page": self.number,
            "status": self.status,
            "width": self.width,
            "height": self.height,
            "text": self.text,
            "markdown": markdown,
            "blocks": blocks,
            "raw_output": self.output.text,
            "finish_reason": self.output.finish_reason,
            "truncated": self.truncated,
            "repetition_loop": self.repetition_loop,
            "attempts": self.attempts,
            "usage": _usage([self.output]),
            **self.pictures(),
        }


@dataclass
class FileResult:
    """The OCR result of one accepted file: an image (one page) or a document (its selected pages)."""

    filename: str
    image_path: str
    prompt: str
    task: str | None
    source: dict[str, Any]  # what the file was: image format and mode, or the document's page count and dpi
    pages: list[PageOutcome]
    is_document: bool
    engine: str
    model: str
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        outputs = [page.output for page in self.pages if page.output is not None]
        body: dict[str, Any] = {
            "text": PAGE_SEPARATOR.join(page.text for page in self.pages),
            "image_path": self.image_path,
            "prompt": self.prompt,
            "task": self.task,
            "filename": self.filename,
        }
        if not self.is_document:
            (page,) = self.pages
            assert page.output is not None  # an image either has an output or is a FileError
            markdown, blocks = page.markdown_and_blocks()
            body.update(
                raw_output=page.output.text,
                finish_reason=page.output.finish_reason,
                truncated=page.truncated,
                repetition_loop=page.repetition_loop,
                attempts=page.attempts,
                usage=_usage([page.output]),
                max_tokens=page.output.max_tokens,
                guard=page.output.guard.to_dict(),
                markdown=markdown,
                blocks=blocks,
                image=self.source,
                **page.pictures(),
            )
        else:
            page_entries = [page.to_dict() for page in self.pages]
            statuses = [entry["status"] for entry in page_entries]
            truncated = statuses.count("truncated")
            body.update(
                finish_reason="length" if truncated else "stop",
                truncated=truncated > 0,
                pages_total=len(self.pages),
                pages_failed=statuses.count("failed"),
                pages_truncated=truncated,
                pages_repetitive=statuses.count("repetitive"),
                pages_retried=sum(page.attempts > 1 for page in self.pages),
                usage=_usage(outputs),
                guard=outputs[0].guard.to_dict() if outputs else None,
                markdown=PAGE_SEPARATOR.join(entry.get("markdown", "") for entry in page_entries),
                document=self.source,
                pages=page_entries,
            )
        body.update(engine=self.engine, model=self.model, timing=self.timing)
        return body


def _usage(outputs: Sequence[EngineOutput]) -> dict[str, int]:
    prompt = sum(output.prompt_tokens for output in outputs)
    completion = sum(output.completion_tokens for output in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass
class FileError:
    """A file of a batch that could not be processed, with the error it would have had alone."""

    filename: str
    error: ApiError

    def to_dict(self) -> dict[str, Any]:
        return {"filename": self.filename, "status": self.error.status, **self.error.to_dict()}


# A page waiting for the engine, and how to get its pixels when its turn comes.
PageTask = tuple[PageOutcome, Callable[[], Image.Image]]


class OcrService:
    """The process-wide OCR service: one engine, shared by every request thread."""

    def __init__(self, settings: Settings, engine: OcrEngine):
        self.settings = settings
        self.engine = engine
        self.state = "created"  # created -> loading -> ready | failed; closed at shutdown
        self._store = UploadStore(settings.upload_folder, keep=settings.keep_uploads)
        self._limits = ImageLimits(
            settings.max_image_pixels, settings.min_image_side, settings.max_aspect_ratio, settings.prepare_timeout_s
        )
        self._pdf_limits = PdfLimits(
            settings.pdf_dpi, settings.max_pdf_pages, settings.max_image_pixels, timeout_s=settings.prepare_timeout_s
        )
        self.admission = Admission(settings.max_pages_in_flight)
        # A request never has more pages at the engine than the admission bound lets one process have.
        self._batch_pages = min(settings.engine_batch_pages, settings.max_pages_in_flight)

    def start(self) -> None:
        """Load the engine; raise EngineLoadError (state "failed") when it cannot be loaded."""
        self.state = "loading"
        try:
            self.engine.load()
        except EngineLoadError:
            self.state = "failed"
            raise
        self.state = "ready"

    def is_ready(self) -> bool:
        return self.state == "ready" and self.engine.is_ready()

    def is_draining(self) -> bool:
        """True while the drain file exists: the server is being stopped and takes no new work."""
        return bool(self.settings.drain_file) and os.path.exists(self.settings.drain_file)

    def close(self) -> None:
        """Shut the engine down (its processes too); the service is not ready afterwards."""
        logger.info("shutting down the %s engine", self.engine.name)
        self.state = "closed"
        self.engine.close()

    def describe(self) -> dict[str, Any]:
        """Return what /health reports about the engine."""
        return {
            "engine": self.engine.name,
            "model": self.engine.model_id,
            "model_loaded": self.state == "ready",
            "engine_state": self.state,
            "ready": self.is_ready(),
            "draining": self.is_draining(),
            "pages_in_flight": self.admission.in_flight,
            "max_pages_in_flight": self.admission.limit,
        }

    def build_options(
        self,
        *,
        prompt: str | None = None,
        task: str | None = None,
        phrase: str | None = None,
        max_tokens: str | None = None,
        pages: str | None = None,
        password: str | None = None,
        mode: str | None = None,
        figures: str | None = None,
        annotate: str | None = None,
    ) -> OcrOptions:
        """Validate the request's form fields into options."""
        settings = self.settings
        full_prompt, task_name = resolve_prompt(
            prompt, task, phrase, settings.default_prompt, settings.max_prompt_chars
        )
        max_tokens_value = _parse_max_tokens(max_tokens, settings.max_tokens)
        mode_value = self._check_mode((mode or "gundam").strip().lower())
        return OcrOptions(
            prompt=full_prompt,
            task=task_name,
            max_tokens=max_tokens_value,
            pages=pages or None,
            password=password or None,
            mode=mode_value,
            figures=_parse_flag("figures", figures),
            annotate=_parse_flag("annotate", annotate),
        )

    def _check_mode(self, mode: str) -> str:
        if mode not in RESOLUTION_MODES:
            raise BadRequest(
                f"Unknown mode {mode[:20]!r}; use one of: {', '.join(RESOLUTION_MODES)}.", code="unknown_mode"
            )
        if mode not in self.engine.modes:
            raise BadRequest(
                f"The {self.engine.name} engine cannot honour mode={mode}: vLLM's DeepSeek-OCR processor always "
                "uses gundam (a 1024 global view plus up to 6 tiles). Other modes need OCR_ENGINE=transformers.",
                code="mode_not_supported",
            )
        return mode

    def recognize(
        self, files: Sequence[UploadedFile], options: OcrOptions, client_gone: StopCheck | None = None
    ) -> list[FileResult | FileError]:
        """OCR every page of every file, batched; a file that cannot be used becomes a FileError.

        Once ``client_gone()`` answers True the work stops: pages not yet sent are dropped, those at the engine
        aborted, the admission slots freed, and ClientGone is raised.
        """
        stop = client_gone or (lambda: False)
        if self.is_draining():
            raise ShuttingDown()
        if not self.is_ready():
            raise EngineNotReady()
        self.admission.check_room()
        started = time.perf_counter()
        with self._store.session() as uploads, ExitStack() as open_documents:
            results: list[FileResult | FileError] = []
            tasks: list[PageTask] = []
            for upload in files:
                filename = display_filename(upload.filename)
                prepare_started = time.perf_counter()
                try:
                    result, file_tasks = self._accept(upload, filename, options, uploads, open_documents)
                except ApiError as error:
                    logger.info("rejected upload %r: %s (%s)", filename, error.code, error.status)
                    results.append(FileError(filename, error))
                    continue
                result.timing["preparation_ms"] = _ms_since(prepare_started)
                results.append(result)
                tasks.extend(file_tasks)
            with self.admission.admit(min(len(tasks), self._batch_pages)):
                inference_ms = self._run_pages(tasks, options, stop)
                inference_ms += self._retry_runaways(tasks, options, stop)
        results = [_refuse_if_no_page_ran(result) for result in results]
        for result in results:
            if isinstance(result, FileResult):
                result.timing.update(inference_ms=inference_ms, total_ms=_ms_since(started))
        return results

    def _accept(
        self, upload: UploadedFile, filename: str, options: OcrOptions, uploads: Any, open_documents: ExitStack
    ) -> tuple[FileResult, list[PageTask]]:
        """Store and open one upload; return its result shell and its pages' tasks (rendered later, in turn)."""
        common = {
            "filename": filename,
            "prompt": options.prompt,
            "task": options.task,
            "engine": self.engine.name,
            "model": self.engine.model_id,
        }
        image_format = sniff_format(upload.data)
        # An image signature at byte 0 wins: "%PDF-" inside a PNG's text chunk does not make it a PDF.
        if image_format is None and is_pdf(upload.data):
            path = uploads.save(upload.data, "pdf")
            document = open_pdf(upload.data, options.password)
            open_documents.callback(document.close)
            indices = select_pages(options.pages, document.page_count, self._pdf_limits.max_pages)
            pages = [PageOutcome(number=index + 1) for index in indices]
            source = {"format": "PDF", "page_count": document.page_count, "dpi": self._pdf_limits.dpi}
            result = FileResult(image_path=str(path), source=source, pages=pages, is_document=True, **common)
            render = partial(render_page, document, limits=self._pdf_limits)
            return result, [(page, partial(render, index)) for page, index in zip(pages, indices, strict=True)]
        # Only allow-listed bytes are stored; the extension comes from the bytes, not the client's name.
        path = uploads.save(upload.data, EXTENSIONS[image_format]) if image_format else None
        prepared = decode_image(upload.data, self._limits)
        page = PageOutcome(number=None)
        source = {
            "width": prepared.width,
            "height": prepared.height,
            "format": prepared.source_format,
            "mode": prepared.source_mode,
            "frames": prepared.frames,
        }
        result = FileResult(image_path=str(path), source=source, pages=[page], is_document=False, **common)
        return result, [(page, lambda: prepared.image)]

    def _retry_runaways(self, tasks: list[PageTask], options: OcrOptions, stop: StopCheck) -> float:
        """Run pages that ran away again, up to RUNAWAY_RETRIES times, each time with a stronger guard."""
        inference_ms = 0.0
        for attempt in range(1, self.settings.runaway_retries + 1):
            runaways = [(page, render) for page, render in tasks if self._ran_away(page, options)]
            if not runaways:
                break
            logger.info("retrying %d runaway page(s), attempt %d", len(runaways), attempt + 1)
            for page, _ in runaways:
                page.attempts += 1
            inference_ms += self._run_pages(runaways, options, stop, guard_strength=attempt)
        return inference_ms

    def _ran_away(self, page: PageOutcome, options: OcrOptions) -> bool:
        # A page cut off by a budget the caller lowered on purpose is what was asked for, not a runaway.
        budget_is_default = options.max_tokens == self.settings.max_tokens
        return page.status == "repetitive" or (page.status == "truncated" and budget_is_default)

    def _run_pages(self, tasks: list[PageTask], options: OcrOptions, stop: StopCheck, guard_strength: int = 0) -> float:
        """Render and run pages ENGINE_BATCH_PAGES at a time, so a long PDF never has all its pixels in memory."""
        inference_ms = 0.0
        batch_size = self._batch_pages
        for start in range(0, len(tasks), batch_size):
            if stop():
                raise ClientGone()
            pages: list[PageOutcome] = []
            images: list[Image.Image] = []
            for page, render in tasks[start : start + batch_size]:
                try:
                    images.append(render())
                except ApiError as error:  # this page alone fails; the document's other pages go on
                    page.error = error
                    continue
                page.width, page.height = images[-1].size
                pages.append(page)
            outputs, batch_ms = self._run_engine(images, options, stop, guard_strength)
            # Pages and images stay in separate lists: a loop over (page, image) pairs would leave its last
            # image in a loop variable, alive while the next batch renders.
            for page, output in zip(pages, outputs, strict=True):
                page.output = output
            if options.figures or options.annotate:
                for index, page in enumerate(pages):
                    page.draw(images[index], options.figures, options.annotate)
            inference_ms += batch_ms
        return round(inference_ms, 1)

    def _run_engine(
        self, images: list[Image.Image], options: OcrOptions, stop: StopCheck, guard_strength: int = 0
    ) -> tuple[list[EngineOutput], float]:
        if not images:
            return [], 0.0
        profile = self.engine.profile
        ngram_size = self.settings.ngram_size or profile.ngram_size
        window_size = self.settings.ngram_window or profile.window_size
        if guard_strength and ngram_size:
            # Each retry halves the n-gram (not below 4) and doubles the window: shorter repeats are banned
            # over a longer stretch.
            ngram_size = max(4, ngram_size >> guard_strength)
            window_size <<= guard_strength
        requests = [
            EngineRequest(
                image=image,
                prompt=options.prompt,
                max_tokens=options.max_tokens,
                ngram_size=ngram_size,
                window_size=window_size,
                mode=options.mode,
            )
            for image in images
        ]
        started = time.perf_counter()
        try:
            outputs = self.engine.generate(requests, stop)
        except Cancelled:
            logger.info("client hung up: %d page(s) aborted at the %s engine", len(requests), self.engine.name)
            raise ClientGone() from None
        except PromptTooLong as exc:
            raise UnprocessableFile(str(exc), code="prompt_too_long_for_context") from None
        except EngineUnavailable as exc:
            logger.warning("engine %s unavailable: %s", self.engine.name, exc)
            raise EngineNotReady(
                "The OCR engine is unavailable (restarting or overloaded); try again shortly.",
                code="engine_unavailable",
            ) from None
        except EngineTimeout as exc:
            logger.warning("engine %s timed out on a batch of %d: %s", self.engine.name, len(requests), exc)
            raise GatewayTimeout() from None
        except ApiError:
            raise
        except Exception:
            logger.exception("engine %s failed on a batch of %d", self.engine.name, len(requests))
            raise InferenceFailed() from None
        if len(outputs) != len(requests):
            logger.error("engine returned %d outputs for %d requests", len(outputs), len(requests))
            raise InferenceFailed()
        return outputs, _ms_since(started)


def _refuse_if_no_page_ran(result: FileResult | FileError) -> FileResult | FileError:
    """A document none of whose pages could be rendered is refused with its first page's error."""
    if isinstance(result, FileResult) and result.is_document:
        errors = [page.error for page in result.pages if page.output is None]
        if len(errors) == len(result.pages) and errors[0] is not None:
            return FileError(result.filename, errors[0])
    return result


def display_filename(filename: str | None) -> str:
    """Return the client's filename fit for a JSON response or a log line: no control characters, bounded."""
    cleaned = "".join(ch for ch in (filename or "") if ch.isprintable())
    return cleaned[:MAX_FILENAME_CHARS]


def _parse_flag(name: str, raw: str | None) -> bool:
    value = (raw or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise BadRequest(f"{name} must be true or false; got {raw[:20]!r}.", code="invalid_flag")


def _parse_max_tokens(raw: str | None, limit: int) -> int:
    if raw is None or not raw.strip():
        return limit
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadRequest(f"max_tokens must be an integer; got {raw[:20]!r}.", code="invalid_max_tokens") from None
    if not 1 <= value <= limit:
        raise BadRequest(f"max_tokens must be between 1 and {limit}.", code="invalid_max_tokens")
    return value


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


_instance: OcrService | None = None
_instance_lock = threading.Lock()


def get_service(settings: Settings | None = None) -> OcrService:
    """Return the process-wide service, creating and loading it on first use."""
    global _instance  # noqa: PLW0603 - the one process-wide instance
    with _instance_lock:
        if _instance is None:
            settings = settings or Settings.from_env()
            service = OcrService(settings, build_engine(settings))
            service.start()
            _instance = service
        return _instance
