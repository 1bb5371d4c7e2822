"""The real vLLM: its CPU build, dummy weights and tiny DeepSeek-OCR-2 and DeepSeek-OCR (v1) language models.

The in-process engine is started with ./start_server.sh and the production topology with ./start_production.sh,
as users start them. Random weights prove the wiring (flags accepted, guard attached, images reaching the model,
batching, process topology, failures), not recognition or GPU speed. Each image costs about 25-30 s on 2 CPU
cores in float32 (vLLM hard-codes the full-size vision tower), so these tests are few and each server is shared.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from ocr_dev.inputs import data_url, png_bytes
from ocr_dev.servers import (
    Production,
    environment,
    free_port,
    processes_in_group,
    running,
    start,
    stop,
    wait_ready,
    wait_until,
)
from ocr_dev.tiny_vllm_model import CPU_TRIAL_ENV, CPU_TRIAL_FLAGS, write_tiny_vllm_model
from tests.conftest import CORPUS, REPO, vllm_python_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

VLLM_PYTHON = vllm_python_or_skip()
# Random weights always run out of tokens; a retry would double each image's cost and prove nothing more here.
NO_RETRIES = {"RUNAWAY_RETRIES": "0"}
START_TIMEOUT_S = 600
IMAGE_TIMEOUT_S = 400
# The service waits for a page as long as the test waits for the answer: on a slow machine the test's own timeout
# decides, not the 240 s default (the pages of a batch share the CPU, so each takes the batch's time).
PATIENT = {"ENGINE_TIMEOUT_S": str(IMAGE_TIMEOUT_S)}


@pytest.fixture(scope="module")
def tiny_vllm_model_dir(tmp_path_factory) -> Path:
    """DeepSeek-OCR (v1), for the production topology."""
    return write_tiny_vllm_model(tmp_path_factory.mktemp("tiny-deepseek-ocr"), "v1")


@pytest.fixture(scope="module")
def tiny_vllm_ocr2_dir(tmp_path_factory) -> Path:
    """DeepSeek-OCR-2, for the in-process engine: between them the two tests cover both models."""
    return write_tiny_vllm_model(tmp_path_factory.mktemp("tiny-deepseek-ocr-2"), "v2")


def _hopper() -> bytes:
    return (CORPUS / "images" / "hopper.png").read_bytes()


def _ocr(
    url: str, data: bytes, name: str = "hopper.png", timeout: float = IMAGE_TIMEOUT_S, **form: str
) -> requests.Response:
    return requests.post(f"{url}/ocr", files={"file": (name, data)}, data=form, timeout=timeout)


def _metrics(engine_url: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in requests.get(f"{engine_url}/metrics", timeout=5).text.splitlines():
        match = re.match(r"^(vllm:num_requests_(?:running|waiting))\{[^}]*\} ([0-9.]+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def _streamed_completion(url: str) -> None:
    """A streamed chat completion with the openai SDK, as an OCR-2 server's clients send it: the text comes in
    pieces from vLLM's own stream, and they add up to the page's raw output (the structured extension's)."""
    client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0, timeout=IMAGE_TIMEOUT_S)
    image = data_url(png_bytes((320, 240)))
    stream = client.chat.completions.create(
        model="deepseek-ocr",
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                               {"type": "text", "text": "Free OCR."}]}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ocr": {"structured": True}},
    )  # fmt: skip
    chunks = list(stream)
    pieces = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    ocr = next(chunk.model_extra["ocr"] for chunk in chunks if (chunk.model_extra or {}).get("ocr"))
    assert len(pieces) >= 2, chunks
    assert "".join(pieces) == ocr["raw_output"]
    assert chunks[-1].usage.completion_tokens == ocr["usage"]["completion_tokens"]
    assert chunks[-1].usage.prompt_tokens > 256  # the image reached the model


