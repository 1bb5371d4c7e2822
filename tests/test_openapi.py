"""The OpenAPI description: built from the url map (a route without a description, or a description without a
route, fails), real answers valid against it, and schemathesis fuzzing the running service against it."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import jsonschema_rs
import pytest
import requests
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ocr_api.http import openapi
from ocr_api.http.app import create_app
from ocr_api.options import FORM_FIELDS
from ocr_api.service import OcrService
from ocr_api.settings import Settings
from ocr_dev.inputs import data_url, make_pdf, png_bytes
from ocr_dev.servers import serve_service, stand_in_engine
from tests.fakes import FakeEngine

JSON = "application/json"
KEY = "spec-key-0123456789abcdef"
GROUNDED = (
    "<|ref|>title<|/ref|><|det|>[[100,100,500,200]]<|/det|>\n# Title\n\n"
    "<|ref|>image<|/ref|><|det|>[[0,300,999,900]]<|/det|>"
)


def _spec(client: FlaskClient) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json


def _validate(spec: dict, path: str, method: str, status: int, body: object, *, media: str = JSON) -> None:
    """Check ``body`` against the schema the description gives for this answer."""
    _conforms(spec, spec["paths"][path][method]["responses"][str(status)]["content"][media]["schema"], body)


def _conforms(spec: dict, schema: dict, body: object) -> None:
    validator = jsonschema_rs.Draft202012Validator({**schema, "components": spec["components"]})
    errors = [f"{error.instance_path}: {error.message}" for error in validator.iter_errors(body)]
    assert not errors, errors[:5]


def test_every_route_is_described_and_nothing_else(client: FlaskClient) -> None:
    spec = _spec(client)
    app = client.application
    served = {
        (openapi._CONVERTER.sub(r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    described = {(path, method) for path, methods in spec["paths"].items() for method in methods}
    assert served == described
    assert {"/v1/chat/completions", "/v1/models", "/ocr", "/ocr/batch", "/jobs/{job_id}/pages"} <= set(spec["paths"])


def test_a_route_added_without_a_description_fails_the_description() -> None:
    app = Flask(__name__)
    app.add_url_rule("/extra", "extra", lambda: "")
    with pytest.raises(LookupError, match="/extra"):
        openapi.describe(app, Settings(), ("gundam",))


def test_a_description_without_its_route_fails(client: FlaskClient) -> None:
    app = Flask(__name__, static_folder=None)  # no route at all
    with pytest.raises(LookupError, match="described but not served"):
        openapi.describe(app, Settings(), ("gundam",))
    assert client.get("/openapi.json").status_code == 200


def test_access_follows_the_blueprints(client: FlaskClient) -> None:
    spec = _spec(client)
    open_paths = {
        path for path, methods in spec["paths"].items() if all(op["security"] == [] for op in methods.values())
    }
    assert open_paths == {"/health", "/ready", "/", "/docs", "/openapi.json", "/static/{filename}"}
    keyed = make_keyed_client()
    for path in ("/", "/docs", "/openapi.json", "/static/app.js", "/health"):
        with keyed.get(path) as response:  # a static file's answer holds the file open until closed
            assert response.status_code == 200, path
    assert keyed.get("/v1/models").status_code == 401


def make_keyed_client() -> FlaskClient:
    settings = Settings(api_keys=KEY, upload_folder="/tmp/spec-uploads", jobs_dir="/tmp/spec-jobs")
    service = OcrService(settings, FakeEngine())
    service.start()
    return create_app(service=service).test_client()


def test_the_form_fields_are_the_ones_the_options_read(client: FlaskClient) -> None:
    spec = _spec(client)
    for path, file_field in (("/ocr", "file"), ("/ocr/batch", "files"), ("/jobs", "files")):
        form = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert set(form["properties"]) >= {file_field, *FORM_FIELDS}, path
        assert all(form["properties"][name]["description"] for name in FORM_FIELDS)
    assert spec["paths"]["/ocr"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "image"
    ]


def test_the_docs_page_is_rendered_from_the_description(client: FlaskClient) -> None:
    page = client.get("/docs").get_data(as_text=True)
    spec = _spec(client)
    for methods in spec["paths"].values():
        for operation in methods.values():
            assert f'id="{operation["operationId"]}"' in page
    assert "//cdn" not in page
    assert "<script" not in page  # no viewer, no script: the page is the description


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    with stand_in_engine(step_ms=5, tokens_per_page=5) as url:
        yield url


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, stand_in: str) -> Iterator[str]:
    with serve_service(tmp_path_factory.mktemp("spec"), stand_in, api_keys=KEY) as url:
        yield url


AUTH = {"Authorization": f"Bearer {KEY}"}


def _wait_finished(url: str, job_id: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = requests.get(f"{url}/jobs/{job_id}", headers=AUTH, timeout=10).json()
        if view["status"] not in ("queued", "running"):
            return view
        time.sleep(0.1)
    raise AssertionError("job not finished")


@pytest.mark.slow
def test_real_answers_match_the_description(served: str, stand_in: str) -> None:
    """Every body the routes give, successes and refusals, valid against its schema (closed: no unknown field)."""
    spec = requests.get(f"{served}/openapi.json", timeout=10).json()
    requests.post(f"{stand_in}/stand-in/text", json={"text": GROUNDED}, timeout=5).raise_for_status()
    try:
        check = lambda path, method, response: _validate(spec, path, method, response.status_code, response.json())  # noqa: E731
        image, pdf = png_bytes((320, 240)), make_pdf(2)
        fields = {"annotate": "true", "figures": "true", "task": "markdown"}
        check("/health", "get", requests.get(f"{served}/health", timeout=10))
        check("/ready", "get", requests.get(f"{served}/ready", timeout=10))
        for name, data in (("scan.png", image), ("doc.pdf", pdf)):
            response = requests.post(
                f"{served}/ocr", headers=AUTH, files={"file": (name, data)}, data=fields, timeout=60
            )
            assert response.status_code == 200, response.text
            check("/ocr", "post", response)
        batch = [("files", ("a.png", image)), ("files", ("b.pdf", pdf)), ("files", ("c.png", b"not an image"))]
        response = requests.post(f"{served}/ocr/batch", headers=AUTH, files=batch, timeout=60)
        assert response.json()["failed"] == 1
        check("/ocr/batch", "post", response)
        for shape, status in (
            (requests.post(f"{served}/ocr", headers=AUTH, timeout=10), 400),
            (requests.post(f"{served}/ocr", timeout=10), 401),
            (requests.post(f"{served}/ocr", headers=AUTH, files={"file": ("x.png", b"junk")}, timeout=10), 415),
        ):
            assert shape.status_code == status
            check("/ocr", "post", shape)
        response = requests.post(
            f"{served}/jobs", headers=AUTH, files=[("files", ("d.pdf", pdf))], data=fields, timeout=30
        )
        assert response.status_code == 202
        check("/jobs", "post", response)
        job_id = response.json()["id"]
        finished = _wait_finished(served, job_id)
        assert finished["status"] == "succeeded"
        check("/jobs/{job_id}", "get", requests.get(f"{served}/jobs/{job_id}", headers=AUTH, timeout=10))
        check("/jobs/{job_id}/pages", "get", requests.get(f"{served}/jobs/{job_id}/pages", headers=AUTH, timeout=10))
        check("/jobs/{job_id}/result", "get", requests.get(f"{served}/jobs/{job_id}/result", headers=AUTH, timeout=10))
        check("/jobs/{job_id}", "get", requests.get(f"{served}/jobs/nope", headers=AUTH, timeout=10))
        check("/v1/models", "get", requests.get(f"{served}/v1/models", headers=AUTH, timeout=10))
        chat = {
            "model": "deepseek-ocr",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}}]}],
            "ocr": {"structured": True},
        }
        response = requests.post(f"{served}/v1/chat/completions", headers=AUTH, json=chat, timeout=60)
        assert response.status_code == 200, response.text
        check("/v1/chat/completions", "post", response)
        response = requests.post(f"{served}/v1/chat/completions", headers=AUTH, json={"model": "x"}, timeout=10)
        check("/v1/chat/completions", "post", response)
    finally:
        requests.post(f"{stand_in}/stand-in/text", json={"text": None}, timeout=5)


def test_a_field_the_description_does_not_name_fails_validation(client: FlaskClient) -> None:
    """The schemas are closed: a result with a field nobody described does not pass."""
    spec = _spec(client)
    response = client.post("/ocr", data={"file": (io.BytesIO(png_bytes()), "a.png")})
    _conforms(spec, {"$ref": "#/components/schemas/ImageResult"}, response.json)
    for body in (
        {**response.json, "surprise": 1},
        {**response.json, "usage": {**response.json["usage"], "surprise": 1}},
    ):
        with pytest.raises(AssertionError, match="surprise"):
            _conforms(spec, {"$ref": "#/components/schemas/ImageResult"}, body)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_no_5xx_and_no_answer_off_the_description(served: str, mode: GenerationMode) -> None:
    """Every operation fuzzed against the running service (keys on): valid and invalid requests alike get no 5xx,
    and every answer, status, media type, headers and body, is as described."""
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    failures: dict[str, str] = {}
    fuzzed: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    described = {
        f"{method.upper()} {path}" for path, methods in schema.raw_schema["paths"].items() for method in methods
    }
    # Schemathesis leaves out the operation that serves the description it was loaded from.
    assert {operation.label for operation in operations} == described - {"GET /openapi.json"}
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=30)

        try:
            run()
            fuzzed.append(operation.label)
        except Unsatisfiable:  # negative mode: nothing in this operation's request can be made invalid
            continue
        except Exception as error:  # noqa: BLE001 - gathered, so that one run names every operation at fault
            failures[operation.label] = str(error)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{error}" for label, error in failures.items())
    every_body = {"POST /ocr", "POST /ocr/batch", "POST /jobs", "POST /v1/chat/completions", "GET /jobs/{job_id}/pages"}
    assert set(fuzzed) >= (every_body if mode == GenerationMode.NEGATIVE else described - {"GET /openapi.json"})
