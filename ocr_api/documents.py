"""PDFs: open with PyMuPDF (repairing what it can), choose pages, render one page at a time onto white."""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pymupdf
from PIL import Image

from ocr_api.errors import BadRequest, UnprocessableFile

logger = logging.getLogger(__name__)

POINTS_PER_INCH = 72
_RANGE = re.compile(r"^\s*(\d{1,6})\s*(?:-\s*(\d{1,6})\s*)?$")

# PDF bombs hide in what a page decodes, not in the page size: a 1.5 kB file can hold a 20,000 x 20,000 image or
# a content stream that inflates to gigabytes (flate inside flate), and MuPDF decodes either whole while
# rendering. So before rendering, a page's images are checked against the pixel limit and its content streams
# are inflated in bounded chunks, counting, without keeping the output.
MAX_PAGE_CONTENT_BYTES = 64 * 1024 * 1024  # real pages' drawing instructions take kilobytes to a few megabytes
_FLATE = {"/FlateDecode", "/Fl"}
_INLINE_IMAGE = re.compile(rb"\bBI\s(.{0,400}?)\bID\s", re.DOTALL)
_INLINE_SIZE = re.compile(rb"/(W|Width|H|Height)\s+(\d{1,9})")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PdfLimits:
    """How PDFs are rendered and bounded."""

    dpi: int
    max_pages: int
    max_page_pixels: int


def is_pdf(data: bytes) -> bool:
    """Return True when the bytes announce a PDF (the header may follow up to 1 KiB of junk, as readers allow)."""
    return data.find(b"%PDF-", 0, 1024) != -1


def open_pdf(data: bytes, password: str | None = None) -> pymupdf.Document:
    """Open a PDF from bytes; PyMuPDF repairs damaged cross-reference tables on the way."""
    try:
        document = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:  # noqa: BLE001 - any parser failure on these bytes is the file's fault
        raise _unreadable(exc) from None
    try:
        if document.needs_pass:
            if not password:
                raise UnprocessableFile(
                    "The PDF is encrypted; send its password in the 'password' field.", code="pdf_password_required"
                )
            if not document.authenticate(password):
                raise UnprocessableFile("The PDF password is not correct.", code="pdf_password_incorrect")
        if document.page_count == 0:  # counting walks the page tree, which may be broken beyond repair
            raise UnprocessableFile("The PDF has no pages.", code="corrupt_pdf")
    except UnprocessableFile:
        document.close()
        raise
    except Exception as exc:  # noqa: BLE001 - as above
        document.close()
        raise _unreadable(exc) from None
    return document


def _unreadable(exc: Exception) -> UnprocessableFile:
    logger.info("could not open a PDF upload: %s: %s", type(exc).__name__, exc)
    return UnprocessableFile("The file looks like a PDF but could not be read, even repaired.", code="corrupt_pdf")


def select_pages(spec: str | None, page_count: int, max_pages: int) -> list[int]:
    """Return the 0-based page indices ``spec`` names (``1-3,7``; all pages when empty), in the order given."""
    if not spec or not spec.strip():
        chosen = list(range(page_count))
    else:
        chosen = []
        for part in spec.split(","):
            match = _RANGE.match(part)
            if not match:
                raise BadRequest(f"pages must look like 1-3,7; got {spec[:50]!r}.", code="invalid_pages")
            first = int(match[1])
            last = int(match[2] or first)
            if not 1 <= first <= last <= page_count:
                raise BadRequest(
                    f"pages {part.strip()} is outside the document's 1-{page_count} (or a range runs backwards).",
                    code="invalid_pages",
                )
            chosen.extend(range(first - 1, last))
            if len(chosen) > max_pages:
                break
    if len(chosen) > max_pages:
        raise UnprocessableFile(
            f"The request selects {'more than ' if spec else ''}{len(chosen)} pages; at most {max_pages} are processed "
            "per request. Send a page range with pages=, for example pages=1-50.",
            code="too_many_pages",
        )
    return chosen


