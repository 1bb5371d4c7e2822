"""PDFs: open with PyMuPDF (repairing what it can), choose pages, render one page at a time onto white."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import pymupdf
from PIL import Image

from ocr_api.errors import BadRequest, UnprocessableFile
from ocr_api.pdf_streams import MAX_PAGE_OBJECTS, PageTooLarge, check_page
from ocr_api.preparation import Deadline

logger = logging.getLogger(__name__)

POINTS_PER_INCH = 72
_RANGE = re.compile(r"^\s*(\d{1,6})\s*(?:-\s*(\d{1,6})\s*)?$")

# Real pages decode to kilobytes or a few megabytes (drawing instructions, fonts; a full CJK font is about 16 MB);
# the bombs that ocr_api.pdf_streams measures decode to gigabytes.
MAX_PAGE_DECODED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class PdfLimits:
    """How PDFs are rendered and bounded."""

    dpi: int
    max_pages: int
    max_page_pixels: int
    max_page_decoded_bytes: int = MAX_PAGE_DECODED_BYTES
    timeout_s: float = field(default=float("inf"))  # each page's preparation budget (PREPARE_TIMEOUT_S)


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


def render_page(
    document: pymupdf.Document, index: int, limits: PdfLimits, deadline: Deadline | None = None
) -> Image.Image:
    """Render one page at ``limits.dpi`` as RGB on white; refuse it before rendering when it is too large."""
    deadline = deadline or Deadline(limits.timeout_s)
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
        # Before rendering: MuPDF would decode a bomb whole (images) or for as long as it lasts (drawing).
        check_page(document, page.xref, limits.max_page_pixels, limits.max_page_decoded_bytes, deadline.check)
        deadline.check()
        # alpha=False renders onto an opaque white background: transparent pages are flattened.
        pixmap = page.get_pixmap(dpi=limits.dpi, alpha=False)
    except PageTooLarge as exc:
        raise UnprocessableFile(
            f"Page {index + 1} {exc}; a page may hold images of up to {limits.max_page_pixels} pixels, decode to "
            f"{limits.max_page_decoded_bytes >> 20} MiB and refer to {MAX_PAGE_OBJECTS} objects.",
            code="page_too_large",
        ) from None
    except UnprocessableFile:
        raise
    except Exception as exc:  # noqa: BLE001 - a page PyMuPDF cannot load or draw is that page's fault
        logger.info("could not render PDF page %d: %s: %s", index + 1, type(exc).__name__, exc)
        raise UnprocessableFile(f"Page {index + 1} could not be rendered.", code="corrupt_pdf") from None
    return Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)
