"""Every JSON body the service builds is what ocr_api/shapes.py declares, closed: checked here at the source, with
pydantic, as /openapi.json's components (generated from the same declarations) are checked over HTTP in
tests/test_openapi.py."""

from __future__ import annotations

import io
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from ocr_api import shapes
from ocr_api.http.openapi import describe
from ocr_dev.inputs import make_pdf, png_bytes
from tests.test_jobs import FigureEngine

AUTH = {"X-API-Key": "k" * 16}


def conforms(shape: Any, body: object) -> None:
    TypeAdapter(shape).validate_python(body, strict=True)


def test_ocr_answers_are_their_declared_shapes(make_client):
    client = make_client(engine=FigureEngine())
    fields = {"annotate": "true", "figures": "true", "task": "markdown"}
    image = client.post("/ocr", data={"file": (io.BytesIO(png_bytes((320, 240))), "a.png"), **fields})
    conforms(shapes.ImageResult, image.json)
    document = client.post("/ocr", data={"file": (io.BytesIO(make_pdf(2)), "d.pdf"), **fields})
    conforms(shapes.DocumentResult, document.json)
    files = [(io.BytesIO(png_bytes()), "a.png"), (io.BytesIO(b"not an image"), "b.png")]
    batch = client.post("/ocr/batch", data={"files": files})
    conforms(shapes.BatchResult, batch.json)
    assert batch.json["failed"] == 1
    conforms(shapes.FileFailure, batch.json["results"][1])
    conforms(shapes.Error, client.post("/ocr").json)
    conforms(shapes.Health, client.get("/health").json)
    conforms(shapes.Ready, client.get("/ready").json)


def test_openai_answers_are_their_declared_shapes(make_client):
    client = make_client()
    conforms(shapes.ModelList, client.get("/v1/models").json)
    chat = {
        "model": "deepseek-ocr",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url()}}]}],
        "ocr": {"structured": True},
    }
    conforms(shapes.ChatRequest, chat)
    conforms(shapes.ChatCompletion, client.post("/v1/chat/completions", json=chat).json)
    conforms(shapes.OpenAIError, client.post("/v1/chat/completions", json={"model": "x"}).json)


def test_a_jobs_answers_are_their_declared_shapes(make_jobs):
    jobs_app = make_jobs(FigureEngine(), api_keys=AUTH["X-API-Key"])
    job = jobs_app.submit((make_pdf(2), "d.pdf"), headers=AUTH, annotate="true", figures="true")
    conforms(shapes.Job, job)
    jobs_app.start()
    conforms(shapes.Job, jobs_app.wait(job["id"], headers=AUTH))
    client = jobs_app.client
    conforms(shapes.JobPages, client.get(f"/jobs/{job['id']}/pages", headers=AUTH).json)
    conforms(shapes.DocumentResult, client.get(f"/jobs/{job['id']}/result", headers=AUTH).json)


def test_a_field_not_declared_fails():
    with pytest.raises(ValidationError, match="surprise"):
        conforms(shapes.Error, {"error": "x", "code": "y", "surprise": 1})
    with pytest.raises(ValidationError, match="surprise"):
        conforms(shapes.Usage, {"prompt_tokens": 1, "surprise": 1})


def test_the_description_s_components_are_the_declarations(make_client):
    app = make_client().application
    components = describe(app, app.extensions["ocr_service"].settings, ("gundam",))["components"]["schemas"]
    for name, shape in shapes.COMPONENTS.items():
        generated = TypeAdapter(shape).json_schema(ref_template="#/components/schemas/{model}")
        declared = generated.get("$defs", {}).get(name, generated)
        assert set(components[name].get("properties", {})) == set(declared.get("properties", {})), name
        assert components[name].get("required") == declared.get("required"), name


def _data_url() -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
