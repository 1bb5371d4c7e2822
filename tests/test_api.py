"""The HTTP contract with a fake engine: response shapes, every documented error, upload clean-up."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import threading
import time
from pathlib import Path

import pytest
from urllib3 import encode_multipart_formdata

from ocr_api.engines import EngineOutput, EngineRequest, PromptTooLong
from ocr_dev.inputs import make_pdf, png_bytes
from tests.conftest import CORPUS
from tests.fakes import FakeEngine


def _file(data: bytes, name: str = "scan.png") -> tuple[str, bytes]:
    return name, data


def _post(client, path="/ocr", files=None, field="file", **form):
    """POST a multipart body encoded the way HTTP clients (urllib3, under requests) encode it."""
    fields: list[tuple[str, object]] = list(form.items())
    if files is not None:
        fields += [(field, part) for part in (files if isinstance(files, list) else [files])]
    body, content_type = encode_multipart_formdata(fields)
    return client.post(path, data=body, content_type=content_type)


def _assert_error(response, status: int, code: str):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"error", "code"}
    assert body["code"] == code
    assert body["error"]
    assert "Traceback" not in body["error"]


# --- health and readiness ---


def test_health_keeps_the_original_fields_and_adds_the_engine(client):
    body = client.get("/health").get_json()
    assert body["status"] == "healthy"
    assert body["service"] == "DeepSeek-OCR API"
    assert "T" in body["timestamp"]
    assert (body["engine"], body["model"], body["model_loaded"]) == ("fake", "fake/deepseek-ocr-2", True)


def test_ready_is_200_when_the_engine_can_serve(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ready"


def test_ready_is_503_when_the_engine_is_not_ready_and_health_still_answers(make_client):
    client = make_client(engine=FakeEngine(ready=False))
    _assert_error(client.get("/ready"), 503, "engine_not_ready")
    assert client.get("/ready").headers["Retry-After"]
    assert client.get("/health").status_code == 200


def test_ocr_is_503_when_the_engine_is_not_ready(make_client):
    client = make_client(engine=FakeEngine(ready=False))
    response = _post(client, files=_file(png_bytes()))
    _assert_error(response, 503, "engine_not_ready")
    assert response.headers["Retry-After"]


# --- /ocr ---


def test_ocr_returns_the_original_fields_and_the_new_ones(client, fake_engine):
    response = _post(client, files=_file(png_bytes((64, 48)), "page-1.png"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["text"] == "<|ref|>text<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>\nimage 64x48"
    assert body["prompt"] == "<image>\nFree OCR."
    assert body["image_path"].endswith(".png")
    assert "page-1" not in body["image_path"]
    assert body["filename"] == "page-1.png"
    assert body["finish_reason"] == "stop"
    assert body["truncated"] is False
    assert body["usage"] == {"prompt_tokens": 300, "completion_tokens": 12, "total_tokens": 312}
    assert body["guard"] == {"ngram_size": 20, "window_size": 90, "whitelist_token_ids": [128821, 128822]}
    assert (body["engine"], body["model"]) == ("fake", "fake/deepseek-ocr-2")
    assert body["image"] == {"width": 64, "height": 48, "format": "PNG", "mode": "RGB", "frames": 1}
    assert set(body["timing"]) == {"preparation_ms", "inference_ms", "total_ms"}
    assert body["max_tokens"] == 64
    assert len(fake_engine.requests) == 1


def test_prompt_field_with_literal_backslash_n(client, fake_engine):
    body = _post(client, files=_file(png_bytes()), prompt=r"<image>\n<|grounding|>OCR this image.").get_json()
    assert body["prompt"] == "<image>\n<|grounding|>OCR this image."
    assert fake_engine.requests[0].prompt == "<image>\n<|grounding|>OCR this image."


def test_task_field_selects_a_preset(client):
    body = _post(client, files=_file(png_bytes()), task="locate", phrase="Total").get_json()
    assert body["prompt"] == "<image>\nLocate <|ref|>Total<|/ref|> in the image."
    assert body["task"] == "locate"


def test_max_tokens_field_and_guard_settings_reach_the_engine(make_client, fake_engine):
    client = make_client(ngram_size=30, ngram_window=50)
    _post(client, files=_file(png_bytes()), max_tokens="7")
    request = fake_engine.requests[0]
    assert (request.max_tokens, request.guard.ngram_size, request.guard.window_size) == (7, 30, 50)
    assert request.guard.whitelist_token_ids == fake_engine.whitelist_token_ids  # the engine's, in the request


def test_mode_field_reaches_the_engine(client, fake_engine):
    assert _post(client, files=_file(png_bytes()), mode="base").status_code == 200
    assert _post(client, files=_file(png_bytes())).status_code == 200
    assert [request.mode for request in fake_engine.requests] == ["base", "gundam"]


def test_image_reaches_the_engine_upright_and_rgb(client, fake_engine):
    if not (CORPUS / "images").exists():
        pytest.skip("no corpus")
    data = (CORPUS / "images" / "pil123rgba.png").read_bytes()
    assert _post(client, files=_file(data)).status_code == 200
    image = fake_engine.requests[0].image
    assert (image.mode, image.size) == ("RGB", (162, 150))


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"prompt": "x" * 3000}, "prompt_too_long"),
        ({"prompt": "Free OCR.", "task": "free"}, "conflicting_fields"),
        ({"task": "poem"}, "unknown_task"),
        ({"task": "locate"}, "missing_phrase"),
        ({"max_tokens": "lots"}, "invalid_max_tokens"),
        ({"max_tokens": "0"}, "invalid_max_tokens"),
        ({"max_tokens": "65"}, "invalid_max_tokens"),
        ({"prompt": "a <image> in the middle"}, "invalid_prompt"),
        ({"mode": "huge"}, "unknown_mode"),
    ],
)
def test_invalid_fields_are_400(client, form, code):
    _assert_error(_post(client, files=_file(png_bytes()), **form), 400, code)


@pytest.mark.parametrize("path", ["/ocr", "/ocr/batch"])
def test_an_option_sent_twice_is_400_duplicate_field(client, fake_engine, path):
    field = "file" if path == "/ocr" else "files"
    body, content_type = encode_multipart_formdata([("task", "ocr"), ("task", "markdown"), (field, _file(png_bytes()))])
    response = client.post(path, data=body, content_type=content_type)
    _assert_error(response, 400, "duplicate_field")
    assert "'task'" in response.get_json()["error"]
    assert fake_engine.requests == []


def test_missing_file_is_400_and_names_the_field(client):
    response = _post(client, files=_file(png_bytes()), field="image")
    _assert_error(response, 400, "missing_file")
    assert "'file'" in response.get_json()["error"]
    assert "image" in response.get_json()["error"]


def test_a_body_that_is_neither_a_form_nor_json_is_415_and_an_empty_one_400(client):
    text_body = client.post("/ocr", data=b"file=x", content_type="text/plain")
    _assert_error(text_body, 415, "not_multipart")
    assert "text/plain" in text_body.get_json()["error"]
    assert "application/json" in text_body.get_json()["error"]  # the other way in is named
    raw_image = client.post("/ocr/batch", data=png_bytes(), content_type="image/png")
    _assert_error(raw_image, 415, "not_multipart")
    _assert_error(client.post("/ocr"), 400, "missing_file")


def test_two_files_on_ocr_is_400(client):
    files = [_file(png_bytes(), "a.png"), _file(png_bytes(), "b.png")]
    _assert_error(_post(client, files=files), 400, "too_many_files")


def test_empty_file_is_400(client):
    _assert_error(_post(client, files=_file(b"", "empty.png")), 400, "empty_file")


def test_blank_browser_file_input_counts_as_no_file(client):
    _assert_error(_post(client, files=_file(b"", "")), 400, "missing_file")


def test_unsupported_type_is_415_whatever_the_name(client):
    _assert_error(_post(client, files=_file(b"<html></html>", "photo.jpg")), 415, "unsupported_media_type")


def test_the_bytes_decide_a_pdf_named_png_is_read_as_a_pdf(client):
    _assert_error(_post(client, files=_file(b"%PDF-1.7\n%fake", "scan.png")), 422, "corrupt_pdf")


def test_corrupt_image_is_422(client):
    _assert_error(_post(client, files=_file(png_bytes()[:40])), 422, "corrupt_image")


def test_upload_over_the_limit_is_413(make_client, uploads_dir):
    client = make_client(max_upload_mb=1)
    _assert_error(_post(client, files=_file(b"\x89PNG\r\n\x1a\n" + b"0" * (1024 * 1024 + 1))), 413, "payload_too_large")
    assert not uploads_dir.exists() or not any(uploads_dir.iterdir())


def test_too_many_form_parts_is_413(client):
    form = {f"field{i}": "x" for i in range(1001)}
    _assert_error(_post(client, files=_file(png_bytes()), **form), 413, "payload_too_large")


def test_huge_text_field_is_413(client):
    _assert_error(_post(client, files=_file(png_bytes()), prompt="x" * 600_000), 413, "payload_too_large")


def test_unknown_path_is_404_json(client):
    _assert_error(client.get("/nope"), 404, "not_found")


def test_wrong_method_is_405_json_with_allow(client):
    response = client.get("/ocr")
    _assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_engine_crash_is_500_json_without_details(make_client, caplog):
    client = make_client(engine=FakeEngine(fail_with=RuntimeError("CUDA error: secret detail")))
    response = _post(client, files=_file(png_bytes()))
    _assert_error(response, 500, "inference_failed")
    assert "secret detail" not in response.get_data(as_text=True)
    assert "secret detail" in caplog.text


def test_prompt_longer_than_the_context_is_422(make_client):
    client = make_client(engine=FakeEngine(fail_with=PromptTooLong("no room")))
    _assert_error(_post(client, files=_file(png_bytes())), 422, "prompt_too_long_for_context")


def test_unexpected_error_in_a_view_is_500_json(make_client, monkeypatch):
    client = make_client()
    monkeypatch.setattr("ocr_api.service.OcrService.describe", lambda self: 1 / 0)
    _assert_error(client.get("/health"), 500, "internal_error")


# --- /ocr/batch ---


def test_batch_keeps_upload_order_and_sends_one_engine_batch(client, fake_engine):
    sizes = [(40, 30), (50, 30), (60, 30)]
    files = [_file(png_bytes(size), f"p{i}.png") for i, size in enumerate(sizes)]
    body = _post(client, "/ocr/batch", files=files, field="files", task="markdown").get_json()
    assert body["total"] == 3
    assert (body["succeeded"], body["failed"]) == (3, 0)
    assert [r["filename"] for r in body["results"]] == ["p0.png", "p1.png", "p2.png"]
    assert [r["text"].rsplit(" ", 1)[1] for r in body["results"]] == ["40x30", "50x30", "60x30"]
    assert all(r["prompt"].endswith("Convert the document to markdown.") for r in body["results"])
    assert len(fake_engine.requests) == 3


def test_one_bad_file_is_an_error_entry_not_a_failed_batch(client, fake_engine):
    files = [_file(png_bytes(), "good.png"), _file(b"GIF89a-broken", "bad.gif"), _file(b"text", "notes.txt")]
    response = _post(client, "/ocr/batch", files=files, field="files")
    assert response.status_code == 200
    body = response.get_json()
    assert (body["total"], body["succeeded"], body["failed"]) == (3, 1, 2)
    good, bad, text = body["results"]
    assert good["filename"] == "good.png"
    assert "text" in good
    # One meaning and one type per field: status is a page's ("ok", ..., "failed"), http_status the file's alone.
    assert good["status"] == "ok"
    assert bad == {"filename": "bad.gif", "status": "failed", "http_status": 422, "text": "", "code": "corrupt_image",
                   "error": bad["error"]}  # fmt: skip
    assert (text["status"], text["http_status"], text["code"]) == ("failed", 415, "unsupported_media_type")
    assert {type(entry["status"]) for entry in body["results"]} == {str}
    assert len(fake_engine.requests) == 1


def test_every_batch_entry_has_a_status_a_documents_the_worst_of_its_pages(make_client):
    class CutsPageTwoShort(FakeEngine):
        def answer(self, request: EngineRequest) -> EngineOutput:
            output = super().answer(request)
            if len(self.requests) == 3:  # the image is the first request, the PDF's pages the next
                return EngineOutput(output.text, "length", 300, request.max_tokens, request.max_tokens, request.guard)
            return output

    client = make_client(CutsPageTwoShort(), runaway_retries=0)  # a runaway is not sent again
    files = [_file(png_bytes(), "p1.png"), _file(make_pdf(3), "report.pdf"), _file(b"text", "notes.txt")]
    body = _post(client, "/ocr/batch", files=files, field="files").get_json()
    image, document, text = body["results"]
    assert (image["status"], text["status"]) == ("ok", "failed")
    assert [page["status"] for page in document["pages"]] == ["ok", "truncated", "ok"]
    assert (document["status"], document["pages_truncated"]) == ("truncated", 1)
    alone = _post(client, "/ocr", files=_file(make_pdf(2), "two.pdf")).get_json()
    assert alone["status"] == "ok"


def test_batch_of_only_bad_files_never_calls_the_engine(client, fake_engine):
    body = _post(client, "/ocr/batch", files=[_file(b"nope", "a.txt")], field="files").get_json()
    assert body["failed"] == 1
    assert fake_engine.requests == []


def test_batch_needs_the_files_field(client):
    _assert_error(_post(client, "/ocr/batch", files=_file(png_bytes()), field="file"), 400, "missing_file")


def test_batch_over_the_file_limit_is_400(client):
    files = [_file(png_bytes(), f"{i}.png") for i in range(9)]
    _assert_error(_post(client, "/ocr/batch", files=files, field="files"), 400, "too_many_files")


# --- uploads ---


def test_uploads_are_removed_after_success_and_failure(make_client, uploads_dir):
    client = make_client()
    assert _post(client, files=_file(png_bytes())).status_code == 200
    assert _post(client, files=_file(png_bytes()[:60])).status_code == 422
    files = [_file(png_bytes(), "a.png"), _file(b"GIF89a", "b.gif")]
    assert _post(client, "/ocr/batch", files=files, field="files").status_code == 200
    crashing = make_client(engine=FakeEngine(fail_with=RuntimeError("boom")))
    assert _post(crashing, files=_file(png_bytes())).status_code == 500
    assert list(uploads_dir.iterdir()) == []


def test_uploads_are_kept_when_retention_is_on(make_client, uploads_dir):
    client = make_client(keep_uploads=True)
    body = _post(client, files=_file(png_bytes(), "../../etc/passwd")).get_json()
    stored = Path(body["image_path"])
    assert stored.parent == uploads_dir
    assert stored.read_bytes() == png_bytes()
    assert "passwd" not in stored.name


def test_client_filename_is_echoed_cleaned_and_never_a_path(make_client, uploads_dir):
    client = make_client(keep_uploads=True)
    name = "../evil\x00name\n\x1b[31m\t" + "x" * 10_000
    body = _post(client, files=_file(png_bytes(), name)).get_json()
    assert "\x00" not in body["filename"]
    assert "\x1b" not in body["filename"]
    assert "\n" not in body["filename"]
    assert len(body["filename"]) == 255
    assert [p.name for p in uploads_dir.iterdir()] == [Path(body["image_path"]).name]


def test_concurrent_requests_get_distinct_stored_names(make_client, uploads_dir):
    client_factory = make_client
    paths: list[str] = []
    lock = threading.Lock()

    def send():
        client = client_factory(keep_uploads=True)
        for _ in range(5):
            path = _post(client, files=_file(png_bytes())).get_json()["image_path"]
            with lock:
                paths.append(path)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(paths) == 20
    assert len(set(paths)) == 20
    assert len(list(uploads_dir.iterdir())) == 20


def test_an_in_process_engine_that_dies_gives_503_then_recovers_when_it_is_back(make_client, fake_engine):
    from ocr_api.engines import EngineUnavailable

    client = make_client()
    fake_engine.fail_with, fake_engine.ready = EngineUnavailable("engine core died"), False
    response = _post(client, files=[_file(png_bytes(), "a.png")])
    _assert_error(response, 503, "engine_not_ready")
    assert client.get("/ready").status_code == 503
    assert client.get("/health").status_code == 200
    fake_engine.ready = True  # is_ready() said yes, but the call itself finds the engine gone
    _assert_error(_post(client, files=[_file(png_bytes(), "a.png")]), 503, "engine_unavailable")
    fake_engine.fail_with = None  # back
    assert client.get("/ready").status_code == 200
    assert _post(client, files=[_file(png_bytes(), "a.png")]).status_code == 200


def test_one_input_that_breaks_the_engine_does_not_poison_the_next(make_client, fake_engine):
    client = make_client()
    fake_engine.fail_with = RuntimeError("CUDA error: an illegal memory access")
    _assert_error(_post(client, files=[_file(png_bytes((8, 512)), "thin.png")]), 500, "inference_failed")
    fake_engine.fail_with = None
    assert _post(client, files=[_file(png_bytes(), "a.png")]).status_code == 200


def test_past_the_admission_bound_a_request_is_refused_at_once(make_client, fake_engine):
    client = make_client(max_pages_in_flight=4)
    service = client.application.extensions["ocr_service"]
    for _ in range(4):  # four pages of other requests at the engine
        assert service.admission.try_take()
    response = _post(client, files=[_file(png_bytes(), "a.png")])
    _assert_error(response, 503, "overloaded")
    assert response.headers["Retry-After"] == "5"
    assert "4 of 4 pages" in response.get_json()["error"]
    assert client.get("/health").get_json()["pages_in_flight"] == 4
    assert fake_engine.requests == []  # refused before anything reached the engine
    service.admission.release(4)
    assert _post(client, files=[_file(png_bytes(), "a.png")]).status_code == 200
    assert service.admission.in_flight == 0


class HoldingEngine(FakeEngine):
    """Answers nothing until the test says so; a request waits with its pages at the engine."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[concurrent.futures.Future, EngineRequest]] = []
        self.arrived = threading.Semaphore(0)

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        future: concurrent.futures.Future[EngineOutput] = concurrent.futures.Future()
        self.held.append((future, request))
        self.arrived.release()
        return future

    def answer_all(self) -> None:
        while self.held:
            future, request = self.held.pop(0)
            future.set_result(self.answer(request))


