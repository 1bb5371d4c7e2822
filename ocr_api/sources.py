"""One shape for an uploaded file: a source that describes itself, says which pages it has and renders one.

The format is decided once, from the bytes. Opening a source reads headers only (an image's, a PDF's page tree);
pixels are made one page at a time when the page stream asks, at the size the engine gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pymupdf

from ocr_api.documents import PdfLimits, is_pdf, missing_pages, open_pdf, render_page
from ocr_api.errors import UnprocessableFile
from ocr_api.options import OcrOptions
from ocr_api.preparation import (
    EXTENSIONS,
    FitSize,
    ImageInfo,
    ImageLimits,
    RenderedPage,
    decode_image,
    inspect_image,
    sniff_format,
)

# Stores an accepted upload's bytes under the given extension and returns where.
SaveUpload = Callable[[bytes, str], Path]


class Source(Protocol):
    """A file that yields pages: an image (one page) or a PDF (its selected pages)."""

    is_document: bool

    def describe(self) -> dict[str, Any]:
        """Return what the file is, as the response's ``image`` or ``document`` field."""

    def page_numbers(self) -> list[int | None]:
        """Return each page's number in the document, in order (None for an image)."""

    def render(self, position: int) -> RenderedPage:
        """Make the pixels of the page at ``position``; may be called again (a retry, pictures)."""

    def close(self) -> None:
        """Release what the source holds open."""


@dataclass
class ImageSource:
    """An uploaded image: its header read at once, its pixels decoded when its turn comes."""

    data: bytes
    info: ImageInfo
    limits: ImageLimits
    fit: FitSize | None  # None: the page at its own size
    is_document = False

    def describe(self) -> dict[str, Any]:
        width, height = self.info.size
        return {"width": width, "height": height, "format": self.info.format, "mode": self.info.mode,
                "frames": self.info.frames}  # fmt: skip

    def page_numbers(self) -> list[int | None]:
        return [None]

    def render(self, position: int) -> RenderedPage:
        prepared = decode_image(self.data, self.limits, self.fit)
        return RenderedPage(prepared.image, prepared.source_size)

    def close(self) -> None:
        pass


@dataclass
class PdfSource:
    """A PDF: its selected pages, rendered one at a time directly at the engine's size."""

    document: pymupdf.Document
    indices: list[int]
    limits: PdfLimits
    fit: FitSize | None  # None: the page at its own size
    missing: frozenset[int] = frozenset()  # pages a damaged file lost, which its repair made up: never read
    is_document = True

    def describe(self) -> dict[str, Any]:
        return {
            "format": "PDF",
            "page_count": self.document.page_count,
            "dpi": self.limits.dpi,
            "repaired": bool(self.document.is_repaired),
            "missing_pages": [index + 1 for index in sorted(self.missing)],
        }

    def page_numbers(self) -> list[int | None]:
        return [index + 1 for index in self.indices]

    def render(self, position: int) -> RenderedPage:
        index = self.indices[position]
        if index in self.missing:
            raise UnprocessableFile(
                f"Page {index + 1} is not in the file: the PDF is damaged or cut short, and the blank page its repair "
                "puts in its place is not read.",
                code="page_missing",
            )
        return render_page(self.document, index, self.limits, self.fit)

    def close(self) -> None:
        self.document.close()


def open_source(
    data: bytes | Path,
    options: OcrOptions,
    save: SaveUpload | None,
    *,
    image_limits: ImageLimits,
    pdf_limits: PdfLimits,
    fit: FitSize | None,
) -> tuple[Source, Path | None]:
    """Decide the format from the bytes, store the upload and open it; return the source and where it was stored.

    ``data`` is the upload's bytes, or a file where it is stored already (a job's; ``save`` is then None and a
    PDF is read from the file as its pages are needed). Raises the ApiError the file deserves (415, 422, 400 for
    a page selection outside the document).
    """
    stored = data if isinstance(data, Path) else None
    head = _head(stored) if stored else data
    image_format = sniff_format(head)
    # An image signature at byte 0 wins: "%PDF-" inside a PNG's text chunk does not make it a PDF.
    if image_format is None and is_pdf(head):
        path = save(data, "pdf") if save and isinstance(data, bytes) else stored
        document = open_pdf(data, options.password)
        try:
            indices = options.pages.indices(document.page_count, pdf_limits.max_pages)
        except Exception:
            document.close()
            raise
        return PdfSource(document, indices, pdf_limits, fit, missing_pages(document)), path
    image_bytes = stored.read_bytes() if stored else data
    assert isinstance(image_bytes, bytes)
    # Only allow-listed bytes are stored; the extension comes from the bytes, not the client's name.
    path = stored or (save(image_bytes, EXTENSIONS[image_format]) if image_format and save else None)
    return ImageSource(image_bytes, inspect_image(image_bytes, image_limits), image_limits, fit), path


def _head(path: Path) -> bytes:
    """The first bytes of a stored file: enough to tell its format (a PDF's header may follow 1 KiB of junk)."""
    with path.open("rb") as handle:
        return handle.read(4096)
