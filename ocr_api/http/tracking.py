"""Each request's id and its one summary line: the HTTP side of ocr_api/tracking.py.

A request keeps the id its client sent in ``X-Request-ID`` (when it is a plain token of up to 128 characters) or
gets a new one; the answer carries it back. When the answer has been sent (a stream's last byte included), one line
sums the request up (route, status, error code, pages, tokens, time) and the request metrics are counted.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, request

from ocr_api import metrics, tracking

REQUEST_ID_HEADER = "X-Request-ID"
# Kept as sent only when safe in a header and a log line, and short enough; anything else is replaced.
ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")
# Probes and the page's files are asked often and say little: their summary lines are DEBUG, the rest INFO.
QUIET_BLUEPRINTS = frozenset({"probes", "web", "metrics"})

summary_logger = logging.getLogger("ocr_api.requests")


def install_request_tracking(app: Flask) -> None:
    """Give each request its id first (before keys and limits), and sum it up once its answer has been sent."""
    app.before_request(_begin)
    app.after_request(_answer)


def _begin() -> None:
    sent = request.headers.get(REQUEST_ID_HEADER, "")
    tracking.begin(sent if ACCEPTED_ID.fullmatch(sent) else uuid.uuid4().hex)


def _answer(response: Response) -> Response:
    record = tracking.current_record()
    if record is None:  # an error raised before _begin ran (Flask still calls after_request)
        record = tracking.begin(uuid.uuid4().hex)
    response.headers[REQUEST_ID_HEADER] = record.request_id
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method, blueprint, status = request.method, request.blueprint, response.status_code
    # Called when the server closes the answer: after a stream's last byte, so its time and pages are whole.
    response.call_on_close(lambda: _summarize(record, route, method, blueprint, status))
    return response


def _summarize(record: tracking.RequestRecord, route: str, method: str, blueprint: str | None, status: int) -> None:
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
