"""OpenAI's chat completion API over the OCR service: a request read into one image and /ocr's options, and the
answer shaped as OpenAI's ``chat.completion`` (or its stream of ``chat.completion.chunk``).

What each kind of client sends (../shared/reference/clients.md): a DeepSeek-OCR-2 server's clients put the image
and the instruction (without ``<image>``) in the user message; the hosted API's clients put the whole prompt, with
``<image>``, in the system message and the image alone in the user message. Both are read here;
docs/API_DOCUMENTATION.md lists what happens to every other field.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ocr_api.errors import BadRequest, NotFound
from ocr_api.options import form_from_json
from ocr_api.results import PAGE_SEPARATOR, FileResult
from ocr_api.shapes import SAMPLING_FIELDS, ChatChoice, ChatCompletion, ChatOcrOptions, Model, ModelList, Usage

MAX_MESSAGES = 64
MAX_PARTS = 64  # content parts of one message
MAX_TEXT_CHARS = 100_000  # all text parts together; the prompt itself is bounded again by MAX_PROMPT_CHARS
PROMPT_ROLES = ("system", "developer")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# ocr: {...}, this service's extension: the same fields as /ocr's form, and "structured" for the whole result.
OCR_FIELDS = tuple(ChatOcrOptions.__annotations__)
# OpenAI fields an OCR model cannot honour, and the values of each that ask for nothing (sent by clients that always
# send them): any other value is refused.
ASKING_NOTHING: dict[str, tuple[object, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
}


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request as the service runs it: one image, its prompt and /ocr's options."""

    model: str
    image_url: str  # a data: URL, or an http(s) URL to fetch
    prompt: str | None  # None: the service's DEFAULT_PROMPT
    max_tokens: int | None
    stream: bool = False
    include_usage: bool = False
    structured: bool = False
    form: dict[str, list[str]] = field(default_factory=dict)  # the ocr extension's fields, in the form's shape

    def options_form(self) -> dict[str, list[str]]:
        """The fields /ocr would have been sent for this request (validated there, by the same rules)."""
        form = dict(self.form)
        if self.prompt is not None:
            form["prompt"] = [self.prompt]
        if self.max_tokens is not None:
            form["max_tokens"] = [str(self.max_tokens)]
        return form


def parse_chat(body: Mapping[str, Any], max_tokens_limit: int) -> ChatRequest:
    """Read a chat completion body; raise BadRequest naming the field at fault."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("'model' is required: a model id from GET /v1/models.", code="missing_model").naming("model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list.", code="invalid_messages").naming("messages")
    if len(messages) > MAX_MESSAGES:
        raise BadRequest(
            f"'messages' holds {len(messages)} messages; at most {MAX_MESSAGES} are read.", code="too_many_messages"
        ).naming("messages")
    read = [_read_message(message, position) for position, message in enumerate(messages)]
    images = [(role, url) for role, _, urls in read for url in urls]
    if not images:
        raise BadRequest(
            "The messages hold no image: send one as an image_url content part of the user message.",
            code="missing_image",
        ).naming("messages")
    if len(images) > 1:
        raise BadRequest(
            f"The messages hold {len(images)} images; a chat completion reads one (the model takes one image per "
            "prompt). Send each image in its own request, or several files to /ocr/batch or /jobs.",
            code="too_many_images",
        ).naming("messages")
    if images[0][0] != "user":
        raise BadRequest("The image must be in a user message.", code="invalid_messages").naming("messages")
    _check_unsupported(body)
    stream = _optional(body, "stream", bool, False)
    stream_options = _optional(body, "stream_options", dict, {})
    ocr = _optional(body, "ocr", dict, {})
    unknown = sorted(name for name in ocr if name not in OCR_FIELDS)
    if unknown:
        raise BadRequest(f"Unknown ocr field '{unknown[0][:40]}'.", code="unknown_field").naming("ocr")
    form = form_from_json(ocr, OCR_FIELDS[1:], _wrong_ocr_type)
    return ChatRequest(
        model=model.strip(),
        image_url=images[0][1],
        prompt=_prompt(read),
        max_tokens=_max_tokens(body, max_tokens_limit),
        stream=stream,
        include_usage=bool(_optional(stream_options, "include_usage", bool, False)),
        structured=bool(_optional(ocr, "structured", bool, False)),
        form=form,
    )


def _read_message(message: object, position: int) -> tuple[str, list[str], list[str]]:
    """A message's role, its text parts and its image URLs."""
    where = f"messages[{position}]"
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object with a role and content.", code="invalid_messages").naming(where)
    role = message.get("role")
    if role not in ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}.", code="invalid_messages").naming(
            f"{where}.role"
        )
    content = message.get("content")
    if content is None or isinstance(content, str):
        return role, [content] if content else [], []
    if not isinstance(content, list):
        raise BadRequest(
            f"{where}.content must be a string or a list of content parts.", code="invalid_messages"
        ).naming(f"{where}.content")
    if len(content) > MAX_PARTS:
        raise BadRequest(
            f"{where}.content holds {len(content)} parts; at most {MAX_PARTS} are read.", code="too_many_parts"
        ).naming(f"{where}.content")
    texts, urls = [], []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}.content[{index}]"
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            urls.append(_image_url(part.get("image_url"), at))
        else:
            raise BadRequest(f"{at} must be a text part or an image_url part.", code="unsupported_content_part").naming(
                at
            )
    if sum(len(text) for text in texts) > MAX_TEXT_CHARS:
        raise BadRequest(f"{where}'s text is longer than {MAX_TEXT_CHARS} characters.", code="prompt_too_long")
    return role, texts, urls


