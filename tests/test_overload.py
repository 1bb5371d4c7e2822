"""Overload and faults over real HTTP: admission refuses at once, the engine dying and coming back, SIGTERM under
load. Gunicorn and the remote engine as in production, against the STAND-IN engine (no model); the same faults
against real vLLM are in tests/test_vllm.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from ocr_dev.inputs import png_bytes
from ocr_dev.overload import drive, run
from ocr_dev.servers import environment, free_port, stand_in_engine, start, stop, wait_ready, wait_until

pytestmark = pytest.mark.slow


def test_twice_the_admission_capacity_refuses_the_excess_at_once_and_loses_nothing(tmp_path):
    report = run(workers=2, pages_in_flight=4, load=2.0, rounds=3, workdir=tmp_path)
    print("\n" + "\n".join(report.lines()))
    assert report.lost == []  # every request got a 200 or a 503 overloaded: no 500, no dropped connection
    assert report.refused, "twice the capacity must be refused in part"
    # At once: an accepted request takes at least the engine's 1 s of decoding, a refusal waits for none of it.
    assert max(outcome.seconds for outcome in report.refused) < 1.0
    assert {outcome.retry_after for outcome in report.refused} == {"5"}
    assert len(report.accepted) >= report.capacity_pages  # the bound admits its capacity, not fewer
    assert report.engine_pages == len(report.accepted)  # every accepted page decoded once, no more
    for before, after in report.worker_rss_mib.values():
        assert after - before < 40, report.worker_rss_mib
    assert report.uploads_left == 0


def _post_page(url: str, results: list) -> None:
    """POST one page; record (status, code, when the answer came)."""
    try:
        response = requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes((96, 64)))}, timeout=60)
        results.append((response.status_code, response.json().get("code"), time.monotonic()))
    except requests.RequestException as exc:
        results.append((0, type(exc).__name__, time.monotonic()))


def _in_threads(count: int, url: str) -> tuple[list, list[threading.Thread]]:
    results: list = []
    threads = [threading.Thread(target=_post_page, args=(url, results)) for _ in range(count)]
    for thread in threads:
        thread.start()
    return results, threads


def test_engine_dying_mid_request_is_503_in_seconds_and_the_service_recovers_by_itself(tmp_path):
    engine_port = free_port()
    env = environment(tmp_path, OCR_ENGINE_URL=f"http://127.0.0.1:{engine_port}", WORKERS="2", THREADS="4")
    url = f"http://127.0.0.1:{env['PORT']}"
    log = tmp_path / "production.log"
    with contextlib.ExitStack() as engine:
        engine.enter_context(stand_in_engine(step_ms=50, tokens_per_page=200, port=engine_port))  # 10 s a page
        process = start("start_production.sh", env, log)
        try:
            wait_ready(url, process, log, timeout_s=300)
            results, threads = _in_threads(3, url)
            time.sleep(1.0)
            engine.close()  # SIGKILL, three requests in flight
            killed_at = time.monotonic()
            for thread in threads:
                thread.join(timeout=30)
            answered_within = max(answered for _, _, answered in results) - killed_at
            assert [(status, code) for status, code, _ in results] == [(503, "engine_unavailable")] * 3
            assert answered_within < 3
            wait_until(lambda: requests.get(f"{url}/ready", timeout=2).status_code == 503, timeout_s=5)
            assert requests.get(f"{url}/health", timeout=2).status_code == 200
            refused = requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes())}, timeout=10)
            assert refused.status_code == 503
            assert refused.json()["code"] in {"engine_unavailable", "engine_not_ready"}
            assert refused.headers["Retry-After"]
            # The engine comes back on its port; nobody restarts the service.
            with stand_in_engine(step_ms=10, tokens_per_page=5, port=engine_port):
                back_at = time.monotonic()
                wait_until(lambda: requests.get(f"{url}/ready", timeout=2).status_code == 200, timeout_s=10)
                ready_within = time.monotonic() - back_at
                # Each worker re-checks the engine at most once a second (and requests go to whichever worker
                # has a free thread), so the other worker may refuse for up to a second more.
                answers: list[requests.Response] = []

                def served() -> bool:
                    answers.append(requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes())}, timeout=30))
                    return answers[-1].status_code == 200

                wait_until(served, timeout_s=3, interval_s=0.3)
                assert all(answer.status_code == 503 for answer in answers[:-1]), [a.text for a in answers]
            print(
                f"\nengine killed with 3 requests in flight: answered 503 within {answered_within:.2f} s; "
                f"ready again {ready_within:.2f} s after the engine returned"
            )
        finally:
            assert stop(process) == 0, log.read_text()[-3000:]
    assert list(Path(env["UPLOAD_FOLDER"]).iterdir()) == []


def test_sigterm_under_load_finishes_in_flight_requests_refuses_new_ones_and_exits(tmp_path):
    with stand_in_engine(step_ms=50, tokens_per_page=60) as engine_url:  # 3 s a page
        env = environment(
            tmp_path,
            OCR_ENGINE_URL=engine_url,
            WORKERS="2",
            THREADS="4",
            DRAIN_SECONDS="3",
            GUNICORN_GRACEFUL_TIMEOUT="30",
        )
        url = f"http://127.0.0.1:{env['PORT']}"
        log = tmp_path / "production.log"
        process = start("start_production.sh", env, log)
        try:
            wait_ready(url, process, log, timeout_s=300)
            in_flight, threads = _in_threads(6, url)
            time.sleep(1.0)
            os.kill(process.pid, signal.SIGTERM)  # the script alone, as a supervisor with KillMode=mixed does
            term_at = time.monotonic()
            time.sleep(0.5)
            late = requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes())}, timeout=10)
            ready = requests.get(f"{url}/ready", timeout=5)
            health = requests.get(f"{url}/health", timeout=5)
            for thread in threads:
                thread.join(timeout=60)
            exit_status = process.wait(timeout=60)
            exited_within = time.monotonic() - term_at
        except BaseException:
            stop(process)
            raise
    assert [(status, code) for status, code, _ in in_flight] == [(200, None)] * 6
    assert (late.status_code, late.json()["code"]) == (503, "shutting_down")
    assert late.headers["Retry-After"] == "5"
    assert (ready.status_code, ready.json()["code"]) == (503, "shutting_down")
    assert health.status_code == 200
    assert health.json()["draining"] is True
    assert exit_status == 0
    with pytest.raises(ProcessLookupError):  # gunicorn's master and workers are gone with the script
        os.killpg(process.pid, 0)
    assert not (tmp_path / "logs" / "draining").exists()
    print(
        f"\nSIGTERM with 6 requests in flight: all 200, a new one 503 shutting_down, exit after {exited_within:.1f} s"
    )
    assert list(Path(env["UPLOAD_FOLDER"]).iterdir()) == []


def test_the_load_driver_counts_a_dead_service_as_lost(tmp_path):
    # The load test above trusts drive() to count failures: a port nobody listens on must show as lost.
    outcomes = drive(f"http://127.0.0.1:{free_port()}", clients=2, rounds=1)
    assert [outcome.status for outcome in outcomes] == [0, 0]
