"""Who may call what: API keys, CORS, rate limits (per process and shared through Redis), redacted logs."""

from __future__ import annotations

import hmac
import io
import logging
import re
import subprocess
import sys
import threading

import pytest
import requests

from ocr_api.logs import RedactSecrets
from ocr_api.settings import ConfigError, Settings
from ocr_dev.inputs import png_bytes
from ocr_dev.servers import environment, free_port, start, stop, wait_ready
from tests.conftest import REPO

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"


def _ocr(client, headers=None, path="/ocr", field="file"):
    data = {field: (io.BytesIO(png_bytes()), "page.png")}
    return client.post(path, data=data, content_type="multipart/form-data", headers=headers or {})


def test_with_keys_set_ocr_needs_one_and_health_and_ready_stay_open(make_client):
    client = make_client(api_keys=f"{KEY_A},{KEY_B}")
    missing = _ocr(client)
    assert (missing.status_code, missing.get_json()["code"]) == (401, "missing_api_key")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = _ocr(client, {"X-API-Key": KEY_A + "x"})
    assert (wrong.status_code, wrong.get_json()["code"]) == (401, "invalid_api_key")
    assert _ocr(client, {"Authorization": "Basic " + KEY_A}).status_code == 401  # only Bearer carries a key
    assert _ocr(client, {"Authorization": f"Bearer {KEY_A}"}).status_code == 200
    assert _ocr(client, {"X-API-Key": KEY_B}).status_code == 200  # several keys, either header
    assert _ocr(client, {"X-API-Key": KEY_B}, path="/ocr/batch", field="files").status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


def test_with_keys_every_route_but_the_probes_needs_one_a_route_added_later_included(make_client):
    client = make_client(api_keys=KEY_A)
    app = client.application
    app.add_url_rule("/added-later", "added_later", lambda: "engine time", methods=["GET", "POST"])
    open_routes, guarded = [], []
    # The description routes refuse to describe an app with a route nobody described (tests/test_openapi.py).
    describing = {"web.api_docs", "web.openapi_document", "web.static"}
    elsewhere = {"REMOTE_ADDR": "192.0.2.7"}  # /metrics is open on loopback only (test_metrics_access)
    for rule in app.url_map.iter_rules():
        if rule.endpoint in describing:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(rule.rule, method=method, environ_base=elsewhere)
            (open_routes if rule.endpoint.startswith(("probes.", "web.")) else guarded).append(
                (method, rule.rule, response.status_code)
            )
    assert sorted(open_routes) == [("GET", "/", 200), ("GET", "/health", 200), ("GET", "/ready", 200)]
    with client.get("/static/app.js") as response:  # the page's files: a browser cannot send a key for them
        assert response.status_code == 200
    assert ("GET", "/added-later", 401) in guarded
    assert {(method, path) for method, path, _ in guarded} >= {("POST", "/ocr"), ("POST", "/ocr/batch")}
    assert all(status == 401 for _, _, status in guarded), guarded
    assert client.get("/no-such-path").status_code == 401  # nothing about the routes to a client without a key
    assert client.get("/no-such-path", headers={"X-API-Key": KEY_A}).status_code == 404


def test_without_keys_nothing_asks_for_one(client):
    assert _ocr(client).status_code == 200


def test_every_key_is_compared_in_constant_time_whichever_matches(make_client, monkeypatch):
    calls: list[bytes] = []
    real_compare = hmac.compare_digest

    def counting(a, b):
        calls.append(b)
        return real_compare(a, b)

    monkeypatch.setattr("ocr_api.http.access.hmac.compare_digest", counting)
    client = make_client(api_keys=f"{KEY_A},{KEY_B}")
    for presented in (KEY_A, KEY_B, "not-a-key-at-all-000"):
        calls.clear()
        _ocr(client, {"X-API-Key": presented})
        assert calls == [KEY_A.encode(), KEY_B.encode()]  # no early exit on the first match


def test_keys_shorter_than_16_characters_are_refused_at_start():
    with pytest.raises(ConfigError, match="16 characters"):
        Settings(api_keys="short")


