"""The page stream's own rules: slots, the backstop timeout, a client gone, a page the engine refuses."""

from __future__ import annotations

import concurrent.futures
import time

import pytest
from PIL import Image

from ocr_api import pipeline
from ocr_api.admission import Admission
from ocr_api.engines import EngineOutput, EngineRequest, EngineUnavailable, PromptTooLong
from ocr_api.errors import ApiError, ClientGone
from ocr_api.guard import GuardSettings
from ocr_api.pipeline import PageStream, StreamPage, StreamRules
from ocr_api.preparation import RenderedPage
from ocr_dev.inputs import make_pdf
from tests.fakes import FakeEngine
from tests.test_documents import _post


class SilentEngine(FakeEngine):
    """Takes pages and never answers; remembers their futures."""

    def __init__(self) -> None:
        super().__init__()
        self.futures: list[concurrent.futures.Future] = []

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        self.requests.append(request)
        self.futures.append(concurrent.futures.Future())
        return self.futures[-1]


class CountingEngine(FakeEngine):
    """Answers at once, and records how many of its pages were unanswered when each arrived (always 0 here)."""

    def __init__(self, admission: Admission) -> None:
        super().__init__()
        self.admission = admission
        self.slots_held: list[int] = []

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        self.slots_held.append(self.admission.in_flight)
        return super().submit(request)


def _rules(**changes) -> StreamRules:
    guard = GuardSettings(20, 90)
    rules = {
        "window": 4,
        "render_ahead": 2,
        "render_ahead_pixels": 10**9,
        "attempts": 2,
        "timeout_s": 1.0,
        "build_request": lambda key, image, attempt, priority: EngineRequest(image, "<image>\nFree OCR.", 64, guard),
        "ran_away": lambda reading: False,
    }
    return StreamRules(**{**rules, **changes})


def _pages(count: int) -> list[StreamPage]:
    page = RenderedPage(Image.new("RGB", (64, 48), "white"), (64, 48))
    return [StreamPage((0, index), lambda: page) for index in range(count)]


def _code(caught: pytest.ExceptionInfo) -> tuple[int, str]:
    return caught.value.status, caught.value.code


def test_an_engine_that_never_answers_is_504_and_its_pages_are_abandoned(monkeypatch):
    monkeypatch.setattr(pipeline, "BACKSTOP_S", 0.0)
    engine, admission = SilentEngine(), Admission(8)
    with pytest.raises(ApiError) as caught:
        PageStream(engine, admission, _rules(timeout_s=0.3), lambda: False).run(_pages(6))
    assert _code(caught) == (504, "engine_timeout")
    assert len(engine.futures) == 4  # the window, no more
    assert all(future.cancelled() for future in engine.futures)  # the engine aborts them
    assert admission.in_flight == 0


@pytest.mark.parametrize(
    ("size", "ahead"),
    [
        ((100, 100), 3),  # 10,000 pixels a page: three fit in 30,000, as many as render_ahead allows
        ((100, 160), 1),  # 16,000: a second would pass 30,000
        ((300, 300), 1),  # 90,000: larger than the budget alone, still one, or the engine would wait for it
    ],
)
def test_pages_are_rendered_ahead_within_a_count_and_a_pixel_budget(monkeypatch, size, ahead):
    monkeypatch.setattr(pipeline, "BACKSTOP_S", 0.0)
    rendered: list[int] = []

    def render() -> RenderedPage:
        rendered.append(1)
        return RenderedPage(Image.new("RGB", size, "white"), size)

    jobs = [StreamPage((0, index), render) for index in range(10)]
    rules = _rules(window=1, render_ahead=3, render_ahead_pixels=30_000, timeout_s=0.3)
    with pytest.raises(ApiError):  # the engine never answers: what was rendered meanwhile is what is held
        PageStream(SilentEngine(), Admission(8), rules, lambda: False).run(jobs)
    assert len(rendered) == 1 + ahead  # the page at the engine, and those waiting for it


def test_a_client_that_hangs_up_stops_the_stream_and_frees_its_slots():
    engine, admission = SilentEngine(), Admission(8)
    asked = []

    def gone() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(ClientGone):
        PageStream(engine, admission, _rules(), gone).run(_pages(10))
    assert all(future.cancelled() for future in engine.futures)
    assert admission.in_flight == 0


def test_a_request_that_cannot_send_its_first_page_is_refused_whole():
    admission = Admission(2)
    assert admission.try_take()
    assert admission.try_take()
    with pytest.raises(ApiError) as caught:
        PageStream(FakeEngine(), admission, _rules(), lambda: False).run(_pages(3))
    assert _code(caught) == (503, "overloaded")
    assert admission.in_flight == 2  # the others' slots, untouched


def test_a_started_request_goes_on_with_the_slots_it_gets():
    admission = Admission(3)
    assert admission.try_take()
    assert admission.try_take()  # two of three slots are other requests'
    engine = CountingEngine(admission)
    outcomes = PageStream(engine, admission, _rules(window=4), lambda: False).run(_pages(5))
    assert len(outcomes) == 5
    assert all(outcome.reading is not None for outcome in outcomes.values())
    assert max(engine.slots_held) == 3  # never past the bound: this request had one slot, handed from page to page
    assert admission.in_flight == 2


def test_an_engine_that_is_down_is_503_engine_unavailable():
    engine = FakeEngine(fail_with=EngineUnavailable("connection refused"))
    admission = Admission(4)
    with pytest.raises(ApiError) as caught:
        PageStream(engine, admission, _rules(), lambda: False).run(_pages(3))
    assert _code(caught) == (503, "engine_unavailable")
    assert admission.in_flight == 0


class PickyEngine(FakeEngine):
    """Has no room in its context for the second page sent."""

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        future = super().submit(request)
        if len(self.requests) == 2:
            future = concurrent.futures.Future()
            future.set_exception(PromptTooLong("The prompt and image take 9000 tokens"))
        return future


def test_a_page_without_room_in_the_context_fails_alone(make_client):
    body = _post(make_client(engine=PickyEngine()), [("doc.pdf", make_pdf(3))]).get_json()
    assert [page["status"] for page in body["pages"]] == ["ok", "failed", "ok"]
    assert body["pages"][1]["code"] == "prompt_too_long_for_context"
    assert body["pages_failed"] == 1


def test_waiting_for_the_engine_polls_and_does_not_spin():
    engine, admission = SilentEngine(), Admission(8)
    asked: list[float] = []

    def gone_after_a_second() -> bool:
        asked.append(time.monotonic())
        return asked[-1] - asked[0] > 1.0

    with pytest.raises(ClientGone):  # every page sent, all rendered: nothing to do but wait for answers
        PageStream(engine, admission, _rules(window=4), gone_after_a_second).run(_pages(4))
    # One look every POLL_S (0.2 s) while waiting, not thousands: the stream sleeps on the engine's futures.
    assert len(asked) < 20
