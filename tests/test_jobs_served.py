"""Document jobs over real HTTP, as users run them: ./start_server.sh (the consumer in the serving process) and
./start_production.sh (gunicorn's workers and a consumer process beside them, behind nginx), on SQLite and on a
real Redis shared by two nodes; killed and stopped mid-job, then started again. The engine is the stand-in."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pymupdf
import pytest
import requests

from ocr_api.jobs.queue import STALE_S
from ocr_dev.servers import (
    environment,
    metric,
    processes_in_group,
    redis_server,
    running,
    stand_in_engine,
    start,
    stop,
    wait_ready,
)

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 120
FINISHED = ("succeeded", "partial", "failed", "cancelled")


def pdf_bytes(pages: int) -> bytes:
    document = pymupdf.open()
    for number in range(pages):
        document.new_page().insert_text((72, 72), f"page {number + 1}")
    return document.tobytes()


def submit(url: str, pages: int, **fields) -> dict:
    response = requests.post(f"{url}/jobs", files={"file": ("doc.pdf", pdf_bytes(pages))}, data=fields, timeout=30)
    assert response.status_code == 202, response.text
    # The links work as given, behind nginx too (its Host header keeps the port).
    assert response.headers["Location"] == f"{url}/jobs/{response.json()['id']}"
    assert response.json()["urls"]["result"] == f"{url}/jobs/{response.json()['id']}/result"
    return response.json()


def view(url: str, job_id: str) -> dict:
    response = requests.get(f"{url}/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(urls: list[str], job_id: str, condition, timeout_s: float) -> dict:
    """Poll the job (round-robin over the nodes given) until ``condition(view)``; progress never goes back."""
    deadline, done, turn = time.monotonic() + timeout_s, 0, 0
    while time.monotonic() < deadline:
        current = view(urls[turn % len(urls)], job_id)
        turn += 1
        assert current["progress"]["pages_done"] >= done, "progress went back"
        done = current["progress"]["pages_done"]
        if condition(current):
            return current
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: condition not met in {timeout_s} s; last {current['status']} {done}")


def all_pages(url: str, job_id: str) -> list[int]:
    pages, after = [], 0
    while True:
        body = requests.get(f"{url}/jobs/{job_id}/pages", params={"after": after}, timeout=10).json()
        pages += [page["page"] for page in body["pages"] if page["status"] != "failed"]
        if body["next_after"] == after:
            return pages
        after = body["next_after"]


def test_start_server_runs_jobs_and_a_killed_or_stopped_server_finishes_them_after_a_restart(tmp_path):
    # 40 tokens of 25 ms: a second a page, 4 at once: the kill lands mid-job.
    with stand_in_engine(step_ms=25, tokens_per_page=40) as engine_url:
        env = environment(tmp_path, OCR_ENGINE_URL=engine_url, ENGINE_BATCH_PAGES="4", JOB_PAGES_IN_FLIGHT="4")
        url = f"http://127.0.0.1:{env['PORT']}"
        log = tmp_path / "server.log"
        process = start("start_server.sh", env, log)
        wait_ready(url, process, log, START_TIMEOUT_S)
        job = submit(url, 40, output="pdf")  # its searchable PDF written across the kill too
        at_kill = wait_for([url], job["id"], lambda v: v["progress"]["pages_done"] >= 8, 60)["progress"]["pages_done"]
        os.killpg(process.pid, signal.SIGKILL)  # no warning: the job is left "running", its lock held
        killed = time.monotonic()
        process.wait(timeout=10)
        with running("start_server.sh", env, tmp_path / "again.log", START_TIMEOUT_S) as again:
            ready = time.monotonic() - killed
            wait_for([url], job["id"], lambda v: v["runs"] == 2 and v["status"] == "running", 60)
            resumed = time.monotonic() - killed
            finished = wait_for([url], job["id"], lambda v: v["status"] in FINISHED, 120)
            assert finished["status"] == "succeeded"
            assert finished["runs"] == 2
            assert all_pages(url, job["id"]) == list(range(1, 41))
            searchable = requests.get(f"{url}/jobs/{job['id']}/result.pdf", timeout=30)
            assert searchable.status_code == 200
            assert pymupdf.open(stream=searchable.content, filetype="pdf").page_count == 40
            # every page went through the writer once: born digital, each kept its own text
            assert searchable.headers["X-OCR-Kept-Text-Pages"] == ",".join(map(str, range(1, 41)))
            # The new process holds JOBS_DIR's consumer lock, so it knows the job was orphaned: taken up at once,
            # not after the heartbeat has gone stale.
            assert resumed - ready < STALE_S
            decoded = metric(engine_url, "stand_in:pages_done_total")
            print(f"\nkilled at {at_kill}/40 pages; serving again {ready:.1f} s after the kill; job running again "
                  f"{resumed:.1f} s after it; the engine decoded {decoded:.0f} pages for 40")  # fmt: skip
            assert decoded <= 40 + 4  # at most the window done twice
            # A graceful stop (SIGTERM): the job goes back to the queue and the next start goes on with it.
            second = submit(url, 24)
            wait_for([url], second["id"], lambda v: v["progress"]["pages_done"] >= 4, 60)
            stopping = time.monotonic()
            assert stop(again) == 0
            print(f"SIGTERM mid-job: stopped in {time.monotonic() - stopping:.1f} s")
        with running("start_server.sh", env, tmp_path / "third.log", START_TIMEOUT_S):
            assert view(url, second["id"])["status"] in ("queued", "running", "succeeded")
            finished = wait_for([url], second["id"], lambda v: v["status"] in FINISHED, 90)
            assert finished["status"] == "succeeded"
            assert finished["runs"] == 2
            assert all_pages(url, second["id"]) == list(range(1, 25))


def consumer_pids(group: int) -> list[int]:
    return [pid for pid in processes_in_group(group) if b"ocr_api.jobs.consumer" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def test_start_production_runs_jobs_in_its_consumer_and_every_worker_answers_for_them(tmp_path):
    with stand_in_engine(step_ms=10, tokens_per_page=20) as engine_url:
        env = environment(tmp_path, OCR_ENGINE_URL=engine_url, WORKERS="2", THREADS="4", ENGINE_BATCH_PAGES="4")
        url = f"http://127.0.0.1:{env['PORT']}"
        with running("start_production.sh", env, tmp_path / "production.log", START_TIMEOUT_S) as process:
            assert len(consumer_pids(process.pid)) == 1
            job = submit(url, 60)
            # Events through nginx come as they happen (not buffered to the end): the first page before the last.
            with requests.get(f"{url}/jobs/{job['id']}/events", stream=True, timeout=60) as events:
                assert events.headers["Content-Type"].startswith("text/event-stream")
                first_page = None
                for line in events.iter_lines(decode_unicode=True):
                    if line.startswith("data: ") and first_page is None:
                        data = json.loads(line[6:])
                        if "index" in data:
                            first_page = data
                            break
            assert first_page is not None
            assert first_page["index"] == 1
            during = view(url, job["id"])
            assert during["status"] == "running"
            assert during["progress"]["pages_done"] < 60
            # 100 polls: every one 200, progress monotone, whichever worker answers.
            done = 0
            for _ in range(100):
                current = view(url, job["id"])
                assert current["progress"]["pages_done"] >= done
                done = current["progress"]["pages_done"]
            finished = wait_for([url], job["id"], lambda v: v["status"] in FINISHED, 60)
            assert finished["status"] == "succeeded"
            access = (Path(env["LOG_DIR"]) / "access.log").read_text()
            workers = {line.rsplit("worker=", 1)[1] for line in access.splitlines() if f"/jobs/{job['id']} " in line}
            assert len(workers) == 2, "both gunicorn workers answered polls of the job"
            result = requests.get(f"{url}/jobs/{job['id']}/result", timeout=30).json()
            assert result["pages_total"] == 60
            assert result["pages_failed"] == 0
            # Stopped mid-job, started again: nothing lost.
            second = submit(url, 80)
            wait_for([url], second["id"], lambda v: v["progress"]["pages_done"] >= 4, 60)
            assert stop(process) == 0
        assert view_offline(tmp_path, env, second["id"]) is None
        with running("start_production.sh", env, tmp_path / "again.log", START_TIMEOUT_S):
            finished = wait_for([url], second["id"], lambda v: v["status"] in FINISHED, 90)
            assert finished["status"] == "succeeded"
            assert finished["runs"] == 2
            assert all_pages(url, second["id"]) == list(range(1, 81))


def view_offline(tmp_path: Path, env: dict, job_id: str) -> None:
    """Nothing answers while the service is stopped: the job waits in JOBS_DIR, not in a process."""
    with contextlib.suppress(requests.RequestException):
        requests.get(f"http://127.0.0.1:{env['PORT']}/jobs/{job_id}", timeout=2)
        raise AssertionError("the service still answers after its stop")
    assert (Path(env["JOBS_DIR"]) / "queue.db").exists()


def test_two_nodes_share_jobs_through_redis_and_one_dying_loses_nothing(tmp_path):
    with redis_server(tmp_path / "redis") as redis_url, stand_in_engine(step_ms=25, tokens_per_page=40) as engine:
        shared = {"REDIS_URL": redis_url, "OCR_ENGINE_URL": engine, "JOBS_DIR": str(tmp_path / "shared-jobs"),
                  "WORKERS": "1", "THREADS": "4", "ENGINE_BATCH_PAGES": "4"}  # fmt: skip
        env_a = environment(tmp_path / "a", **shared)
        env_b = environment(tmp_path / "b", **shared)
        url_a, url_b = (f"http://127.0.0.1:{env['PORT']}" for env in (env_a, env_b))
        for env in (env_a, env_b):
            Path(env["LOG_DIR"]).mkdir(parents=True, exist_ok=True)
        node_a = start("start_production.sh", env_a, tmp_path / "a.log")
        with running("start_production.sh", env_b, tmp_path / "b.log", START_TIMEOUT_S) as node_b:
            wait_ready(url_a, node_a, tmp_path / "a.log", START_TIMEOUT_S)
            jobs = [submit(url_a, 30), submit(url_b, 30)]
            # Both nodes answer for both jobs, and both consumers take one each.
            for job in jobs:
                wait_for([url_a, url_b], job["id"], lambda v: v["status"] == "running", 60)
            # 100 polls alternating between the two API nodes: every one 200, progress never going back.
            done = {job["id"]: 0 for job in jobs}
            for turn in range(100):
                job_id = jobs[turn % 2]["id"]
                current = view((url_a, url_b)[(turn // 2) % 2], job_id)
                assert current["progress"]["pages_done"] >= done[job_id]
                done[job_id] = current["progress"]["pages_done"]
            # Node A dies at once, consumer and all: B's warden takes up what A's consumer was running.
            os.killpg(node_a.pid, signal.SIGKILL)
            node_a.wait(timeout=10)
            for job in jobs:
                finished = wait_for([url_b], job["id"], lambda v: v["status"] in FINISHED, 150)
                assert finished["status"] == "succeeded", finished
                assert all_pages(url_b, job["id"]) == list(range(1, 31))
            assert stop(node_b) == 0
