"""A fake engine implementing the real OcrEngine interface, for API contract and error tests."""

from __future__ import annotations

import concurrent.futures
import threading

from ocr_api.engines import EngineLoadError, EngineOutput, EngineRequest, GuardCheck
from ocr_api.engines.base import GUARD_VERIFIED
from ocr_api.profiles import PROFILES


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
