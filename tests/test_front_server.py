"""The production start over real HTTP: nginx in front of gunicorn, against the STAND-IN engine (no model).

Slow and stalled clients, keep-alive, clients that hang up, the exact upload limit, JSON from the front server,
keys in no log, a worker killed mid-request, bad settings before anything starts (issue 11's defects).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from ocr_dev.inputs import data_url, make_pdf, png_bytes
from ocr_dev.servers import (
    Production,
    dribble,
    environment,
    free_port,
    gunicorn_socket_of,
    gunicorn_workers,
    metric,
    metric_samples,
    running,
    stand_in_engine,
    start,
    stop,
    wait_ready,
    wait_until,
)
from tests.conftest import REPO

pytestmark = pytest.mark.slow

KEY = "front-server-test-key-0123456789"
HEADERS = {"Authorization": f"Bearer {KEY}"}
# Keys a client might send where they do not belong, or that are wrong: none may reach a log file.
STRAY_KEYS = ("stray-query-key-aaaaaaaa", "stray-bearer-key-bbbbbbbb", "stray-header-key-cccccccc")
MALFORMED_KEY = "malformed-line-key-dddddddd"


@pytest.fixture(scope="module")
def production(tmp_path_factory) -> Iterator[Production]:
    tmp_path = tmp_path_factory.mktemp("front")
    with stand_in_engine(step_ms=50, tokens_per_page=40) as engine_url:  # 2 s a page
        env = environment(
            tmp_path,
            OCR_ENGINE_URL=engine_url,
            WORKERS="2",
            THREADS="2",
            API_KEYS=KEY,
            MAX_UPLOAD_MB="1",
            CLIENT_TIMEOUT_S="5",
        )
        log = tmp_path / "production.log"
        with running("start_production.sh", env, log, timeout_s=300) as process:
            url = f"http://127.0.0.1:{env['PORT']}"
            sock = gunicorn_socket_of(log)
            yield Production(url, engine_url, tmp_path / "logs", Path(env["UPLOAD_FOLDER"]), process, sock)
            assert stop(process) == 0, log.read_text()[-3000:]


def _ocr(url: str, data: bytes, name: str = "p.png", timeout: float = 60) -> requests.Response:
    return requests.post(f"{url}/ocr", files={"file": (name, data)}, headers=HEADERS, timeout=timeout)


def test_dribbling_clients_hold_no_worker(production):
    port = int(production.url.rsplit(":", 1)[1])
    stop_at = threading.Event()
    # 24 connections dribbling headers and 8 whose body never comes: 8 times the 2 workers x 2 threads.
    dribblers = [threading.Thread(target=dribble, args=(port, None, stop_at)) for _ in range(24)]
    dribblers += [threading.Thread(target=dribble, args=(port, 100_000, stop_at)) for _ in range(8)]
    for dribbler in dribblers:
        dribbler.start()
    try:
        time.sleep(1)
        latencies = []
        for _ in range(8):
            started = time.monotonic()
            assert requests.get(f"{production.url}/health", timeout=5).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.5)
        served = _ocr(production.url, png_bytes())
    finally:
        stop_at.set()
        for dribbler in dribblers:
            dribbler.join(10)
    print(f"\n32 dribbling connections: /health slowest {max(latencies):.3f} s")
    assert max(latencies) < 1.0, latencies
    assert served.status_code == 200, served.text
    # No dribbled request reached a worker: gunicorn logged only the complete ones.
    assert "Host: x" not in (production.logs / "error.log").read_text()


def test_keep_alive_from_client_to_front_and_no_gunicorn_warning(production):
    host, port = production.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/health")
    first = connection.getresponse()
    first.read()
    sock = connection.sock
    connection.request("GET", "/ready")
    second = connection.getresponse()
    second.read()
    assert (first.status, second.status) == (200, 200)
    assert not first.will_close
    assert connection.sock is sock  # the same TCP connection served both
    connection.close()
    assert "No keepalived connections" not in (production.logs / "error.log").read_text()


def test_as_many_requests_as_threads_are_spread_over_every_worker(production):
    for _ in range(10):  # connections nginx would keep, were it to keep any, pinned to whichever worker took them
        assert requests.get(f"{production.url}/health", timeout=5).status_code == 200
    responses: list[requests.Response] = []

    def send(number: int) -> None:
        url = f"{production.url}/ocr?spread={number}"
        responses.append(requests.post(url, files={"file": ("p.png", png_bytes())}, headers=HEADERS, timeout=60))

    senders = [threading.Thread(target=send, args=(number,)) for number in range(4)]  # 2 workers x 2 threads
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert [response.status_code for response in responses] == [200] * 4

    def spread_lines() -> list[str]:
        return [line for line in (production.logs / "access.log").read_text().splitlines() if "/ocr?spread=" in line]

    # gunicorn writes a request's access line after its answer is sent: the last may come a moment after the answer.
    wait_until(lambda: len(spread_lines()) == 4, timeout_s=10)
    access = (production.logs / "access.log").read_text().splitlines()
    workers = [line.rsplit("worker=", 1)[1] for line in spread_lines()]
    # Each worker accepts only as many connections as it has threads: two each, none queued behind a busy one.
    assert sorted(workers.count(worker) for worker in set(workers)) == [2, 2], access


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(f"{url}/metrics", timeout=5)  # from loopback: open without a key
    assert response.status_code == 200, response.text
    return metric_samples(response.text)


def test_metrics_from_both_workers_add_up_to_what_was_sent(production):
    answered = ("ocr_requests_total", (("code", ""), ("method", "POST"), ("route", "/ocr"), ("status", "200")))
    refused = ("ocr_requests_total", (("code", "missing_api_key"), ("method", "POST"), ("route", "/ocr"),
                                      ("status", "401")))  # fmt: skip
    pages = ("ocr_pages_total", (("status", "ok"),))
    before = _scrape(production.url)
    responses: dict[int, requests.Response] = {}

    def send(number: int) -> None:
        url = f"{production.url}/ocr?counted={number}"
        headers = {**HEADERS, "X-Request-ID": f"counted-{number}"}
        responses[number] = requests.post(url, files={"file": ("p.png", png_bytes())}, headers=headers, timeout=60)

    senders = [threading.Thread(target=send, args=(number,)) for number in range(4)]  # 2 workers x 2 threads
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    for _ in range(2):
        assert requests.post(f"{production.url}/ocr", files={"file": ("p.png", b"x")}, timeout=10).status_code == 401
    assert [responses[number].status_code for number in range(4)] == [200] * 4
    assert [responses[number].headers["X-Request-ID"] for number in range(4)] == [f"counted-{n}" for n in range(4)]
    access = (production.logs / "access.log").read_text().splitlines()
    assert len({line.rsplit("worker=", 1)[1] for line in access if "/ocr?counted=" in line}) == 2  # both workers

    def grown(after, key) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    # Requests are counted once their answer is closed, a moment after the client has it.
    wait_until(lambda: grown(_scrape(production.url), answered) == 4, timeout_s=5)
    for _ in range(6):  # whichever worker answers the scrape, it adds up every process's samples
        after = _scrape(production.url)
        assert (grown(after, answered), grown(after, refused), grown(after, pages)) == (4, 2, 4)
        assert after[("ocr_pages_in_flight", ())] == 0
    # The id went on to the engine with the page, and names the request's summary line in the workers' log.
    sent_on = requests.get(f"{production.engine_url}/stand-in/request-ids", timeout=5).json()["request_ids"]
    assert {sent.rsplit(".", 1)[0] for sent in sent_on} >= {f"counted-{n}" for n in range(4)}
    error_log = (production.logs / "error.log").read_text()
    assert re.search(r"INFO ocr_api\.requests \[counted-0\]: POST /ocr 200 code=- pages=1 tokens=\d+\+40 ", error_log)


def test_a_client_that_hangs_up_stops_its_pages_at_the_engine(production):
    aborted_before = metric(production.engine_url, "stand_in:aborted_total")
    done_before = metric(production.engine_url, "stand_in:pages_done_total")
    with pytest.raises(requests.Timeout):
        _ocr(production.url, make_pdf(12), name="long.pdf", timeout=0.8)
    wait_until(lambda: metric(production.engine_url, "stand_in:aborted_total") >= aborted_before + 12, timeout_s=5)
    # The slots are free again: a live client gets its page, and nothing of the 12 was decoded.
    assert _ocr(production.url, png_bytes()).status_code == 200
    assert metric(production.engine_url, "stand_in:pages_done_total") == done_before + 1
    health = requests.get(f"{production.url}/health", timeout=5).json()
    assert health["pages_in_flight"] == 0
    assert '"POST /ocr HTTP/1.1" 499' in (production.logs / "access.log").read_text()


def _padded_png(total_body: int) -> tuple[bytes, str]:
    """A multipart body of exactly ``total_body`` bytes: a PNG padded after its end (decoders ignore it)."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    image = png_bytes()
    padding = total_body - len(head) - len(tail) - len(image)
    return head + image + b"\0" * padding + tail, f"multipart/form-data; boundary={boundary}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def _post_raw(connection: http.client.HTTPConnection, body: bytes, content_type: str) -> tuple[int, str]:
    try:
        # A server may answer 413 from the headers alone and close before the body is sent; read that answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request("POST", "/ocr", body=body, headers={"Content-Type": content_type, **HEADERS})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@pytest.mark.parametrize("size", [1024 * 1024, 1024 * 1024 + 1])
