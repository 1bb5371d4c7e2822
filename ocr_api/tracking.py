"""Each request's id, its counts and its one summary line: what logs and metrics say about a request.

A request keeps the id its client sent in ``X-Request-ID`` (when it is a plain token of up to 128 characters) or
gets a new one; the answer carries it back, every log line written while the request runs names it, and the remote
engine sends it on to vLLM with each page (``<id>.<n>``). A job's pages are logged under ``job:<job id>``. When the
answer has been sent (a stream's last byte included), one line sums the request up (route, status, error code,
pages, tokens, time) and the request metrics are counted.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from flask import Flask, Response, request

from ocr_api import metrics

REQUEST_ID_HEADER = "X-Request-ID"
# Kept as sent only when safe in a header and a log line, and short enough; anything else is replaced.
ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")
# Probes and the page's files are asked often and say little: their summary lines are DEBUG, the rest INFO.
QUIET_BLUEPRINTS = frozenset({"probes", "web", "metrics"})

summary_logger = logging.getLogger("ocr_api.requests")


@dataclass
class RequestRecord:
    """What one request (or one run of a job) did: its id, and the pages and tokens its stream finished."""

    request_id: str
    started: float = 0.0
    pages: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_code: str = ""


_current: ContextVar[RequestRecord | None] = ContextVar("ocr_request", default=None)


def current_record() -> RequestRecord | None:
    """The request (or job run) this thread works for, if any."""
    return _current.get()


def current_request_id() -> str:
    """The id of the request this thread works for; "-" outside any."""
    record = _current.get()
    return record.request_id if record is not None else "-"


def adopt(record: RequestRecord | None) -> None:
    """Work for ``record``'s request in this context (an engine call's task, on the engine's thread)."""
    _current.set(record)


@contextmanager
def working_for(request_id: str) -> Iterator[RequestRecord]:
    """Attribute what this thread logs and counts to ``request_id`` until the block ends (a job's run)."""
    record = RequestRecord(request_id, time.perf_counter())
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


def count_page(status: str) -> None:
    """A page finished (ok, truncated, repetitive, failed), or is run again (retried): the metric, and the
    request's count of finished pages."""
    metrics.PAGES.labels(status).inc()
    record = _current.get()
    if record is not None and status != "retried":
        record.pages += 1


def count_engine_answer(seconds: float, prompt_tokens: int, completion_tokens: int) -> None:
    """The engine answered a page (any attempt): its time and tokens, in the metrics and the request's totals."""
    metrics.ENGINE_SECONDS.observe(seconds)
    metrics.PROMPT_TOKENS.observe(prompt_tokens)
    metrics.COMPLETION_TOKENS.observe(completion_tokens)
    record = _current.get()
    if record is not None:
        record.prompt_tokens += prompt_tokens
        record.completion_tokens += completion_tokens


def note_error(code: str) -> None:
    """The error code the request is answered with (from the one place errors are rendered)."""
    record = _current.get()
    if record is not None:
        record.error_code = code


class RequestIdFilter(logging.Filter):
    """Give every log record the id of the request its thread works for (``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


def install_request_tracking(app: Flask) -> None:
    """Give each request its id first (before keys and limits), and sum it up once its answer has been sent."""
    app.before_request(_begin)
    app.after_request(_answer)


def _begin() -> None:
    sent = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = sent if ACCEPTED_ID.fullmatch(sent) else uuid.uuid4().hex
    # Set in the request's own context: the view, and a streamed answer iterated later, both run in it.
    _current.set(RequestRecord(request_id, time.perf_counter()))


def _answer(response: Response) -> Response:
    record = _current.get()
    if record is None:  # an error raised before _begin ran (Flask still calls after_request)
        record = RequestRecord(uuid.uuid4().hex, time.perf_counter())
        _current.set(record)
    response.headers[REQUEST_ID_HEADER] = record.request_id
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method, blueprint, status = request.method, request.blueprint, response.status_code
    # Called when the server closes the answer: after a stream's last byte, so its time and pages are whole.
    response.call_on_close(lambda: _summarize(record, route, method, blueprint, status))
    return response


def _summarize(record: RequestRecord, route: str, method: str, blueprint: str | None, status: int) -> None:
    seconds = time.perf_counter() - record.started
    metrics.REQUESTS.labels(route, method, str(status), record.error_code).inc()
    metrics.REQUEST_SECONDS.labels(route).observe(seconds)
    fields = {
        "route": route,
        "method": method,
        "status": status,
        "code": record.error_code,
        "pages": record.pages,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "ms": round(seconds * 1000, 1),
    }
    level = logging.DEBUG if blueprint in QUIET_BLUEPRINTS else logging.INFO
    summary_logger.log(
        level,
        "%s %s %d code=%s pages=%d tokens=%d+%d %.1fms",
        method, route, status, record.error_code or "-", record.pages, record.prompt_tokens,
        record.completion_tokens, fields["ms"],
        extra={"summary": fields, "request_id": record.request_id},
    )  # fmt: skip
