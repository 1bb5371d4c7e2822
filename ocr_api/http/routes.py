"""HTTP views: parse the request, call the service, shape the JSON. Nothing else lives here."""

from __future__ import annotations

import io
import logging
import sqlite3
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import IO

from flask import Blueprint, Request, Response, current_app, jsonify, request, send_file, stream_with_context
from redis.exceptions import RedisError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import IntegerConverter
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from ocr_api.errors import BadRequest, EngineNotReady, ShuttingDown, UnsupportedMediaType
from ocr_api.figures import ANNOTATED, FIGURE
from ocr_api.http import json_body
from ocr_api.http.access import client_by_key
from ocr_api.http.disconnect import client_gone_probe
from ocr_api.http.errors import error_response
from ocr_api.http.state import current_service, jobs_of
from ocr_api.jobs import Job, JobUpload, StorageUnavailable
from ocr_api.results import FileError, Rendition, batch_body
from ocr_api.service import UploadedFile

logger = logging.getLogger(__name__)

SERVICE_NAME = "DeepSeek-OCR API"

# Two blueprints, so that access control attaches by construction (ocr_api/access.py): ``probes`` (liveness,
# readiness) is open, since probes and load balancers carry no keys; every other route, these and any added
# later, needs a key and counts against the rate limit.
probes = Blueprint("probes", __name__)
ocr_routes = Blueprint("ocr", __name__)
job_routes = Blueprint("jobs", __name__)
# A job's pictures: behind its keys like its other routes, but each costs a page's rendering, so the rate limit counts
# them as work (ocr_api/http/access.py) and each process makes a bounded number at once (Jobs.picture).
job_pictures = Blueprint("job_pictures", __name__)
SPOOL_IN_MEMORY_BYTES = 1 << 20
# Behind the same keys as the job: kept by the client that fetched it, not by shared caches; a day, like JOB_TTL's
# default, and never asked again meanwhile (a page's pictures do not change once it is finished).
PICTURE_CACHE = "private, max-age=86400, immutable"


def is_ascii_number(text: str) -> bool:
    """Digits 0-9 alone: str.isdigit() also takes other scripts' digits (١) and superscripts (²)."""
    return text.isascii() and text.isdigit()


class AsciiIntegerConverter(IntegerConverter):
    """``<int:...>`` in a path matches 0-9 alone (werkzeug's ``\\d`` matches every script's digits)."""

    regex = r"[0-9]+"


class UploadRequest(Request):
    """Keeps uploaded parts in memory (the body is bounded by MAX_UPLOAD_MB, and every byte is read anyway).

    Werkzeug's default spools large parts to temporary files, and when a form is refused half-way (too many
    parts, a field too long) the parts already parsed are left for the garbage collector to close.
    """

    spool_uploads = False  # POST /jobs: files of up to JOB_MAX_UPLOAD_MB go to temporary files instead

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        if self.spool_uploads:
            return tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)
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


@probes.get("/health")
def health():
    """Liveness: answers while the process runs, whatever the engine's state."""
    return jsonify(
        status="healthy",
        service=SERVICE_NAME,
        timestamp=datetime.now(timezone.utc).isoformat(),
        **current_service().describe(),
    )


@probes.get("/ready")
def ready():
    """Readiness: 200 once the engine can serve, 503 before and while it is broken."""
    service = current_service()
    if service.is_draining():
        raise ShuttingDown("This server is shutting down; it takes no new requests.")
    if not service.is_ready():
        raise service.unguarded() or EngineNotReady(f"The OCR engine is not ready (state: {service.state}).")
    return jsonify(status="ready", **service.describe())


@ocr_routes.post("/ocr")
def ocr():
    """OCR one file sent as the multipart field ``file``."""
    uploads, form = _uploads_and_fields("file")
    if not uploads:
        raise BadRequest(_missing_file_message("file"), code="missing_file")
    if len(uploads) > 1:
        raise BadRequest("/ocr takes one file; send several to /ocr/batch as 'files'.", code="too_many_files")
    service = current_service()
    result = service.recognize(uploads, service.options_from(form), client_gone_probe(request.environ))[0]
    if isinstance(result, FileError):
        raise result.error
    if result.rendition is not None:
        return rendition_response(result.rendition)
    return jsonify(result.to_dict())