def test_keys_never_reach_the_log_even_when_code_logs_them(make_client, caplog):
    client = make_client(api_keys=KEY_A, engine_api_key="engine-secret-123456")
    caplog.set_level(logging.INFO)
    _ocr(client, {"X-API-Key": KEY_A})
    _ocr(client, {"X-API-Key": KEY_B})
    logging.getLogger("anything").warning("oops %s and %s", KEY_A, "engine-secret-123456")
    try:
        raise RuntimeError(f"failed with {KEY_A}")
    except RuntimeError:
        logging.getLogger("anything").exception("traceback")
    assert KEY_A not in caplog.text
    assert "engine-secret-123456" not in caplog.text
    assert "[redacted]" in caplog.text


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ('"GET /ocr?api_key=sk-live-1 HTTP/1.1" 401', '"GET /ocr?api_key=[redacted] HTTP/1.1" 401'),
        ("POST /ocr?page=2&token=abc;x=1", "POST /ocr?page=2&token=[redacted];x=1"),
        ("client sent Authorization: Bearer sk-live-1", "client sent Authorization: Bearer [redacted]"),
        ("Invalid header: 'authorization: basic dXNlcjpwdw=='", "Invalid header: 'authorization: basic [redacted]'"),
        ("X-API-Key: sk-live-1, next", "X-API-Key: [redacted], next"),
        ("x-api-key sk-live-1", "x-api-key [redacted]"),
        ('{"x-api-key": "sk-live-1"}', '{"x-api-key": "[redacted]"}'),
        ("GET /ocr?pages=1-3 HTTP/1.1", "GET /ocr?pages=1-3 HTTP/1.1"),  # nothing secret: left as it is
    ],
)
def test_credentials_a_client_sends_are_redacted_whether_or_not_they_are_configured(line, kept):
    assert RedactSecrets().redact(line) == kept


def test_configured_secrets_are_redacted_longest_first_anywhere_in_a_line():
    redactor = RedactSecrets(["abc", "abcdef", ""])
    assert redactor.redact("saw abcdef then abc") == "saw [redacted] then [redacted]"


