"""Hostile requests, generated: bombs, polyglots, truncations, malformed forms and filenames.

Each case is the raw request (path, content type, body) and the answer the service documents for it
(docs/RELIABILITY.md), so the same table is replayed through Flask's test client and over real HTTP.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ocr_dev.inputs import data_url, make_pdf, png_bytes

BOUNDARY = "hostile-boundary-7d1f"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@dataclass(frozen=True)
class Part:
    """One form part; ``disposition`` is the raw tail of its Content-Disposition header."""

    name: str
    data: bytes
    filename: str | None = "upload.bin"
    disposition: bytes | None = None  # replaces name/filename when a case needs bytes no encoder would write


@dataclass(frozen=True)
class Case:
    """A request and the documented answer."""

    name: str
    body: bytes
    status: int
    code: str | None  # the error code, or None for a 200
    path: str = "/ocr"
    content_type: str = MULTIPART
    client_filename: str | None = None  # a name that must never appear raw in logs nor on disk


def multipart(parts: Iterable[Part]) -> bytes:
    """Encode parts by hand, so a case can put any bytes into a part's headers."""
    chunks = []
    for part in parts:
        if part.disposition is not None:
            disposition = part.disposition
        elif part.filename is None:
            disposition = f'name="{part.name}"'.encode()
        else:
            disposition = f'name="{part.name}"; filename="{part.filename}"'.encode()
        chunks.append(
            b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data; " + disposition + b"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + part.data + b"\r\n"
        )
    return b"".join(chunks) + b"--" + BOUNDARY.encode() + b"--\r\n"


def file_case(name: str, data: bytes, status: int, code: str | None, filename: str = "upload.png") -> Case:
    return Case(name, multipart([Part("file", data, filename)]), status, code)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims ``width`` x ``height`` and whose data is a few bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def png_with_pdf_inside() -> bytes:
    """A real PNG whose text chunk starts a PDF: a polyglot sniffers that look for %PDF- anywhere get wrong."""
    image = png_bytes()
    text = _png_chunk(b"tEXt", b"Comment\0%PDF-1.7 1 0 obj << >> endobj")
    return image[:33] + text + image[33:]  # after the signature and IHDR