def render_page(document: pymupdf.Document, index: int, limits: PdfLimits) -> Image.Image:
    """Render one page at ``limits.dpi`` as RGB on white; refuse it before rendering when it is too large."""
    try:
        page = document.load_page(index)
        width = round(page.rect.width * limits.dpi / POINTS_PER_INCH)
        height = round(page.rect.height * limits.dpi / POINTS_PER_INCH)
        if width * height > limits.max_page_pixels or width < 1 or height < 1:
            raise UnprocessableFile(
                f"Page {index + 1} would render as {width}x{height} pixels at {limits.dpi} dpi; the limit is "
                f"{limits.max_page_pixels} pixels.",
                code="page_too_large",
            )
        check_page_contents(document, page, index, limits)
        # alpha=False renders onto an opaque white background: transparent pages are flattened.
        pixmap = page.get_pixmap(dpi=limits.dpi, alpha=False)
    except UnprocessableFile:
        raise
    except Exception as exc:  # noqa: BLE001 - a page PyMuPDF cannot load or draw is that page's fault
        logger.info("could not render PDF page %d: %s: %s", index + 1, type(exc).__name__, exc)
        raise UnprocessableFile(f"Page {index + 1} could not be rendered.", code="corrupt_pdf") from None
    return Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)


def check_page_contents(document: pymupdf.Document, page: pymupdf.Page, index: int, limits: PdfLimits) -> None:
    """Refuse the page when an image on it, or its drawing instructions, would decode beyond the limits."""
    for image in page.get_images(full=True):
        width, height = image[2], image[3]
        if width * height > limits.max_page_pixels:
            raise _too_large(index, f"embeds an image of {width}x{height} pixels", limits)
    streams = [*page.get_contents(), *(xobject[0] for xobject in page.get_xobjects())]
    total = 0
    for xref in streams:
        for chunk in _inflated_chunks(document, xref):
            total += len(chunk)
            if total > MAX_PAGE_CONTENT_BYTES:
                raise _too_large(index, f"has drawing instructions beyond {MAX_PAGE_CONTENT_BYTES >> 20} MiB", limits)
            for match in _INLINE_IMAGE.finditer(chunk):
                sizes = {key[:1]: int(value) for key, value in _INLINE_SIZE.findall(match[1])}
                width, height = sizes.get(b"W", 0), sizes.get(b"H", 0)
                if width * height > limits.max_page_pixels:
                    raise _too_large(index, f"holds an inline image of {width}x{height} pixels", limits)


def _inflated_chunks(document: pymupdf.Document, xref: int) -> Iterator[bytes]:
    """Yield a stream's decoded bytes in bounded chunks when every filter is Flate; other filters are not measured."""
    kind, value = document.xref_get_key(xref, "Filter")
    filters = re.findall(r"/[^\s/\[\]<>()]+", value) if kind in ("name", "array") else []
    if any(name not in _FLATE for name in filters):
        return
    data = document.xref_stream_raw(xref)
    if not filters:
        yield data
        return
    # Each layer inflates at most _CHUNK bytes at a time, so memory stays a few chunks whatever the ratio.
    yield from _inflate_layers([zlib.decompressobj() for _ in filters], data)


def _inflate_layers(layers: list[zlib._Decompress], data: bytes, depth: int = 0) -> Iterator[bytes]:
    """Inflate ``data`` through ``layers[depth:]`` chunk by chunk; corrupt data ends the stream quietly."""
    inflater = layers[depth]
    while data:
        try:
            out = inflater.decompress(data, _CHUNK)
        except zlib.error:
            return
        data = inflater.unconsumed_tail
        if not out:
            return
        if depth + 1 == len(layers):
            yield out
        else:
            yield from _inflate_layers(layers, out, depth + 1)


def _too_large(index: int, what: str, limits: PdfLimits) -> UnprocessableFile:
    return UnprocessableFile(
        f"Page {index + 1} {what}; the limit is {limits.max_page_pixels} pixels per image and "
        f"{MAX_PAGE_CONTENT_BYTES >> 20} MiB of drawing instructions per page.",
        code="page_too_large",
    )
