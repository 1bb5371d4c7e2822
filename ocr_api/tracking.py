"""The record of the request (or job run) a thread works for: its id, and the pages, tokens and error code it ends
with. Every log line names the id (RequestIdFilter), the remote engine sends it on to vLLM with each page
(``<id>.<n>``), and a job's pages are logged under ``job:<job id>``. The HTTP layer begins a record for each request
and sums it up once answered (ocr_api/http/tracking.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from ocr_api import metrics


@dataclass
class RequestRecord:
    """What one request (or one run of a job) did: its id, and the pages and tokens its stream finished."""

    request_id: str
    started: float = 0.0
    client: str = ""  # whom the work is for: an API key's digest, else the address (named by access control)
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


def begin(request_id: str) -> RequestRecord:
    """Start the record of a request in the current context (the request's own: its view and a stream it answers
    with both run in it)."""
    record = RequestRecord(request_id, time.perf_counter())
    _current.set(record)
    return record


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
