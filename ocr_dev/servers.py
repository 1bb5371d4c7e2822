"""Starting and stopping the service's own scripts as users do, for the tests that go over real HTTP."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """Return a loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> None:
    """Poll ``condition`` until it holds; connection errors count as not yet."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except requests.RequestException:
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s} s")


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Return the caller's environment without service settings, pointed at ``tmp_path`` and a free port."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OCR_", "DEEPSEEK_", "VLLM_"))}
    env.update(HOST="127.0.0.1", PORT=str(free_port()), UPLOAD_FOLDER=str(tmp_path / "uploads"))
    env.update(JOBS_DIR=str(tmp_path / "jobs"))
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", LOG_DIR=str(tmp_path / "logs"))
    env.update(DRAIN_SECONDS="0")  # no drain pause on stop, except where a test is about it
    env.update(extra)
    return env


def start(script: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start one of the repository's scripts in its own process group, output to ``log``."""
    with log.open("wb") as handle:
        return subprocess.Popen(
            [str(REPO / script)], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Wait for ``/ready`` to answer 200; fail with the log's end if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not listening, or still loading the model
            pass
        time.sleep(0.5)
    raise AssertionError(f"server not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen, timeout_s: float = 60) -> int:
    """SIGTERM the process group, as a supervisor does, and return the exit status."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)  # reaped, so the failure is reported once, not again as a ResourceWarning
        raise


@dataclass
class Production:
    """A running ./start_production.sh: its URL, its engine's, where it logs and stores uploads, its process."""

    url: str
    engine_url: str
    logs: Path
    uploads: Path
    process: subprocess.Popen
    gunicorn_socket: str = ""  # the unix socket nginx proxies to, named in the script's log


def gunicorn_socket_of(log: Path) -> str:
    """Return the unix socket the production start's gunicorn listens on, as its log names it."""
    line = next(line for line in log.read_text().splitlines() if "gunicorn on unix:" in line)
    return line.rsplit("unix:", 1)[1].strip()


def dribble(port: int, body_claimed: int | None, stop_at: threading.Event) -> None:
    """Send a request a byte every two seconds: its headers, or a body shorter than its Content-Length."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as sock:
        if body_claimed is None:
            pending = b"POST /ocr HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"-" * 200
        else:
            sock.sendall(f"POST /ocr HTTP/1.1\r\nHost: x\r\nContent-Length: {body_claimed}\r\n\r\n".encode())
            pending = b"-" * 200
        for byte in pending:
            if stop_at.wait(2):
                return
            sock.sendall(bytes([byte]))  # an OSError here: the front server cut it off, which is fine


@contextlib.contextmanager
def running(
    script: str, env: dict[str, str], log: Path, timeout_s: float, stop_s: float = 60
) -> Iterator[subprocess.Popen]:
    """Start a script, wait until it is ready and yield its process; stop it afterwards unless the caller did."""
    process = start(script, env, log)
    try:
        wait_ready(f"http://{env['HOST']}:{env['PORT']}", process, log, timeout_s)
        yield process
    finally:
        if process.poll() is None:
            stop(process, stop_s)


@contextlib.contextmanager
def stand_in_engine(
    step_ms: float = 50, tokens_per_page: int = 10, port: int | None = None, extra: Sequence[str] = ()
) -> Iterator[str]:
    """Run ocr_dev/stand_in_engine.py (a STAND-IN for vLLM's server, no model) and yield its URL."""
    with stand_in_process(step_ms, tokens_per_page, port, extra) as (url, _):
        yield url


@contextlib.contextmanager
def stand_in_process(
    step_ms: float = 50, tokens_per_page: int = 10, port: int | None = None, extra: Sequence[str] = ()
) -> Iterator[tuple[str, subprocess.Popen]]:
    """The stand-in engine's URL and its process, for tests that kill it; it is killed afterwards if still alive."""
    port = port or free_port()
    command = [sys.executable, "-m", "ocr_dev.stand_in_engine", "--port", str(port), "--step-ms", str(step_ms)]
    command += ["--tokens-per-page", str(tokens_per_page), *extra]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        assert process.stdout is not None
        assert b"STAND-IN ENGINE" in process.stdout.readline()
        wait_until(lambda: requests.get(f"{url}/health", timeout=1).ok, timeout_s=10)
        yield url, process
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


@contextlib.contextmanager
def serve_app(app: object) -> Iterator[str]:
    """Serve a WSGI app (the service built in-process) on a loopback port with werkzeug's threaded server."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", free_port(), app, threaded=True)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, name="test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@contextlib.contextmanager
def serve_service(tmp: Path, engine_url: str, **overrides: object) -> Iterator[str]:
    """The service in-process with the remote engine on ``engine_url`` (a stand-in), files under ``tmp``, its job
    consumer running, on a loopback port; keyword arguments override settings."""
    from ocr_api.engines import build_engine
    from ocr_api.http.app import create_app
    from ocr_api.service import OcrService
    from ocr_api.settings import Settings

    defaults = {"upload_folder": str(tmp / "uploads"), "jobs_dir": str(tmp / "jobs"), "max_tokens": 64}
    settings = Settings(engine="remote", engine_url=engine_url, **{**defaults, **overrides})  # type: ignore[arg-type]
    service = OcrService(settings, build_engine(settings))
    service.start()
    try:
        with serve_with_jobs(create_app(service=service)) as url:
            yield url
    finally:
        service.close()


@contextlib.contextmanager
def serve_with_jobs(app: Any) -> Iterator[str]:
    """Serve ``app`` on a loopback port, its job consumer running in this process, as ``python app.py`` does."""
    from ocr_api.http.state import jobs_of

    jobs = jobs_of(app)
    jobs.queue.start_consumer(jobs.runner())
    try:
        with serve_app(app) as url:
            yield url
    finally:
        jobs.queue.stop_consumer()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page by its name and its sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(url: str, name: str) -> float:
    """Return one value from a Prometheus /metrics page."""
    for line in requests.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def processes_in_group(group: int) -> dict[int, int]:
    """Return {pid: parent pid} of the live (not zombie) processes whose process group is ``group``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, parent, process_group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if state != "Z" and int(process_group) == group:
                found[int(entry.name)] = int(parent)
    return found


def gunicorn_workers(group: int) -> list[int]:
    """The pids of the gunicorn workers in a script's process group (the master's children)."""
    members = processes_in_group(group)
    gunicorn = {pid for pid in members if b"gunicorn" in _cmdline(pid)}
    return sorted(pid for pid in gunicorn if members[pid] in gunicorn)


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    """Return a process's memory in MiB from /proc: VmRSS (now) or VmHWM (its peak so far)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"{field}:\s+(\d+) kB", status)
    assert match, f"{field} not in /proc/{pid}/status"
    return round(int(match[1]) / 1024, 1)


def what_start_engine_sh_runs(
    script: Path, env: dict[str, str], tmp: Path, python: Sequence[str] = (sys.executable,)
) -> tuple[list[str], dict[str, str]]:
    """Run ``script`` (a scripts/start_engine.sh) with an interpreter that records what it hands vLLM's server instead
    of starting it: the server's arguments, from ``-m``, and its whole environment. Everything else the script runs
    with that interpreter (the flags) goes to ``python``: an environment with vLLM, to ask it which runner it picks."""
    recorded_args, recorded_env = tmp / "vllm-args", tmp / "vllm-environment"
    fake_python = tmp / "python"
    fake_python.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = vllm.entrypoints.openai.api_server ]; then\n'
        f'  printf "%s\\n" "$@" > {recorded_args}; env -0 > {recorded_env}; exit 0\n'
        "fi\n"
        f'exec {shlex.join(python)} "$@"\n'
    )
    fake_python.chmod(0o755)
    run = subprocess.run([str(script)], env={**env, "ENGINE_PYTHON": str(fake_python)}, capture_output=True,
                         text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    entries = [entry.split("=", 1) for entry in recorded_env.read_text().split("\0") if "=" in entry]
    return recorded_args.read_text().splitlines(), dict(entries)


def reset_peak_memory(pid: int) -> None:
    """Start a process's VmHWM again from its resident memory now (Linux's clear_refs), to measure the next peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Run a real redis-server (Debian's, as REDIS_SERVER or on PATH) on a free loopback port; yield its URL."""
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(workdir), "--protected-mode", "yes"]  # fmt: skip
    log = (workdir / "redis.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers_ping(port), timeout_s=15, interval_s=0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# A page of one figure and one text block, in DeepSeek-OCR's markup: what the stand-in answers for a job of pictures.
FIGURE_PAGE = (
    "<|ref|>image<|/ref|><|det|>[[0, 0, 499, 499]]<|/det|>\n<|ref|>text<|/ref|><|det|>[[0, 600, 999, 700]]<|/det|>\nHi"
)


def run_poster_job(url: str, engine_url: str) -> str:
    """A job of 8 posters (6320 x 6320 pixels each, a PDF of a few KB), every page a figure and a text block, annotate
    and figures on, run to its end on the service at ``url`` (its stand-in engine at ``engine_url``); its id."""
    from ocr_dev.inputs import make_pdf

    requests.post(f"{engine_url}/stand-in/text", json={"text": FIGURE_PAGE}, timeout=5).raise_for_status()
    try:
        posters = make_pdf(8, size=(3160, 3160))  # 6320 x 6320 pixels at 144 dpi
        posted = requests.post(f"{url}/jobs", files={"file": ("posters.pdf", posters)},
                               data={"figures": "true", "annotate": "true"}, timeout=60)  # fmt: skip
        assert posted.status_code == 202, posted.text
        job: str = posted.json()["id"]
        wait_until(lambda: requests.get(f"{url}/jobs/{job}", timeout=10).json()["status"] == "succeeded", 300)
    finally:
        requests.post(f"{engine_url}/stand-in/text", json={"text": None}, timeout=5).raise_for_status()
    return job


def fetch_job_pictures(url: str, job: str, pages: int = 8) -> list[int]:
    """Every page's annotated picture and first figure of a finished job, fetched 8 at a time; their statuses."""
    pictures = [f"{url}/jobs/{job}/pages/{index}/{name}" for index in range(1, pages + 1)
                for name in ("annotated.png", "figures/1.png")]  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda picture: requests.get(picture, timeout=600).status_code, pictures))
