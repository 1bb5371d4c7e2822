"""The one place that renders every error as JSON: ours, the framework's (404, 405, 413 before our code runs) and
unexpected ones, in the service's shape, or in OpenAI's with the statuses OpenAI uses on every path under /v1/."""

from __future__ import annotations

import logging

from flask import Flask, Response, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from ocr_api.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UnsupportedMediaType,
    openai_status,
)
from ocr_api.tracking import note_error

logger = logging.getLogger(__name__)

# Routes under this prefix speak OpenAI's API, errors included; the SDK picks its exception class by the status.
OPENAI_PREFIX = "/v1/"

# Framework errors raised before our code runs (routing, body limits) map onto the hierarchy by status.
_FRAMEWORK_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
}


def error_response(error: ApiError) -> tuple[Response, int]:
    """Render ``error`` as its JSON body with its status and headers (OpenAI's shape and statuses on the /v1/
    routes)."""
    openai_route = has_request_context() and request.path.startswith(OPENAI_PREFIX)
    note_error(error.code)
    response = jsonify(error.to_openai() if openai_route else error.to_dict())
    response.headers.update(error.headers)
    return response, openai_status(error.status) if openai_route else error.status


def register_error_handlers(app: Flask) -> None:
    """Make every error, ours, the framework's and unexpected ones, a JSON response."""

    @app.errorhandler(ApiError)
    def handle_api_error(error: ApiError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException):
        kind = _FRAMEWORK_ERRORS.get(error.code or 500)
        if kind is None:
            api_error = ApiError(error.description or ApiError.message)
            api_error.status = error.code or 500
            api_error.code = (error.name or "error").lower().replace(" ", "_")
        elif kind is PayloadTooLarge:
            api_error = PayloadTooLarge(_too_large_message())
        else:
            api_error = kind()
        response, status = error_response(api_error)
        if error.code == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response, status

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        # The traceback goes to the log only; the client gets the generic message.
        logger.exception("unhandled error")
        return error_response(ApiError())


def _too_large_message() -> str:
    """The limits of the route refused (POST /jobs has larger ones than the app's), in the client's words."""
    if not has_request_context():
        return PayloadTooLarge.message
    limit, parts = request.max_content_length, request.max_form_parts
    if limit:
        return (
            f"The request is larger than the upload limit of {limit // (1024 * 1024)} MiB, "
            f"has more than {parts} form parts, or a form field is too long."
        )
    return PayloadTooLarge.message
