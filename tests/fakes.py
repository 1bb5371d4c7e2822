"""A fake engine implementing the real OcrEngine interface, for API contract and error tests."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ocr_api.engines import EngineLoadError, EngineOutput, EngineRequest
from ocr_api.guard import GuardSettings
from ocr_api.models import PROFILES


class FakeEngine:
    """Answers with the image size it was given, so tests can tell which output belongs to which file."""

    name = "fake"
    model_id = "fake/deepseek-ocr-2"
    modes = ("gundam", "base")

    def __init__(self, ready: bool = True, fail_with: Exception | None = None, load_error: str | None = None):
        self.profile = PROFILES["deepseek-ocr-2"]
        self.ready = ready
        self.fail_with = fail_with
        self.load_error = load_error
        self.batches: list[list[EngineRequest]] = []
        self._lock = threading.Lock()

    def load(self) -> None:
        if self.load_error:
            raise EngineLoadError(self.load_error)

    def is_ready(self) -> bool:
        return self.ready

    def generate(self, requests: Sequence[EngineRequest], should_stop=None) -> list[EngineOutput]:
        with self._lock:
            self.batches.append(list(requests))
        if self.fail_with is not None:
            raise self.fail_with
        return [
            EngineOutput(
                text=f"<|ref|>text<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>\nimage {r.image.width}x{r.image.height}",
                finish_reason="stop",
                prompt_tokens=300,
                completion_tokens=12,
                max_tokens=r.max_tokens,
                guard=GuardSettings(r.ngram_size, r.window_size, frozenset({128821, 128822})),
            )
            for r in requests
        ]

    def close(self) -> None:
        self.ready = False


class SteppingClock:
    """A clock that moves ``step`` seconds each time it is read: a budget runs out after a known number of checks."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now
