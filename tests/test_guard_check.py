"""The start-up check that the engine applies the repetition guard, against the STAND-IN vLLM server (no model),
started with and without the guard, and against the in-process engines' own checks.

The real vLLM, started with and without NGramPerReqLogitsProcessor, is checked the same way in tests/test_vllm_guard.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ocr_dev.inputs import png_bytes
from ocr_dev.servers import metric_samples, serve_service, stand_in_engine, wait_until

pytestmark = pytest.mark.slow


def _guard_gauge(url: str, server: str) -> float:
    samples = metric_samples(requests.get(f"{url}/metrics", timeout=5).text)
    return samples[("ocr_engine_guard_verified", (("server", server),))]


def _ocr(url: str) -> requests.Response:
    return requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes((64, 48)))}, timeout=30)


def _set_guard(engine: str, guarded: bool) -> None:
    requests.post(f"{engine}/stand-in/guard", json={"guarded": guarded}, timeout=5).raise_for_status()


@contextlib.contextmanager
def _stand_in(*extra: str) -> Iterator[str]:
    with stand_in_engine(step_ms=5, tokens_per_page=4, extra=extra) as url:
        yield url


def test_a_guarded_engine_is_verified_and_says_how(tmp_path: Path):
    with _stand_in() as engine, serve_service(tmp_path, engine) as url:
        assert requests.get(f"{url}/ready", timeout=5).status_code == 200
        guard = requests.get(f"{url}/health", timeout=5).json()["guard"]
        assert guard["required"] is True
        check = guard["checks"][engine]
        assert check["state"] == "verified"
        assert "ngram_size" in check["check"]  # what was asked, and the guard's refusal
        assert _guard_gauge(url, engine) == 1.0
        assert _ocr(url).status_code == 200


def test_an_unguarded_engine_is_not_ready_says_why_and_is_ready_once_it_comes_back_guarded(tmp_path: Path):
    with _stand_in("--unguarded") as engine, serve_service(tmp_path, engine) as url:
        ready = requests.get(f"{url}/ready", timeout=5)
        assert (ready.status_code, ready.json()["code"]) == (503, "engine_unguarded")
        assert ready.headers["Retry-After"]
        assert engine in ready.json()["error"]
        assert "ocr_guard.vllm_v2:NoRepeatNGramGuard" in ready.json()["error"]  # what to start vLLM with
        health = requests.get(f"{url}/health", timeout=5)
        assert health.status_code == 200
        assert health.json()["guard"]["checks"][engine]["state"] == "missing"
        assert _guard_gauge(url, engine) == 0.0
        refused = _ocr(url)
        assert (refused.status_code, refused.json()["code"]) == (503, "engine_unguarded")
        assert requests.get(f"{engine}/stand-in/last", timeout=5).json() == {}  # no page reached it

        # Fixed, the guard alone does not bring it back: the verdict holds until the server comes back from a restart.
        _set_guard(engine, True)
        assert requests.get(f"{url}/ready", timeout=5).json()["code"] == "engine_unguarded"
        requests.post(f"{engine}/stand-in/mode", json={"mode": "unhealthy"}, timeout=5).raise_for_status()
        wait_until(lambda: requests.get(f"{url}/ready", timeout=5).json().get("code") == "engine_not_ready", 10)
        requests.post(f"{engine}/stand-in/mode", json={"mode": "normal"}, timeout=5).raise_for_status()
        wait_until(lambda: requests.get(f"{url}/ready", timeout=5).status_code == 200, timeout_s=10)
        assert requests.get(f"{url}/health", timeout=5).json()["guard"]["checks"][engine]["state"] == "verified"
        assert _guard_gauge(url, engine) == 1.0
        assert _ocr(url).status_code == 200


def test_a_restarted_server_that_lost_its_guard_gets_no_more_pages(tmp_path: Path):
    with _stand_in() as engine, serve_service(tmp_path, engine) as url:
        assert _ocr(url).status_code == 200
        requests.post(f"{engine}/stand-in/mode", json={"mode": "unhealthy"}, timeout=5).raise_for_status()
        wait_until(lambda: requests.get(f"{url}/ready", timeout=5).status_code == 503, timeout_s=10)
        _set_guard(engine, False)  # it comes back as a vLLM started without the processor
        requests.post(f"{engine}/stand-in/mode", json={"mode": "normal"}, timeout=5).raise_for_status()
        wait_until(lambda: requests.get(f"{url}/ready", timeout=5).json().get("code") == "engine_unguarded", 10)
        assert _ocr(url).json()["code"] == "engine_unguarded"


def test_allow_unguarded_engine_uses_it_and_still_says_it_is_unguarded(tmp_path: Path):
    with _stand_in("--unguarded") as engine, serve_service(tmp_path, engine, allow_unguarded_engine=True) as url:
        assert requests.get(f"{url}/ready", timeout=5).status_code == 200
        guard = requests.get(f"{url}/health", timeout=5).json()["guard"]
        assert guard == {"required": False, "checks": {engine: guard["checks"][engine]}}
        assert guard["checks"][engine]["state"] == "missing"
        assert _guard_gauge(url, engine) == 0.0
        assert _ocr(url).status_code == 200


def test_of_two_servers_the_unguarded_one_gets_no_pages(tmp_path: Path):
    with (
        _stand_in() as guarded,
        _stand_in("--unguarded") as unguarded,
        serve_service(tmp_path, f"{guarded},{unguarded}") as url,
    ):
        assert requests.get(f"{url}/ready", timeout=5).status_code == 200
        for _ in range(4):
            assert _ocr(url).status_code == 200
        assert requests.get(f"{unguarded}/stand-in/request-ids", timeout=5).json()["request_ids"] == []
        assert len(requests.get(f"{guarded}/stand-in/request-ids", timeout=5).json()["request_ids"]) == 4
        checks = requests.get(f"{url}/health", timeout=5).json()["guard"]["checks"]
        assert {server: check["state"] for server, check in checks.items()} == {
            guarded: "verified",
            unguarded: "missing",
        }


def test_the_transformers_engines_check_runs_what_generate_is_given(monkeypatch):
    from ocr_api.engines import transformers_engine

    assert transformers_engine._check_guard().state == "verified"
    # A guard that bans nothing (the processor dropped, or broken) is caught.
    monkeypatch.setattr(transformers_engine, "banned_next_tokens", lambda *args, **kwargs: set())
    check = transformers_engine._check_guard()
    assert check.state == "unchecked"
    assert "banned [] instead of [6]" in check.detail


def _health_of(url: str, engine: str) -> tuple[bool, str]:
    """Whether the service sees ``engine`` healthy (its gauge), and the state of its guard check (/health)."""
    samples = metric_samples(requests.get(f"{url}/metrics", timeout=5).text)
    healthy = samples[("ocr_engine_server_healthy", (("server", engine),))] == 1.0
    return healthy, requests.get(f"{url}/health", timeout=5).json()["guard"]["checks"][engine]["state"]


def test_a_slow_guard_check_holds_up_neither_the_start_nor_the_other_servers_health(tmp_path: Path):
    with _stand_in() as fast, _stand_in() as slow:
        requests.post(f"{slow}/stand-in/guard", json={"probe_delay_s": 60}, timeout=5).raise_for_status()
        # The start waits for the first checks a moment at most: ready through the fast server, the slow one unchecked.
        with serve_service(tmp_path, f"{fast},{slow}") as url:
            assert requests.get(f"{url}/ready", timeout=5).status_code == 200
            assert _health_of(url, slow) == (True, "unchecked")
            # The fast server goes down while the slow check is still out: seen at the next health check, not after it.
            requests.post(f"{fast}/stand-in/mode", json={"mode": "unhealthy"}, timeout=5).raise_for_status()
            wait_until(lambda: _health_of(url, fast) == (False, "unchecked"), timeout_s=10)
            assert requests.get(f"{url}/ready", timeout=5).status_code == 503
            requests.post(f"{fast}/stand-in/mode", json={"mode": "normal"}, timeout=5).raise_for_status()
            wait_until(lambda: _health_of(url, fast) == (True, "verified"), timeout_s=10)
            assert _health_of(url, slow) == (True, "unchecked")  # its check still out, nothing else held up


def test_a_healthy_server_is_checked_again_both_ways(tmp_path: Path):
    """A URL that balances over several vLLMs (one started with other flags), or a server fixed in place: neither
    fails a health check, and GUARD_RECHECK_S later the service knows."""
    with _stand_in() as engine, serve_service(tmp_path, engine, guard_recheck_s=1) as url:
        assert _ocr(url).status_code == 200
        _set_guard(engine, False)
        wait_until(lambda: requests.get(f"{url}/ready", timeout=5).json().get("code") == "engine_unguarded", 10)
        assert _health_of(url, engine) == (True, "missing")
        assert _ocr(url).json()["code"] == "engine_unguarded"
        _set_guard(engine, True)
        wait_until(lambda: requests.get(f"{url}/ready", timeout=5).status_code == 200, timeout_s=10)
        assert _health_of(url, engine) == (True, "verified")
        assert _ocr(url).status_code == 200