def test_in_process_engine_serves_ocr_and_a_batch(tmp_path, tiny_vllm_ocr2_dir):
    env = environment(
        tmp_path,
        OCR_ENGINE="vllm",
        DEEPSEEK_MODEL_NAME=str(tiny_vllm_ocr2_dir),
        MAX_TOKENS="8",
        VLLM_EXTRA_ARGS=CPU_TRIAL_FLAGS,
        **CPU_TRIAL_ENV,
        **NO_RETRIES,
        **PATIENT,
    )
    log = tmp_path / "server.log"
    process = start("start_server.sh", env, log)
    url = f"http://127.0.0.1:{env['PORT']}"
    try:
        wait_ready(url, process, log, START_TIMEOUT_S)
        health = requests.get(f"{url}/health", timeout=10).json()
        assert (health["engine"], health["model"], health["ready"]) == ("vllm", str(tiny_vllm_ocr2_dir), True)
        # The start-up check: AsyncLLM refused the probe as only NGramPerReqLogitsProcessor does.
        assert health["guard"]["checks"]["in-process"]["state"] == "verified", health["guard"]

        response = _ocr(url, _hopper(), task="markdown")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["engine"] == "vllm"
        assert body["prompt"] == "<image>\n<|grounding|>Convert the document to markdown."
        assert body["finish_reason"] in ("stop", "length")
        assert 1 <= body["usage"]["completion_tokens"] <= 8
        # The 1024 global view alone is 256 image tokens (plus row separators) before the text.
        assert body["usage"]["prompt_tokens"] > 256
        guard = body["guard"]
        assert (guard["ngram_size"], guard["window_size"]) == (20, 90)  # DeepSeek-OCR-2's profile
        assert len(guard["whitelist_token_ids"]) == 2

        files = [("files", ("first.png", _hopper())), ("files", ("second.png", png_bytes((300, 200))))]
        batch = requests.post(f"{url}/ocr/batch", files=files, timeout=2 * IMAGE_TIMEOUT_S)
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        assert [r["filename"] for r in results] == ["first.png", "second.png"]
        assert all(r["finish_reason"] in ("stop", "length") for r in results)
        _streamed_completion(url)  # from AsyncLLM's output stream
        assert not any((tmp_path / "uploads").iterdir())
    finally:
        # SIGTERM to the service process alone, as `kill PID` does: it must take vLLM's processes down with it.
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
        wait_until(lambda: processes_in_group(process.pid) == {}, timeout_s=30)


@pytest.fixture(scope="module")
def production(tmp_path_factory, tiny_vllm_model_dir) -> Iterator[Production]:
    tmp_path = tmp_path_factory.mktemp("production")
    engine_port = free_port()
    env = environment(
        tmp_path,
        DEEPSEEK_MODEL_NAME=str(tiny_vllm_model_dir),
        MAX_TOKENS="256",
        # One thread per worker: two concurrent requests must be served by two different workers.
        WORKERS="2",
        THREADS="1",
        VLLM_PORT=str(engine_port),
        # --enable-log-requests: vLLM then logs each abort, which test_a_client_that_hangs_up_... reads.
        VLLM_EXTRA_ARGS=CPU_TRIAL_FLAGS + " --enable-log-requests",
        ENGINE_MAX_RESTARTS="1",
        GUNICORN_GRACEFUL_TIMEOUT="10",
        **CPU_TRIAL_ENV,
        **NO_RETRIES,
        **PATIENT,
    )
    log = tmp_path / "production.log"
    with running("start_production.sh", env, log, START_TIMEOUT_S, stop_s=120) as process:
        url = f"http://127.0.0.1:{env['PORT']}"
        yield Production(url, f"http://127.0.0.1:{engine_port}", tmp_path / "logs", tmp_path / "uploads", process)


def test_requests_from_two_workers_are_inside_the_engine_together(production):
    responses: list[requests.Response] = []
    samples: list[dict[str, float]] = []
    done = threading.Event()

    def send(data: bytes) -> None:
        # vLLM updates its gauges after each engine step; the first step (both images' vision encoding and
        # prefill) takes most of a minute here, so a few hundred decoding steps give the gauges time to show it.
        responses.append(_ocr(production.url, data, max_tokens="200"))

    def watch() -> None:
        while not done.is_set():
            samples.append(_metrics(production.engine_url))
            time.sleep(0.1)

    senders = [threading.Thread(target=send, args=(data,)) for data in (_hopper(), png_bytes((320, 240)))]
    watcher = threading.Thread(target=watch)
    watcher.start()
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    done.set()
    watcher.join()

    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert all(r.json()["engine"] == "remote" for r in responses)
    assert all(r.json()["guard"]["ngram_size"] == 30 for r in responses)  # DeepSeek-OCR v1's profile
    # Both requests were running inside the one engine at the same moment: one batch, not a queue.
    assert max(s.get("vllm:num_requests_running", 0) for s in samples) >= 2, samples
    # gunicorn writes a request's access line after its response is sent: the second may still be on its way.
    access = production.logs / "access.log"
    wait_until(lambda: len(re.findall(r'"POST /ocr HTTP/1.1" 200', access.read_text())) >= 2, timeout_s=30)
    pids = set(re.findall(r'"POST /ocr HTTP/1.1" 200 .* worker=<(\d+)>', access.read_text()))
    assert len(pids) == 2, access.read_text()
    assert not any(production.uploads.iterdir())


