"""HTTP views: parse the request, call the service, shape the JSON. Nothing else lives here."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import IO

from flask import Blueprint, Request, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from ocr_api.disconnect import client_gone_probe
from ocr_api.errors import BadRequest, EngineNotReady, ShuttingDown, UnsupportedMediaType
from ocr_api.options import OcrOptions
from ocr_api.results import FileError
from ocr_service import OcrService, UploadedFile

SERVICE_NAME = "DeepSeek-OCR API"

# Two blueprints, so that access control attaches by construction (ocr_api/access.py): ``probes`` (liveness,
# readiness) is open, since probes and load balancers carry no keys; every other route, these and any added
# later, needs a key and counts against the rate limit.
probes = Blueprint("probes", __name__)
ocr_routes = Blueprint("ocr", __name__)


class UploadRequest(Request):
    """Keeps uploaded parts in memory (the body is bounded by MAX_UPLOAD_MB, and every byte is read anyway).

    Werkzeug's default spools large parts to temporary files, and when a form is refused half-way (too many
    parts, a field too long) the parts already parsed are left for the garbage collector to close.
    """

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()

    @cached_property
    def stream(self) -> IO[bytes]:  # type: ignore[override]
        """The body, ended at its Content-Length; a body of exactly MAX_UPLOAD_MB is accepted under every server.

        Werkzeug reads a server-terminated body (gunicorn's) through a stream capped at the maximum that refuses
        any read once the cap is reached, so there a body of exactly the limit got 413 and the development server
        accepted it. With a Content-Length the server ends the body there itself; only chunked bodies keep
        werkzeug's cap.
        """
        length = self.content_length
        if length is None:
            return super().stream
        if self.max_content_length is not None and length > self.max_content_length:
            raise RequestEntityTooLarge()
        return LimitedStream(self.environ["wsgi.input"], length)


def _service() -> OcrService:
    return current_app.extensions["ocr_service"]


@probes.get("/health")
def health():
    """Liveness: answers while the process runs, whatever the engine's state."""
    return jsonify(
        status="healthy",
        service=SERVICE_NAME,
        timestamp=datetime.now(timezone.utc).isoformat(),
        **_service().describe(),
    )


@probes.get("/ready")
def ready():
    """Readiness: 200 once the engine can serve, 503 before and while it is broken."""
    service = _service()
    if service.is_draining():
        raise ShuttingDown("This server is shutting down; it takes no new requests.")
    if not service.is_ready():
        raise EngineNotReady(f"The OCR engine is not ready (state: {service.state}).")
    return jsonify(status="ready", **service.describe())


@ocr_routes.post("/ocr")
def ocr():
    """OCR one file sent as the multipart field ``file``."""
    uploads = _uploads("file")
    if not uploads:
        raise BadRequest(_missing_file_message("file"), code="missing_file")
    if len(uploads) > 1:
        raise BadRequest("/ocr takes one file; send several to /ocr/batch as 'files'.", code="too_many_files")
    result = _service().recognize(uploads, _options(), client_gone_probe(request.environ))[0]
    if isinstance(result, FileError):
        raise result.error
    return jsonify(result.to_dict())


@ocr_routes.post("/ocr/batch")
def ocr_batch():
    """OCR every file sent as repeated ``files`` fields, in upload order, as one engine batch."""
    service = _service()
    uploads = _uploads("files")
    if not uploads:
        raise BadRequest(_missing_file_message("files"), code="missing_file")
    limit = service.settings.max_batch_files
    if len(uploads) > limit:
        raise BadRequest(f"A batch holds at most {limit} files; got {len(uploads)}.", code="too_many_files")
    results = service.recognize(uploads, _options(), client_gone_probe(request.environ))
    failed = sum(isinstance(result, FileError) for result in results)
    return jsonify(
        results=[result.to_dict() for result in results],
        total=len(results),
        succeeded=len(results) - failed,
        failed=failed,
    )


def _options() -> OcrOptions:
    return _service().options_from(request.form.to_dict(flat=False))


def _uploads(field: str) -> list[UploadedFile]:
    _require_multipart()
    files = [UploadedFile(part.filename or "", part.read()) for part in request.files.getlist(field)]
    # Browsers send an empty, nameless part for a file input left blank: that is no file at all.
    return [upload for upload in files if upload.filename or upload.data]


def _require_multipart() -> None:
    """Refuse a body that is not a form upload, naming what came instead; an empty body is a missing file."""
    if request.mimetype == "multipart/form-data" or not (request.content_length or request.mimetype):
        return
    raise UnsupportedMediaType(
        f"Send the request as multipart/form-data (curl -F file=@scan.png); got Content-Type "
        f"{request.mimetype[:100]!r}.",
        code="not_multipart",
    )


def _missing_file_message(field: str) -> str:
    named = ", ".join(sorted(request.files)) or "none"
    return f"Send the image as a multipart/form-data file field named '{field}' (file fields received: {named})."
