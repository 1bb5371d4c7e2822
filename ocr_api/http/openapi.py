"""The OpenAPI 3.1 description of the service, built from the app itself so that it cannot drift from the code.

The paths and methods come from Flask's url map, and every route must have an entry in ``_operations`` (a route
without one, or an entry without a route, fails ``describe``, and so the tests). Which operations need a key
comes from the blueprint, as access control decides it (ocr_api/access.py). The form fields are the ones
ocr_api/options.py reads, the tasks and modes the ones ocr_api/prompts.py and the engines know, the limits the
settings'. The bodies' schemas are written here and checked against real answers by tests/test_openapi.py and by
schemathesis (every property named, none unknown: a field added to a result without a word here fails them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from ocr_api.engines.base import RESOLUTION_MODES
from ocr_api.http.access import OPEN_BLUEPRINTS
from ocr_api.http.chat import IGNORED_NUMBERS, OCR_FIELDS
from ocr_api.jobs.store import FINISHED
from ocr_api.options import FORM_FIELDS
from ocr_api.prompts import TASKS
from ocr_api.results import PAGE_SEPARATOR
from ocr_api.settings import Settings

Schema = dict[str, Any]
JSON = "application/json"
SSE = "text/event-stream"
HTML = "text/html"
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")

FIELD_DESCRIPTIONS = {
    "prompt": "The whole prompt; `<image>` is put first when missing. Overrides `task`.",
    "task": "A preset prompt: " + ", ".join(f"`{name}` ({text})" for name, text in TASKS.items()) + ".",
    "phrase": "What to find, with `task=locate`.",
    "max_tokens": "The output budget per page (at most the service's MAX_TOKENS, its default).",
    "pages": "The pages of a PDF to read, 1-based ranges such as `1-3,7`; all when absent.",
    "password": "The password of an encrypted PDF; never logged.",
    "mode": "The resolution mode (gundam: a 1024 global view and up to 6 tiles; base: one 1024 view).",
    "figures": "Return every image region cropped from the page, as PNG data URLs.",
    "annotate": "Return a copy of the page with every block's boxes and label drawn, as a PNG data URL.",
}


def _string(description: str = "", **more: Any) -> Schema:
    return {"type": "string", **({"description": description} if description else {}), **more}


def _object(properties: dict[str, Schema], required: tuple[str, ...] = (), closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:  # a field the code adds without a word here fails the tests
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str) -> Schema:
    return {"type": [kind, "null"]}


INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
BOOLEAN = {"type": "boolean"}
STRING = {"type": "string"}
USAGE = _object({"prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER})
BOX = {"type": "array", "items": INTEGER, "minItems": 4, "maxItems": 4, "description": "x1, y1, x2, y2 in pixels"}
PAGE_FIELDS: dict[str, Schema] = {
    "status": _string("ok, truncated (the budget ran out), repetitive (a loop the guard stopped), or failed"),
    "text": _string("The page's text without the layout markup."),
    "markdown": _string("The page as markdown: headings, tables, figure references."),
    "blocks": {"type": "array", "items": _ref("Block")},
    "raw_output": _string("The model's output as it wrote it, markup included."),
    "finish_reason": _string("stop, or length when the budget ran out"),
    "truncated": BOOLEAN,
    "repetition_loop": BOOLEAN,
    "attempts": INTEGER,
    "usage": USAGE,
    "max_tokens": INTEGER,
    "guard": _ref("Guard"),
    "figures": {"type": "array", "items": _ref("Figure")},
    "annotated_image": _string("The page with the boxes drawn (annotate=true), a PNG data URL (/ocr)."),
    "annotated_image_url": _string("A job's page: where its annotated page is made when fetched (annotate=true)."),
    "error": _string("Why the page failed (status failed)."),
    "code": _string(),
}
RESULT_HEAD: dict[str, Schema] = {
    "text": _string(
        f"All the text; a document's pages joined with `{PAGE_SEPARATOR.encode('unicode_escape').decode()}`."
    ),
    "image_path": _string("Where the service stored the upload."),
    "prompt": _string("The prompt the model was given."),
    "task": _nullable("string"),
    "filename": _string(),
}
RESULT_TAIL: dict[str, Schema] = {
    "engine": _string(),
    "model": _string(),
    "timing": {"type": "object", "additionalProperties": NUMBER, "description": "milliseconds by stage"},
}
FILE_ERROR = _object(
    {
        "filename": _string(),
        "status": {"const": "failed"},
        "http_status": {**INTEGER, "description": "The status the file would have had alone (/ocr)."},
        "text": {"const": ""},
        "error": _string(),
        "code": _string(),
    },
    ("status", "http_status", "error", "code"),
)


def _schemas(settings: Settings) -> dict[str, Schema]:
    """The components: error bodies, results, jobs, OpenAI's objects."""
    page = {
        **PAGE_FIELDS,
        "page": INTEGER,
        "width": INTEGER,
        "height": INTEGER,
    }
    job_page = {**page, "index": INTEGER, "file": INTEGER, "filename": _string(), "page": _nullable("integer")}
    return {
        "Error": _object({"error": _string(), "code": _string()}, ("error", "code")),
        "OpenAIError": _object(
            {
                "error": _object(
                    {"message": _string(), "type": _string(), "code": _string(), "param": _nullable("string")},
                    ("message", "type", "code"),
                )
            },
            ("error",),
        ),
        "Guard": {
            **_object({"ngram_size": INTEGER, "window_size": INTEGER, "whitelist_token_ids": {"type": "array"}}),
            "description": "The repetition guard the page was decoded with.",
        },
        "Block": _object(
            {"label": _string(), "boxes": {"type": "array", "items": BOX}, "text": _string(), "figure": INTEGER},
            ("label", "boxes", "text"),
        ),
        "Figure": _object(
            {
                "figure": INTEGER,
                "box": BOX,
                "image": _string("PNG data URL (/ocr)"),
                "image_url": _string("A job's page: where the crop is made when fetched"),
            },
            ("figure", "box"),
        ),
        "ImageResult": _object(
            {
                **RESULT_HEAD,
                **PAGE_FIELDS,
                "image": _object(
                    {"width": INTEGER, "height": INTEGER, "format": _string(), "mode": _string(), "frames": INTEGER}
                ),
                **RESULT_TAIL,
            },
            ("text", "image_path", "prompt", "status", "image"),
        ),
        "DocumentResult": _object(
            {
                **RESULT_HEAD,
                "finish_reason": _string(),
                "truncated": BOOLEAN,
                **{name: INTEGER for name in ("pages_total", "pages_failed", "pages_truncated", "pages_repetitive")},
                "pages_retried": INTEGER,
                "usage": USAGE,
                "guard": {"anyOf": [_ref("Guard"), {"type": "null"}]},
                "markdown": _string(),
                "document": {
                    "type": "object",
                    "description": "format, page_count, dpi; repaired (PyMuPDF repaired the file) and missing_pages "
                    "(pages the file lost, failed with page_missing)",
                },
                "pages": {"type": "array", "items": _object(page, ("page", "status"))},
                **RESULT_TAIL,
            },
            ("text", "image_path", "prompt", "document", "pages"),
        ),
        "OcrResult": {"anyOf": [_ref("ImageResult"), _ref("DocumentResult")]},
        "BatchResult": _object(
            {
                "results": {"type": "array", "items": {"anyOf": [_ref("OcrResult"), FILE_ERROR]}},
                "total": INTEGER,
                "succeeded": INTEGER,
                "failed": INTEGER,
            },
            ("results", "total", "succeeded", "failed"),
        ),
        "Health": _object(
            {
                "status": _string(),
                "service": _string(),
                "timestamp": _string(format="date-time"),
                **_ENGINE_STATE,
            },
            ("status", "engine", "ready"),
        ),
        "Ready": _object({"status": _string(), **_ENGINE_STATE}, ("status", "ready")),
        "Job": _object(
            {
                "id": _string(),
                "status": _string("queued, running, " + ", ".join(FINISHED)),
                "pages_total": INTEGER,
                "files_total": INTEGER,
                "progress": _object(
                    {
                        "pages_done": INTEGER,
                        "pages_total": INTEGER,
                        "fraction": NUMBER,
                        "pages": {"type": "object", "additionalProperties": INTEGER},
                        "pages_retried": INTEGER,
                        "pages_per_second": _nullable("number"),
                        "seconds_left": _nullable("number"),
                    }
                ),
                **{name: _nullable("string") for name in ("created_at", "started_at", "finished_at")},
                "runs": INTEGER,
                "queue_position": _nullable("integer"),
                "error": {"type": "object"},
                "callback": {"type": "object"},
                "urls": _object({name: _string() for name in ("self", "result", "pages", "events")}),
            },
            ("id", "status", "pages_total", "progress", "urls"),
        ),
        "JobPages": _object(
            {
                "id": _string(),
                "status": _string(),
                "pages_total": INTEGER,
                "pages_ready": INTEGER,
                "after": INTEGER,
                "next_after": INTEGER,
                "pages": {"type": "array", "items": _object(job_page, ("index", "file", "status"))},
                "error": {
                    "type": "object",
                    "description": "Why the job waits or failed, as in its view (retrying: it will be run again).",
                },
            },
            ("id", "pages", "next_after"),
        ),
        "ModelList": _object(
            {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": _object(
                        {
                            "id": _string(),
                            "object": {"const": "model"},
                            "created": INTEGER,
                            "owned_by": _string(),
                            "root": _string(),
                            "parent": _nullable("string"),
                            "max_model_len": INTEGER,
                        },
                        ("id", "object"),
                    ),
                },
            },
            ("object", "data"),
        ),
        "ChatRequest": _chat_request(settings),
        "ChatCompletion": _object(
            {
                "id": _string(),
                "object": {"const": "chat.completion"},
                "created": INTEGER,
                "model": _string(),
                "choices": {
                    "type": "array",
                    "items": _object(
                        {
                            "index": INTEGER,
                            "message": _object({"role": _string(), "content": _string()}, closed=False),
                            "finish_reason": _string("stop or length"),
                            "logprobs": {"type": "null"},
                        },
                        closed=False,
                    ),
                },
                "usage": USAGE,
                "ocr": {**_ref("OcrResult"), "description": 'The structured result, with "ocr": {"structured": true}.'},
            },
            ("id", "object", "choices", "usage"),
            closed=False,
        ),
    }