def test_the_bound_counts_pages_at_the_engine_and_a_started_request_goes_on(make_client):
    engine = HoldingEngine()
    client = make_client(engine=engine, max_pages_in_flight=4, engine_batch_pages=4)
    service = client.application.extensions["ocr_service"]
    answers: list = []
    document = threading.Thread(
        target=lambda: answers.append(_post(client, files=[_file(make_pdf(10, size=(200, 200)), "ten.pdf")]))
    )
    document.start()
    for _ in range(4):
        assert engine.arrived.acquire(timeout=10)
    assert service.admission.in_flight == 4  # its first four pages, and no more: the window is full
    # Another request meanwhile is refused at once: the process's bound counts the pages at the engine.
    _assert_error(_post(client, files=[_file(png_bytes(), "a.png")]), 503, "overloaded")
    while document.is_alive() or engine.held:
        engine.answer_all()
        time.sleep(0.01)
    document.join()
    assert answers[0].status_code == 200
    assert len(answers[0].get_json()["pages"]) == 10
    assert service.admission.in_flight == 0


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"image": "AAAA",, }', "The body is not valid JSON (line 1, column 18)."),
        (b'{\n  "image": \n}', "The body is not valid JSON (line 3, column 1)."),
        ('{"image": "AAAA"}'.encode("utf-16"), "The body is not UTF-8 (a byte at 0 is not); send JSON in UTF-8."),
        (b'{"image": "AAAA", "max_tokens": NaN}', "The body is not valid JSON: NaN is not a JSON number."),
    ],
)
def test_invalid_json_says_where_in_its_own_words(client, body, says):
    response = client.post("/ocr", data=body, content_type="application/json")
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_json")
    assert response.get_json()["error"] == says  # not the parser's own text ("Expecting value: ...")


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"9" * 5001, b"-" + b"9" * 5001, b"100.5"])
def test_numbers_beyond_a_fields_range_get_its_own_message(client, number):
    image = base64.b64encode(png_bytes((64, 48)))
    response = client.post("/ocr", data=b'{"image": "' + image + b'", "max_tokens": ' + number + b"}",
                           content_type="application/json")  # fmt: skip
    body = response.get_json()
    if number == b"100.5":
        assert (response.status_code, body["code"]) == (400, "invalid_field_type")
    else:
        assert (response.status_code, body) == (400, {"error": "max_tokens must be between 1 and 64.",
                                                      "code": "invalid_max_tokens"})  # fmt: skip


@pytest.mark.parametrize("value", ["١٠", "1_000", "²", " 12 ", "12a"])
def test_only_ascii_digits_are_numbers_in_fields(client, value):
    response = client.post("/ocr", data={"file": (io.BytesIO(png_bytes((64, 48))), "p.png"), "max_tokens": value})
    if value == " 12 ":
        assert response.status_code == 200
    else:
        assert (response.status_code, response.get_json()["code"]) == (400, "invalid_max_tokens")
    pages = client.post("/ocr", data={"file": (io.BytesIO(png_bytes((64, 48))), "p.png"), "pages": value})
    if value != " 12 ":
        assert (pages.status_code, pages.get_json()["code"]) == (400, "invalid_pages")


def test_a_doubled_slash_is_a_json_404_not_an_html_redirect(client):
    for path, shape in (("/v1//models", "openai"), ("/ocr//batch", "plain"), ("/jobs//x", "plain")):
        answer = client.get(path)
        assert (answer.status_code, answer.mimetype) == (404, "application/json"), path
        body = answer.get_json()
        assert (body["error"]["code"] if shape == "openai" else body["code"]) == "not_found", path
