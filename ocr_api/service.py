"""OcrService: the facade the views call. It owns the engine and runs each request's files as one page stream."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from ocr_api.admission import INTERACTIVE, Admission, EnginePriorities, Sender, Share
from ocr_api.documents import PdfLimits
from ocr_api.engines import EngineLoadError, EngineRequest, OcrEngine, build_engine
from ocr_api.engines.base import GUARD_MISSING, StopCheck
from ocr_api.engines.vllm_flags import UNGUARDED_ADVICE
from ocr_api.errors import ApiError, EngineNotReady, EngineUnguarded, ShuttingDown, UnprocessableFile
from ocr_api.figures import inline_pictures
from ocr_api.guard import GuardSettings
from ocr_api.options import OcrOptions, OptionRules, parse_options
from ocr_api.pipeline import PageOutcome, PageStream, StreamPage, StreamRules
from ocr_api.preparation import FitSize, ImageLimits, give_large_blocks_back, within_pixels
from ocr_api.reading import PageReading
from ocr_api.results import FileError, FileResult, FinishedPage, Rendition, hocr, searchable_pdf
from ocr_api.searchable_pdf import ImagePart, PdfPart, image_dpi
from ocr_api.settings import Settings
from ocr_api.shapes import EngineState
from ocr_api.sources import PdfSource, SaveUpload, Source, open_source
from ocr_api.tiling import engine_size
from ocr_api.tracking import current_record
from ocr_api.uploads import UploadStore

logger = logging.getLogger(__name__)

MAX_FILENAME_CHARS = 255

# Pages rendered and waiting for a slot: enough to hand one over at once, few pixels held. At most this many, and
# at most this many pixels (108 MB as RGB): four 300-dpi A4 scans; of pages larger than 18 megapixels, one.
RENDER_AHEAD_PAGES = 4
RENDER_AHEAD_PIXELS = 36_000_000


class PageListener(Protocol):
    """Told of a request's pages as they go (a streamed chat completion): each piece of text, each finished page."""

    def text(self, key: tuple[int, int], piece: str) -> None:
        """A piece of the page's text as the engine generates it; called from the engine's thread."""

    def finished(self, key: tuple[int, int], outcome: PageOutcome) -> None:
        """The page is done (in the order pages finish); called from the request's thread."""


@dataclass(frozen=True)
class UploadedFile:
    """A file as the client sent it; ``filename`` is only echoed back, never used as a path."""

    filename: str
    data: bytes


