"""Issue 11's defects, measured: slow clients, work for clients that left, the TIFF frame bomb, keys in logs.

Each figure has a baseline run in the same invocation where one can be: the service under gunicorn alone, as
``start_production.sh`` ran it before the front server (``--worker-connections`` = ``--threads``, gunicorn's own
logger), against ``start_production.sh`` as it is now (nginx in front). Both serve the STAND-IN engine
(ocr_dev/stand_in_engine.py, no model, 2 s a page). The TIFF is counted by Pillow (the old code) and by ours.

    .venv/bin/python -m bench.defects            # about 3 minutes; prints what docs/RELIABILITY.md quotes
"""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from PIL import Image

from ocr_api.preparation import ImageLimits, decode_image
from ocr_dev.inputs import make_pdf, many_directory_tiff, png_bytes
from ocr_dev.servers import (
    REPO,
    dribble,
    environment,
    gunicorn_socket_of,
    metric,
    running,
    stand_in_engine,
    stop,
    wait_ready,
)

WORKERS, THREADS = 2, 8  # the production settings
KEY = "bench-configured-key-0123456789"
STRAY_KEYS = ("bench-query-key-aaaaaaaa", "bench-bearer-key-bbbbbbbb", "bench-header-key-cccccccc")
MALFORMED_KEY = "bench-malformed-key-dddddddd"
HEALTH_TIMEOUT_S = 5.0


@contextlib.contextmanager
def gunicorn_alone(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """The service as start_production.sh started it before the front server: gunicorn on the port itself."""
    logs = Path(env["LOG_DIR"])
    logs.mkdir(parents=True, exist_ok=True)
    command = [
        str(REPO / ".venv" / "bin" / "gunicorn"),
        *("--workers", str(WORKERS), "--threads", str(THREADS), "--worker-connections", str(THREADS)),
        *("--bind", f"{env['HOST']}:{env['PORT']}", "--access-logfile", str(logs / "access.log")),
        *("--error-logfile", str(logs / "error.log"), "--capture-output", "app:create_app()"),
    ]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, cwd=REPO, env={**env, "OCR_ENGINE": "remote"}, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(f"http://{env['HOST']}:{env['PORT']}", process, log, timeout_s=120)
        yield process
    finally:
        stop(process)


def slow_clients(url: str, connections: int) -> str:
    """Hold ``connections`` dribbling clients (half on headers, half on bodies) and probe /health and /ocr."""
    port = int(url.rsplit(":", 1)[1])
    stop_at = threading.Event()
    dribblers = [
        threading.Thread(target=dribble, args=(port, 100_000 if number % 2 else None, stop_at))
        for number in range(connections)
    ]
    for dribbler in dribblers:
        dribbler.start()
    time.sleep(2)
    latencies: list[float] = []
    for _ in range(8):
        started = time.monotonic()
        try:
            requests.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S).raise_for_status()
            latencies.append(time.monotonic() - started)
        except requests.RequestException:
            latencies.append(float("inf"))
        time.sleep(0.3)
    try:
        ocr = str(requests.post(f"{url}/ocr", files=_page(), headers=_auth(KEY), timeout=15).status_code)
    except requests.RequestException:
        ocr = "no answer in 15 s"
    stop_at.set()
    for dribbler in dribblers:
        dribbler.join(5)
    slowest = max(latencies)
    health = f"slowest {slowest:.3f} s" if slowest != float("inf") else f"timed out ({HEALTH_TIMEOUT_S:g} s)"
    answered = sum(latency != float("inf") for latency in latencies)
    return f"{connections} slow connections: /health {answered}/8 answered, {health}; /ocr {ocr}"