def test_the_dashboards_vllm_metrics_are_the_real_servers_and_the_services_own_add_up(production):
    exposed = requests.get(f"{production.engine_url}/metrics", timeout=5).text
    dashboard = (REPO / "docs" / "grafana-dashboard.json").read_text()
    wanted = set(re.findall(r"vllm:[a-z_]+", dashboard))
    assert wanted
    assert {name for name in wanted if not re.search(rf"^{name}[{{ ]", exposed, flags=re.MULTILINE)} == set()
    # The workers' own /metrics beside it, through nginx from loopback, counting what went through them.
    assert requests.get(f"{production.url}/ready", timeout=5).status_code == 200
    # The server start_engine.sh started applies the guard, as the start-up check found.
    checks = requests.get(f"{production.url}/health", timeout=5).json()["guard"]["checks"]
    assert {check["state"] for check in checks.values()} == {"verified"}, checks
    served = requests.get(f"{production.url}/metrics", timeout=5).text
    assert re.search(r'^ocr_engine_guard_verified\{server="http://127.0.0.1:\d+"\} 1.0$', served, flags=re.MULTILINE)
    counted = r'^ocr_requests_total\{.*route="/ready".*status="200".*\} [1-9]'
    wait_until(
        lambda: re.search(counted, requests.get(f"{production.url}/metrics", timeout=5).text, flags=re.MULTILINE),
        timeout_s=10,
    )


def test_a_client_that_hangs_up_is_aborted_inside_vllm(production):
    vllm_log = production.logs / "vllm.log"
    aborts_before = vllm_log.read_text().count("Aborted request")
    # The image's vision encoding takes about 25 s here: the client gives up long before.
    with pytest.raises(requests.Timeout):
        _ocr(production.url, _hopper(), timeout=5)
    # nginx closed its connection to the worker, the worker closed its call to vLLM, and vLLM aborted it.
    wait_until(lambda: vllm_log.read_text().count("Aborted request") == aborts_before + 1, timeout_s=60)
    wait_until(lambda: '"POST /ocr HTTP/1.1" 499' in (production.logs / "access.log").read_text(), timeout_s=120)
    wait_until(lambda: _metrics(production.engine_url).get("vllm:num_requests_running", 0) == 0, timeout_s=120)
    assert requests.get(f"{production.url}/health", timeout=10).json()["pages_in_flight"] == 0
    assert not any(production.uploads.iterdir())


