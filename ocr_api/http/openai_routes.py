"""OpenAI's API on the service's own port: GET /v1/models and POST /v1/chat/completions, behind the same keys,
limits, image checks and admission bound as /ocr, through the same page stream. Errors here are in OpenAI's shape
(ocr_api/errors.py renders them so for every path under /v1/)."""

from __future__ import annotations

import time
from functools import partial

from flask import Blueprint, Response, jsonify, request

from ocr_api import outbound
from ocr_api.engines.base import StopCheck
from ocr_api.errors import BadRequest, UnsupportedMediaType
from ocr_api.http import chat, json_body
from ocr_api.http.chat_stream import StreamedCompletion
from ocr_api.http.disconnect import client_gone_probe
from ocr_api.http.state import current_service
from ocr_api.options import OcrOptions
from ocr_api.results import FileError, FileResult
from ocr_api.service import OcrService, PageListener, UploadedFile
from ocr_api.settings import Settings

# Not in access.OPEN_BLUEPRINTS: keys and rate limits apply, as to /ocr.
openai_routes = Blueprint("openai", __name__, url_prefix="/v1")
STARTED = int(time.time())  # "created" of the model in /v1/models


def _names(service: OcrService) -> list[str]:
    return chat.served_names(service.engine.model_id, service.engine.profile.family)


@openai_routes.get("/models")
def list_models():
    """The served model and its aliases, as OpenAI lists models."""
    service = current_service()
    return jsonify(chat.models_body(_names(service), STARTED, service.engine.context_length))


@openai_routes.post("/chat/completions")
def chat_completions():
    """One image (a data URL, or a fetched http(s) URL) OCR'd with the messages' prompt; streamed when asked."""
    service = current_service()
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            f"Send the chat completion as application/json; got Content-Type {request.mimetype[:100]!r}.",
            code="not_json",
        )
    asked = chat.parse_chat(json_body.parse_object(request.get_data(cache=False)), service.settings.max_tokens)
    chat.check_model(asked.model, _names(service))
    options = service.options_from(asked.options_form())
    uploads = [UploadedFile("image", _image_bytes(asked.image_url, service.settings))]
    completion = chat.Completion(asked.model)
    client_gone = client_gone_probe(request.environ)
    if not asked.stream:
        result = service.recognize(uploads, options, client_gone)[0]
        if isinstance(result, FileError):
            raise result.error
        return jsonify(completion.body(result, asked.structured))
    streamed = StreamedCompletion(partial(_run, service, uploads, options), completion, asked, client_gone)
    streamed.start()
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx passes each event on as it comes
    return Response(streamed.events(), mimetype="text/event-stream", headers=headers)


def _run(
    service: OcrService, uploads: list[UploadedFile], options: OcrOptions, listener: PageListener, stop: StopCheck
) -> FileResult | FileError:
    return service.recognize(uploads, options, stop, listener)[0]


def _image_bytes(url: str, settings: Settings) -> bytes:
    """The image's bytes: decoded from a data URL, or fetched (IMAGE_URL_FETCH) from a public http(s) address."""
    if url[:5].lower() == "data:":
        return json_body.decode_data_url(url, "image_url", settings.max_content_length)
    if not settings.image_url_fetch:
        raise BadRequest(
            "This service does not fetch http(s) image URLs (IMAGE_URL_FETCH is off); send the image as a data URL "
            "(data:image/png;base64,...).",
            code="image_url_fetch_disabled",
        ).naming("messages")
    limits = outbound.FetchLimits(
        settings.max_content_length, settings.image_url_timeout_s, settings.image_url_networks
    )
    return outbound.fetch(url, limits)