def test_another_process_log_is_redacted_line_by_line_on_its_way_to_the_file():
    command = [sys.executable, "-m", "ocr_api.logs", "redact"]
    env = {"PATH": "/usr/bin:/bin", "API_KEYS": KEY_A}
    lines = f'client sent "GET /ocr?key={KEY_B} HTTP/1.1"\nheader X-API-Key: {KEY_A}\nplain\n'
    run = subprocess.run(command, input=lines, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert run.stdout.splitlines() == [
        'client sent "GET /ocr?key=[redacted] HTTP/1.1"',
        "header X-API-Key: [redacted]",
        "plain",
    ]


def test_settings_repr_hides_every_secret():
    settings = Settings(
        api_keys=KEY_A,
        rate_limit_storage_uri="redis://:hunter2hunter2@cache:6379/0",
        redis_url="redis://:jobspass99@queue:6379/1",
        callback_secret="callback-signing-key",
    )
    for secret in (KEY_A, "hunter2", "jobspass99", "callback-signing-key"):
        assert secret not in repr(settings)


def test_the_job_queues_password_and_the_callback_key_are_redacted_in_logs():
    from ocr_api.logs import RedactSecrets, secrets_of

    settings = Settings(redis_url="redis://:jobspass99@queue:6379/1", callback_secret="callback-signing-key")
    line = "Error connecting to redis://:jobspass99@queue:6379/1 while signing with callback-signing-key"
    redacted = RedactSecrets(secrets_of(settings)).redact(line)
    assert "jobspass99" not in redacted
    assert "callback-signing-key" not in redacted


def test_cors_is_off_by_default(client):
    response = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_answers_configured_origins_only_and_preflight_needs_no_key(make_client):
    client = make_client(cors_origins="https://app.example.com", api_keys=KEY_A)
    allowed = _ocr(client, {"Origin": "https://app.example.com", "X-API-Key": KEY_A})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    exposed = {name.strip().lower() for name in allowed.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"retry-after", "x-ocr-failed-pages", "x-ocr-kept-text-pages"} <= exposed  # readable by the other origin
    other = _ocr(client, {"Origin": "https://evil.example", "X-API-Key": KEY_A})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options(
        "/ocr",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "x-api-key" in preflight.headers["Access-Control-Allow-Headers"].lower()
    # The 401 itself carries the CORS header, so a browser page can read why it was refused.
    refused = _ocr(client, {"Origin": "https://app.example.com"})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


def test_rate_limit_refuses_past_the_limit_with_retry_after_and_spares_health(make_client):
    client = make_client(rate_limit="3/minute")
    assert [_ocr(client).status_code for _ in range(3)] == [200, 200, 200]
    refused = _ocr(client)
    assert (refused.status_code, refused.get_json()["code"]) == (429, "rate_limited")
    assert int(refused.headers["Retry-After"]) > 0
    assert [client.get("/health").status_code for _ in range(5)] == [200] * 5


def test_with_keys_the_rate_limit_counts_each_key_and_ignores_made_up_ones(make_client):
    client = make_client(rate_limit="2/minute", api_keys=f"{KEY_A},{KEY_B}")
    assert [_ocr(client, {"X-API-Key": KEY_A}).status_code for _ in range(3)] == [200, 200, 429]
    assert _ocr(client, {"X-API-Key": KEY_B}).status_code == 200  # another client, its own budget
    assert _ocr(client, {"X-API-Key": "made-up-key-0000000000"}).status_code == 401  # refused before counting


def test_without_keys_a_made_up_key_does_not_open_a_new_budget(make_client):
    client = make_client(rate_limit="2/minute")
    statuses = [_ocr(client, {"X-API-Key": f"random-key-{i:012d}"}).status_code for i in range(3)]
    assert statuses == [200, 200, 429]


def test_the_rate_limit_counts_work_not_polling_and_only_refusals_carry_retry_after(make_client):
    client = make_client(rate_limit="3/minute", api_keys=KEY_A)
    key = {"X-API-Key": KEY_A}
    posted = client.post("/jobs", data={"file": (io.BytesIO(png_bytes()), "page.png")}, headers=key)
    assert posted.status_code == 202  # submitting a job counts: 1 of 3
    job = posted.get_json()["id"]
    # The documented polling loop and the web page read progress every second or two: never counted.
    polls = [client.get(f"/jobs/{job}", headers=key) for _ in range(10)]
    polls += [client.get(f"/jobs/{job}/pages", headers=key), client.get(f"/jobs/{job}/result", headers=key)]
    assert {answer.status_code for answer in polls} <= {200, 202}
    missing = client.get("/jobs/no-such-job", headers=key)
    assert missing.status_code == 404
    for answer in [*polls, missing, posted]:  # Retry-After belongs to 429 and 503 alone
        assert "Retry-After" not in answer.headers
    # A job's pictures cost a page's drawing each: counted, as OCR requests are.
    picture = client.get(f"/jobs/{job}/pages/1/annotated.png", headers=key)
    assert picture.status_code == 404  # the job asked for none; counted all the same: 2 of 3
    assert _ocr(client, key).status_code == 200  # 3 of 3
    refused = _ocr(client, key)
    assert (refused.status_code, refused.get_json()["code"]) == (429, "rate_limited")
    assert int(refused.headers["Retry-After"]) > 0
    assert client.get(f"/jobs/{job}", headers=key).status_code in (200, 202)  # polling goes on


def test_rate_limit_storage_down_falls_back_to_this_process_instead_of_500(make_client):
    client = make_client(rate_limit="2/minute", rate_limit_storage_uri=f"redis://127.0.0.1:{free_port()}/0")
    statuses = [_ocr(client).status_code for _ in range(6)]
    assert set(statuses) == {200, 429}, statuses


def test_an_invalid_rate_limit_is_refused_at_start():
    with pytest.raises(ConfigError, match="RATE_LIMIT"):
        Settings(rate_limit="lots")


@pytest.mark.slow
def test_a_redis_backed_limit_holds_across_gunicorn_workers(tmp_path):
    """Two workers, one limit: with shared storage (a real redis-server) the workers together admit exactly it."""
    from ocr_dev.servers import redis_server

    with redis_server(tmp_path / "redis") as redis_url, _stand_in_for_rate_limits() as engine_url:
        env = environment(
            tmp_path,
            OCR_ENGINE_URL=engine_url,
            WORKERS="2",
            THREADS="1",
            RATE_LIMIT="6/minute",
            RATE_LIMIT_STORAGE_URI=redis_url,
        )
        url = f"http://127.0.0.1:{env['PORT']}"
        log = tmp_path / "production.log"
        process = start("start_production.sh", env, log)
        try:
            wait_ready(url, process, log, timeout_s=300)
            statuses: list[int] = []

            def send() -> None:
                response = requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes())}, timeout=30)
                statuses.append(response.status_code)

            for _ in range(5):  # two at a time: each single-threaded worker takes one
                pair = [threading.Thread(target=send) for _ in range(2)]
                for thread in pair:
                    thread.start()
                for thread in pair:
                    thread.join()
        finally:
            assert stop(process) == 0, log.read_text()[-3000:]
    workers = set(
        re.findall(r'"POST /ocr HTTP/1.1" \d+ .* worker=<(\d+)>', (tmp_path / "logs" / "access.log").read_text())
    )
    assert len(workers) == 2, "both workers must have answered for the test to mean anything"
    assert sorted(statuses) == [200] * 6 + [429] * 4
    assert "falling back to in-memory" not in (tmp_path / "logs" / "error.log").read_text()
    assert redis_url not in log.read_text()


def _stand_in_for_rate_limits():
    from ocr_dev.servers import stand_in_engine

    return stand_in_engine(step_ms=50, tokens_per_page=6)  # 0.3 s a page: the two requests overlap