def test_a_job_runs_in_the_consumer_beside_the_workers_on_the_same_vllm_server(production):
    response = requests.post(
        f"{production.url}/jobs", files={"file": ("hopper.png", _hopper())}, data={"max_tokens": "8"}, timeout=60
    )
    assert response.status_code == 202, response.text
    job = response.json()
    deadline = time.monotonic() + IMAGE_TIMEOUT_S
    while (status := requests.get(job["urls"]["self"], timeout=10).json()["status"]) in ("queued", "running"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(2)
    assert status == "succeeded"
    result = requests.get(job["urls"]["result"], timeout=30).json()
    assert result["engine"] == "remote"
    assert result["filename"] == "hopper.png"
    assert 1 <= result["usage"]["completion_tokens"] <= 8
    assert result["usage"]["prompt_tokens"] > 256  # the image reached vLLM's model
    assert "run_job" in (production.logs / "jobs.log").read_text()  # run by the consumer process, not a worker
    # The server start_engine.sh started orders waiting pages by the priorities the job and the workers send.
    assert "'scheduling_policy': 'priority'" in (production.logs / "vllm.log").read_text()


def test_a_streamed_chat_completion_through_nginx_and_a_worker_from_vllms_stream(production):
    _streamed_completion(production.url)


def test_killing_the_engine_gives_503_the_service_recovers_and_the_script_stops_cleanly(production):
    in_flight: list[requests.Response] = []
    sender = threading.Thread(target=lambda: in_flight.append(_ocr(production.url, _hopper())))
    sender.start()
    # The image's vision encoding alone takes about 25 s here: a few seconds in, the request is inside vLLM.
    time.sleep(5)
    assert sender.is_alive()

    engine_pid = int((production.logs / "vllm.pid").read_text())
    os.kill(engine_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    sender.join(timeout=60)
    assert not sender.is_alive(), "the in-flight request hung after the engine died"
    answered_in = time.monotonic() - killed_at
    (response,) = in_flight
    assert (response.status_code, response.json()["code"]) == (503, "engine_unavailable"), response.text
    assert response.headers["Retry-After"]
    assert answered_in < 30

    # The worker whose call failed knows at once; the other finds out at its next health check (every second).
    wait_until(lambda: requests.get(f"{production.url}/ready", timeout=10).status_code == 503, timeout_s=5)
    assert requests.get(f"{production.url}/health", timeout=10).status_code == 200
    new = _ocr(production.url, png_bytes())
    assert new.status_code == 503
    assert new.json()["code"] in ("engine_not_ready", "engine_unavailable")

    # The script restarts the engine (ENGINE_MAX_RESTARTS=1) and the workers find it again by themselves.
    wait_until(lambda: "restarting it (1 of 1)" in _script_log(production), timeout_s=30)
    pid_file = production.logs / "vllm.pid"
    wait_until(lambda: pid_file.read_text().strip() not in ("", str(engine_pid)), timeout_s=30)
    restarted_pid = int(pid_file.read_text())
    wait_until(lambda: requests.get(f"{production.url}/ready", timeout=5).status_code == 200, timeout_s=300)
    ready_after = time.monotonic() - killed_at
    # Each worker asks the engine's health every second, so the worker that did not answer /ready may refuse for
    # up to a second more.
    recovered: list[requests.Response] = []
    wait_until(lambda: recovered.append(_ocr(production.url, png_bytes())) or recovered[-1].ok, timeout_s=180)
    assert [r.status_code for r in recovered][-1] == 200
    print(f"\nreal vLLM killed mid-request: 503 after {answered_in:.1f} s, ready again after {ready_after:.0f} s")
    # SIGTERM now stops gunicorn and the new engine.
    assert stop(production.process, timeout_s=120) == 0
    assert processes_in_group(engine_pid) == {}
    assert processes_in_group(restarted_pid) == {}
    assert processes_in_group(production.process.pid) == {}
    assert not any(production.uploads.iterdir())


def _script_log(production: Production) -> str:
    return (production.logs.parent / "production.log").read_text()


def test_vllms_own_parser_reads_the_gpu_settings_as_the_service_passes_them():
    # The flags as start_production.sh gets them from the variables, parsed by vLLM's engine argument parser.
    env = {"PATH": "/usr/bin:/bin", "DEEPSEEK_MODEL_NAME": "/m", "GPU_MEMORY_UTILIZATION": "0.5",
           "TENSOR_PARALLEL_SIZE": "2", "DATA_PARALLEL_SIZE": "4", "MAX_MODEL_LEN": "4096",
           "MAX_TOKENS": "2048"}  # fmt: skip
    code = (
        "import json, subprocess, sys; "
        "from vllm.engine.arg_utils import AsyncEngineArgs; "
        "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
        "flags = subprocess.run([sys.executable, '-m', 'ocr_api.engines.vllm_flags', '--runner', 'v1'], check=True, "
        "capture_output=True, text=True).stdout.split(); "
        "args = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser(exit_on_error=False)).parse_args(flags); "
        "print(json.dumps([args.gpu_memory_utilization, args.tensor_parallel_size, args.data_parallel_size, "
        "args.max_model_len, args.enable_prefix_caching, args.scheduling_policy]))"
    )
    run = subprocess.run([str(VLLM_PYTHON), "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [0.5, 2, 4, 4096, False, "priority"]


def test_the_tile_grid_the_service_sends_for_is_vllms_for_both_generations():
    """ocr_api/tiling.py against vLLM's own DeepSeek-OCR processor (v1: 640 tiles; v2 reuses it with 768)."""
    import json
    import subprocess

    from ocr_api.profiles import PROFILES
    from ocr_api.tiling import engine_size, tile_grid

    sizes = [(2480, 3508), (4032, 3024), (1191, 1684), (6320, 6320), (800, 1100), (640, 640), (2000, 40), (700, 500)]
    script = (
        "import json, sys\n"
        "from vllm.transformers_utils.processors.deepseek_ocr import count_tiles\n"
        "sizes, tile = json.loads(sys.argv[1]), int(sys.argv[2])\n"
        "print(json.dumps([None if max(w, h) <= tile else list(count_tiles(w, h, image_size=tile)) for w, h in sizes]))"
    )
    for profile in PROFILES.values():
        asked = [*sizes, *(engine_size(size, profile) for size in sizes)]
        answer = subprocess.run(
            [VLLM_PYTHON, "-c", script, json.dumps(asked), str(profile.tile_size)],
            capture_output=True, text=True, check=True, timeout=300,
        )  # fmt: skip
        grids = [tuple(grid) if grid else None for grid in json.loads(answer.stdout.strip().splitlines()[-1])]
        assert grids == [tile_grid(size, profile) for size in asked]
        assert grids[: len(sizes)] == grids[len(sizes) :]  # the size sent is tiled exactly as the full page
