"""Several vLLM servers behind one remote engine (OCR_ENGINE_URL a list), against two STAND-IN servers (no model):
the least busy healthy one gets each page, a server killed mid-document loses no page, and one that comes back
is used again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ocr_dev.inputs import make_pdf
from ocr_dev.servers import free_port, metric, serve_service, stand_in_process, wait_until

pytestmark = pytest.mark.slow

STEP_MS, TOKENS = 50, 40  # 2 s a page: a server killed 1 s in holds pages it has not answered


def _pages_done(url: str) -> float:
    return metric(url, "stand_in:pages_done_total")


def _ocr_pdf(url: str, pages: int, timeout: float = 120) -> requests.Response:
    pdf = make_pdf(pages, size=(120, 120))
    return requests.post(f"{url}/ocr", files={"file": ("doc.pdf", pdf)}, data={"pages": f"1-{pages}"},
                         timeout=timeout)  # fmt: skip


@pytest.fixture
def two_servers() -> Iterator[list]:
    with stand_in_process(STEP_MS, TOKENS) as first, stand_in_process(STEP_MS, TOKENS) as second:
        yield [first, second]


def test_pages_are_spread_over_the_servers_by_pages_in_flight(tmp_path: Path, two_servers):
    (first, _), (second, _) = two_servers
    with serve_service(tmp_path, f"{first},{second}") as url:
        done_before = [_pages_done(first), _pages_done(second)]
        response = _ocr_pdf(url, 8)
        assert response.status_code == 200, response.text
        assert [page["status"] for page in response.json()["pages"]] == ["ok"] * 8
        # All eight are in flight together: four at each server.
        assert [_pages_done(first) - done_before[0], _pages_done(second) - done_before[1]] == [4, 4]
        assert requests.get(f"{url}/ready", timeout=5).status_code == 200


def test_a_server_killed_mid_document_loses_no_page_and_ready_stays_200(tmp_path: Path, two_servers):
    (first, _), (second, second_process) = two_servers
    port = int(second.rsplit(":", 1)[1])
    with serve_service(tmp_path, f"{first},{second}", max_pages_in_flight=64, max_pdf_pages=64) as url:
        done_before = _pages_done(first)
        answers: list[requests.Response] = []
        document = threading.Thread(target=lambda: answers.append(_ocr_pdf(url, 64)))
        readiness: list[int] = []
        stop_probing = threading.Event()

        def probe() -> None:
            while not stop_probing.wait(0.2):
                readiness.append(requests.get(f"{url}/ready", timeout=5).status_code)

        prober = threading.Thread(target=probe)
        document.start()
        prober.start()
        # Killed once it holds pages: each takes 2 s, so none of them has been answered yet.
        wait_until(lambda: metric(second, "vllm:num_requests_running") >= 8, timeout_s=10, interval_s=0.05)
        second_process.kill()
        second_process.wait()
        document.join(120)
        stop_probing.set()
        prober.join(10)
        (response,) = answers
        assert response.status_code == 200, response.text
        pages = response.json()["pages"]
        assert [page["page"] for page in pages] == list(range(1, 65))
        assert all(page["status"] == "ok" for page in pages)
        # The killed server answered none: every page, those it held included, was done by the other.
        assert _pages_done(first) - done_before == 64
        assert readiness
        assert set(readiness) == {200}
        scrape = requests.get(f"{url}/metrics", timeout=5).text
        assert f'ocr_engine_server_healthy{{server="{first}"}} 1.0' in scrape
        assert f'ocr_engine_server_healthy{{server="{second}"}} 0.0' in scrape

        # It comes back on the same port: the health check sees it and it gets pages again.
        with stand_in_process(STEP_MS, TOKENS, port=port) as (again, _):
            wait_until(lambda: _spread(url, first, again), timeout_s=20, interval_s=0.5)


def _spread(url: str, first: str, second: str) -> bool:
    before = _pages_done(second)
    assert _ocr_pdf(url, 4).status_code == 200
    return _pages_done(second) > before


def test_with_every_server_down_a_request_is_503_and_ready_says_so(tmp_path: Path):
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with stand_in_process(STEP_MS, 1) as (alive, process), serve_service(tmp_path, ",".join([*dead, alive])) as url:
        assert requests.get(f"{url}/ready", timeout=5).status_code == 200  # one of three is enough
        assert _ocr_pdf(url, 2).status_code == 200
        process.kill()
        process.wait()
        wait_until(lambda: requests.get(f"{url}/ready", timeout=5).status_code == 503, timeout_s=10)
        response = _ocr_pdf(url, 1)
        assert response.status_code == 503
        assert response.json()["code"] in ("engine_not_ready", "engine_unavailable")
