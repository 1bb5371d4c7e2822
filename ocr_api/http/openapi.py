"""The OpenAPI 3.1 description of the service, built from the app itself so that it cannot drift from the code.

The paths and methods come from Flask's url map, and every route must have an entry in ``_operations`` (a route
without one, or an entry without a route, fails ``describe``, and so the tests). Which operations need a key
comes from the blueprint, as access control decides it (ocr_api/access.py). The form fields are the ones
ocr_api/options.py reads, the tasks and modes the ones ocr_api/prompts.py and the engines know, the limits the
settings'. The bodies' schemas are generated from their one declaration, ocr_api/shapes.py, and checked against real
answers by tests/test_openapi.py and by schemathesis (every property named, none unknown: a field added to a result
without a word in shapes.py fails them).
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from pydantic import TypeAdapter

from ocr_api.engines.base import RESOLUTION_MODES
from ocr_api.http.access import OPEN_BLUEPRINTS
from ocr_api.options import FORM_FIELDS, OUTPUTS
from ocr_api.prompts import TASKS
from ocr_api.settings import Settings
from ocr_api.shapes import COMPONENTS

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
    "output": "`json` (the default): the result. `pdf` (/ocr and /jobs): the searchable PDF, the same pages with the "
    "text invisibly over them. `hocr` (/ocr): the lines and words placed, as hOCR.",
}


def _string(description: str = "", **more: Any) -> Schema:
    return {"type": "string", **({"description": description} if description else {}), **more}


def _ref(name: str) -> Schema:
    return {"$ref": REF_TEMPLATE.format(model=name)}


INTEGER = {"type": "integer"}
STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
REF_TEMPLATE = "#/components/schemas/{model}"


def _schemas(settings: Settings) -> dict[str, Schema]:
    """The components: generated from the shapes (ocr_api/shapes.py), and what only the settings know."""
    schemas = copy.deepcopy(_generated_schemas())
    schemas["ChatRequest"]["properties"]["max_tokens"]["description"] = f"At most {settings.max_tokens}."
    return schemas


@functools.cache
def _generated_schemas() -> dict[str, Schema]:
    adapters = [(name, "serialization", TypeAdapter(shape)) for name, shape in COMPONENTS.items()]
    _, definitions = TypeAdapter.json_schemas(adapters, ref_template=REF_TEMPLATE)
    return _untitled(definitions["$defs"])


def _untitled(schema: Any, in_properties: bool = False) -> Any:
    """The schema without pydantic's titles (each field's name again, capitalised): a property named title stays."""
    if isinstance(schema, list):
        return [_untitled(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: _untitled(value, in_properties=key == "properties" and not in_properties)
        for key, value in schema.items()
        if in_properties or key != "title"
    }


def _ocr_fields(settings: Settings, modes: tuple[str, ...]) -> dict[str, Schema]:
    """The form fields of /ocr, /ocr/batch and /jobs, each described; a field the options read is never missing."""
    kinds: dict[str, Schema] = {
        "task": {"enum": list(TASKS)},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": settings.max_tokens},
        "mode": {"enum": list(modes or RESOLUTION_MODES)},
        "figures": BOOLEAN,
        "annotate": BOOLEAN,
        "output": {"enum": list(OUTPUTS)},
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


BINARY = {"type": "string", "format": "binary"}
PAGES_WITHOUT_TEXT = {
    name: {"schema": STRING, "description": f"{what} (1-based page numbers, comma-separated; empty for none)."}
    for name, what in (("X-OCR-Failed-Pages", "Pages that failed"),
                       ("X-OCR-Kept-Text-Pages", "PDF pages that had text of their own and kept it"))
}  # fmt: skip


def _document_answer(description: str, schemas: dict[str, Schema]) -> Schema:
    """A 200 that may be a searchable PDF: its media types' schemas, and the headers naming pages without text."""
    content = {media_type: {"schema": schema} for media_type, schema in schemas.items()}
    return {"description": description, "content": content, "headers": PAGES_WITHOUT_TEXT}


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
            {
                "200": _document_answer(
                    "The file's result; with `output=pdf` the searchable PDF, with `output=hocr` hOCR. "
                    "X-OCR-Failed-Pages and X-OCR-Kept-Text-Pages name the pages without the model's text.",
                    {JSON: _ref("OcrResult"), "application/pdf": BINARY, "text/html": STRING},
                ),
                **ocr_errors,
            },
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
        ("jobs.get_job_result_pdf", "GET"): Operation(
            "A finished job's searchable PDF (made with output=pdf)",
            "jobs",
            {
                "200": _document_answer(
                    "Every file's pages, the text under them, in upload order.", {"application/pdf": BINARY}
                ),
                **_errors("401", "404", "409", "422", "429", "503"),
            },
            parameters=[job_id],
        ),
        ("jobs.get_job_pages", "GET"): Operation(
            "The pages finished so far, in order, after the `after`-th",
            "jobs",
            {"200": _json(_ref("JobPages"), "Up to `limit` pages."), **_errors("400"), **job_errors},
            parameters=[job_id, after, limit],
        ),
        ("job_pictures.get_job_annotated_page", "GET"): Operation(
            "A finished page with its blocks' boxes drawn (a job with annotate=true)",
            "jobs",
            {"200": png, "304": not_modified, **job_errors},
            parameters=[job_id, page_index],
            description="Made from the job's file when asked for; the page entry's `annotated_image_url` links it.",
        ),
        ("job_pictures.get_job_figure", "GET"): Operation(
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