def _image_url(value: object, at: str) -> str:
    url = value.get("url") if isinstance(value, dict) else value  # {"url": ...}, or the older bare string
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{at}.image_url.url must be a string.", code="invalid_image_url").naming(f"{at}.image_url")
    if not url[:8].lower().startswith(("data:", "http://", "https://")):  # schemes are case-insensitive
        raise BadRequest(
            f"{at}.image_url.url must be a data: URL (data:image/png;base64,...) or an http(s):// URL.",
            code="invalid_image_url",
        ).naming(f"{at}.image_url")
    return url


def _prompt(read: Sequence[tuple[str, list[str], list[str]]]) -> str | None:
    """The instruction: the last user message's text, else the system message's (the hosted API's clients put the
    whole prompt there), else None for the service's default prompt. ``<image>`` is placed by normalize_prompt."""
    users = [texts for role, texts, _ in read if role == "user"]
    last_user = "\n".join(text.strip() for text in users[-1] if text.strip()) if users else ""
    if last_user:
        return last_user
    system = "\n".join(text.strip() for role, texts, _ in read if role in PROMPT_ROLES for text in texts)
    return system.strip() or None


def _max_tokens(body: Mapping[str, Any], limit: int) -> int | None:
    """max_completion_tokens (the newer name) or max_tokens; above MAX_TOKENS it is lowered to it, as clients of
    an OCR-2 server send 8192 whatever the server allows."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"'{name}' must be a whole number of 1 or more.", code="invalid_max_tokens").naming(name)
        return min(value, limit)
    return None


def _check_unsupported(body: Mapping[str, Any]) -> None:
    """Refuse what would change the answer and cannot be honoured; check the types of what is ignored."""
    # What clients send that changes nothing here: decoding is greedy (temperature 0, the model authors' setting) and
    # deterministic, so sampling settings and a seed have no effect; a client's own guard (vllm_xargs) is replaced by
    # the service's. Their types are still checked.
    for name in SAMPLING_FIELDS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise BadRequest(f"'{name}' must be a number.", code="invalid_parameter").naming(name)
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest(
            "n must be 1: decoding is greedy, so every choice would be the same.", code="unsupported_parameter"
        ).naming("n")
    if body.get("stop") not in (None, "", []):
        raise BadRequest(
            "stop sequences are not supported: the model ends a page itself, and cutting the markup short would "
            "break the layout.",
            code="unsupported_parameter",
        ).naming("stop")
    for name, asks_nothing in ASKING_NOTHING.items():
        if name in body and body[name] not in asks_nothing:
            raise BadRequest(f"'{name}' is not supported by an OCR model.", code="unsupported_parameter").naming(name)


def _optional(body: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise BadRequest(f"'{name}' must be a {kind.__name__}.", code="invalid_parameter").naming(name)
    return value


def _wrong_ocr_type(name: str, value: object) -> BadRequest:
    return BadRequest(f"ocr.{name} has the wrong type ({type(value).__name__}).", code="invalid_parameter").naming(
        f"ocr.{name}"
    )


# -- the model's names


def served_names(model_id: str, family: str) -> list[str]:
    """The names a request may give the model: its id first, then the documented aliases (docs/API_DOCUMENTATION.md).

    Clients of an OCR-2 server send the authors' checkpoint id, the hosted API's "DeepSeek-OCR"; either reaches
    this model whatever directory or layout it was loaded from.
    """
    checkpoints = {
        "deepseek-ocr-2": ["deepseek-ai/DeepSeek-OCR-2", "deepseek-community/DeepSeek-OCR-2", "deepseek-ocr-2"],
        "deepseek-ocr": ["deepseek-ai/DeepSeek-OCR", "unsloth/DeepSeek-OCR"],
    }
    names = [model_id, model_id.rstrip("/").rsplit("/", 1)[-1], *checkpoints.get(family, []), "deepseek-ocr"]
    unique: dict[str, str] = {}
    for name in names:
        if name:
            unique.setdefault(name.lower(), name)
    return list(unique.values())


def check_model(requested: str, names: Sequence[str]) -> None:
    """404 ``model_not_found`` unless ``requested`` is one of the names (compared without regard to case)."""
    if requested.lower() not in {name.lower() for name in names}:
        raise NotFound(
            f"The model {requested[:100]!r} does not exist here; this service serves {names[0]} (also as "
            f"{', '.join(names[1:])}).",
            code="model_not_found",
        ).naming("model")


def models_body(names: Sequence[str], created: int, context_length: int) -> ModelList:
    """GET /v1/models: the served model, then its aliases, each as OpenAI lists a model."""
    data: list[Model] = [
        {"id": name, "object": "model", "created": created, "owned_by": "deepseek-ocr-api", "root": names[0],
         "parent": None if name == names[0] else names[0], "max_model_len": context_length}
        for name in names
    ]  # fmt: skip
    return {"object": "list", "data": data}


# -- the answer


def raw_content(result: FileResult) -> str:
    """What the model wrote, markup kept, as the hosted API returns it; a document's pages joined by the separator."""
    return PAGE_SEPARATOR.join(
        page.outcome.reading.output.text if page.outcome.reading is not None else "" for page in result.pages
    )


