"""Metrics, request ids and the summary line, in-process with the fake engine (the two-worker scrape through
start_production.sh is in tests/test_front_server.py)."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import time
from pathlib import Path

import pytest

from ocr_api.engines import PromptTooLong
from ocr_api.http.tracking import REQUEST_ID_HEADER
from ocr_api.logs import formatter_for
from ocr_dev.inputs import make_pdf, png_bytes
from ocr_dev.servers import metric_samples
from tests.fakes import FakeEngine

KEY = "metrics-test-key-0123456789"
ELSEWHERE = {"REMOTE_ADDR": "192.0.2.7"}


def scrape(client, **kwargs) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by its name and labels."""
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain")
    return metric_samples(response.get_data(as_text=True))


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _ocr(client, data: bytes, name: str = "a.png", **kwargs):
    # Buffered: the test client then closes the answer as a server does, which is when a request is summed up.
    return client.post("/ocr", data={"file": (io.BytesIO(data), name)}, buffered=True, **kwargs)


def test_requests_pages_tokens_and_engine_time_are_counted(make_client):
    client = make_client()
    before = scrape(client)
    assert _ocr(client, png_bytes()).status_code == 200
    assert _ocr(client, make_pdf(3, size=(200, 200)), "three.pdf").status_code == 200
    assert _ocr(client, b"not an image", "x.png").status_code == 415
    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("ocr_requests_total", route="/ocr", method="POST", status="200", code="") == 2
    assert grew("ocr_requests_total", route="/ocr", method="POST", status="415", code="unsupported_media_type") == 1
    assert grew("ocr_pages_total", status="ok") == 4
    assert grew("ocr_request_duration_seconds_count", route="/ocr") == 3
    assert grew("ocr_engine_page_seconds_count") == 4
    assert grew("ocr_prompt_tokens_sum") == 4 * 300  # the fake engine's counts
    assert grew("ocr_completion_tokens_sum") == 4 * 12
    assert value(after, "ocr_pages_in_flight") == 0


def test_failed_and_retried_pages_have_their_own_status(make_client):
    class RunawayEngine(FakeEngine):
        def answer(self, request):  # every page loops to the budget: tried again, then truncated
            output = super().answer(request)
            return output.__class__(**{**output.__dict__, "finish_reason": "length"})

    client = make_client(engine=RunawayEngine(), runaway_retries=1)
    before = scrape(client)
    assert _ocr(client, png_bytes()).status_code == 200
    after = scrape(client)
    assert value(after, "ocr_pages_total", status="retried") - value(before, "ocr_pages_total", status="retried") == 1
    assert (
        value(after, "ocr_pages_total", status="truncated") - value(before, "ocr_pages_total", status="truncated") == 1
    )
    # A page the engine cannot take (its prompt and image leave no room in the context) fails alone.
    client = make_client(engine=FakeEngine(fail_with=PromptTooLong("no room left in the context")))
    response = _ocr(client, make_pdf(2, size=(200, 200)), "two.pdf")
    assert (response.status_code, response.get_json()["code"]) == (422, "prompt_too_long_for_context")
    failed = scrape(client)
    assert value(failed, "ocr_pages_total", status="failed") - value(after, "ocr_pages_total", status="failed") == 2


def test_a_refusal_at_the_admission_bound_and_pages_in_flight(make_client):
    client = make_client(max_pages_in_flight=2)
    service = client.application.extensions["ocr_service"]
    before = scrape(client)
    assert service.admission.try_take()
    assert service.admission.try_take()
    during = scrape(client)
    assert value(during, "ocr_pages_in_flight") == value(before, "ocr_pages_in_flight") + 2
    assert _ocr(client, png_bytes()).status_code == 503
    service.admission.release(2)
    after = scrape(client)
    assert value(after, "ocr_admission_refusals_total") == value(before, "ocr_admission_refusals_total") + 1
    assert value(after, "ocr_pages_in_flight") == value(before, "ocr_pages_in_flight")
    assert value(after, "ocr_requests_total", route="/ocr", method="POST", status="503", code="overloaded") >= 1


def test_metrics_are_open_on_loopback_and_need_a_key_elsewhere(make_client):
    client = make_client(api_keys=KEY, rate_limit="2/minute")
    assert client.get("/metrics").status_code == 200  # the test client's peer is 127.0.0.1
    response = client.get("/metrics", environ_base=ELSEWHERE)
    assert (response.status_code, response.get_json()["code"]) == (401, "missing_api_key")
    assert client.get("/metrics", environ_base=ELSEWHERE, headers={"X-API-Key": KEY}).status_code == 200
    for _ in range(5):  # a scraper is never rate-limited
        assert client.get("/metrics").status_code == 200


def test_the_queue_depth_and_its_oldest_job(make_client):
    client = make_client()
    samples = scrape(client)  # no job ever: no queue file is made by a scrape
    assert value(samples, "ocr_jobs_queued") == 0
    settings = client.application.extensions["ocr_service"].settings
    assert not (Path(settings.jobs_dir) / "queue.db").exists()
    for name in ("a.png", "b.png"):  # no consumer runs here: both stay queued
        response = client.post("/jobs", data={"file": (io.BytesIO(png_bytes()), name)})
        assert response.status_code == 202
    time.sleep(0.2)
    samples = scrape(client)
    assert value(samples, "ocr_jobs_queued") == 2
    assert 0.2 <= value(samples, "ocr_jobs_oldest_queued_age_seconds") < 60