@dataclass
class _OpenedFile:
    """An accepted upload on its way: its source, where it was stored, how long opening it took."""

    filename: str
    source: Source
    image_path: str
    preparation_ms: float


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
            settings.pdf_dpi,
            settings.max_pdf_pages,
            settings.max_image_pixels,
            timeout_s=settings.prepare_timeout_s,
            min_side=settings.min_image_side,
            max_aspect_ratio=settings.max_aspect_ratio,
        )
        # Jobs may take pages of a larger PDF, and wait for their slots instead of being refused.
        self._job_pdf_limits = dataclasses.replace(self._pdf_limits, max_pages=settings.job_max_pages)
        self.admission = Admission(settings.max_pages_in_flight)
        # Jobs run in this process (start_server.sh) leave synchronous requests the rest of the bound.
        self.job_admission = Share(self.admission, min(settings.job_pages_in_flight, settings.max_pages_in_flight))
        self.priorities = EnginePriorities(settings.job_priority_delay_s)

    def start(self) -> None:
        """Load the engine; raise EngineLoadError (state "failed") when it cannot be loaded."""
        give_large_blocks_back()  # the process's pages are its largest allocations: freed, they leave it
        self.state = "loading"
        try:
            self.engine.load()
        except EngineLoadError:
            self.state = "failed"
            raise
        self.state = "ready"

    def is_ready(self) -> bool:
        return self.state == "ready" and self.engine.is_ready()

    def unguarded(self) -> EngineUnguarded | None:
        """The error for an engine that is not ready because its guard check found no guard; None otherwise."""
        unguarded = [place for place, check in self.engine.guard_checks().items() if check.state == GUARD_MISSING]
        if self.state != "ready" or not unguarded or self.engine.is_ready():
            return None
        return EngineUnguarded(
            f"The OCR engine ({', '.join(unguarded)}) generates without the repetition guard, so pages could loop to "
            f"the token limit; the service sends it no pages. {UNGUARDED_ADVICE}"
        )

    def is_draining(self) -> bool:
        """True while the drain file exists: the server is being stopped and takes no new work."""
        return bool(self.settings.drain_file) and os.path.exists(self.settings.drain_file)

    def close(self) -> None:
        """Shut the engine down (its processes too); the service is not ready afterwards."""
        logger.info("shutting down the %s engine", self.engine.name)
        self.state = "closed"
        self.engine.close()

    def describe(self) -> EngineState:
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
            "guard": {
                "required": not self.settings.allow_unguarded_engine,
                "checks": {place: check.to_dict() for place, check in self.engine.guard_checks().items()},
            },
        }

    def options_from(self, form: Mapping[str, list[str]]) -> OcrOptions:
        """Validate a request's form fields into options, against the settings and the engine."""
        rules = OptionRules(
            self.settings.default_prompt,
            self.settings.max_prompt_chars,
            self.settings.max_tokens,
            self.engine.name,
            self.engine.modes,
        )
        return parse_options(form, rules)

    def recognize(
        self,
        files: Sequence[UploadedFile],
        options: OcrOptions,
        client_gone: StopCheck | None = None,
        listener: PageListener | None = None,
    ) -> list[FileResult | FileError]:
        """OCR every page of every file as one stream; a file that cannot be used becomes a FileError.

        Once ``client_gone()`` answers True the work stops: pages not yet sent are dropped, those at the engine
        aborted, the admission slots freed, and ClientGone is raised. A ``listener`` is told each page's text as the
        engine generates it and each page as it finishes; a page is then tried once, as text already sent cannot
        be taken back by a runaway retry.
        """
        if self.is_draining():
            raise ShuttingDown()
        if not self.is_ready():
            raise self.unguarded() or EngineNotReady()
        self.admission.check_room()
        started = time.perf_counter()
        with self._store.session() as uploads, ExitStack() as open_files:
            opened: list[_OpenedFile | FileError] = []
            for upload in files:
                filename = display_filename(upload.filename)
                opening_started = time.perf_counter()
                try:
                    source, path = self.open_upload(upload.data, options, uploads.save)
                except ApiError as error:
                    logger.info("rejected upload %r: %s (%s)", filename, error.code, error.status)
                    opened.append(FileError(filename, error))
                    continue
                open_files.callback(source.close)
                opened.append(_OpenedFile(filename, source, str(path), _ms_since(opening_started)))
            text = listener.text if listener is not None else None
            stream = self.page_stream(options, client_gone or _never, on_text=text)
            outcomes = {}
            for key, outcome in stream.finished(_stream_pages(opened)):
                outcomes[key] = outcome
                if listener is not None:
                    listener.finished(key, outcome)
            results: list[FileResult | FileError] = []
            for position, item in enumerate(opened):
                if isinstance(item, FileError):
                    results.append(item)
                    continue
                pages = tuple(
                    FinishedPage(number, outcomes[(position, index)])
                    for index, number in enumerate(item.source.page_numbers())
                )
                timing = {"preparation_ms": item.preparation_ms, "inference_ms": stream.engine_ms,
                          "total_ms": _ms_since(started)}  # fmt: skip
                result = self._result(item, pages, options, timing)
                if options.output != "json" and isinstance(result, FileResult):
                    result = dataclasses.replace(result, rendition=self._rendition(item, result, options))
                results.append(result)
        return results

    def _rendition(self, item: _OpenedFile, result: FileResult, options: OcrOptions) -> Rendition:
        """The file as the searchable PDF or hOCR ``output`` asks for, made while its upload is still stored."""
        try:
            return self._make_rendition(item, result, options)
        except Exception as error:  # PyMuPDF's errors have no common base: whatever fails, the client is told
            logger.exception("the %s of %r could not be made", options.output, item.filename)
            raise UnprocessableFile(
                f"The file was read, but its {options.output} could not be made: "
                f"{type(error).__name__}: {str(error)[:200]}",
                code="pdf_not_written",
            ) from None

    def _make_rendition(self, item: _OpenedFile, result: FileResult, options: OcrOptions) -> Rendition:
        path, source = Path(item.image_path), item.source
        if isinstance(source, PdfSource):
            if options.output == "hocr":
                return hocr(result, source.limits.dpi)
            return searchable_pdf(result, PdfPart(path, tuple(source.indices), options.password))
        if options.output == "hocr":
            return hocr(result, image_dpi(path)[0])
        return searchable_pdf(result, ImagePart(path, self._limits))

    def _result(
        self, item: _OpenedFile, pages: tuple[FinishedPage, ...], options: OcrOptions, timing: dict[str, float]
    ) -> FileResult | FileError:
        """A file none of whose pages could be read is refused with its first page's error."""
        errors = [page.outcome.error for page in pages if page.outcome.reading is None]
        if errors and len(errors) == len(pages) and errors[0] is not None:
            return FileError(item.filename, errors[0])
        return FileResult(
            filename=item.filename,
            image_path=item.image_path,
            prompt=options.prompt,
            task=options.task,
            source=item.source.describe(),
            pages=pages,
            is_document=item.source.is_document,
            engine=self.engine.name,
            model=self.engine.model_id,
            timing=timing,
        )

    def open_upload(
        self,
        data: bytes | Path,
        options: OcrOptions,
        save: SaveUpload | None,
        for_job: bool = False,
        max_pixels: int | None = None,
    ) -> tuple[Source, Path | None]:
        """Check and open one upload (bytes, or a job's stored file) as a source of pages; raises its ApiError.
        ``max_pixels``: its pages drawn at most that large, whatever PAGE_SIZE says (pictures of a job's pages)."""
        pdf_limits = self._job_pdf_limits if for_job else self._pdf_limits
        fit = self._fit(options) if max_pixels is None else partial(within_pixels, max_pixels=max_pixels)
        return open_source(data, options, save, image_limits=self._limits, pdf_limits=pdf_limits, fit=fit)

    @property
    def image_limits(self) -> ImageLimits:
        return self._limits

    def page_stream(
        self,
        options: OcrOptions,
        should_stop: StopCheck,
        job: Sender | None = None,
        on_text: Callable[[tuple[int, int], str], None] | None = None,
        should_pause: StopCheck | None = None,
    ) -> PageStream:
        """A stream for one request's pages (the request this thread works for), or one job's: a job uses its share
        of the bound, fairly with the other jobs, and waits for room."""
        for_job = job is not None
        admission = self.job_admission if for_job else self.admission
        rules = self._stream_rules(options, admission.limit, for_job, on_text)
        sender = job
        if sender is None and (record := current_record()) is not None:
            sender = Sender(INTERACTIVE, record.client, record.request_id)
        return PageStream(self.engine, admission, rules, should_stop, sender=sender, priorities=self.priorities,
                          should_pause=should_pause)  # fmt: skip

    def _fit(self, options: OcrOptions) -> FitSize | None:
        """The size each page is made at: its own (PAGE_SIZE=full, None here), or the smallest the model's processor
        makes the same tile grid from (fit)."""
        if self.settings.page_size == "full":
            return None
        return partial(engine_size, profile=self.engine.profile, mode=options.mode)

    def _stream_rules(
        self, options: OcrOptions, bound: int, for_job: bool, on_text: Callable[[tuple[int, int], str], None] | None
    ) -> StreamRules:
        # Built once per request: the guard of each attempt, the request each page becomes.
        guards = [self._guard(strength) for strength in range(1 + self.settings.runaway_retries)]

        def build_request(key: tuple[int, int], image: Image.Image, attempt: int, priority: int) -> EngineRequest:
            sink = partial(on_text, key) if on_text is not None else None
            guard = guards[attempt - 1]
            return EngineRequest(image, options.prompt, options.max_tokens, guard, options.mode, sink, priority)

        return StreamRules(
            # Never more pages at the engine than the process's bound (or the jobs' share of it) allows.
            window=min(self.settings.engine_batch_pages, bound),
            render_ahead=RENDER_AHEAD_PAGES,
            render_ahead_pixels=RENDER_AHEAD_PIXELS,
            attempts=1 if on_text is not None else 1 + self.settings.runaway_retries,
            timeout_s=self.settings.engine_timeout_s,
            build_request=build_request,
            ran_away=partial(self._ran_away, options),
            # A job's pictures are made when asked for, at their own URLs (ocr_api/jobs/service.py), not stored.
            draw=partial(_draw, options) if options.wants_pictures and not for_job else None,
            wait_for_room=for_job,
        )

    def _guard(self, strength: int) -> GuardSettings:
        """The n-gram guard of an attempt: the model's, each retry halving the n-gram (not below 4) and doubling
        the window, so that shorter repeats are banned over a longer stretch."""
        profile = self.engine.profile
        ngram_size = self.settings.ngram_size or profile.ngram_size
        window_size = self.settings.ngram_window or profile.window_size
        if strength and ngram_size:
            ngram_size = max(4, ngram_size >> strength)
            window_size <<= strength
        return GuardSettings(ngram_size, window_size, self.engine.whitelist_token_ids)

    def _ran_away(self, options: OcrOptions, reading: PageReading) -> bool:
        # A page cut off by a budget the caller lowered on purpose is what was asked for, not a runaway.
        budget_is_default = options.max_tokens == self.settings.max_tokens
        return reading.status == "repetitive" or (reading.status == "truncated" and budget_is_default)


def _stream_pages(opened: list[_OpenedFile | FileError]) -> Iterator[StreamPage]:
    """Every page of every accepted file, in upload order: one stream for the whole request."""
    for position, item in enumerate(opened):
        if isinstance(item, FileError):
            continue
        for index in range(len(item.source.page_numbers())):
            yield StreamPage((position, index), partial(item.source.render, index))


def _draw(options: OcrOptions, image: Image.Image, reading: PageReading) -> dict[str, Any]:
    """Make the pictures asked for from the page's pixels (at the size the engine saw them), inline."""
    return inline_pictures(image, reading.output.text, reading.blocks, figures=options.figures,
                           annotated=options.annotate)  # fmt: skip


def _never() -> bool:
    return False


def display_filename(filename: str | None) -> str:
    """Return the client's filename fit for a JSON response or a log line: no control characters, bounded."""
    cleaned = "".join(ch for ch in (filename or "") if ch.isprintable())
    return cleaned[:MAX_FILENAME_CHARS]


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
