"""Over real HTTP: the service started the way users start it, with the tiny real model and the corpus."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests

from ocr_dev.inputs import data_url
from ocr_dev.servers import environment, running
from tests.conftest import CORPUS, CORPUS_IMAGES, REPO
from tests.test_preparation import EXPECTED

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 300  # the first start may install packages into .venv


@dataclass
class Server:
    url: str
    uploads: Path
    process: subprocess.Popen
    log: Path


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    return environment(tmp_path, OCR_ENGINE="transformers", **extra)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("server")
    env = _environment(
        tmp_path, DEEPSEEK_MODEL_NAME=str(tiny_model_dir), MAX_TOKENS="8", MAX_BATCH_FILES="40", RUNAWAY_RETRIES="0"
    )
    log = tmp_path / "server.log"
    with running("start_server.sh", env, log, START_TIMEOUT_S) as process:
        yield Server(f"http://127.0.0.1:{env['PORT']}", tmp_path / "uploads", process, log)


def _uploads_left(server: Server) -> list[Path]:
    return list(server.uploads.iterdir()) if server.uploads.exists() else []


def test_health_and_ready(server):
    health = requests.get(f"{server.url}/health", timeout=10).json()
    assert (health["status"], health["engine"], health["model_loaded"]) == ("healthy", "transformers", True)
    assert requests.get(f"{server.url}/ready", timeout=10).status_code == 200


def test_ocr_over_http_with_a_real_image(server, tiny_model_dir):
    with (CORPUS / "images" / "hopper.png").open("rb") as handle:
        response = requests.post(f"{server.url}/ocr", files={"file": ("hopper.png", handle)}, timeout=120)
    assert response.status_code == 200
    body = response.json()
    assert {"text", "image_path", "prompt", "raw_output", "finish_reason", "usage", "guard", "model"} <= set(body)
    assert body["prompt"] == "<image>\nFree OCR."
    assert body["model"] == str(tiny_model_dir)
    assert body["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] == 257 + len(b"\nFree OCR.")
    assert 1 <= body["usage"]["completion_tokens"] <= 8
    guard = body["guard"]
    assert (guard["ngram_size"], guard["window_size"]) == (20, 90)
    assert len(guard["whitelist_token_ids"]) == 2
    assert _uploads_left(server) == []


@pytest.mark.parametrize("entry", CORPUS_IMAGES, ids=lambda entry: entry.name)
def test_every_corpus_image_over_http(server, entry):
    response = requests.post(
        f"{server.url}/ocr", files={"file": (entry.name, entry.path.read_bytes())}, data={"task": "ocr"}, timeout=120
    )
    expected = EXPECTED[entry.name]
    if expected == "ok":
        assert response.status_code == 200, response.text
        assert response.json()["finish_reason"] in ("stop", "length")
    else:
        assert (response.status_code, response.json()["code"]) == expected
        assert set(response.json()) == {"error", "code"}
    assert _uploads_left(server) == []


@pytest.mark.parametrize(("name", "pages"), [("joined.pdf", list(range(1, 51))), ("has-bad-fonts.pdf", [1])])
def test_corpus_pdfs_over_http(server, name, pages):
    data = (CORPUS / "pdfs" / name).read_bytes()
    selection = ",".join(str(page) for page in pages)
    response = requests.post(
        f"{server.url}/ocr", files={"file": (name, data)}, data={"task": "markdown", "pages": selection}, timeout=300
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [page["page"] for page in body["pages"]] == pages
    assert all(page["finish_reason"] in ("stop", "length") for page in body["pages"])
    assert all(page["usage"]["prompt_tokens"] > 256 for page in body["pages"])  # real image tokens reached the model
    # Blocks come back in pixels of each rendered page (random weights write no markup: one block, no boxes).
    assert all(page["width"] > 1000 and all("boxes" in b for b in page["blocks"]) for page in body["pages"])
    assert _uploads_left(server) == []


def test_a_pdf_as_a_job_through_start_server_on_the_tiny_model(server):
    data = (CORPUS / "pdfs" / "joined.pdf").read_bytes()
    response = requests.post(
        f"{server.url}/jobs",
        files={"file": ("joined.pdf", data)},
        data={"task": "markdown", "pages": "2-4"},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["pages_total"] == 3
    deadline = time.monotonic() + 300
    while (view := requests.get(job["urls"]["self"], timeout=10).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, view
        time.sleep(0.5)
    assert view["status"] == "succeeded"
    assert view["progress"]["pages"]["failed"] == 0
    result = requests.get(job["urls"]["result"], timeout=30).json()
    assert [page["page"] for page in result["pages"]] == [2, 3, 4]
    assert all(page["usage"]["prompt_tokens"] > 256 for page in result["pages"])  # real image tokens, real model
    assert result["engine"] == "transformers"


def test_corpus_as_one_batch_over_http(server):
    if not CORPUS_IMAGES:
        pytest.skip("no corpus")
    files = [("files", (entry.name, entry.path.read_bytes())) for entry in CORPUS_IMAGES]
    response = requests.post(f"{server.url}/ocr/batch", files=files, data={"task": "markdown"}, timeout=300)
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == len(CORPUS_IMAGES)
    for entry, result in zip(CORPUS_IMAGES, body["results"], strict=True):
        assert result["filename"] == entry.name
        expected = EXPECTED[entry.name]
        if expected == "ok":
            assert result["finish_reason"] in ("stop", "length"), result
        else:
            assert (result["status"], result["http_status"], result["code"]) == ("failed", *expected)
    assert body["succeeded"] == sum(1 for name in (e.name for e in CORPUS_IMAGES) if EXPECTED[name] == "ok")
    assert _uploads_left(server) == []


def test_the_openai_sdk_through_start_server_on_the_tiny_model(server, tiny_model_dir):
    """A completion and a streamed one, from the transformers engine's streamer, with the official SDK."""
    client = openai.OpenAI(api_key="unused", base_url=f"{server.url}/v1", max_retries=0, timeout=120)
    messages = [
        {"role": "system", "content": "<image>\nFree OCR."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url("hopper.png")}}]},
    ]
    assert client.models.list().data[0].id == str(tiny_model_dir)
    whole = client.chat.completions.create(model="deepseek-ocr", messages=messages)
    assert 1 <= whole.usage.completion_tokens <= 8
    assert whole.usage.prompt_tokens == 257 + len(b"\nFree OCR.")
    assert whole.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model="deepseek-ocr", messages=messages, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces) == whole.choices[0].message.content  # greedy: the same text, streamed
    assert _uploads_left(server) == []


