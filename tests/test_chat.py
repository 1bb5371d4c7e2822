"""ocr_api/chat.py and chat_stream.py as plain functions: where the prompt comes from, which pieces go out when."""

from __future__ import annotations

import json

import pytest

from ocr_api.engines.base import EngineOutput
from ocr_api.errors import BadRequest, Overloaded
from ocr_api.guard import GuardSettings
from ocr_api.http.chat import ChatRequest, Completion, parse_chat, served_names
from ocr_api.http.chat_stream import StreamedCompletion
from ocr_api.pipeline import PageOutcome
from ocr_api.reading import read_page
from ocr_api.results import PAGE_SEPARATOR, FileError, FileResult, FinishedPage

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def _chat(*messages: dict, **extra) -> ChatRequest:
    return parse_chat({"model": "deepseek-ocr", "messages": list(messages), **extra}, max_tokens_limit=8192)


def test_the_last_user_messages_text_is_the_prompt():
    chat = _chat({"role": "user", "content": [IMAGE, {"type": "text", "text": "Free OCR."}]})
    assert chat.prompt == "Free OCR."  # <image> is placed in front by the options, as for /ocr
    assert chat.image_url == IMAGE["image_url"]["url"]


def test_the_system_message_is_the_prompt_when_the_user_sends_only_the_image():
    chat = _chat({"role": "system", "content": "<image>\nParse the figure."}, {"role": "user", "content": [IMAGE]})
    assert chat.prompt == "<image>\nParse the figure."


def test_the_users_text_wins_over_a_system_message():
    chat = _chat(
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [IMAGE, {"type": "text", "text": "<|grounding|>OCR this image."}]},
    )
    assert chat.prompt == "<|grounding|>OCR this image."


def test_no_text_anywhere_leaves_the_default_prompt():
    assert _chat({"role": "user", "content": [IMAGE]}).prompt is None


def test_max_tokens_above_the_limit_is_lowered_and_the_newer_name_wins():
    assert _chat({"role": "user", "content": [IMAGE]}, max_tokens=100_000).max_tokens == 8192
    assert _chat({"role": "user", "content": [IMAGE]}, max_tokens=50, max_completion_tokens=20).max_tokens == 20


def test_an_image_outside_a_user_message_is_refused():
    with pytest.raises(BadRequest) as caught:
        _chat({"role": "system", "content": [IMAGE]})
    assert caught.value.code == "invalid_messages"


def test_served_names_put_the_id_first_and_match_the_documented_aliases():
    assert served_names("/models/DeepSeek-OCR-2", "deepseek-ocr-2") == [
        "/models/DeepSeek-OCR-2",
        "DeepSeek-OCR-2",
        "deepseek-ai/DeepSeek-OCR-2",
        "deepseek-community/DeepSeek-OCR-2",
        "deepseek-ocr",
    ]


# -- the stream


def _outcome(text: str) -> PageOutcome:
    output = EngineOutput(text, "stop", 300, 5, 64, GuardSettings(20, 90))
    return PageOutcome((10, 10), read_page(output, (10, 10)))


def _result(outcomes: list[PageOutcome]) -> FileResult:
    pages = tuple(FinishedPage(number, outcome) for number, outcome in enumerate(outcomes, 1))
    return FileResult("a.pdf", "", "<image>\nFree OCR.", None, {}, pages, True, "fake", "fake", {})


def _contents(events: list[str]) -> tuple[str, list[dict]]:
    payloads = [json.loads(event[6:]) for event in events if event.startswith("data: {")]
    text = "".join(choice["delta"].get("content", "") for payload in payloads for choice in payload["choices"])
    return text, payloads


def test_pages_finishing_out_of_order_are_written_in_page_order():
    outcomes = [_outcome("page one"), _outcome("page two"), _outcome("page three")]

    def run(listener, should_stop):
        listener.text((0, 2), "page ")  # page 3 starts first: held
        listener.text((0, 0), "pa")  # page 1 is being written: out at once
        listener.text((0, 1), "page two")
        listener.finished((0, 1), outcomes[1])
        listener.text((0, 2), "three")
        listener.finished((0, 2), outcomes[2])
        listener.text((0, 0), "ge o")
        listener.finished((0, 0), outcomes[0])  # "ne": what the engine held back comes with the end of the page
        return _result(outcomes)

    chat = ChatRequest("deepseek-ocr", "data:,", None, None, stream=True, include_usage=True)
    streamed = StreamedCompletion(run, Completion("deepseek-ocr"), chat, lambda: False)
    streamed.start()
    events = list(streamed.events())
    text, payloads = _contents(events)
    assert text == PAGE_SEPARATOR.join(["page one", "page two", "page three"])
    pieces = [choice["delta"].get("content") for payload in payloads for choice in payload["choices"]]
    assert pieces[:3] == ["", "pa", "ge o"]  # the role chunk, then page 1 live
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-1]["usage"] == {"prompt_tokens": 900, "completion_tokens": 15, "total_tokens": 915}
    assert events[-1] == "data: [DONE]\n\n"


def test_an_error_before_the_first_piece_is_raised_and_one_after_is_an_error_event():
    chat = ChatRequest("deepseek-ocr", "data:,", None, None, stream=True)

    def refused(listener, should_stop):
        raise Overloaded()

    with pytest.raises(Overloaded):
        StreamedCompletion(refused, Completion("m"), chat, lambda: False).start()

    def fails_later(listener, should_stop):
        listener.text((0, 0), "half a page")
        return FileError("a.png", Overloaded())

    streamed = StreamedCompletion(fails_later, Completion("m"), chat, lambda: False)
    streamed.start()
    events = list(streamed.events())
    assert json.loads(events[-2][6:])["error"]["code"] == "overloaded"
    assert events[-1] == "data: [DONE]\n\n"


def _subclasses(kind: type) -> list[type]:
    return [kind, *(sub for child in kind.__subclasses__() for sub in _subclasses(child))]


def test_every_client_error_under_v1_has_a_status_openais_api_uses(client):
    # Every error class is loaded: the app's modules (the fixture built it), the jobs' and outbound ones with it.
    from ocr_api.errors import ApiError, openai_status

    openai_statuses = {400, 401, 403, 404, 409, 413, 422, 429, 499}
    statuses = {kind.status for kind in _subclasses(ApiError)} | {405, 411, 414, 415, 431}
    assert {415, 405} <= statuses
    assert {status: openai_status(status) for status in statuses if 400 <= status < 500 and
            openai_status(status) not in openai_statuses} == {}  # fmt: skip
    assert openai_status(415) == 400
    # Over HTTP: a wrong method on a /v1/ route is a 400 in OpenAI's shape; elsewhere it stays 405.
    answer = client.get("/v1/chat/completions")
    assert (answer.status_code, answer.get_json()["error"]["code"]) == (400, "method_not_allowed")
    assert answer.headers["Allow"]
    assert client.get("/ocr").status_code == 405
