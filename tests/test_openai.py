"""The OpenAI-compatible routes, with the official ``openai`` package as the client, over real HTTP.

The service runs in-process on a loopback port with the remote engine on the stand-in (ocr_dev/stand_in_engine.py,
no model: it proves the wiring, streaming included, not recognition). Clients are written exactly as
../shared/reference/clients.md says each kind sends its requests.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests
from PIL import Image

from ocr_api.engines import build_engine
from ocr_api.http.app import create_app
from ocr_api.http.chat import served_names
from ocr_api.results import PAGE_SEPARATOR
from ocr_api.service import OcrService
from ocr_api.settings import Settings
from ocr_dev.inputs import data_url, make_pdf, png_bytes
from ocr_dev.servers import metric, serve_app, stand_in_engine, wait_until

KEY = "test-key-0123456789abcdef"
TEMPLATES = [  # the hosted API's six (system content)
    "<image>\nFree OCR.",
    "<image>\n<|grounding|>Convert the document to markdown.",
    "<image>\n<|grounding|>OCR this image.",
    "<image>\nParse the figure.",
    "<image>\nDescribe this image in detail.",
    "<image>\nLocate <|ref|>the title<|/ref|> in the image.",
]


@dataclass
class Served:
    url: str  # the service
    engine_url: str  # the stand-in behind it
    service: OcrService

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(api_key=key, base_url=f"{self.url}/v1", max_retries=0, timeout=30)

    def last_engine_request(self) -> dict:
        return requests.get(f"{self.engine_url}/stand-in/last", timeout=5).json()


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    with stand_in_engine(step_ms=20, tokens_per_page=25) as url:  # 0.5 s a page
        yield url


@contextlib.contextmanager
def _serve(tmp_path: Path, engine_url: str, **overrides) -> Iterator[Served]:
    settings = Settings(
        engine="remote",
        engine_url=engine_url,
        upload_folder=str(tmp_path / "uploads"),
        jobs_dir=str(tmp_path / "jobs"),
        api_keys=KEY,
        max_tokens=64,
        **overrides,
    )
    service = OcrService(settings, build_engine(settings))
    service.start()
    with serve_app(create_app(service=service)) as url:
        yield Served(url, engine_url, service)
    service.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, stand_in) -> Iterator[Served]:
    with _serve(tmp_path_factory.mktemp("openai"), stand_in) as served:
        yield served


def ocr2_messages(url: str, instruction: str = "<|grounding|>Convert the document to markdown.") -> list[dict]:
    """What a DeepSeek-OCR-2 server's clients send: the image and the instruction, without <image>, as the user."""
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": instruction}],
        }
    ]


def hosted_messages(url: str, template: str = "<image>\nFree OCR.") -> list[dict]:
    """What the hosted API's clients send: the whole prompt as the system, the image alone as the user."""
    return [
        {"role": "system", "content": template},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]},
    ]


def test_models_lists_the_served_model_and_its_aliases(served):
    models = served.client().models.list()
    ids = [model.id for model in models.data]
    assert ids[0] == "stand-in/deepseek-ocr-2"  # what the engine serves
    assert {"deepseek-ocr", "deepseek-ai/DeepSeek-OCR-2", "deepseek-ocr-2"} <= set(ids)
    assert ids == served_names("stand-in/deepseek-ocr-2", "deepseek-ocr-2")


def test_a_completion_as_an_ocr2_servers_client_sends_it(served):
    response = served.client().chat.completions.create(
        model="deepseek-ai/DeepSeek-OCR-2",
        messages=ocr2_messages(data_url(png_bytes((64, 48)))),
        max_tokens=8192,  # what those clients send; lowered to MAX_TOKENS (64 here), not refused
        temperature=0.7,  # ignored: decoding is greedy
        extra_body={"vllm_xargs": {"ngram_size": 0}, "skip_special_tokens": True},  # replaced by the service's
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "stand-in page text (25 tokens)"
    assert choice.finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (300, 25)
    assert response.usage.total_tokens == 325
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    sent = served.last_engine_request()
    assert sent["messages"][0]["content"][1]["text"] == "<image>\n<|grounding|>Convert the document to markdown."
    assert (sent["temperature"], sent["max_tokens"], sent["skip_special_tokens"]) == (0.0, 64, False)
    assert sent["vllm_xargs"] == {"ngram_size": 20, "window_size": 90, "whitelist_token_ids": [128821, 128822]}


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_hosted_apis_templates_work_as_written(served, template):
    response = served.client().chat.completions.create(
        model="DeepSeek-OCR", messages=hosted_messages(data_url(png_bytes((40, 40))), template)
    )
    assert response.choices[0].message.content.startswith("stand-in page text")
    assert served.last_engine_request()["messages"][0]["content"][1]["text"] == template  # <image> once, in front


def test_without_an_instruction_the_default_prompt_is_used(served):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png_bytes())}}]}]
    served.client().chat.completions.create(model="deepseek-ocr", messages=messages)
    assert served.last_engine_request()["messages"][0]["content"][1]["text"] == "<image>\nFree OCR."