def nested_flate(total: int, fill: bytes = b"\0", layers: int = 2) -> bytes:
    """``total`` bytes of ``fill`` compressed ``layers`` times, built in chunks (no gigabyte in memory)."""
    compressor = zlib.compressobj(9)
    block = fill * (1 << 20)
    out = [compressor.compress(block) for _ in range(total // len(block))]
    data = b"".join(out) + compressor.flush()
    for _ in range(layers - 1):
        data = zlib.compress(data, 9)
    return data


def assemble_pdf(objects: list[bytes]) -> bytes:
    """Assemble numbered objects (1 = catalog) into a PDF with a correct cross-reference table."""
    out, offsets = b"%PDF-1.7\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


def stream_object(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>stream\n" % (len(data), extra) + data + b"\nendstream"


def pdf_page(
    content: bytes, filters: bytes = b"", resources: bytes = b"", box: bytes = b"0 0 612 792", inherited: bytes = b""
) -> list[bytes]:
    """Objects 1-4 of a one-page PDF: catalog, page tree (with ``inherited`` entries), page, its content stream."""
    return [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 %s >>" % inherited,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [%s] %s /Contents 4 0 R >>" % (box, resources),
        stream_object(content, filters),
    ]


def pdf_image_bomb(side: int = 20_000) -> bytes:
    """A one-page PDF drawing a ``side`` x ``side`` grey image stored as flate inside flate (about 2 kB)."""
    image = nested_flate(side * side)
    resources = b"/Resources << /XObject << /Im0 5 0 R >> >>"
    dictionary = b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray " % (side, side)
    dictionary += b"/BitsPerComponent 8 /Filter [/FlateDecode /FlateDecode]"
    return assemble_pdf(
        [*pdf_page(b"q 612 0 0 792 0 0 cm /Im0 Do Q", resources=resources), stream_object(image, dictionary)]
    )


def pdf_content_bomb(size: int = 256 << 20) -> bytes:
    """A page whose drawing instructions are ``size`` bytes of spaces, flate inside flate (about 1 kB)."""
    return assemble_pdf(pdf_page(nested_flate(size, b" "), b"/Filter [/FlateDecode /FlateDecode]"))


def pdf_bomb_behind_a_harmless_filter(size: int = 256 << 20) -> bytes:
    """``size`` bytes of hex digits, flate inside flate, with ASCIIHex as the last filter (about 1 kB)."""
    return assemble_pdf(pdf_page(nested_flate(size, b"2"), b"/Filter [/FlateDecode /FlateDecode /ASCIIHexDecode]"))


def pdf_bomb_in_an_annotation(size: int = 256 << 20) -> bytes:
    """A page whose drawing instructions are empty and whose annotation's appearance is the bomb (about 1 kB)."""
    page = pdf_page(b"", resources=b"/Annots [5 0 R]")
    annotation = b"<< /Type /Annot /Subtype /Square /Rect [0 0 100 100] /AP << /N 6 0 R >> >>"
    appearance = stream_object(
        nested_flate(size, b" "), b"/Type /XObject /Subtype /Form /BBox [0 0 100 100] /Filter [/Fl /Fl]"
    )
    return assemble_pdf([*page, annotation, appearance])


def pdf_inline_image_bomb(side: int = 15_000) -> bytes:
    """A page with an inline image (BI ... ID ... EI) of ``side`` x ``side`` pixels."""
    inline = b"BI /W %d /H %d /CS /G /BPC 8 /F /Fl ID " % (side, side) + nested_flate(side * side, layers=1)
    content = zlib.compress(b"q 612 0 0 792 0 0 cm " + inline + b" EI Q", 9)
    return assemble_pdf(pdf_page(content, b"/Filter /FlateDecode"))


def pdf_huge_page() -> bytes:
    """A page of 14,400 x 14,400 points, the largest the PDF specification allows (28,800 px square at 144 dpi)."""
    return assemble_pdf(pdf_page(b"BT ET", box=b"0 0 14400 14400"))


def pdf_text() -> bytes:
    return assemble_pdf(pdf_page(b"BT /F1 12 Tf 72 720 Td (Hello) Tj ET"))


def cases(corpus_dir: Path | None = None) -> list[Case]:
    """Every hostile case with its documented answer."""
    good = png_bytes()
    hopper = (corpus_dir / "images" / "hopper.jpg").read_bytes() if corpus_dir else good
    joined = (corpus_dir / "pdfs" / "joined.pdf").read_bytes() if corpus_dir else make_pdf(50)
    long_name = "A" * 10_000 + ".png"
    return [
        # Empty, truncated, mislabelled.
        file_case("zero-byte file", b"", 400, "empty_file"),
        file_case("PNG cut after its header", good[:40], 422, "corrupt_image"),
        file_case("JPEG cut in half", hopper[: len(hopper) // 2], 422, "corrupt_image"),
        file_case("PDF cut in half (repaired, or refused)", joined[: len(joined) // 2], 422, "corrupt_pdf"),
        file_case("PDF named .png (the bytes decide)", pdf_text(), 200, None, "scan.png"),
        file_case("HTML named .jpg", b"<!doctype html><script>alert(1)</script>", 415, "unsupported_media_type"),
        file_case("SVG named .png", b'<svg xmlns="http://www.w3.org/2000/svg"/>', 415, "unsupported_media_type"),
        file_case("PNG with %PDF- in a text chunk", png_with_pdf_inside(), 200, None),
        file_case("GIF header then JavaScript", b"GIF89a/*" + b"\0" * 8 + b"*/alert(1)", 422, "corrupt_image"),
        # Bombs.
        file_case("PNG declaring 100,000 x 100,000", png_declaring(100_000, 100_000), 422, "image_too_large"),
        file_case("PNG declaring 1 x 1 (engine never sees it)", png_declaring(1, 1), 422, "image_too_small"),
        file_case("PDF: 20,000 px square image, nested flate", pdf_image_bomb(), 422, "page_too_large"),
        file_case("PDF: 256 MiB of drawing instructions, nested flate", pdf_content_bomb(), 422, "page_too_large"),
        file_case(
            "PDF: 256 MiB behind a last ASCIIHex filter", pdf_bomb_behind_a_harmless_filter(), 422, "page_too_large"
        ),
        file_case("PDF: 256 MiB in an annotation's appearance", pdf_bomb_in_an_annotation(), 422, "page_too_large"),
        file_case("PDF: 15,000 px square inline image", pdf_inline_image_bomb(), 422, "page_too_large"),
        file_case("PDF: page of 14,400 x 14,400 pt", pdf_huge_page(), 422, "page_too_large"),
        file_case("PDF of 1,000 pages", make_pdf(1000, size=(200, 200)), 422, "too_many_pages"),
        # Malformed requests.
        Case(
            "no file part, only a prompt", multipart([Part("prompt", b"<image>\nFree OCR.", None)]), 400, "missing_file"
        ),
        Case("file sent as 'image'", multipart([Part("image", good)]), 400, "missing_file"),
        Case("batch sent as 'file'", multipart([Part("file", good)]), 400, "missing_file", path="/ocr/batch"),
        Case("JSON body naming 'file'", b'{"file": "aGVsbG8="}', 400, "unknown_field", content_type="application/json"),
        Case("raw image body", good, 415, "not_multipart", content_type="image/png"),
        Case("URL-encoded form", b"file=abc", 415, "not_multipart", content_type="application/x-www-form-urlencoded"),
        Case(
            "multipart without a boundary",
            multipart([Part("file", good)]),
            400,
            "missing_file",
            content_type="multipart/form-data",
        ),
        Case("1,001 form parts", multipart([Part(f"f{i}", b"x", None) for i in range(1001)]), 413, "payload_too_large"),
        Case(
            "1 MB text field",
            multipart([Part("file", good), Part("prompt", b"x" * 1_000_000, None)]),
            413,
            "payload_too_large",
        ),
        Case(
            "10 kB prompt",
            multipart([Part("file", good), Part("prompt", b"<image>\n" + b"x" * 10_000, None)]),
            400,
            "prompt_too_long",
        ),
        Case("body over the upload limit", multipart([Part("file", b"\0" * (17 << 20))]), 413, "payload_too_large"),
        Case(
            "unknown field with 100 kB of junk",
            multipart([Part("file", good), Part("x" * 100, b"\xff" * 100_000, None)]),
            200,
            None,
        ),
        # Filenames: echoed cleaned, never a path, never logged raw.
        file_case("filename ../../etc/passwd", good, 200, None, "../../../../../../etc/passwd"),
        Case(
            "filename with NUL and newline (RFC 2231)",
            multipart(
                [
                    Part(
                        "file",
                        good,
                        disposition=(b"name=\"file\"; filename*=UTF-8''evil%00name%0AFORGED%20LOG%20LINE.png"),
                    )
                ]
            ),
            200,
            None,
            client_filename="evil\x00name\nFORGED LOG LINE.png",
        ),
        Case(
            "filename with a raw newline in the header",
            multipart([Part("file", good, disposition=(b'name="file"; filename="x\nFORGED: header.png"'))]),
            400,
            "missing_file",
        ),
        Case(
            "filename of 10,000 characters",
            multipart([Part("file", good, long_name)]),
            200,
            None,
            client_filename=long_name,
        ),
        *json_cases(good),
    ]


JSON = "application/json"
CHAT = "/v1/chat/completions"


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def chat_body(*parts: dict, model: str = "deepseek-ocr", **extra: object) -> bytes:
    """A chat completion as an OCR-2 server's clients send it: one user message of the given parts."""
    return _json({"model": model, "messages": [{"role": "user", "content": list(parts)}], **extra})


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def json_cases(good: bytes) -> list[Case]:
    """JSON bodies on /ocr and /v1/chat/completions: nesting, huge strings, wrong types, lying data URLs."""
    deep = b"[" * 100_000 + b"]" * 100_000
    html = b"<!doctype html><script>alert(1)</script>"
    free = {"type": "text", "text": "Free OCR."}
    ocr: list[Case] = [
        Case("JSON image", _json({"image": base64.b64encode(good).decode()}), 200, None, content_type=JSON),
        Case("JSON data URL of a PDF declared PNG (the bytes decide)", _json({"image": data_url(pdf_text())}), 200,
             None, content_type=JSON),
        Case("JSON nested 100,000 deep", deep, 400, "invalid_json", content_type=JSON),
        Case("JSON not an object", b"[1, 2]", 400, "invalid_json", content_type=JSON),
        Case("JSON in bad UTF-8", b'{"image": "\xff\xfe"}', 400, "invalid_json", content_type=JSON),
        Case("JSON in UTF-16 (JSON is UTF-8)", _json({"image": data_url(good)}).decode().encode("utf-16"), 400,
             "invalid_json", content_type=JSON),
        Case("JSON with Infinity", b'{"image": "AAAA", "max_tokens": Infinity}', 400, "invalid_json",
             content_type=JSON),
        # Valid JSON numbers past what Python holds as written: the field's own range message, no Python in it.
        Case("JSON number 1e400", b'{"image": "AAAA", "max_tokens": 1e400}', 400, "invalid_max_tokens",
             content_type=JSON),
        Case("JSON integer of 5,001 digits", b'{"image": "AAAA", "max_tokens": ' + b"9" * 5001 + b"}", 400,
             "invalid_max_tokens", content_type=JSON),
        Case("JSON data URL declaring no type", _json({"image": "data:;base64," + base64.b64encode(good).decode()}),
             415, "unsupported_media_type", content_type=JSON),
        Case("JSON DATA: URL in capitals", _json({"image": "DATA:image/PNG;Base64," + base64.b64encode(good).decode()}),
             200, None, content_type=JSON),
        Case("JSON image a number", _json({"image": 5}), 400, "invalid_field_type", content_type=JSON),
        Case("JSON max_tokens a list", _json({"image": data_url(good), "max_tokens": [1]}), 400,
             "invalid_field_type", content_type=JSON),
        Case("JSON base64 garbage", _json({"image": "!!not base64!!"}), 400, "invalid_base64", content_type=JSON),
        Case("JSON data URL declaring text/html", _json({"image": data_url(good, "text/html")}), 415,
             "unsupported_media_type", content_type=JSON),
        Case("JSON data URL declaring PNG holding HTML", _json({"image": data_url(html)}), 415,
             "unsupported_media_type", content_type=JSON),
        Case("JSON 12 MB string of zeros", _json({"image": "A" * (12 << 20)}), 415, "unsupported_media_type",
             content_type=JSON),
        Case("JSON over the upload limit", _json({"image": "A" * (17 << 20)}), 413, "payload_too_large",
             content_type=JSON),
        Case("JSON batch of 10,000 images", _json({"images": ["AAAA"] * 10_000}), 400, "too_many_files",
             path="/ocr/batch", content_type=JSON),
    ]  # fmt: skip
    chat: list[Case] = [
        Case("chat: nested 100,000 deep", deep, 400, "invalid_json", path=CHAT, content_type=JSON),
        Case("chat: a form body", multipart([Part("file", good)]), 400, "not_json", path=CHAT),  # 415 elsewhere
        Case("chat: no model", _json({"messages": []}), 400, "missing_model", path=CHAT, content_type=JSON),
        Case("chat: unknown model", chat_body(image_part(data_url(good)), model="gpt-4o"), 404, "model_not_found",
             path=CHAT, content_type=JSON),
        Case("chat: messages a string", _json({"model": "deepseek-ocr", "messages": "hi"}), 400, "invalid_messages",
             path=CHAT, content_type=JSON),
        Case("chat: 10,000-part message", chat_body(*[free] * 10_000), 400, "too_many_parts", path=CHAT,
             content_type=JSON),
        Case("chat: 10,000 messages", _json({"model": "deepseek-ocr", "messages": [{"role": "user"}] * 10_000}), 400,
             "too_many_messages", path=CHAT, content_type=JSON),
        Case("chat: a part of unknown type", chat_body({"type": "input_audio"}), 400, "unsupported_content_part",
             path=CHAT, content_type=JSON),
        Case("chat: image_url a number", chat_body({"type": "image_url", "image_url": 7}), 400, "invalid_image_url",
             path=CHAT, content_type=JSON),
        Case("chat: two images", chat_body(image_part(data_url(good)), image_part(data_url(good))), 400,
             "too_many_images", path=CHAT, content_type=JSON),
        Case("chat: no image", chat_body(free), 400, "missing_image", path=CHAT, content_type=JSON),
        Case("chat: data URL declaring JPEG holding HTML", chat_body(image_part(data_url(html, "image/jpeg"))), 400,
             "unsupported_media_type", path=CHAT, content_type=JSON),
        Case("chat: data URL of base64 garbage", chat_body(image_part("data:image/png;base64,@@@@")), 400,
             "invalid_base64", path=CHAT, content_type=JSON),
        Case("chat: http URL while fetching is off", chat_body(image_part("http://169.254.169.254/latest")), 400,
             "image_url_fetch_disabled", path=CHAT, content_type=JSON),
        Case("chat: max_tokens a string", chat_body(image_part(data_url(good)), max_tokens="8192"), 400,
             "invalid_max_tokens", path=CHAT, content_type=JSON),
        Case("chat: stream a string", chat_body(image_part(data_url(good)), stream="yes"), 400, "invalid_parameter",
             path=CHAT, content_type=JSON),
        Case("chat: temperature a string", chat_body(image_part(data_url(good)), temperature="0"), 400,
             "invalid_parameter", path=CHAT, content_type=JSON),
        Case("chat: n of 3", chat_body(image_part(data_url(good)), n=3), 400, "unsupported_parameter", path=CHAT,
             content_type=JSON),
        Case("chat: over the upload limit", chat_body(image_part("data:image/png;base64," + "A" * (17 << 20))), 413,
             "payload_too_large", path=CHAT, content_type=JSON),
        # Asking for what an OCR model cannot do is refused; asking for nothing (as some clients always do) is not.
        *(Case(f"chat: {name} {value!r}", chat_body(image_part(data_url(good)), **{name: value}), 400,
               "unsupported_parameter", path=CHAT, content_type=JSON)
          for name, value in (("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "auto"),
                              ("functions", [{"name": "f"}]), ("function_call", "auto"), ("logprobs", True))),
        *(Case(f"chat: {name} {value!r} (asks nothing)", chat_body(image_part(data_url(good)), **{name: value}), 200,
               None, path=CHAT, content_type=JSON)
          for name, value in (("tools", []), ("tool_choice", "none"), ("functions", []), ("logprobs", False))),
        Case("chat: DATA: and HTTP: schemes in capitals (case-insensitive)",
             chat_body(image_part("DATA:IMAGE/PNG;BASE64," + base64.b64encode(good).decode())), 200, None, path=CHAT,
             content_type=JSON),
        Case("chat: HTTP:// while fetching is off", chat_body(image_part("HTTP://169.254.169.254/latest")), 400,
             "image_url_fetch_disabled", path=CHAT, content_type=JSON),
        Case("chat: data URL declaring no type (text/plain)",
             chat_body(image_part("data:;base64," + base64.b64encode(good).decode())), 400, "unsupported_media_type",
             path=CHAT, content_type=JSON),
        Case("chat: NaN in the body", chat_body(image_part(data_url(good)), temperature=float("nan")), 400,
             "invalid_json", path=CHAT, content_type=JSON),
        Case("chat: UTF-16 body", chat_body(image_part(data_url(good))).decode().encode("utf-16"), 400, "invalid_json",
             path=CHAT, content_type=JSON),
    ]  # fmt: skip
    return ocr + chat