@ocr_routes.post("/ocr/batch")
def ocr_batch():
    """OCR every file sent as repeated ``files`` fields, in upload order, as one engine batch."""
    service = current_service()
    uploads, form = _uploads_and_fields("files")
    if not uploads:
        raise BadRequest(_missing_file_message("files"), code="missing_file")
    limit = service.settings.max_batch_files
    if len(uploads) > limit:
        raise BadRequest(f"A batch holds at most {limit} files; got {len(uploads)}.", code="too_many_files")
    options = service.options_from(form)
    if options.output != "json":
        raise BadRequest(
            f"/ocr/batch answers JSON only; send each file to /ocr with output={options.output}, or make a job "
            "(output=pdf gives one PDF of all its files).",
            code="output_not_supported",
        )
    results = service.recognize(uploads, options, client_gone_probe(request.environ))
    return jsonify(batch_body([result.to_dict() for result in results]))


@job_routes.post("/jobs")
def create_job():
    """Queue a job of one or more files (fields ``file`` or ``files``) with /ocr's fields; 202 once all are checked."""
    settings = current_service().settings
    request.max_content_length = settings.job_max_upload_mb * 1024 * 1024
    request.max_form_parts = 2 * settings.job_max_files + 16
    request.spool_uploads = True  # type: ignore[attr-defined]
    _require_multipart()
    parts = request.files.getlist("file") + request.files.getlist("files")
    uploads = [
        JobUpload(part.filename or "", part.stream) for part in parts if part.filename or _has_bytes(part.stream)
    ]
    if not uploads:
        raise BadRequest(_missing_file_message("file' or 'files"), code="missing_file")
    job = jobs_of(current_app).submit(uploads, request.form.to_dict(flat=False), _owner(), request.url_root)
    response = jsonify(jobs_of(current_app).view(job))
    response.status_code = 202
    response.headers["Location"] = job.links()["self"]
    return response


@job_routes.get("/jobs/<job_id>")
def get_job(job_id: str):
    jobs = jobs_of(current_app)
    return jsonify(jobs.view(_job(job_id)))


@job_routes.get("/jobs/<job_id>/result")
def get_job_result(job_id: str):
    """The body /ocr or /ocr/batch would have returned, once the job is finished; 202 with its status before."""
    body, status = jobs_of(current_app).result(_job(job_id))
    return jsonify(body), status


@job_routes.get("/jobs/<job_id>/result.pdf")
def get_job_result_pdf(job_id: str):
    """The searchable PDF of a finished job made with output=pdf: every file's pages, the text under them."""
    path, searchable = jobs_of(current_app).result_pdf(_job(job_id))
    response = send_file(path, mimetype="application/pdf", as_attachment=True, download_name=f"{job_id}.pdf")
    _pages_without_text(response, searchable.get("failed_pages", []), searchable.get("kept_text_pages", []))
    return response


@job_routes.get("/jobs/<job_id>/pages")
def get_job_pages(job_id: str):
    """The pages finished so far, in page order, after the ``after``-th (default 0)."""
    after = _int_arg("after", 0)
    limit = _int_arg("limit", 100)
    return jsonify(jobs_of(current_app).pages(_job(job_id), after, limit))


@job_routes.get("/jobs/<job_id>/events")
def get_job_events(job_id: str):
    """Server-Sent Events of the job; a reconnecting client's Last-Event-ID resumes after the last page it got."""
    job = _job(job_id)
    last = request.headers.get("Last-Event-ID", "").strip()
    after = job.pages_total if last == "end" else int(last) if is_ascii_number(last) else _int_arg("after", 0)
    events = jobs_of(current_app).events(job, _owner(), after)
    # X-Accel-Buffering: nginx (start_production.sh's front server) passes each event on as it comes.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream_with_context(events), mimetype="text/event-stream", headers=headers)


@job_pictures.get("/jobs/<job_id>/pages/<int:index>/annotated.png")
def get_job_annotated_page(job_id: str, index: int):
    """A finished page with its blocks' boxes drawn (annotate=true), made from the job's file when asked for."""
    return _picture(job_id, index, ANNOTATED)


@job_pictures.get("/jobs/<job_id>/pages/<int:index>/figures/<int:number>.png")
def get_job_figure(job_id: str, index: int, number: int):
    """Figure ``number`` of a finished page, cut from the page (figures=true), made from the job's file when asked."""
    return _picture(job_id, index, FIGURE, number)


