"""The one error hierarchy of the service: each error carries its HTTP status, a stable code and a message, and
knows its body in the service's shape and in OpenAI's. Rendered as a response in one place, ocr_api/http/errors.py."""

from __future__ import annotations


class ApiError(Exception):
    """An error a client may see: an HTTP status, a stable snake_case code and a human message."""

    status = 500
    code = "internal_error"
    message = "The server failed to process the request."
    param: str | None = None  # the request field at fault, where one is (OpenAI's error shape names it)

    def __init__(self, message: str | None = None, *, code: str | None = None, headers: dict | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.code = code or self.code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, str]:
        """Return the JSON body of this error."""
        return {"error": self.message, "code": self.code}

    def to_openai(self) -> dict[str, dict[str, str | None]]:
        """Return the body in OpenAI's shape, so the openai SDK raises its usual exception for the status."""
        status = openai_status(self.status)
        kind = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "code": self.code, "param": self.param}}

    def naming(self, param: str) -> ApiError:
        """This error, naming the request field at fault."""
        self.param = param
        return self

    @classmethod
    def rebuilt(cls, status: int, body: dict[str, str]) -> ApiError:
        """The error again from its status and body (as a job stored it), to be rendered as it was."""
        error = cls(body.get("error"), code=body.get("code"))
        error.status = status
        return error


class BadRequest(ApiError):
    status = 400
    code = "bad_request"
    message = "The request is not valid."


class NotFound(ApiError):
    status = 404
    code = "not_found"
    message = "No such endpoint. See docs/API_DOCUMENTATION.md for the endpoints."


class Conflict(ApiError):
    status = 409
    code = "conflict"
    message = "The resource is not in a state that allows this."


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"
    message = "This endpoint does not accept that HTTP method."


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"
    message = "The request is too large."


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"
    message = "The file is not in a supported format."


class UnprocessableFile(ApiError):
    status = 422
    code = "unprocessable_file"
    message = "The file could not be used."


class Unauthorized(ApiError):
    status = 401
    code = "invalid_api_key"
    message = "A valid API key is required: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."

    def __init__(self, message: str | None = None, *, code: str | None = None):
        super().__init__(message, code=code, headers={"WWW-Authenticate": 'Bearer realm="DeepSeek-OCR API"'})


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"
    message = "Too many requests for this client; wait for the time in Retry-After, then try again."


class TooManyJobs(ApiError):
    """429: the key's unfinished jobs already reach KEY_MAX_JOBS or KEY_MAX_JOB_PAGES."""

    status = 429
    code = "too_many_jobs"
    retry_after = 60

    def __init__(self, message: str | None = None, *, code: str | None = None):
        super().__init__(message, code=code, headers={"Retry-After": str(self.retry_after)})


class InsufficientStorage(ApiError):
    status = 507
    code = "jobs_storage_full"
    message = "The disk that holds jobs (JOBS_DIR) is full; the job was not accepted. Try again later."


class InferenceFailed(ApiError):
    status = 500
    code = "inference_failed"
    message = "The OCR engine failed while processing this request; the error was logged."


class ServiceUnavailable(ApiError):
    """503: nothing is wrong with the request; the same request may succeed after Retry-After seconds."""

    status = 503
    code = "service_unavailable"
    retry_after = 10

    def __init__(self, message: str | None = None, *, code: str | None = None, retry_after: int | None = None):
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after or self.retry_after)})


class EngineNotReady(ServiceUnavailable):
    code = "engine_not_ready"
    message = "The OCR engine is not ready yet; try again shortly."


class EngineUnguarded(ServiceUnavailable):
    """The engine answered the guard's check as an engine without the guard does; the service sends it no pages."""

    code = "engine_unguarded"
    message = "The OCR engine generates without the repetition guard, so the service sends it no pages."
    retry_after = 30


class Overloaded(ServiceUnavailable):
    code = "overloaded"
    message = "The service is at capacity; try again after the time in Retry-After."
    retry_after = 5


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"
    message = "This server is shutting down and takes no new requests; send the request again (to another server)."
    retry_after = 5


class ClientGone(ApiError):
    """The client hung up before its answer was ready; nobody reads this, but the log records the request so."""

    status = 499  # nginx's "client closed request"
    code = "client_closed_request"
    message = "The client closed the connection; the request's work was stopped."


class GatewayTimeout(ApiError):
    status = 504
    code = "engine_timeout"
    message = "The OCR engine did not answer in time; the request was aborted. Try fewer or smaller pages."


OPENAI_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
# The client errors OpenAI's API answers with, each its own exception in the openai SDK (413 is its APIStatusError,
# kept: the request is too large). Any other 4xx of ours (415 for an image that is not one, 405, 411) is a 400 there,
# as OpenAI answers an invalid image; the code stays ours. 499 is left alone: nobody is there to read it.
OPENAI_CLIENT_STATUSES = (400, 401, 403, 404, 409, 413, 422, 429, 499)


def openai_status(status: int) -> int:
    """The status OpenAI's API would answer for one of ours."""
    return 400 if 400 <= status < 500 and status not in OPENAI_CLIENT_STATUSES else status