def test_a_streamed_completion_arrives_in_pieces_that_add_up_to_the_whole(served):
    client = served.client()
    messages = ocr2_messages(data_url(png_bytes((64, 48))))
    whole = client.chat.completions.create(model="deepseek-ocr", messages=messages).choices[0].message.content
    done_before = metric(served.engine_url, "stand_in:pages_done_total")
    stream = client.chat.completions.create(
        model="deepseek-ocr", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    pieces, reasons, usage, done_at_first_piece = [], [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                if done_at_first_piece is None:  # the page is still being decoded when its first words arrive
                    done_at_first_piece = metric(served.engine_url, "stand_in:pages_done_total")
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert done_at_first_piece == done_before
    assert len(pieces) > 1
    assert "".join(pieces) == whole
    assert reasons == ["stop"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (300, 25)


def test_a_pdf_is_every_page_joined_by_the_separator_streamed_or_not(served):
    client = served.client()
    pdf = data_url(make_pdf(3, size=(200, 260)), "application/pdf")
    messages = hosted_messages(pdf)
    whole = client.chat.completions.create(model="deepseek-ocr", messages=messages).choices[0].message.content
    assert whole.split(PAGE_SEPARATOR) == ["stand-in page text (25 tokens)"] * 3
    stream = client.chat.completions.create(model="deepseek-ocr", messages=messages, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == whole
    picked = client.chat.completions.create(model="deepseek-ocr", messages=messages, extra_body={"ocr": {"pages": "2"}})
    assert picked.choices[0].message.content == "stand-in page text (25 tokens)"


def test_the_structured_extension_carries_the_ocr_result(served):
    response = served.client().chat.completions.create(
        model="deepseek-ocr",
        messages=ocr2_messages(data_url(png_bytes((64, 48)))),
        extra_body={"ocr": {"structured": True}},
    )
    ocr = response.model_extra["ocr"]  # a field the SDK keeps but does not know
    assert ocr["text"] == response.choices[0].message.content
    assert (ocr["status"], ocr["engine"], ocr["image"]["width"]) == ("ok", "remote", 64)
    assert {"markdown", "blocks", "raw_output", "usage"} <= set(ocr)
    plain = served.client().chat.completions.create(model="deepseek-ocr", messages=ocr2_messages(data_url(png_bytes())))
    assert "ocr" not in (plain.model_extra or {})


def test_the_structured_extension_rides_on_the_streams_last_chunk(served):
    stream = served.client().chat.completions.create(
        model="deepseek-ocr",
        messages=ocr2_messages(data_url(png_bytes())),
        stream=True,
        extra_body={"ocr": {"structured": True}},
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["ocr"]["status"] == "ok"


def test_a_token_budget_that_runs_out_says_length(served):
    response = served.client().chat.completions.create(
        model="deepseek-ocr", messages=ocr2_messages(data_url(png_bytes())), max_tokens=5
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5


def test_a_bad_key_raises_authentication_error(served):
    with pytest.raises(openai.AuthenticationError) as caught:
        served.client("wrong-key-0123456789abcdef").chat.completions.create(
            model="deepseek-ocr", messages=ocr2_messages(data_url(png_bytes()))
        )
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.body["type"] == "authentication_error"


def test_a_bad_image_raises_the_sdks_own_errors(served):
    client = served.client()
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(model="deepseek-ocr", messages=ocr2_messages(data_url(png_bytes()[:40])))
    assert caught.value.code == "corrupt_image"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="deepseek-ocr", messages=ocr2_messages("data:image/png;base64,@@"))
    assert caught.value.code == "invalid_base64"
    # Not an image: 415 on /ocr, but OpenAI's API answers 400 for an invalid image, and so does /v1/ (code unchanged).
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="deepseek-ocr", messages=ocr2_messages(data_url(b"<html></html>")))
    assert (caught.value.status_code, caught.value.code) == (400, "unsupported_media_type")
    assert caught.value.body["type"] == "invalid_request_error"


def test_an_unknown_model_raises_not_found(served):
    with pytest.raises(openai.NotFoundError) as caught:
        served.client().chat.completions.create(model="gpt-4o", messages=ocr2_messages(data_url(png_bytes())))
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert "stand-in/deepseek-ocr-2" in caught.value.message


def test_an_overloaded_service_raises_the_sdks_server_error_with_retry_after(served):
    admission = served.service.admission
    taken = 0
    while admission.try_take():  # every slot of the process's bound held, as by other requests
        taken += 1
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            served.client().chat.completions.create(model="deepseek-ocr", messages=ocr2_messages(data_url(png_bytes())))
        assert (caught.value.status_code, caught.value.code) == (503, "overloaded")
        assert caught.value.response.headers["Retry-After"]
        with pytest.raises(openai.InternalServerError):  # a stream is refused before it starts, with its status
            served.client().chat.completions.create(
                model="deepseek-ocr", messages=ocr2_messages(data_url(png_bytes())), stream=True
            )
    finally:
        admission.release(taken)


def test_sampling_and_choices_it_cannot_honour_are_refused(served):
    client = served.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="deepseek-ocr", messages=ocr2_messages(data_url(png_bytes())), n=2)
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "n")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="deepseek-ocr", messages=ocr2_messages(data_url(png_bytes())), stop="#")
    assert caught.value.param == "stop"


def test_a_client_that_hangs_up_mid_stream_aborts_its_engine_request(tmp_path):
    with contextlib.ExitStack() as stack:
        slow_engine = stack.enter_context(stand_in_engine(step_ms=50, tokens_per_page=200))  # 10 s a page
        served = stack.enter_context(_serve(tmp_path, slow_engine))
        aborted = metric(slow_engine, "stand_in:aborted_total")
        stream = served.client().chat.completions.create(
            model="deepseek-ocr", messages=ocr2_messages(data_url(png_bytes())), stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # the first words: the page is being decoded
        stream.close()
        wait_until(lambda: metric(slow_engine, "stand_in:aborted_total") == aborted + 1, timeout_s=5)
        wait_until(lambda: served.service.admission.in_flight == 0, timeout_s=5)


def test_a_rate_limited_client_raises_rate_limit_error(tmp_path, stand_in):
    with _serve(tmp_path, stand_in, rate_limit="1/minute") as served:
        client = served.client()
        client.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            client.models.list()
        assert caught.value.body["type"] == "rate_limit_error"


# -- JSON on /ocr and /ocr/batch


def test_ocr_takes_json_with_the_same_fields_and_answer_as_the_form(client):
    image = png_bytes((64, 48))
    form = client.post(
        "/ocr", data={"file": (io.BytesIO(image), "a.png"), "task": "markdown", "max_tokens": "9"}
    ).get_json()
    as_json = client.post("/ocr", json={"image": base64.b64encode(image).decode(), "task": "markdown", "max_tokens": 9})
    assert as_json.status_code == 200, as_json.get_json()
    body = as_json.get_json()
    for volatile in ("image_path", "timing", "filename"):
        form.pop(volatile), body.pop(volatile)
    assert body == form
    api_guide = client.post("/ocr", json={"image": data_url(image), "prompt": "Free OCR.", "temperature": 0})
    assert api_guide.get_json()["prompt"] == "<image>\nFree OCR."


def test_ocr_batch_takes_json_images_in_order(client):
    images = [data_url(png_bytes((40 + i, 40))) for i in range(3)]
    response = client.post("/ocr/batch", json={"images": images, "figures": False})
    body = response.get_json()
    assert (response.status_code, body["total"], body["succeeded"]) == (200, 3, 3)
    assert [result["text"].split()[-1] for result in body["results"]] == ["40x40", "41x40", "42x40"]
    assert [result["filename"] for result in body["results"]] == ["images[0]", "images[1]", "images[2]"]


def test_json_images_count_against_the_upload_limit_together(make_client):
    client = make_client(max_upload_mb=1)
    noise = Image.frombytes("RGB", (300, 300), bytes(range(256)) * 1055)
    buffer = io.BytesIO()
    noise.save(buffer, "BMP")  # about 270 kB each, 360 kB as base64: four fit the body, not the decoded limit
    body = {"images": [base64.b64encode(buffer.getvalue()).decode()] * 4}
    response = client.post("/ocr/batch", json=body)
    assert (response.status_code, response.get_json()["code"]) == (413, "payload_too_large")


def test_json_fields_of_the_wrong_type_name_the_field(client):
    response = client.post("/ocr", json={"image": data_url(png_bytes()), "figures": "maybe"})
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_flag")
    response = client.post("/ocr", json={"image": data_url(png_bytes()), "pages": 3})
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_field_type")
    assert "'pages'" in response.get_json()["error"]