def _picture(job_id: str, index: int, kind: str, number: int = 0) -> Response:
    # A page's pictures never change once it is finished: the browser keeps them, and asks again only with its tag.
    tag = f"{job_id}-{index}-{kind}-{number}"
    job = _job(job_id)  # first: a client of another key learns nothing, not even that its copy is current
    jobs = jobs_of(current_app)
    if request.if_none_match.contains(tag):
        jobs.check_picture(job, index, kind, number)  # a picture that does not exist is 404 whatever the headers
        response = Response(status=304)
    else:
        response = Response(jobs.picture(job, index, kind, number), mimetype="image/png")
    response.set_etag(tag)
    response.headers["Cache-Control"] = PICTURE_CACHE
    return response


@job_routes.delete("/jobs/<job_id>")
def delete_job(job_id: str):
    """Cancel a job (pages at the engine are aborted, its files removed); remove a finished one."""
    view = jobs_of(current_app).cancel(_job(job_id))
    if view is None:
        return "", 204
    return jsonify(view)


@job_routes.errorhandler(OSError)
@job_routes.errorhandler(sqlite3.Error)
@job_routes.errorhandler(RedisError)
@job_pictures.errorhandler(OSError)
@job_pictures.errorhandler(sqlite3.Error)
@job_pictures.errorhandler(RedisError)
def job_storage_failed(error: Exception):
    """JOBS_DIR or the queue failed under a job route: 503, the same for SQLite, Redis and the disk."""
    logger.error("job storage failed: %s: %s", type(error).__name__, error)
    return error_response(StorageUnavailable())


def rendition_response(rendition: Rendition) -> Response:
    """A searchable PDF or hOCR as a download; the headers say which pages carry no text from the model."""
    response = send_file(io.BytesIO(rendition.data), mimetype=rendition.media_type, as_attachment=True,
                         download_name=rendition.filename)  # fmt: skip
    _pages_without_text(response, rendition.failed_pages, rendition.kept_text_pages)
    # hOCR is HTML made from the page's text: never run as a page of this origin, whatever a browser guesses.
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _pages_without_text(response: Response, failed: Sequence[int], kept_text: Sequence[int]) -> None:
    """The pages (1-based, comma-separated; empty for none) that carry no text from the model: those that failed,
    and PDF pages that had text of their own and kept it."""
    response.headers["X-OCR-Failed-Pages"] = ",".join(map(str, failed))
    response.headers["X-OCR-Kept-Text-Pages"] = ",".join(map(str, kept_text))


def _job(job_id: str) -> Job:
    return jobs_of(current_app).find(job_id, _owner())


def _owner() -> str | None:
    """Who a job belongs to: the API key's digest when keys are on (any other key gets 404), else nobody."""
    return client_by_key() if current_service().settings.api_key_list else None


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name, "")
    if not raw:
        return default
    if not is_ascii_number(raw):
        raise BadRequest(f"'{name}' must be a whole number of 0 or more; got {raw[:20]!r}.", code="invalid_parameter")
    return int(raw)


def _has_bytes(stream: IO[bytes]) -> bool:
    empty = not stream.read(1)
    stream.seek(0)
    return not empty


def _uploads_and_fields(field: str) -> tuple[list[UploadedFile], dict[str, list[str]]]:
    """The files and fields of an /ocr or /ocr/batch request: a multipart form, or JSON with base64 images."""
    if request.mimetype == "application/json":
        settings = current_service().settings
        json_field = "image" if field == "file" else "images"
        body = json_body.parse_object(request.get_data(cache=False))
        named, form = json_body.ocr_request(body, json_field, settings.max_content_length, settings.max_batch_files)
        return [UploadedFile(name, data) for name, data in named], form
    _require_multipart(json_too=True)
    files = [UploadedFile(part.filename or "", part.read()) for part in request.files.getlist(field)]
    # Browsers send an empty, nameless part for a file input left blank: that is no file at all.
    return [upload for upload in files if upload.filename or upload.data], request.form.to_dict(flat=False)


def _require_multipart(json_too: bool = False) -> None:
    """Refuse a body that is not a form upload, naming what came instead; an empty body is a missing file."""
    if request.mimetype == "multipart/form-data" or not (request.content_length or request.mimetype):
        return
    also = ', or as application/json with the image in base64 ({"image": "..."})' if json_too else ""
    raise UnsupportedMediaType(
        f"Send the request as multipart/form-data (curl -F file=@scan.png){also}; got Content-Type "
        f"{request.mimetype[:100]!r}.",
        code="not_multipart",
    )


def _missing_file_message(field: str) -> str:
    named = ", ".join(sorted(request.files)) or "none"
    return f"Send the image as a multipart/form-data file field named '{field}' (file fields received: {named})."