def _data_url(name: str) -> str:
    return data_url((CORPUS / "images" / name).read_bytes())


def test_the_development_servers_log_has_one_plain_line_a_request_and_probes_below_info(server):
    def lines(text: str) -> list[str]:
        return [line for line in server.log.read_text().splitlines() if text in line]

    before = len(lines("POST /ocr "))
    for _ in range(3):
        assert requests.get(f"{server.url}/ready", timeout=10).status_code == 200
    png = (CORPUS / "images" / "hopper.png").read_bytes()
    assert requests.post(f"{server.url}/ocr", files={"file": ("hopper.png", png)}, timeout=120).status_code == 200
    time.sleep(0.5)  # the summary line is written as the answer closes
    assert len(lines("POST /ocr ")) == before + 1  # ours alone, not werkzeug's as well
    assert lines("/ready") == []  # probes are logged at DEBUG
    assert "\x1b[" not in server.log.read_text()  # no terminal colours in a log file


def test_framework_errors_are_json_over_http(server):
    assert requests.get(f"{server.url}/missing", timeout=10).json()["code"] == "not_found"
    assert requests.put(f"{server.url}/ocr", timeout=10).json()["code"] == "method_not_allowed"
    too_big = requests.post(f"{server.url}/ocr", files={"file": ("big.png", b"0" * (17 * 1024 * 1024))}, timeout=60)
    assert (too_big.status_code, too_big.json()["code"]) == (413, "payload_too_large")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"DEEPSEEK_MODEL_NAME": "/nonexistent/deepseek-ocr-2"}, "does not exist"),
        ({"DEEPSEEK_MODEL_NAME": "deepseek-community/DeepSeek-OCR-2"}, "HF_HUB_OFFLINE is set"),
        ({"PORT": "eighty"}, "PORT must be an integer"),
    ],
)
def test_start_up_failure_is_one_clear_line(tmp_path, extra, expected):
    env = _environment(tmp_path, **extra)
    env["HF_HOME"] = str(tmp_path / "hf-home")
    command = [str(REPO / "start_server.sh")]
    result = subprocess.run(
        command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S
    )
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    if "DEEPSEEK_MODEL_NAME" in extra:
        assert "set DEEPSEEK_MODEL_NAME to that directory" in error_lines[0]