_ENGINE_STATE: dict[str, Schema] = {
    "engine": _string(),
    "model": _string(),
    "model_loaded": BOOLEAN,
    "engine_state": _string(),
    "ready": BOOLEAN,
    "draining": BOOLEAN,
    "pages_in_flight": INTEGER,
    "max_pages_in_flight": INTEGER,
    "guard": _object(
        {
            "required": BOOLEAN,
            "checks": {
                "type": "object",
                "description": "Per vLLM server URL, or in-process: the start-up check of the repetition guard.",
                "additionalProperties": _object(
                    {"state": {"enum": ["verified", "missing", "unchecked"]}, "check": _string()}, ("state", "check")
                ),
            },
        },
        ("required", "checks"),
    ),
}


def _chat_request(settings: Settings) -> Schema:
    part = {
        "type": "object",
        "properties": {
            "type": {"enum": ["text", "image_url"]},
            "text": _string(),
            "image_url": {"type": "object", "properties": {"url": _string("A data URL, or an http(s) URL")}},
        },
        "required": ["type"],
    }
    message = {
        "type": "object",
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant"]},
            "content": {"anyOf": [_string(), {"type": "array", "items": part}]},
        },
        "required": ["role", "content"],
    }
    ocr = {name: BOOLEAN if name in ("structured", "figures", "annotate") else _string() for name in OCR_FIELDS}
    return {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": _string("A model id from GET /v1/models."),
            "messages": {"type": "array", "items": message, "minItems": 1},
            "max_tokens": {"type": "integer", "minimum": 1, "description": f"At most {settings.max_tokens}."},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "stream": BOOLEAN,
            "stream_options": {"type": "object", "properties": {"include_usage": BOOLEAN}},
            "n": {"const": 1},
            **{
                name: {**NUMBER, "description": "Accepted and ignored: decoding is greedy."} for name in IGNORED_NUMBERS
            },
            "ocr": {**_object(ocr), "description": "This service's extension: /ocr's fields."},
        },
    }