def finish_reason(result: FileResult) -> str:
    """ "length" when any page ran out of tokens, else "stop"."""
    truncated = any(page.outcome.reading is not None and page.outcome.reading.truncated for page in result.pages)
    return "length" if truncated else "stop"


def usage(result: FileResult) -> Usage:
    readings = [page.outcome.reading for page in result.pages if page.outcome.reading is not None]
    prompt = sum(reading.output.prompt_tokens for reading in readings)
    completion = sum(reading.output.completion_tokens for reading in readings)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass(frozen=True)
class Completion:
    """The head every object of one answer shares: its id, when it was made, the model named."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, result: FileResult, structured: bool) -> ChatCompletion:
        """The whole ``chat.completion``; with ``structured`` the /ocr body rides along as ``ocr``."""
        choice: ChatChoice = {
            "index": 0,
            "message": {"role": "assistant", "content": raw_content(result)},
            "logprobs": None,
            "finish_reason": finish_reason(result),
        }
        head = self._head("chat.completion")
        body: ChatCompletion = {**head, "choices": [choice], "usage": usage(result)}  # type: ignore[typeddict-item]
        if structured:
            body["ocr"] = result.to_dict()
        return body

    def chunk(self, delta: dict[str, Any], reason: str | None = None, **extra: Any) -> dict[str, Any]:
        """One ``chat.completion.chunk`` of a streamed answer."""
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {**self._head("chat.completion.chunk"), "choices": [choice], **extra}

    def usage_chunk(self, result: FileResult) -> dict[str, Any]:
        """The last chunk when ``stream_options.include_usage`` is set: no choices, the usage."""
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(result)}

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}
