"""PDFs: open with PyMuPDF (repairing what it can), choose pages, render one page at a time onto white."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pymupdf
from PIL import Image

from ocr_api.errors import UnprocessableFile
from ocr_api.pdf_streams import MAX_PAGE_OBJECTS, PageTooLarge, check_page
from ocr_api.preparation import Deadline, FitSize, ImageLimits, RenderedPage, check_size

logger = logging.getLogger(__name__)

POINTS_PER_INCH = 72

# Real pages decode to kilobytes or a few megabytes (drawing instructions, fonts; a full CJK font is about 16 MB);
# the bombs that ocr_api.pdf_streams measures decode to gigabytes.
MAX_PAGE_DECODED_BYTES = 64 * 1024 * 1024
# A page drawn whole is held twice for a moment, in MuPDF's buffer (3 bytes a pixel) and in Pillow's image (4): 280 MB
# for a 40-megapixel poster. Larger pages than this are drawn in bands of about BAND_PIXELS, each two rows taller on
# either side than the rows it gives, so that anti-aliasing at its edges is as in the whole page: a text page comes
# out identical; a glyph of a base-14 font or an image MuPDF scales, where a band's edge crosses it, may differ by a
# few levels (over 55 and 50 dB; tests/test_documents.py). At 144 dpi only pages over 27 inches square are banded.
DRAWN_WHOLE_UP_TO_PIXELS = 16_000_000
BAND_PIXELS = 2_000_000
BAND_OVERLAP_ROWS = 2


@dataclass(frozen=True)
class PdfLimits:
    """How PDFs are rendered and bounded."""

    dpi: int
    max_pages: int
    max_page_pixels: int
    max_page_decoded_bytes: int = MAX_PAGE_DECODED_BYTES
    timeout_s: float = field(default=float("inf"))  # each page's preparation budget (PREPARE_TIMEOUT_S)
    min_side: int = 1  # MIN_IMAGE_SIDE and MAX_ASPECT_RATIO hold for a page at its dpi as for an image
    max_aspect_ratio: float = float("inf")

    def page_size(self, page: pymupdf.Page) -> tuple[int, int]:
        """Return the page's size in pixels at ``dpi``: what its boxes are given in."""
        return round(page.rect.width * self.dpi / POINTS_PER_INCH), round(page.rect.height * self.dpi / POINTS_PER_INCH)


def is_pdf(data: bytes) -> bool:
    """Return True when the bytes announce a PDF (the header may follow up to 1 KiB of junk, as readers allow)."""
    return data.find(b"%PDF-", 0, 1024) != -1


def open_pdf(data: bytes | Path, password: str | None = None) -> pymupdf.Document:
    """Open a PDF from bytes or a stored file (a job's: read as pages need it); PyMuPDF repairs damaged
    cross-reference tables on the way."""
    try:
        if isinstance(data, Path):
            document = pymupdf.open(data, filetype="pdf")
        else:
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


def missing_pages(document: pymupdf.Document) -> frozenset[int]:
    """Return the indices of the pages the file does not hold: a repaired PDF's page tree may name page objects that
    are not in it (the file was cut short), and PyMuPDF then makes up a blank US-Letter page for each. Only a repaired
    document is asked: the check reads every page's entry in the cross-reference table."""
    if not document.is_repaired:
        return frozenset()
    missing = set()
    for index in range(document.page_count):
        try:
            xref = document.page_xref(index)
            found = 0 < xref < document.xref_length() and document.xref_get_key(xref, "Type") == ("name", "/Page")
        except Exception:  # noqa: BLE001 - "bad xref": the object is not in the file
            found = False
        if not found:
            missing.add(index)
    return frozenset(missing)


def _unreadable(exc: Exception) -> UnprocessableFile:
    logger.info("could not open a PDF upload: %s: %s", type(exc).__name__, exc)
    return UnprocessableFile("The file looks like a PDF but could not be read, even repaired.", code="corrupt_pdf")


def render_page(
    document: pymupdf.Document,
    index: int,
    limits: PdfLimits,
    fit: FitSize | None = None,
    deadline: Deadline | None = None,
) -> RenderedPage:
    """Render one page as RGB on white, directly at the size ``fit`` asks of its size at ``limits.dpi``.

    The page is refused before rendering when it is too large, too small or too narrow, as an image would be.
    """
    deadline = deadline or Deadline(limits.timeout_s)
    try:
        page = document.load_page(index)
        width, height = limits.page_size(page)
        if width * height > limits.max_page_pixels or width < 1 or height < 1:
            raise UnprocessableFile(
                f"Page {index + 1} would render as {width}x{height} pixels at {limits.dpi} dpi; the limit is "
                f"{limits.max_page_pixels} pixels.",
                code="page_too_large",
            )
        bounds = ImageLimits(limits.max_page_pixels, limits.min_side, limits.max_aspect_ratio)
        check_size((width, height), bounds, f"Page {index + 1} at {limits.dpi} dpi")
        # Before rendering: MuPDF would decode a bomb whole (images) or for as long as it lasts (drawing).
        check_page(document, page.xref, limits.max_page_pixels, limits.max_page_decoded_bytes, deadline.check)
        deadline.check()
        target_width, target_height = fit((width, height)) if fit else (width, height)
        scale = pymupdf.Matrix(target_width / page.rect.width, target_height / page.rect.height)
        image = _draw(page, scale, deadline.check)
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
    # MuPDF rounds the page's edges to whole pixels; the engine gets exactly the size asked for.
    if image.size != (target_width, target_height):
        image = image.resize((target_width, target_height), Image.Resampling.BOX)
    return RenderedPage(image, (width, height))


def _draw(page: pymupdf.Page, matrix: pymupdf.Matrix, check_time: Callable[[], None]) -> Image.Image:
    """Draw the page as RGB on white (transparent pages flattened): whole, or in bands when it is large (its
    preparation budget checked between bands)."""
    box = (page.rect * matrix).irect
    if box.width * box.height <= DRAWN_WHOLE_UP_TO_PIXELS:
        return _pixels(page.get_pixmap(matrix=matrix, alpha=False))
    display = page.get_displaylist()
    image = Image.new("RGB", (box.width, box.height))
    rows = max(1, BAND_PIXELS // box.width)
    for top in range(box.y0, box.y1, rows):
        check_time()
        bottom = min(box.y1, top + rows)
        drawn = pymupdf.IRect(box.x0, top - BAND_OVERLAP_ROWS, box.x1, bottom + BAND_OVERLAP_ROWS)
        pixmap = display.get_pixmap(matrix=matrix, alpha=False, clip=pymupdf.Rect(drawn) * ~matrix)
        band = _pixels(pixmap).crop((box.x0 - pixmap.x, top - pixmap.y, box.x1 - pixmap.x, bottom - pixmap.y))
        image.paste(band, (0, top - box.y0))
    return image


def _pixels(pixmap: pymupdf.Pixmap) -> Image.Image:
    # From MuPDF's own buffer: ``samples`` would copy it once more on the way.
    return Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples_mv)