def _ocr_fields(settings: Settings, modes: tuple[str, ...]) -> dict[str, Schema]:
    """The form fields of /ocr, /ocr/batch and /jobs, each described; a field the options read is never missing."""
    kinds: dict[str, Schema] = {
        "task": {"enum": list(TASKS)},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": settings.max_tokens},
        "mode": {"enum": list(modes or RESOLUTION_MODES)},
        "figures": BOOLEAN,
        "annotate": BOOLEAN,
    }
    return {name: {**kinds.get(name, STRING), "description": FIELD_DESCRIPTIONS[name]} for name in FORM_FIELDS}


@dataclass(frozen=True)
class Operation:
    """What the url map cannot say about one route: its summary, body and answers."""

    summary: str
    tag: str
    responses: dict[str, Schema]
    body: Schema | None = None
    parameters: list[Schema] = field(default_factory=list)
    description: str = ""


def _json(schema: Schema, description: str, headers: dict[str, Schema] | None = None) -> Schema:
    response: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER = {"Retry-After": {"schema": INTEGER, "description": "Seconds to wait before trying again."}}
ERROR_MEANINGS = {
    "400": "The request is malformed; `code` names what.",
    "401": "A key is missing or not valid (only when API_KEYS is set).",
    "404": "No such resource (for a job: none of this key's).",
    "409": "The job was cancelled; it has no result.",
    "413": "The body is over the upload limit.",
    "415": "The body or a file is not of a kind the route takes.",
    "422": "A file was read but cannot be processed (too many pages, a wrong password, a decompression bomb).",
    "429": "Over the rate limit (RATE_LIMIT); wait for Retry-After.",
    "503": "Not ready, at capacity or shutting down; the same request may succeed after Retry-After.",
    "504": "The engine did not answer in time.",
    "507": "The jobs' disk is full.",
}


