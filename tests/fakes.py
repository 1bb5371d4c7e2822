"""A fake engine implementing the real OcrEngine interface, for API contract and error tests; a slow one; and a service
with jobs around either, for the job tests."""

from __future__ import annotations

import concurrent.futures
import threading
import time

from flask.testing import FlaskClient
from urllib3 import encode_multipart_formdata

from ocr_api.engines import EngineLoadError, EngineOutput, EngineRequest, GuardCheck
from ocr_api.engines.base import GUARD_VERIFIED
from ocr_api.errors import InferenceFailed
from ocr_api.http.app import create_app
from ocr_api.http.state import jobs_of
from ocr_api.jobs import Jobs
from ocr_api.profiles import PROFILES
from ocr_api.service import OcrService
from ocr_api.settings import Settings


class FakeEngine:
    """Answers at once with the image size it was given, so tests can tell which output belongs to which file.

    ``requests`` records every page submitted, in order; ``answer`` makes one page's output (tests override it).
    """

    name = "fake"
    model_id = "fake/deepseek-ocr-2"
    modes = ("gundam", "base")
    context_length = 8192
    whitelist_token_ids = frozenset({128821, 128822})

    def __init__(self, ready: bool = True, fail_with: Exception | None = None, load_error: str | None = None):
        self.profile = PROFILES["deepseek-ocr-2"]
        self.ready = ready
        self.fail_with = fail_with
        self.load_error = load_error
        self.requests: list[EngineRequest] = []
        self._lock = threading.Lock()

    def load(self) -> None:
        if self.load_error:
            raise EngineLoadError(self.load_error)

    def is_ready(self) -> bool:
        return self.ready

    def guard_checks(self) -> dict[str, GuardCheck]:
        return {"in-process": GuardCheck(GUARD_VERIFIED, "a fake engine: nothing is generated")}

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        with self._lock:
            self.requests.append(request)
        future: concurrent.futures.Future[EngineOutput] = concurrent.futures.Future()
        if self.fail_with is not None:
            future.set_exception(self.fail_with)
        else:
            future.set_result(self.answer(request))
        return future

    def answer(self, request: EngineRequest) -> EngineOutput:
        width, height = request.image.size
        return EngineOutput(
            text=f"<|ref|>text<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>\nimage {width}x{height}",
            finish_reason="stop",
            prompt_tokens=300,
            completion_tokens=12,
            max_tokens=request.max_tokens,
            guard=request.guard,
        )

    def close(self) -> None:
        self.ready = False


class SteppingClock:
    """A clock that moves ``step`` seconds each time it is read: a budget runs out after a known number of checks."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class SlowEngine(FakeEngine):
    """Answers each page after ``delay_s`` on a thread of its own; counts pages at it, and those cancelled."""

    def __init__(self, delay_s: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.delay_s = delay_s
        self.at_engine = 0
        self.most_at_engine = 0
        self.cancelled = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(64)

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        with self._lock:
            self.requests.append(request)
            self.at_engine += 1
            self.most_at_engine = max(self.most_at_engine, self.at_engine)
        future: concurrent.futures.Future[EngineOutput] = concurrent.futures.Future()

        def answer() -> None:
            time.sleep(self.delay_s)
            with self._lock:
                self.at_engine -= 1
            if future.cancelled():
                with self._lock:
                    self.cancelled += 1
                return
            if self.fail_with is not None:
                future.set_exception(self.fail_with)
            else:
                future.set_result(self.answer(request))

        self._pool.submit(answer)
        return future


class ScriptedEngine(FakeEngine):
    """Answers each page with the next of ``answers`` (pages arrive in page order), then with FakeEngine's answer;
    ``None`` in the list fails that page."""

    def __init__(self, answers: list[str | None], **kwargs):
        super().__init__(**kwargs)
        self.answers = list(answers)

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        with self._lock:
            answer = self.answers.pop(0) if self.answers else ""
        if answer is None:
            future: concurrent.futures.Future[EngineOutput] = concurrent.futures.Future()
            future.set_exception(InferenceFailed("a page the script fails"))
            return future
        return super().submit(request) if answer == "" else _resolved(request, answer)


def _resolved(request: EngineRequest, text: str) -> concurrent.futures.Future[EngineOutput]:
    future: concurrent.futures.Future[EngineOutput] = concurrent.futures.Future()
    future.set_result(EngineOutput(text=text, finish_reason="stop", prompt_tokens=300, completion_tokens=len(text),
                                   max_tokens=request.max_tokens, guard=request.guard))  # fmt: skip
    return future


class JobsApp:
    """A service with jobs: its test client, its Jobs, and its consumer (started on demand, stopped at the end)."""

    def __init__(self, settings: Settings, engine: FakeEngine):
        self.engine = engine
        service = OcrService(settings, engine)
        service.start()
        self.app = create_app(service=service)
        self.client: FlaskClient = self.app.test_client()

    @property
    def jobs(self) -> Jobs:
        return jobs_of(self.app)

    def start(self) -> None:
        self.jobs.queue.start_consumer(self.jobs.runner())

    def stop(self) -> None:
        jobs = self.app.extensions.get("ocr_jobs")
        if jobs is not None:
            jobs.queue.stop_consumer()

    def post(self, path: str, *files: tuple[bytes, str], headers: dict | None = None, **fields):
        """POST a multipart body encoded as HTTP clients (urllib3, under requests) encode it."""
        parts: list[tuple[str, object]] = [("files", (name, content)) for content, name in files]
        body, content_type = encode_multipart_formdata(parts + list(fields.items()))
        return self.client.post(path, data=body, content_type=content_type, headers=headers or {})

    def submit(self, *files: tuple[bytes, str], headers: dict | None = None, **fields) -> dict:
        response = self.post("/jobs", *files, headers=headers, **fields)
        assert response.status_code == 202, response.json
        return response.json

    def wait(self, job_id: str, statuses=("succeeded", "partial", "failed", "cancelled"), timeout_s: float = 30,
             headers: dict | None = None) -> dict:  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            view = self.client.get(f"/jobs/{job_id}", headers=headers or {}).json
            if view["status"] in statuses:
                return view
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {view['status']} after {timeout_s} s")