def test_a_body_of_exactly_max_upload_mb_is_accepted_one_byte_more_is_413(production, size):
    body, content_type = _padded_png(size)
    host, port = production.url.removeprefix("http://").split(":")
    expected = 200 if size == 1024 * 1024 else 413
    # Through the front server, and straight to gunicorn: the same answer.
    front = _post_raw(http.client.HTTPConnection(host, int(port), timeout=30), body, content_type)
    direct = _post_raw(_UnixConnection(production.gunicorn_socket), body, content_type)
    assert front[0] == expected, front
    assert direct[0] == expected, direct
    if expected == 413:
        assert '"code": "payload_too_large"' in front[1] or '"code":"payload_too_large"' in front[1]


def test_errors_the_front_server_answers_itself_are_json(production):
    long_uri = requests.get(f"{production.url}/{'x' * 9000}", timeout=10)
    big_header = requests.get(f"{production.url}/health", headers={"X-Big": "a" * 9000}, timeout=10)
    with socket.create_connection(("127.0.0.1", int(production.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        garbage = sock.recv(4096).decode()
    assert (long_uri.status_code, long_uri.json()["code"]) == (414, "uri_too_long")
    assert (big_header.status_code, big_header.json()["code"]) == (431, "headers_too_large")
    assert garbage.startswith("HTTP/1.1 400")
    assert '"code": "bad_request"' in garbage
    # Below nginx's limits the request reaches the service, whose own limits are larger: never gunicorn's HTML.
    for length in (5_000, 7_900):
        answer = requests.get(f"{production.url}/{'x' * length}", headers={"X-API-Key": KEY}, timeout=10)
        assert (answer.status_code, answer.json()["code"]) == (404, "not_found"), length
        assert answer.headers["X-Request-ID"]
    header = requests.get(f"{production.url}/health", headers={"X-Big": "a" * 7_900}, timeout=10)
    assert (header.status_code, header.json()["status"]) == (200, "healthy")
    trace = requests.request("TRACE", f"{production.url}/health", timeout=10)  # nginx refuses it itself
    assert (trace.status_code, trace.headers["Content-Type"], trace.json()["code"]) == (
        405, "application/json", "method_not_allowed")  # fmt: skip
    doubled = requests.get(f"{production.url}/v1//models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert (doubled.status_code, doubled.json()["error"]["code"]) == (404, "not_found")  # no HTML redirect


def test_the_openai_routes_stream_through_nginx_and_its_own_errors_are_in_openais_shape(production):
    client = openai.OpenAI(api_key=KEY, base_url=f"{production.url}/v1", max_retries=0, timeout=60)
    image = data_url(png_bytes((64, 48)))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}]
    done_before = metric(production.engine_url, "stand_in:pages_done_total")
    done_at_first_piece = None
    pieces = []
    for chunk in client.chat.completions.create(model="deepseek-ocr", messages=messages, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            if done_at_first_piece is None:  # nginx passed the first words on while the page was still decoding
                done_at_first_piece = metric(production.engine_url, "stand_in:pages_done_total")
            pieces.append(chunk.choices[0].delta.content)
    assert done_at_first_piece == done_before
    assert "".join(pieces) == "stand-in page text (40 tokens)"
    too_big = "data:image/png;base64," + "A" * (2 << 20)  # over MAX_UPLOAD_MB: nginx answers
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": too_big}}]}]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="deepseek-ocr", messages=messages)
    assert (caught.value.status_code, caught.value.code) == (413, "payload_too_large")
    assert caught.value.body["type"] == "invalid_request_error"


def test_no_key_reaches_any_log_wherever_the_client_puts_it(production):
    query_key, bearer_key, header_key = STRAY_KEYS
    assert _ocr(production.url, png_bytes()).status_code == 200  # the configured key, in its header
    requests.get(f"{production.url}/ocr?api_key={query_key}", timeout=10)
    requests.post(f"{production.url}/ocr?key={query_key}&token={query_key}", timeout=10)
    requests.post(f"{production.url}/ocr", headers={"Authorization": f"Bearer {bearer_key}"}, timeout=10)
    requests.post(f"{production.url}/ocr", headers={"X-API-Key": header_key}, timeout=10)
    malformed = f"POST /ocr?api_key={query_key} HTTP/1.1\r\nHost: x\r\nX-API-Key {MALFORMED_KEY}\r\n\r\n".encode()
    for connect in (
        lambda: socket.create_connection(("127.0.0.1", int(production.url.rsplit(":", 1)[1]))),
        lambda: _unix_socket(production.gunicorn_socket),  # gunicorn quotes a malformed header line in its log
    ):
        with connect() as sock:
            sock.sendall(malformed)
            sock.recv(4096)
    time.sleep(0.5)  # log lines are written as requests end
    files = sorted(path for path in production.logs.iterdir() if path.is_file())
    assert {path.name for path in files} >= {"access.log", "error.log", "front-access.log", "front-error.log"}
    text = "\n".join(path.read_text(errors="replace") for path in files)
    assert "/ocr" in text  # the requests were logged, without their keys
    for secret in (KEY, *STRAY_KEYS, MALFORMED_KEY):
        assert secret not in text, secret


def _unix_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def test_a_worker_killed_mid_request_leaves_no_upload(production):
    group = production.process.pid
    workers = gunicorn_workers(group)
    results: list = []
    sender = threading.Thread(target=lambda: results.append(_ocr(production.url, png_bytes(), timeout=30)))
    sender.start()
    wait_until(lambda: any(production.uploads.iterdir()), timeout_s=10, interval_s=0.05)
    for worker in workers:  # whichever holds it
        os.kill(worker, signal.SIGKILL)
    sender.join(30)
    # gunicorn starts new workers; each sweeps the uploads no live process holds.
    wait_until(lambda: len(set(gunicorn_workers(group)) - set(workers)) == 2, timeout_s=30)
    wait_until(lambda: requests.get(f"{production.url}/ready", timeout=5).status_code == 200, timeout_s=30)
    assert list(production.uploads.iterdir()) == []
    assert "left behind by a process that died" in (production.logs / "error.log").read_text()


def test_bad_settings_stop_the_production_start_before_anything_listens(tmp_path):
    env = environment(tmp_path, OCR_ENGINE_URL="http://127.0.0.1:9", API_KEYS="too-short")
    run = subprocess.run(
        [str(REPO / "start_production.sh")], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert "error: API_KEYS: every key needs 16 characters" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "logs" / "error.log").exists()  # gunicorn never started


def test_dev_server_accepts_exactly_max_upload_mb_too(tmp_path):
    with stand_in_engine(step_ms=5, tokens_per_page=4) as engine_url:
        env = environment(tmp_path, OCR_ENGINE_URL=engine_url, API_KEYS=KEY, MAX_UPLOAD_MB="1")
        log = tmp_path / "server.log"
        with running("start_server.sh", env, log, timeout_s=120):
            answers = []
            for size in (1024 * 1024, 1024 * 1024 + 1):
                body, content_type = _padded_png(size)
                answers.append(_post_raw(http.client.HTTPConnection("127.0.0.1", int(env["PORT"])), body, content_type))
    assert [status for status, _ in answers] == [200, 413], answers


def test_the_front_server_and_the_api_run_as_processes_of_their_own(tmp_path):
    """scripts/start_front.sh and scripts/start_api.sh as systemd's units and compose's services run them: each ends
    in the server itself, nginx reaches gunicorn at API_UPSTREAM, the API drains on DRAIN_FILE, and each stops
    gracefully on its own signal."""
    with stand_in_engine(step_ms=5, tokens_per_page=4) as engine_url:
        api_port = free_port()
        env = environment(
            tmp_path,
            OCR_ENGINE_URL=engine_url,
            WORKERS="1",
            THREADS="2",
            TRUSTED_PROXIES="1",
            API_BIND=f"127.0.0.1:{api_port}",
            API_UPSTREAM=f"127.0.0.1:{api_port}",
            DRAIN_FILE=str(tmp_path / "draining"),
            FRONT_RUN_DIR=str(tmp_path / "front"),
        )
        (tmp_path / "draining").touch()  # left by a stop that never finished: the API's start removes it
        api = start("scripts/start_api.sh", env, tmp_path / "api.log")
        front = start("scripts/start_front.sh", env, tmp_path / "front.log")
        try:
            url = f"http://127.0.0.1:{env['PORT']}"
            wait_ready(url, api, tmp_path / "api.log", timeout_s=120)
            response = requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes())}, timeout=30)
            assert response.status_code == 200, response.text
            # Each script became its server (exec): the process its supervisor watches and signals.
            assert b"nginx" in Path(f"/proc/{front.pid}/cmdline").read_bytes()
            assert b"gunicorn" in Path(f"/proc/{api.pid}/cmdline").read_bytes()
            (tmp_path / "draining").touch()  # what the API unit's ExecStop does before systemd's SIGTERM
            assert requests.get(f"{url}/ready", timeout=5).status_code == 503
        finally:
            front.send_signal(signal.SIGQUIT)
            api.send_signal(signal.SIGTERM)
            statuses = (front.wait(timeout=60), api.wait(timeout=60))
        assert statuses == (0, 0), (tmp_path / "front.log").read_text()[-2000:] + (tmp_path / "api.log").read_text()
    logs = tmp_path / "logs"
    assert '"POST /ocr HTTP/1.1" 200' in (logs / "access.log").read_text()
    assert "POST /ocr" in (logs / "front-access.log").read_text()
    assert "Traceback" not in (logs / "error.log").read_text() + (logs / "front-error.log").read_text()


