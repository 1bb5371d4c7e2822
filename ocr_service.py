"""OcrService: owns the engine, prepares uploads, runs them as one batch and shapes the results."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from config import Settings
from ocr_api.engines import (
    EngineLoadError,
    EngineOutput,
    EngineRequest,
    EngineTimeout,
    EngineUnavailable,
    OcrEngine,
    PromptTooLong,
    build_engine,
)
from ocr_api.errors import (
    ApiError,
    BadRequest,
    EngineNotReady,
    GatewayTimeout,
    InferenceFailed,
    UnprocessableFile,
)
from ocr_api.interpretation import clean_text
from ocr_api.preparation import (
    EXTENSIONS,
    ImageLimits,
    PreparedImage,
    decode_image,
    sniff_format,
)
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


@dataclass
class PageResult:
    """The OCR result of one accepted file."""

    filename: str
    image_path: str
    prompt: str
    task: str | None
    prepared: PreparedImage
    output: EngineOutput
    engine: str
    model: str
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": clean_text(self.output.text),
            "image_path": self.image_path,
            "prompt": self.prompt,
            "task": self.task,
            "filename": self.filename,
            "raw_output": self.output.text,
            "finish_reason": self.output.finish_reason,
            "truncated": self.output.finish_reason == "length",
            "usage": {
                "prompt_tokens": self.output.prompt_tokens,
                "completion_tokens": self.output.completion_tokens,
                "total_tokens": self.output.prompt_tokens + self.output.completion_tokens,
            },
            "max_tokens": self.output.max_tokens,
            "guard": self.output.guard.to_dict(),
            "image": {
                "width": self.prepared.width,
                "height": self.prepared.height,
                "format": self.prepared.source_format,
                "mode": self.prepared.source_mode,
                "frames": self.prepared.frames,
            },
            "engine": self.engine,
            "model": self.model,
            "timing": self.timing,
        }


@dataclass
class FileError:
    """A file of a batch that could not be processed, with the error it would have had alone."""

    filename: str
    error: ApiError

    def to_dict(self) -> dict[str, Any]:
        return {"filename": self.filename, "status": self.error.status, **self.error.to_dict()}


class OcrService:
    """The process-wide OCR service: one engine, shared by every request thread."""

    def __init__(self, settings: Settings, engine: OcrEngine):
        self.settings = settings
        self.engine = engine
        self.state = "created"  # created -> loading -> ready | failed; closed at shutdown
        self._store = UploadStore(settings.upload_folder, keep=settings.keep_uploads)
        self._limits = ImageLimits(settings.max_image_pixels, settings.min_image_side, settings.max_aspect_ratio)

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
        }

    def build_options(
        self, prompt: str | None, task: str | None, phrase: str | None, max_tokens: str | None
    ) -> OcrOptions:
        """Validate the request's form fields into options."""
        settings = self.settings
        full_prompt, task_name = resolve_prompt(
            prompt, task, phrase, settings.default_prompt, settings.max_prompt_chars
        )
        return OcrOptions(full_prompt, task_name, _parse_max_tokens(max_tokens, settings.max_tokens))

    def recognize(self, files: Sequence[UploadedFile], options: OcrOptions) -> list[PageResult | FileError]:
        """OCR every file in one engine batch; a file that cannot be prepared becomes a FileError."""
        if not self.is_ready():
            raise EngineNotReady()
        started = time.perf_counter()
        with self._store.session() as uploads:
            results: list[PageResult | FileError | None] = []
            pending: list[tuple[int, PreparedImage, str, str, float]] = []
            for index, upload in enumerate(files):
                filename = display_filename(upload.filename)
                prepare_started = time.perf_counter()
                try:
                    prepared, path = self._prepare(upload, uploads)
                except ApiError as error:
                    logger.info("rejected upload %r: %s (%s)", filename, error.code, error.status)
                    results.append(FileError(filename, error))
                    continue
                pending.append((index, prepared, str(path), filename, _ms_since(prepare_started)))
                results.append(None)
            outputs, inference_ms = self._run_engine([item[1] for item in pending], options)
            for (index, prepared, path, filename, prepare_ms), output in zip(pending, outputs, strict=True):
                results[index] = PageResult(
                    filename=filename,
                    image_path=path,
                    prompt=options.prompt,
                    task=options.task,
                    prepared=prepared,
                    output=output,
                    engine=self.engine.name,
                    model=self.engine.model_id,
                    timing={
                        "preparation_ms": prepare_ms,
                        "inference_ms": inference_ms,
                        "total_ms": _ms_since(started),
                    },
                )
        return [result for result in results if result is not None]

    def _prepare(self, upload: UploadedFile, uploads) -> tuple[PreparedImage, Any]:
        image_format = sniff_format(upload.data)
        # Only allow-listed bytes are stored; the extension comes from the bytes, not the client's name.
        path = uploads.save(upload.data, EXTENSIONS[image_format]) if image_format else None
        return decode_image(upload.data, self._limits), path

    def _run_engine(self, images: list[PreparedImage], options: OcrOptions) -> tuple[list[EngineOutput], float]:
        if not images:
            return [], 0.0
        profile = self.engine.profile
        requests = [
            EngineRequest(
                image=prepared.image,
                prompt=options.prompt,
                max_tokens=options.max_tokens,
                ngram_size=self.settings.ngram_size or profile.ngram_size,
                window_size=self.settings.ngram_window or profile.window_size,
            )
            for prepared in images
        ]
        started = time.perf_counter()
        try:
            outputs = self.engine.generate(requests)
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


def display_filename(filename: str | None) -> str:
    """Return the client's filename fit for a JSON response or a log line: no control characters, bounded."""
    cleaned = "".join(ch for ch in (filename or "") if ch.isprintable())
    return cleaned[:MAX_FILENAME_CHARS]


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