def abandoned_work(url: str, engine_url: str) -> str:
    """Four 100-page PDFs whose clients hang up after 1.5 s: what did the engine run for nobody?"""
    done_before = metric(engine_url, "stand_in:pages_done_total")
    aborted_before = metric(engine_url, "stand_in:aborted_total")
    pdf = make_pdf(100)

    def leave() -> None:
        with contextlib.suppress(requests.RequestException):
            requests.post(f"{url}/ocr", files={"file": ("long.pdf", pdf)}, headers=_auth(KEY), timeout=1.5)

    clients = [threading.Thread(target=leave) for _ in range(4)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    time.sleep(1)
    live = requests.post(f"{url}/ocr", files=_page(), headers=_auth(KEY), timeout=60)
    time.sleep(8)  # whatever was still running at the engine finishes or is aborted by now
    done = metric(engine_url, "stand_in:pages_done_total") - done_before - (live.status_code == 200)
    aborted = metric(engine_url, "stand_in:aborted_total") - aborted_before
    code = live.json().get("code") if live.status_code != 200 else ""
    return f"4 x 100-page PDFs left after 1.5 s: {done:.0f} pages decoded for nobody, {aborted:.0f} aborted; " + (
        f"a live client then got {live.status_code} {code}".strip()
    )


def keys_in_logs(url: str, logs: Path, gunicorn_socket: str | None) -> str:
    """Send keys everywhere a client might put one; count the log lines that carry one."""
    query_key, bearer_key, header_key = STRAY_KEYS
    requests.post(f"{url}/ocr", files=_page(), headers=_auth(KEY), timeout=30)
    requests.get(f"{url}/ocr?api_key={query_key}", timeout=10)
    requests.post(f"{url}/ocr", headers={"Authorization": f"Bearer {bearer_key}"}, timeout=10)
    requests.post(f"{url}/ocr", headers={"X-API-Key": header_key}, timeout=10)
    malformed = f"POST /ocr?api_key={query_key} HTTP/1.1\r\nHost: x\r\nX-API-Key {MALFORMED_KEY}\r\n\r\n".encode()
    targets = [("tcp", int(url.rsplit(":", 1)[1]))] + ([("unix", gunicorn_socket)] if gunicorn_socket else [])
    for kind, address in targets:
        family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.connect(address if kind == "unix" else ("127.0.0.1", address))
            sock.sendall(malformed)
            sock.recv(4096)
    time.sleep(1)
    files = [path for path in sorted(logs.iterdir()) if path.is_file()]
    lines = [line for path in files for line in path.read_text(errors="replace").splitlines()]
    carrying = [line for line in lines if any(key in line for key in (KEY, *STRAY_KEYS, MALFORMED_KEY))]
    return f"log lines carrying a key: {len(carrying)} of {len(lines)}"


def tiff_cpu() -> list[str]:
    """CPU seconds to count the frames of TIFFs made of many directories: Pillow's count against ours."""
    limits = ImageLimits(max_pixels=40_000_000, min_side=8, max_aspect_ratio=64, timeout_s=3600)
    lines = []
    decode_image(many_directory_tiff(2), limits)  # first use: imports and caches out of the timing
    for directories in (20_000, 146_248):
        data = many_directory_tiff(directories)
        started = time.process_time()
        frames = decode_image(data, limits).frames
        ours = time.process_time() - started
        if directories == 20_000:  # Pillow's count on the big one takes minutes (the issue measured 150 s)
            started = time.process_time()
            with Image.open(io.BytesIO(data)) as opened:
                pillow_frames = opened.n_frames
            pillow = time.process_time() - started
            lines.append(
                f"TIFF, {directories} directories ({len(data) / 1e6:.1f} MB): Pillow counts {pillow_frames} in "
                f"{pillow:.2f} s of CPU; the service counts {frames} (its cap) in {ours:.4f} s ({pillow / ours:.0f}x)"
            )
        else:
            lines.append(f"TIFF, {directories} directories ({len(data) / 1e6:.1f} MB): {frames} in {ours:.4f} s")
    return lines


def _page() -> dict:
    return {"file": ("p.png", png_bytes((400, 300)))}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def main() -> None:
    print("STAND-IN engine (no model, 2 s a page); 2 CPU cores; figures from this one invocation")
    for line in tiff_cpu():
        print(line)
    with stand_in_engine(step_ms=50, tokens_per_page=40) as engine_url, tempfile.TemporaryDirectory() as work:
        for name in ("gunicorn alone (before)", "start_production.sh (nginx in front)"):
            tmp = Path(work) / name.split()[0]
            tmp.mkdir()
            settings = {"WORKERS": str(WORKERS), "THREADS": str(THREADS), "API_KEYS": KEY, "CLIENT_TIMEOUT_S": "30"}
            env = environment(tmp, OCR_ENGINE_URL=engine_url, **settings)
            url = f"http://127.0.0.1:{env['PORT']}"
            log = tmp / "start.log"
            is_front = name.startswith("start_production")
            server = running("start_production.sh", env, log, 300) if is_front else gunicorn_alone(env, log)
            with server:
                gunicorn_socket = gunicorn_socket_of(log) if is_front else None
                print(f"\n{name}, {WORKERS} workers x {THREADS} threads")
                for connections in (16, 64, 256):
                    print("  " + slow_clients(url, connections))
                    if not is_front:
                        break  # gunicorn alone is down from 16 on; more says nothing new
                print("  " + abandoned_work(url, engine_url))
                print("  " + keys_in_logs(url, Path(env["LOG_DIR"]), gunicorn_socket))


if __name__ == "__main__":
    main()