@pytest.mark.parametrize("how", ["SIGTERM to gunicorn", "SIGTERM to start_production.sh", "SIGQUIT to it"])
def test_stopping_the_api_answers_new_requests_503_at_once_while_running_ones_finish(tmp_path, how):
    """A request sent while the API stops is answered 503 shutting_down with Retry-After at once (not held, then 502),
    and the requests running meanwhile get their pages. gunicorn alone (scripts/start_api.sh behind
    scripts/start_front.sh, as compose and systemd run them) or the whole production start."""
    with stand_in_engine(step_ms=5, tokens_per_page=4) as engine_url:
        requests.post(f"{engine_url}/stand-in/mode", json={"mode": "slow", "seconds": 4}, timeout=5)
        api_port = free_port()
        env = environment(tmp_path, OCR_ENGINE_URL=engine_url, WORKERS="1", THREADS="4", TRUSTED_PROXIES="1",
                          DRAIN_SECONDS="2", API_BIND=f"127.0.0.1:{api_port}", API_UPSTREAM=f"127.0.0.1:{api_port}",
                          FRONT_RUN_DIR=str(tmp_path / "front"))  # fmt: skip
        url = f"http://127.0.0.1:{env['PORT']}"
        if how == "SIGTERM to gunicorn":
            processes = [start("scripts/start_api.sh", env, tmp_path / "api.log"),
                         start("scripts/start_front.sh", env, tmp_path / "front.log")]  # fmt: skip
            signalled, signum, log = processes[0], signal.SIGTERM, tmp_path / "api.log"
        else:
            processes = [start("start_production.sh", env, tmp_path / "production.log")]
            signalled, signum = processes[0], signal.SIGTERM if "SIGTERM" in how else signal.SIGQUIT
            log = tmp_path / "production.log"
        try:
            wait_ready(url, processes[0], log, timeout_s=120)
            finished: list[tuple[str, int]] = []

            def running() -> None:
                answer = requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes())}, timeout=60)
                finished.append(("running", answer.status_code))

            threads = [threading.Thread(target=running) for _ in range(2)]
            for thread in threads:
                thread.start()
            wait_until(lambda: len(requests.get(f"{engine_url}/stand-in/request-ids", timeout=5).json()
                                    ["request_ids"]) >= 2, timeout_s=10)  # fmt: skip
            signalled.send_signal(signum)
            time.sleep(0.3)
            late = requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes())}, timeout=60)
            finished.append(("late", late.status_code))
            assert (late.status_code, late.json()["code"]) == (503, "shutting_down")
            assert late.headers["Retry-After"]
            for thread in threads:
                thread.join(timeout=60)
            # The late request was answered before the running ones finished: it was not held behind them.
            assert finished == [("late", 503), ("running", 200), ("running", 200)]
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM if process is signalled else signal.SIGQUIT)
            statuses = [process.wait(timeout=90) for process in processes]
        assert statuses == [0] * len(processes)