def _errors(*statuses: str, shape: str = "Error") -> dict[str, Schema]:
    headers = {"503": RETRY_AFTER, "429": RETRY_AFTER}
    return {status: _json(_ref(shape), ERROR_MEANINGS[status], headers.get(status)) for status in statuses}


def _upload_body(fields: dict[str, Schema], file_field: str, many: bool, max_files: int, json_field: str) -> Schema:
    binary = {"type": "string", "contentMediaType": "application/octet-stream"}
    files = {"type": "array", "items": binary, "minItems": 1, "maxItems": max_files} if many else binary
    form = {"type": "object", "properties": {file_field: files, **fields}, "required": [file_field]}
    content: Schema = {"multipart/form-data": {"schema": form}}
    if json_field:
        image = _string("The file in base64, or a data URL")
        images = {"type": "array", "items": image, "minItems": 1, "maxItems": max_files}
        body = {json_field: images if many else image, **fields}
        content[JSON] = {"schema": {"type": "object", "properties": body, "required": [json_field]}}
    return {"required": True, "content": content}


def _operations(settings: Settings, modes: tuple[str, ...]) -> dict[tuple[str, str], Operation]:
    """Every route's description, keyed by (endpoint, method)."""
    fields = _ocr_fields(settings, modes)
    job_fields = {**fields, "callback_url": _string("Where to POST the job's view when it finishes.")}
    ocr_errors = _errors("400", "401", "413", "415", "422", "429", "503", "504")
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": STRING}
    after = {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}}
    limit = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}}
    job_errors = _errors("401", "404", "429", "503")
    html = {"description": "An HTML page.", "content": {HTML: {"schema": STRING}}}
    png = {"description": "A PNG, kept by the client (immutable).", "content": {"image/png": {"schema": STRING}}}
    not_modified = {"description": "The client's copy (If-None-Match) is current."}
    page_index = {"name": "index", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
    return {
        ("probes.health", "GET"): Operation(
            "Liveness: answers while the process runs", "probes", {"200": _json(_ref("Health"), "Alive.")}
        ),
        ("probes.ready", "GET"): Operation(
            "Readiness: 200 once the engine can serve",
            "probes",
            {"200": _json(_ref("Ready"), "Ready."), **_errors("503")},
        ),
        ("metrics.scrape", "GET"): Operation(
            "Prometheus metrics of every process of this node",
            "metrics",
            {
                "200": {
                    "description": "Prometheus' text format (docs/DEPLOYMENT.md lists the metrics).",
                    "content": {"text/plain": {"schema": STRING}},
                },
                **_errors("401"),
            },
            description="Open to clients on loopback; others need a key when API_KEYS is set. Never rate-limited.",
        ),
        ("ocr.ocr", "POST"): Operation(
            "OCR one image or PDF",
            "ocr",
            {"200": _json(_ref("OcrResult"), "The file's result."), **ocr_errors},
            _upload_body(fields, "file", False, 1, "image"),
        ),
        ("ocr.ocr_batch", "POST"): Operation(
            "OCR several files as one engine batch",
            "ocr",
            {"200": _json(_ref("BatchResult"), "One result or error per file, in upload order."), **ocr_errors},
            _upload_body(fields, "files", True, settings.max_batch_files, "images"),
            description="A file that cannot be processed gets its error in `results`; the others are read.",
        ),
        ("jobs.create_job", "POST"): Operation(
            "Queue a job of one or more files",
            "jobs",
            {
                "202": _json(_ref("Job"), "Queued.", {"Location": {"schema": STRING}}),
                **_errors("400", "401", "413", "415", "422", "429", "503", "507"),
            },
            _upload_body(job_fields, "files", True, settings.job_max_files, ""),
            description="Send the files as `files` (or one as `file`), with /ocr's fields.",
        ),
        ("jobs.get_job", "GET"): Operation(
            "A job's status and progress",
            "jobs",
            {"200": _json(_ref("Job"), "The job."), **job_errors},
            parameters=[job_id],
        ),
        ("jobs.get_job_result", "GET"): Operation(
            "A finished job's result: what /ocr (one file) or /ocr/batch (several) would have answered",
            "jobs",
            {
                "200": _json({"anyOf": [_ref("OcrResult"), _ref("BatchResult")]}, "The result."),
                "202": _json(_ref("Job"), "Not finished yet: the job's view."),
                **_errors("401", "404", "409", "429", "503"),
            },
            parameters=[job_id],
        ),
        ("jobs.get_job_pages", "GET"): Operation(
            "The pages finished so far, in order, after the `after`-th",
            "jobs",
            {"200": _json(_ref("JobPages"), "Up to `limit` pages."), **_errors("400"), **job_errors},
            parameters=[job_id, after, limit],
        ),
        ("jobs.get_job_annotated_page", "GET"): Operation(
            "A finished page with its blocks' boxes drawn (a job with annotate=true)",
            "jobs",
            {"200": png, "304": not_modified, **job_errors},
            parameters=[job_id, page_index],
            description="Made from the job's file when asked for; the page entry's `annotated_image_url` links it.",
        ),
        ("jobs.get_job_figure", "GET"): Operation(
            "A figure cut from a finished page (a job with figures=true)",
            "jobs",
            {"200": png, "304": not_modified, **job_errors},
            parameters=[job_id, page_index, {"name": "number", "in": "path", "required": True, "schema": INTEGER}],
            description="Made from the job's file when asked for; the page entry's `figures[].image_url` links it.",
        ),
        ("jobs.get_job_events", "GET"): Operation(
            "Server-Sent Events: each page as it finishes, progress, then `end`",
            "jobs",
            {
                "200": {"description": "An event stream.", "content": {SSE: {"schema": STRING}}},
                **job_errors,
            },
            parameters=[job_id, after, {"name": "Last-Event-ID", "in": "header", "schema": STRING}],
        ),
        ("jobs.delete_job", "DELETE"): Operation(
            "Cancel a job, or remove a finished one",
            "jobs",
            {"200": _json(_ref("Job"), "Cancelled."), "204": {"description": "Removed."}, **job_errors},
            parameters=[job_id],
        ),
        ("openai.list_models", "GET"): Operation(
            "The served model and its aliases (OpenAI's API)",
            "openai",
            {"200": _json(_ref("ModelList"), "The models."), **_errors("401", "429", shape="OpenAIError")},
        ),
        ("openai.chat_completions", "POST"): Operation(
            "OCR one image with OpenAI's chat completion API",
            "openai",
            {
                "200": {
                    "description": "A chat.completion, or with `stream: true` its chunks as Server-Sent Events.",
                    "content": {JSON: {"schema": _ref("ChatCompletion")}, SSE: {"schema": STRING}},
                },
                **_errors("400", "401", "404", "413", "415", "422", "429", "503", "504", shape="OpenAIError"),
            },
            {"required": True, "content": {JSON: {"schema": _ref("ChatRequest")}}},
        ),
        ("web.page", "GET"): Operation("The web page: drop files, see their text and boxes", "web", {"200": html}),
        ("web.api_docs", "GET"): Operation("This description, readable", "web", {"200": html}),
        ("web.openapi_document", "GET"): Operation(
            "This description (OpenAPI 3.1)", "web", {"200": _json({"type": "object"}, "The description.")}
        ),
        ("web.static", "GET"): Operation(
            "The web page's scripts and styles",
            "web",
            {"200": {"description": "A file."}, "404": _json(_ref("Error"), "No such file.")},
            parameters=[{"name": "filename", "in": "path", "required": True, "schema": STRING}],
        ),
    }


def describe(app: Flask, settings: Settings, modes: tuple[str, ...]) -> dict[str, Any]:
    """The OpenAPI document of ``app``: one operation per route and method, nothing described that is not served."""
    operations = _operations(settings, modes)
    paths: dict[str, dict[str, Any]] = {}
    seen = set()
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            key = (rule.endpoint, method)
            if key not in operations:
                raise LookupError(f"route {rule.rule} ({rule.endpoint}, {method}) has no OpenAPI description")
            seen.add(key)
            blueprint = rule.endpoint.rpartition(".")[0]
            paths.setdefault(_CONVERTER.sub(r"{\1}", rule.rule), {})[method.lower()] = _operation(
                operations[key], rule.endpoint, open_route=blueprint in OPEN_BLUEPRINTS
            )
    unserved = sorted(set(operations) - seen)
    if unserved:
        raise LookupError(f"described but not served: {unserved}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DeepSeek-OCR API",
            "version": "0.1.0",
            "description": "Images and documents to text, markdown and layout with DeepSeek's OCR models. "
            "Errors are `{error, code}` (OpenAI's shape under /v1/); docs/API_DOCUMENTATION.md says more.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (API_KEYS)."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def _operation(operation: Operation, endpoint: str, open_route: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "operationId": endpoint.replace(".", "_"),
        "summary": operation.summary,
        "tags": [operation.tag],
        "responses": operation.responses,
    }
    if operation.description:
        body["description"] = operation.description
    if operation.parameters:
        body["parameters"] = operation.parameters
    if operation.body:
        body["requestBody"] = operation.body
    # Open routes need no key; the others take either header, when keys are on (no key at all when they are off).
    body["security"] = [] if open_route else [{"bearer": []}, {"apiKey": []}, {}]
    return body
