"""The remote engine against the stand-in OpenAI server: what travels, batching, and every failure's status.

The stand-in (ocr_dev/stand_in_engine.py) speaks the same endpoints as vLLM's server; the vLLM-backed tests
(tests/test_vllm.py) check the same engine against the real one.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import io
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator

import pytest
import requests
from PIL import Image

from ocr_api.http.app import create_app
from ocr_api.service import OcrService
from ocr_api.settings import Settings
from ocr_dev.inputs import png_bytes
from ocr_dev.servers import environment, free_port, metric, running, stand_in_engine, stop, wait_until
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    """A stand-in engine decoding 10 tokens a page at 50 ms a step."""
    with stand_in_engine(step_ms=50, tokens_per_page=10) as url:
        yield url


@pytest.fixture
def engine_url(stand_in: str) -> Iterator[str]:
    yield stand_in
    requests.post(f"{stand_in}/stand-in/mode", json={"mode": "normal"}, timeout=5)


def _mode(url: str, mode: str) -> None:
    requests.post(f"{url}/stand-in/mode", json={"mode": mode}, timeout=5).raise_for_status()


def _client(settings: Settings, url: str, **overrides):
    settings = settings.replace(engine="remote", engine_url=url, model_name="", **overrides)
    from ocr_api.engines import build_engine

    service = OcrService(settings, build_engine(settings))
    service.start()
    return create_app(service=service).test_client(), service


def _post(client, path="/ocr", field="file", count=1, **form):
    data = {**form, field: [(io.BytesIO(png_bytes((64 + i, 48))), f"p{i}.png") for i in range(count)]}
    return client.post(path, data=data, content_type="multipart/form-data")


def test_load_learns_model_context_and_whitelist(settings, engine_url):
    _, service = _client(settings, engine_url)
    engine = service.engine
    assert engine.model_id == "stand-in/deepseek-ocr-2"
    assert engine.profile.family == "deepseek-ocr-2"
    assert engine.whitelist_token_ids == {128821, 128822}
    assert service.is_ready()


def test_the_request_carries_image_prompt_guard_and_special_tokens(settings, engine_url):
    client, _ = _client(settings, engine_url)
    response = _post(client, task="markdown", max_tokens="7")
    assert response.status_code == 200, response.get_json()
    body = requests.get(f"{engine_url}/stand-in/last", timeout=5).json()
    assert body["skip_special_tokens"] is False
    assert body["temperature"] == 0.0
    assert body["max_tokens"] == 7
    assert body["vllm_xargs"] == {"ngram_size": 20, "window_size": 90, "whitelist_token_ids": [128821, 128822]}
    image_part, text_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": "<image>\n<|grounding|>Convert the document to markdown."}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")  # ENGINE_IMAGE_FORMAT=auto: a small page goes losslessly
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (64, 48)
    result = response.get_json()
    assert (result["finish_reason"], result["engine"], result["usage"]["completion_tokens"]) == ("length", "remote", 7)


def test_auto_chooses_the_encoding_by_the_pages_pixels(settings, engine_url):
    """Lossless up to 1 megapixel, JPEG at quality 95 up to 3.6, at quality 90 above (docs/QUALITY.md)."""
    client, _ = _client(settings, engine_url)
    coarsest = {}  # the largest step of each JPEG's luma quantisation table: smaller is finer
    for size, kind in (((1000, 1000), "png"), ((1500, 2000), "jpeg"), ((2480, 3508), "jpeg")):
        buffer = io.BytesIO()
        Image.new("RGB", size, "white").save(buffer, format="PNG")
        assert client.post("/ocr", data={"file": (io.BytesIO(buffer.getvalue()), "page.png")}).status_code == 200
        url = requests.get(f"{engine_url}/stand-in/last", timeout=5).json()["messages"][0]["content"][0]["image_url"]
        assert url["url"].startswith(f"data:image/{kind};base64,"), size
        sent = Image.open(io.BytesIO(base64.b64decode(url["url"].split(",", 1)[1])))
        assert sent.size == size  # PAGE_SIZE=full: the page whole
        if kind == "jpeg":
            coarsest[size] = max(sent.quantization[0])
    assert coarsest[(1500, 2000)] < coarsest[(2480, 3508)]  # quality 95 below 3.6 megapixels, 90 above


def test_png_sends_the_page_losslessly(settings, engine_url):
    client, _ = _client(settings, engine_url, engine_image_format="png")
    page = Image.effect_noise((64, 48), 64).convert("RGB")  # noise: what a lossy encoding would change
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    response = client.post("/ocr", data={"file": (io.BytesIO(buffer.getvalue()), "noise.png")})
    assert response.status_code == 200
    body = requests.get(f"{engine_url}/stand-in/last", timeout=5).json()
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).tobytes() == page.tobytes()


def test_a_batch_reaches_the_engine_at_once(settings, engine_url):
    client, _ = _client(settings, engine_url)
    before = metric(engine_url, "stand_in:max_running")
    response = _post(client, "/ocr/batch", field="files", count=4)
    assert response.status_code == 200
    body = response.get_json()
    assert [r["filename"] for r in body["results"]] == ["p0.png", "p1.png", "p2.png", "p3.png"]
    assert all(r["finish_reason"] == "stop" for r in body["results"])
    # Four pages of 0.5 s each were decoded side by side, not one after another.
    assert max(before, metric(engine_url, "stand_in:max_running")) >= 4


def test_modes_vllm_cannot_honour_are_refused_clearly(settings, engine_url):
    client, _ = _client(settings, engine_url)
    response = _post(client, mode="base")
    assert (response.status_code, response.get_json()["code"]) == (400, "mode_not_supported")
    assert "gundam" in response.get_json()["error"]
    assert _post(client, mode="gundam").status_code == 200


def test_prompt_too_long_for_the_engine_is_422(settings, engine_url):
    client, _ = _client(settings, engine_url)
    _mode(engine_url, "context_error")
    response = _post(client)
    assert (response.status_code, response.get_json()["code"]) == (422, "prompt_too_long_for_context")


def test_engine_error_with_a_healthy_engine_is_500(settings, engine_url):
    client, _ = _client(settings, engine_url)
    _mode(engine_url, "server_error")
    response = _post(client)
    assert (response.status_code, response.get_json()["code"]) == (500, "inference_failed")


def test_unhealthy_engine_is_503_and_recovers(settings, engine_url):
    client, service = _client(settings, engine_url)
    assert service.is_ready()  # healthy, and remembered for a second
    _mode(engine_url, "unhealthy")
    response = _post(client)  # the engine itself answers 503 mid-request
    assert (response.status_code, response.get_json()["code"]) == (503, "engine_unavailable")
    assert response.headers["Retry-After"]
    # That answer marks the engine down at once: readiness and new requests say so without asking it again.
    assert client.get("/ready").status_code == 503
    response = _post(client)
    assert (response.status_code, response.get_json()["code"]) == (503, "engine_not_ready")
    assert client.get("/health").status_code == 200
    _mode(engine_url, "normal")
    wait_until(lambda: client.get("/ready").status_code == 200, timeout_s=5)
    assert _post(client).status_code == 200


def test_one_requests_503_from_a_healthy_engine_leaves_the_service_ready(settings, engine_url):
    client, service = _client(settings, engine_url)
    _mode(engine_url, "refusing")  # completions 503, /health 200: busy with this one request, not down
    response = _post(client)
    assert (response.status_code, response.get_json()["code"]) == (503, "engine_unavailable")
    # Its health decided, not that one answer: every other client is still served at once.
    assert service.is_ready()
    assert client.get("/ready").status_code == 200
    _mode(engine_url, "normal")
    assert _post(client).status_code == 200


def test_unreachable_engine_is_503_not_500(settings):
    client, service = _client(settings, f"http://127.0.0.1:{free_port()}")
    assert not service.is_ready()
    response = client.get("/ready")
    assert response.status_code == 503
    response = _post(client)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert client.get("/health").get_json()["ready"] is False


def test_engine_dropping_mid_request_is_503(settings, engine_url):
    # A server that accepts the connection, then closes it without an answer, as a killed vLLM does.
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def drop_connections():
        # However many times the client tries; accept fails once the test shuts the listener down.
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.recv(65536)

    client, service = _client(settings, engine_url)
    assert service.is_ready()  # healthy, and remembered for a second
    service.engine.servers[0].url = f"http://127.0.0.1:{port}"  # so the request itself meets the dropping server
    dropper = threading.Thread(target=drop_connections, daemon=True)
    dropper.start()
    try:
        response = _post(client)
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (Linux), unlike close() alone
        listener.close()
        dropper.join(timeout=5)
    assert not dropper.is_alive()
    assert (response.status_code, response.get_json()["code"]) == (503, "engine_unavailable")


def test_slow_engine_is_504_within_the_timeout_and_the_engine_request_is_aborted(settings, engine_url):
    client, _ = _client(settings, engine_url, engine_timeout_s=1.0)
    requests.post(f"{engine_url}/stand-in/mode", json={"mode": "slow", "seconds": 30}, timeout=5)
    aborted_before = metric(engine_url, "stand_in:aborted_total")
    started = time.monotonic()
    response = _post(client)
    assert (response.status_code, response.get_json()["code"]) == (504, "engine_timeout")
    assert time.monotonic() - started < 3
    # The connection was closed, and the engine dropped the request (as vLLM's server does on a disconnect)
    # instead of working 30 s for nobody.
    wait_until(lambda: metric(engine_url, "stand_in:aborted_total") == aborted_before + 1, timeout_s=2)


def test_a_model_the_engine_does_not_serve_is_refused_at_start(settings, engine_url):
    from ocr_api.engines import EngineLoadError, build_engine

    engine = build_engine(settings.replace(engine="remote", engine_url=engine_url, model_name="other/model"))
    with pytest.raises(EngineLoadError, match="serves stand-in/deepseek-ocr-2, not DEEPSEEK_MODEL_NAME=other/model"):
        engine.load()
    engine.close()


def test_an_engine_dropped_without_close_closes_its_connections_and_thread(settings, engine_url):
    from ocr_api.engines import build_engine

    engine = build_engine(settings.replace(engine="remote", engine_url=engine_url, model_name=""))
    engine.load()  # opens the session and its pooled connections
    loop_thread = engine._calls.thread
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del engine
        gc.collect()
    loop_thread.join(timeout=5)
    assert not loop_thread.is_alive()
    assert [str(warning.message) for warning in caught] == []


def test_the_remote_service_never_imports_torch(engine_url):
    code = (
        "import sys; from app import create_app; from ocr_api.settings import Settings; "
        f"create_app(Settings(engine='remote', engine_url='{engine_url}')); "
        "print(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_start_production_with_an_external_engine(engine_url, tmp_path):
    env = environment(tmp_path, OCR_ENGINE_URL=engine_url, WORKERS="2", THREADS="4")
    log = tmp_path / "production.log"
    url = f"http://127.0.0.1:{env['PORT']}"
    with running("start_production.sh", env, log, timeout_s=300) as process:
        files = [("files", (f"p{i}.png", png_bytes((100 + i, 80)))) for i in range(3)]
        response = requests.post(f"{url}/ocr/batch", files=files, timeout=60)
        assert response.status_code == 200, response.text
        assert [r["engine"] for r in response.json()["results"]] == ["remote"] * 3
        assert stop(process) == 0, log.read_text()[-3000:]
    assert "using the engine at" in log.read_text()
    assert re.search(r'"POST /ocr/batch HTTP/1.1" 200 .* worker=<\d+>', (tmp_path / "logs" / "access.log").read_text())
    assert not (tmp_path / "logs" / "vllm.log").exists()  # no engine of its own was started
    assert list((tmp_path / "uploads").iterdir()) == []


def test_a_request_body_is_handed_over_once_and_not_kept():
    import asyncio

    from ocr_api.engines.remote.client import SentOnce

    body = SentOnce(b'{"page": 1}')

    async def read_all() -> list[bytes]:
        return [chunk async for chunk in body]

    assert body.length == 11
    assert asyncio.run(read_all()) == [b'{"page": 1}']
    assert asyncio.run(read_all()) == []  # sent: nothing of it is held any more
