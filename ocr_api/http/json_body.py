"""JSON request bodies: parsed strictly, and images inside them (base64, or data URLs) decoded within the limits.

/ocr and /ocr/batch take ``{"image": ...}`` and ``{"images": [...]}`` with the form's fields; the chat completion
route reads its images through ``decode_data_url``. The format of an image is decided by its bytes, as for a
multipart upload: a data URL's declared type only has to name an image or a PDF.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from ocr_api.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from ocr_api.options import FORM_FIELDS, form_from_json

# The "API guide" style clients (../shared/reference/clients.md) send these beside the image; decoding is greedy,
# so they change nothing, and refusing them would break those clients.
IGNORED_FIELDS = ("temperature", "top_p", "seed")
# Scheme, type and ";base64" are case-insensitive (RFC 2397, RFC 3986).
DATA_URL = re.compile(
    r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<base64>;base64)?,", re.IGNORECASE
)
ACCEPTED_TYPES = ("image/", "application/pdf", "application/octet-stream")


def parse_object(data: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 ``invalid_json`` for anything else: not UTF-8 (JSON's only encoding between
    systems, RFC 8259; Python would also guess UTF-16 and UTF-32), bad syntax, NaN or Infinity (not JSON), nesting
    too deep. Numbers too large to hold stand as BEYOND_ANY_RANGE, for their field to refuse."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"The body is not UTF-8 (a byte at {exc.start} is not); send JSON in UTF-8.",
                         code="invalid_json") from None  # fmt: skip
    try:
        body = json.loads(text, parse_constant=_not_json, parse_float=_finite, parse_int=_bounded)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON (line {exc.lineno}, column {exc.colno}).",
                         code="invalid_json") from None  # fmt: skip
    except RecursionError:  # arrays nested thousands deep
        raise BadRequest("The body is not valid JSON: it is nested too deeply.", code="invalid_json") from None
    except ValueError as exc:  # NaN, Infinity
        raise BadRequest(f"The body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest(f"The body must be a JSON object; got {type(body).__name__}.", code="invalid_json")
    return body


# Valid JSON numbers too large for Python to hold as written (1e400; an integer of 5,001 digits) stand as this large
# number, so that the field they are in refuses them with its own range message.
BEYOND_ANY_RANGE = 10**100


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")  # NaN, Infinity: Python writes them, JSON has no such thing


def _finite(literal: str) -> float:
    value = float(literal)
    return value if math.isfinite(value) else math.copysign(BEYOND_ANY_RANGE, value)


def _bounded(literal: str) -> int:
    if len(literal) > 1000:  # Python refuses to read integers of over 4,300 digits, naming its own settings
        return -BEYOND_ANY_RANGE if literal.startswith("-") else BEYOND_ANY_RANGE
    return int(literal)


def decode_image(value: object, field: str, max_bytes: int, limit: int | None = None) -> bytes:
    """The bytes of an image given as base64 or as a data URL (``data:image/png;base64,...``), at most
    ``max_bytes`` of them (what is left of ``limit``, the upload limit the message names)."""
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a base64 string or a data URL.", code="invalid_field_type")
    if value[:5].lower() == "data:":
        return decode_data_url(value, field, max_bytes, limit)
    return _base64(value, field, max_bytes, limit)


def decode_data_url(url: str, field: str, max_bytes: int, limit: int | None = None) -> bytes:
    """The bytes of a base64 data URL whose declared type names an image or a PDF."""
    match = DATA_URL.match(url[:300])
    if match is None or not match["base64"]:
        raise BadRequest(
            f"'{field}' must be a base64 data URL such as data:image/png;base64,iVBOR...", code="invalid_data_url"
        )
    declared = (match["type"] or "").lower()
    if not declared.startswith(ACCEPTED_TYPES):  # none declared is text/plain (RFC 2397)
        said = f"declares {declared[:60]!r}" if declared else "declares no type (text/plain, by RFC 2397)"
        raise UnsupportedMediaType(
            f"'{field}' {said}; send an image (PNG, JPEG, WEBP, GIF, BMP, TIFF) or a PDF: data:image/png;base64,...",
            code="unsupported_media_type",
        )
    return _base64(url[match.end() :], field, max_bytes, limit)


def _base64(text: str, field: str, max_bytes: int, limit: int | None) -> bytes:
    text = re.sub(r"\s+", "", text)  # base64 wrapped at 76 columns is still base64
    if len(text) // 4 * 3 > max_bytes:
        what = f"The images up to '{field}' decode" if limit else f"'{field}' decodes"
        raise PayloadTooLarge(f"{what} to more than the upload limit of {(limit or max_bytes) / 2**20:g} MiB.")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"'{field}' is not valid base64.", code="invalid_base64") from None
    if not data:
        raise BadRequest(f"'{field}' is empty.", code="empty_file")
    return data


def ocr_request(
    body: Mapping[str, Any], field: str, max_bytes: int, max_files: int
) -> tuple[list[tuple[str, bytes]], dict[str, list[str]]]:
    """The images and form fields of a JSON /ocr (``field`` "image") or /ocr/batch ("images") request.

    Returns (name, bytes) per image, named after where it was in the body, and the fields in the form's shape.
    MAX_UPLOAD_MB bounds the decoded bytes of all images together, as it bounds the body.
    """
    allowed = {field, *FORM_FIELDS, *IGNORED_FIELDS}
    unknown = sorted(name for name in body if name not in allowed)
    if unknown:
        other = "images" if field == "image" else "image"
        hint = " (/ocr takes 'image', /ocr/batch 'images')" if other in unknown else ""
        raise BadRequest(f"Unknown field '{unknown[0][:40]}'{hint}.", code="unknown_field")
    if field not in body:
        raise BadRequest(f"Send the image as base64 or a data URL in the JSON field '{field}'.", code="missing_file")
    if field == "image":
        named = [("image", decode_image(body["image"], "image", max_bytes))]
    else:
        images = body["images"]
        if not isinstance(images, list) or not images:
            raise BadRequest("'images' must be a non-empty list of base64 strings or data URLs.", code="missing_file")
        if len(images) > max_files:
            raise BadRequest(f"A batch holds at most {max_files} files; got {len(images)}.", code="too_many_files")
        named, total = [], 0
        for position, value in enumerate(images):
            name = f"images[{position}]"
            data = decode_image(value, name, max_bytes - total, max_bytes)
            total += len(data)
            named.append((name, data))
    return named, form_from_json(body, FORM_FIELDS, _wrong_type)


def _wrong_type(name: str, value: object) -> BadRequest:
    return BadRequest(f"'{name}' has the wrong type ({type(value).__name__}).", code="invalid_field_type")
