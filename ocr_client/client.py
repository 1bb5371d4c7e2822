"""A small Python client of the service: /ocr, /ocr/batch and /jobs, retrying 503 and 429 as the service asks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

# As ocr_api/jobs/store.py names them; not imported, so that the client needs nothing of the service installed.
FINISHED = ("succeeded", "partial", "failed", "cancelled")
RETRIED_STATUSES = (429, 503)  # nothing wrong with the request: the same one may succeed after Retry-After


class ApiError(Exception):
    """The service refused a request: its status, its code and its message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Document:
    """A file's result as a document of its own (``output=pdf`` or ``hocr``), and which pages (1-based) carry no text
    from the model: those that failed, and PDF pages that had text of their own and kept it."""

    data: bytes
    failed_pages: list[int]
    kept_text_pages: list[int]


def _page_list(header: str | None) -> list[int]:
    return [int(number) for number in (header or "").split(",") if number.strip().isdigit()]


def _parts(field: str, paths: Sequence[Path]) -> Callable[[], list[tuple[str, tuple[str, bytes]]]]:
    """The form's file parts, read when called: each attempt of a retried upload reads them again."""
    return lambda: [(field, (path.name, path.read_bytes())) for path in paths]


class Client:
    """The service at ``base_url``; every call retries 503 and 429, waiting what Retry-After says (else backing off)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 600,
        retries: int = 8,
        max_wait_s: float = 60,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[ApiError, float], None] = lambda error, wait_s: None,
    ):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s, self.retries, self.max_wait_s, self.sleep = timeout_s, retries, max_wait_s, sleep
        self.on_retry = on_retry  # told of each refusal that is tried again, and the wait before it

    def ocr(self, path: Path, **fields: str) -> dict[str, Any]:
        """OCR one image or PDF with /ocr's fields (task, mode, pages, figures, ...)."""
        return self._call("POST", "/ocr", files=_parts("file", [path]), data=fields)

    def ocr_batch(self, paths: Sequence[Path], **fields: str) -> dict[str, Any]:
        """OCR several files as one batch: one result or error per file."""
        return self._call("POST", "/ocr/batch", files=_parts("files", paths), data=fields)

    def ocr_document(self, path: Path, output: str = "pdf", **fields: str) -> Document:
        """OCR one image or PDF into a document: ``pdf`` (the searchable PDF) or ``hocr``."""
        response = self._send("POST", "/ocr", files=_parts("file", [path]), data={**fields, "output": output})
        return self._document(response)

    def job_result_pdf(self, job_id: str, target: Path) -> Document:
        """Save a finished job's searchable PDF (made with output=pdf) at ``target``, streamed; ``data`` is empty."""
        response = self._send("GET", f"/jobs/{job_id}/result.pdf", stream=True)
        document = self._document(response, data=b"")  # an error raised before anything is written
        partial = target.with_name(target.name + ".part")
        with partial.open("wb") as handle:
            for chunk in response.iter_content(1 << 20):
                handle.write(chunk)
        partial.replace(target)
        return document

    def submit_job(self, path: Path, **fields: str) -> dict[str, Any]:
        """Queue a job of one file; returns its view (``id``, ``status``, ``progress``)."""
        return self._call("POST", "/jobs", files=_parts("file", [path]), data=fields)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}")

    def job_pages(self, job_id: str, after: int = 0, limit: int = 100) -> dict[str, Any]:
        """The job's finished pages after the ``after``-th, at most ``limit`` (500 at most)."""
        return self._call("GET", f"/jobs/{job_id}/pages", params={"after": after, "limit": limit})

    def job_result(self, job_id: str) -> dict[str, Any]:
        """The finished job's result: what /ocr would have answered."""
        return self._call("GET", f"/jobs/{job_id}/result")

    def wait_for_job(
        self, job_id: str, on_progress: Callable[[dict[str, Any]], None] = lambda view: None, poll_s: float = 0.5
    ) -> dict[str, Any]:
        """Poll the job until it is finished, telling ``on_progress`` each view; returns the last view."""
        while True:
            view = self.job(job_id)
            on_progress(view)
            if view["status"] in FINISHED:
                return view
            self.sleep(poll_s)

    def _call(self, method: str, path: str, files: Callable[[], list] | None = None, **kwargs: Any) -> dict[str, Any]:
        return self._body(self._send(method, path, files, **kwargs))

    def _send(
        self, method: str, path: str, files: Callable[[], list] | None = None, **kwargs: Any
    ) -> requests.Response:
        """The response, once it is not a 503 or 429 (or the retries are spent)."""
        for attempt in range(self.retries + 1):
            # Files are read again for each attempt: a retried upload is a new body.
            response = self.session.request(
                method, self.base_url + path, files=files() if files else None, timeout=self.timeout_s, **kwargs
            )
            if response.status_code in RETRIED_STATUSES and attempt < self.retries:
                wait_s = self._wait(response, attempt)
                self.on_retry(self._error(response), wait_s)
                self.sleep(wait_s)
                continue
            return response
        raise AssertionError("unreachable")  # the last attempt returns

    def _wait(self, response: requests.Response, attempt: int) -> float:
        """Retry-After when the service gives it (in seconds), else exponential backoff; never over max_wait_s."""
        header = response.headers.get("Retry-After", "")
        wait = float(header) if header.strip().isdigit() else min(2.0**attempt, 30.0)
        return min(wait, self.max_wait_s)

    @classmethod
    def _body(cls, response: requests.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise cls._error(response)
        body = _json_of(response)
        if not isinstance(body, dict):
            raise ApiError(response.status_code, "not_json", "The service answered something other than JSON.")
        return body

    @classmethod
    def _document(cls, response: requests.Response, data: bytes | None = None) -> Document:
        """The document a response carries (``data``: its bytes when they go elsewhere, streamed), or its error."""
        if response.status_code >= 400:
            raise cls._error(response)
        return Document(response.content if data is None else data,
                        _page_list(response.headers.get("X-OCR-Failed-Pages")),
                        _page_list(response.headers.get("X-OCR-Kept-Text-Pages")))  # fmt: skip

    @staticmethod
    def _error(response: requests.Response) -> ApiError:
        """The refusal in a response: ``{error, code}``, or OpenAI's ``{error: {message, code}}``."""
        body = _json_of(response)
        body = body if isinstance(body, dict) else {}
        error = body.get("error")
        if isinstance(error, dict):  # OpenAI's shape
            body, error = error, error.get("message")
        return ApiError(response.status_code, str(body.get("code") or "error"), str(error or response.reason))


def _json_of(response: requests.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None