def test_a_request_id_is_taken_or_made_returned_and_in_every_log_line(make_client, caplog):
    client = make_client()
    caplog.set_level(logging.INFO)
    response = _ocr(client, b"not an image", "x.png", headers={REQUEST_ID_HEADER: "client-id-42"})
    assert response.headers[REQUEST_ID_HEADER] == "client-id-42"
    lines = [record for record in caplog.records if getattr(record, "request_id", None) == "client-id-42"]
    assert any("rejected upload" in record.getMessage() for record in lines)  # the service's own line
    summary = [record for record in lines if record.name == "ocr_api.requests"]
    assert len(summary) == 1
    assert summary[0].summary == {
        "route": "/ocr", "method": "POST", "status": 415, "code": "unsupported_media_type", "pages": 0,
        "prompt_tokens": 0, "completion_tokens": 0, "ms": summary[0].summary["ms"],
    }  # fmt: skip
    made = _ocr(client, png_bytes()).headers[REQUEST_ID_HEADER]
    assert len(made) == 32
    for unusable in ("two words", "x" * 129, 'quote"d'):  # replaced, never logged as sent
        answered = _ocr(client, png_bytes(), headers={REQUEST_ID_HEADER: unusable}).headers[REQUEST_ID_HEADER]
        assert answered not in (unusable, made)
        assert len(answered) == 32
        assert unusable not in {getattr(record, "request_id", None) for record in caplog.records}


def test_the_summary_line_counts_pages_and_tokens(make_client, caplog):
    client = make_client()
    caplog.set_level(logging.INFO, logger="ocr_api.requests")
    response = _ocr(client, make_pdf(2, size=(200, 200)), "two.pdf", headers={REQUEST_ID_HEADER: "two-pages"})
    assert response.status_code == 200
    (record,) = [r for r in caplog.records if r.name == "ocr_api.requests" and r.request_id == "two-pages"]
    assert (record.summary["pages"], record.summary["prompt_tokens"], record.summary["completion_tokens"]) == (
        2,
        600,
        24,
    )
    assert record.getMessage().startswith("POST /ocr 200 code=- pages=2 tokens=600+24 ")
    client.get("/health", buffered=True)  # probes are summed up too, at DEBUG: load balancers ask often
    assert not [r for r in caplog.records if r.name == "ocr_api.requests" and r.summary["route"] == "/health"]


def test_json_lines_carry_the_request_id_and_the_summary_fields():
    record = logging.LogRecord("ocr_api.requests", logging.INFO, __file__, 1, "POST /ocr 200", None, None)
    record.request_id = "abc"
    record.summary = {"route": "/ocr", "status": 200, "pages": 1}
    line = json.loads(formatter_for("json").format(record))
    assert {key: line[key] for key in ("level", "logger", "message", "request_id")} == {
        "level": "INFO", "logger": "ocr_api.requests", "message": "POST /ocr 200", "request_id": "abc"
    }  # fmt: skip
    assert line["summary"] == {"route": "/ocr", "status": 200, "pages": 1}
    assert "time" in line
    text = formatter_for("text").format(record)
    assert "[abc]: POST /ocr 200" in text


def test_a_client_chosen_request_id_is_redacted_like_any_secret(make_client, caplog):
    from ocr_api.logs import RedactSecrets

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    record.request_id = KEY
    RedactSecrets([KEY]).filter(record)
    assert record.request_id == "[redacted]"


@pytest.mark.parametrize("log_format", ["yaml", ""])
def test_log_format_is_validated(log_format):
    from ocr_api.settings import ConfigError, Settings

    if log_format:
        with pytest.raises(ConfigError, match="LOG_FORMAT must be one of text, json"):
            Settings.from_env({"LOG_FORMAT": log_format})
    else:
        assert Settings.from_env({"LOG_FORMAT": log_format}).log_format == "text"


def test_the_dashboard_asks_only_for_metrics_the_service_serves(make_client):
    client = make_client()
    _ocr(client, png_bytes())
    served = {name for name, _ in scrape(client)}
    dashboard = json.loads((Path(__file__).parent.parent / "docs" / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    wanted = {name for expression in expressions for name in re.findall(r"\bocr_[a-z_]+", expression)}
    assert len(wanted) >= 10
    assert wanted - served == set()


def test_a_streamed_chat_completion_is_summed_up_with_its_pages(make_client, caplog):
    client = make_client()
    caplog.set_level(logging.INFO, logger="ocr_api.requests")
    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": image}}]
    body = {"model": "deepseek-ocr", "stream": True, "messages": [{"role": "user", "content": content}]}
    response = client.post("/v1/chat/completions", json=body, headers={REQUEST_ID_HEADER: "streamed"}, buffered=True)
    assert response.status_code == 200
    assert b"[DONE]" in response.data
    (record,) = [r for r in caplog.records if r.name == "ocr_api.requests" and r.request_id == "streamed"]
    assert (record.summary["route"], record.summary["pages"], record.summary["completion_tokens"]) == (
        "/v1/chat/completions", 1, 12)  # fmt: skip


def test_engine_server_urls_lose_their_credentials_in_the_metrics():
    from ocr_api.engines.base import without_credentials

    assert without_credentials("http://user:pw@gpu-1:8000") == "http://gpu-1:8000"
    assert without_credentials("https://token@gpu-2") == "https://gpu-2"
    assert without_credentials("http://gpu-3:8000") == "http://gpu-3:8000"


def test_a_queue_that_cannot_be_read_leaves_the_other_metrics_answering(make_client, caplog):
    from ocr_dev.servers import free_port

    client = make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    _ocr(client, png_bytes())
    samples = scrape(client)
    assert ("ocr_jobs_queued", ()) not in samples
    assert value(samples, "ocr_requests_total", route="/ocr", method="POST", status="200", code="") >= 1
    assert "the job queue cannot be read" in caplog.text
