"""Searchable PDFs: the original pages, each with the page's text set invisibly over it, written a page at a time.

A PDF's pages stay as they are (their content, fonts and images are not touched; nothing is rasterized): the first
PDF of the output is a copy of the file, and the text of each page is added over it as a form XObject (a page of
invisible text drawn on top, as OCRmyPDF grafts its text layer). Later files' pages are copied in; an image becomes a
page of its own at its resolution (300 dpi where it states none), upright as the service reads it.

The text is drawn in render mode 3 (invisible) in a font of one empty glyph (``GLYPHLESS_FONT``, as Tesseract's
renderer does): every character is shown by its code, a ToUnicode map gives the text back to viewers and
``pdftotext``, and the widths are Helvetica's (a wide East Asian character one em), the same the lines were laid out
with (``ocr_api/text_layer.py``). Each line is scaled horizontally to span its box.

Memory stays flat in page count: the changes are saved to the file incrementally every ``flush_pages`` pages and the
document reopened, and the progress (pages written, which failed) is kept beside it, so that a job stopped half way
goes on from its last save.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pymupdf
from PIL import Image

from ocr_api.interpretation import Block
from ocr_api.preparation import ORIENTATION_TAG, ImageLimits, decode_image
from ocr_api.text_layer import HELVETICA_WIDTHS, TextLine, advance, page_lines

logger = logging.getLogger(__name__)

# A TrueType font of one empty glyph (612 bytes), made by ocr_dev/glyphless_font.py (a test checks it still makes it).
GLYPHLESS_FONT = base64.b64decode(
    "AAEAAAAKAIAAAwAgT1MvMkUAQ7AAAAEoAAAAYGNtYXAADABzAAABkAAAADRnbHlmAAAAAAAAAcwAAAABaGVhZF8WQOAAAACsAAAANmhoZWED"
    "IgEuAAAA5AAAACRobXR4AfQAAAAAAYgAAAAGbG9jYQAAAAAAAAHEAAAABm1heHAAAwACAAABCAAAACBuYW1lqWij/wAAAdAAAABmcG9zdG1n"
    "c80AAAI4AAAALAABAAAAAQAAJYFhEF8PPPUAAwPoAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAwACAAAAAAAAAAEAAAMg/zgAAAH0AAAA"
    "AAAAAAEAAAAAAAAAAAAAAAAAAAABAAEAAAACAAAAAAAAAAAAAgAAAAAAAAAAAAAAAAAAAAAAAwH0AZAABQAEAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAPz8/PwAAACAAIAMg/zgAAAMgAMgAAAAAAAAAAAAAAAAAAAAgAAAB9AAAAAAAAAAAAAIA"
    "AAADAAAAFAADAAEAAAAUAAQAIAAAAAQABAABAAAAIP//AAAAIP///+EAAQAAAAAAAAAAAAAAAAAAAAAAAAAEADYAAQAAAAAAAQAJAAAAAQAA"
    "AAAAAgAHAAkAAwABBAkAAQASABAAAwABBAkAAgAOACJHbHlwaExlc3NSZWd1bGFyAEcAbAB5AHAAaABMAGUAcwBzAFIAZQBnAHUAbABhAHIA"
    "AAACAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIAAAECBWJsYW5r"
)
FONT_NAME = "OcrLayer"
DEFAULT_DPI = 300.0
PLAUSIBLE_DPI = (36.0, 4800.0)
FLUSH_PAGES = 64
DEFAULT_WIDTH = 550  # a character of no other width (1/1000 em): an average letter, as ocr_api/text_layer.py has it
BASELINE = 0.2  # the font's descent: a line's baseline sits this share of its height above its bottom
PROGRESS_SUFFIX = ".progress.json"
# EXIF orientations that are a plain turn, which a PDF can apply to the JPEG as it is: the rotation, clockwise.
JPEG_TURNS = {1: 0, 3: 180, 6: 90, 8: 270}


@dataclass(frozen=True)
class PdfPart:
    """A PDF whose pages ``indices`` (0-based, in order) go into the output."""

    path: Path
    indices: tuple[int, ...]
    password: str | None = None


@dataclass(frozen=True)
class ImagePart:
    """An image: one page."""

    path: Path
    limits: ImageLimits

    @property
    def indices(self) -> tuple[int, ...]:
        return (0,)


Part = PdfPart | ImagePart


@dataclass(frozen=True)
class PageText:
    """What a read page says and where: its blocks and text, in pixels of ``size`` (None: an image's own)."""

    blocks: tuple[Block, ...]
    text: str
    size: tuple[int, int] | None = None


@dataclass
class Progress:
    """How far the output is written: pages done, and (1-based) which of them failed or kept their own text."""

    written: int = 0
    failed: list[int] = field(default_factory=list)
    kept_text: list[int] = field(default_factory=list)


class SearchablePdf:
    """Writes the searchable PDF of ``parts``, one page at a time in order (``add``), then ``finish``: to ``path``,
    saved as it goes, or with no path in memory (``data`` once finished; for /ocr, whose upload is in memory too)."""

    def __init__(self, path: Path | None, parts: list[Part], flush_pages: int = FLUSH_PAGES):
        self.path = Path(path) if path is not None else None
        self.parts = parts
        self.flush_pages = flush_pages
        self.total = sum(len(part.indices) for part in parts)
        self.progress = self._load_progress() if self.path is not None else Progress()
        self.data: bytes | None = None
        self._document: pymupdf.Document | None = None
        self._layers: pymupdf.Document | None = None  # the pages of invisible text drawn over the output's
        self._layer_font = 0  # the glyphless font's object in _layers
        self._sources: dict[int, pymupdf.Document] = {}
        self._unsaved = 0

    @property
    def written(self) -> int:
        return self.progress.written

    def add(self, text: PageText | None) -> None:
        """Write the next page with its text; None for a page that failed (it is kept, without text)."""
        number = self.progress.written  # 0-based in the output
        part_number, index = self._locate(number)
        document = self._open()
        own_size = self._append(document, part_number, index) if number >= document.page_count else None
        page = document[number]
        size = text.size or own_size if text is not None else None
        if text is None:
            self.progress.failed.append(number + 1)
        elif isinstance(self.parts[part_number], PdfPart) and page.get_text("text").strip():
            self.progress.kept_text.append(number + 1)
        elif size is not None:
            self._draw(page, page_lines(text.blocks, text.text, size), size)
        self.progress.written += 1
        self._unsaved += 1
        if self.path is not None and self._unsaved >= self.flush_pages:
            self._flush()

    def finish(self) -> Progress:
        """Save what is left: the file at ``path`` (or ``data``) is then the whole searchable PDF."""
        if self.progress.written != self.total:
            raise ValueError(f"{self.progress.written} of {self.total} pages written")
        document = self._open()
        if self.path is None:
            self.data = document.tobytes(garbage=1, encryption=pymupdf.PDF_ENCRYPT_KEEP)
        else:
            self._flush()
            Path(str(self.path) + PROGRESS_SUFFIX).unlink(missing_ok=True)
        self.close()
        return self.progress

    def close(self) -> None:
        """Drop what is open (unsaved pages are written again by the next writer)."""
        for document in [self._document, self._layers, *self._sources.values()]:
            if document is not None:
                document.close()
        self._document = self._layers = None
        self._sources = {}

    # -- the output file --

    def _load_progress(self) -> Progress:
        assert self.path is not None
        saved = Path(str(self.path) + PROGRESS_SUFFIX)
        if self.path.exists() and saved.exists():
            try:
                progress = Progress(**json.loads(saved.read_text()))
                with pymupdf.open(self.path) as document:
                    if not document.is_repaired:  # a save cut short: start again
                        return progress
            except Exception:  # whatever is wrong with our own partial file, it is made again
                logger.warning("%s cannot be gone on with; it is written again", self.path, exc_info=True)
        self.path.unlink(missing_ok=True)
        saved.unlink(missing_ok=True)
        return Progress()

    def _open(self) -> pymupdf.Document:
        if self._document is not None:
            return self._document
        if self.path is not None and self.path.exists():
            self._document = self._open_pdf(self.path, self._first_password())
        else:
            self._document = self._start()
        self._layers = pymupdf.open()
        self._layer_font = add_layer_font(self._layers)
        return self._document

    def _start(self) -> pymupdf.Document:
        """A new output: a copy of the first file when it is a PDF (its pages, outline and metadata kept)."""
        first = self.parts[0] if self.parts else None
        if not isinstance(first, PdfPart):
            return pymupdf.open()
        if self.path is None:
            document = self._open_pdf(first.path, first.password, in_memory=True)
        else:
            shutil.copyfile(first.path, self.path)
            document = self._open_pdf(self.path, first.password)
        whole = list(first.indices) == list(range(document.page_count))
        if not whole:
            document.select(list(first.indices))
        if self.path is not None and (not whole or document.is_repaired):
            document = self._save_whole(document, first.password)  # a repaired file cannot be saved incrementally
        return document

    def _flush(self) -> None:
        assert self.path is not None
        document = self._open()
        if not self.path.exists() or not document.can_save_incrementally():
            self._document = self._save_whole(document, self._first_password())
        else:
            document.save(self.path, incremental=True, encryption=pymupdf.PDF_ENCRYPT_KEEP)
        self._unsaved = 0
        progress = Path(str(self.path) + PROGRESS_SUFFIX)
        temporary = progress.with_name(progress.name + ".tmp")
        temporary.write_text(json.dumps(self.progress.__dict__))
        os.replace(temporary, progress)
        self.close()  # reopened at the next page: what was saved leaves memory

    def _save_whole(self, document: pymupdf.Document, password: str | None) -> pymupdf.Document:
        assert self.path is not None
        temporary = self.path.with_name(self.path.name + ".tmp")
        document.save(temporary, garbage=1, encryption=pymupdf.PDF_ENCRYPT_KEEP)
        document.close()
        os.replace(temporary, self.path)
        return self._open_pdf(self.path, password)

    def _first_password(self) -> str | None:
        first = self.parts[0] if self.parts else None
        return first.password if isinstance(first, PdfPart) else None

    @staticmethod
    def _open_pdf(path: Path, password: str | None, in_memory: bool = False) -> pymupdf.Document:
        if in_memory:
            document = pymupdf.open(stream=path.read_bytes(), filetype="pdf")
        else:
            document = pymupdf.open(path, filetype="pdf")
        if document.needs_pass and not document.authenticate(password or ""):
            document.close()
            raise ValueError("the PDF's password does not open it")
        return document

    # -- pages --

    def _locate(self, number: int) -> tuple[int, int]:
        """The part a page of the output comes from, and its position among that part's pages."""
        for part_number, part in enumerate(self.parts):
            if number < len(part.indices):
                return part_number, number
            number -= len(part.indices)
        raise IndexError("more pages than the files have")

    def _append(self, document: pymupdf.Document, part_number: int, position: int) -> tuple[int, int] | None:
        """Add the page the output lacks; an image's page returns its upright size in pixels."""
        part = self.parts[part_number]
        if isinstance(part, PdfPart):
            if part_number not in self._sources:
                self._sources[part_number] = self._open_pdf(part.path, part.password)
            index = part.indices[position]
            document.insert_pdf(self._sources[part_number], from_page=index, to_page=index)
            return None
        return add_image_page(document, part)

    def _draw(self, page: pymupdf.Page, lines: list[TextLine], size: tuple[int, int]) -> None:
        assert self._layers is not None
        layer = self._layers.new_page(width=page.rect.width, height=page.rect.height)
        content = layer_content(lines, size, (page.rect.width, page.rect.height))
        contents = self._layers.get_new_xref()
        self._layers.update_object(contents, "<<>>")
        self._layers.update_stream(contents, content)
        self._layers.xref_set_key(layer.xref, "Resources", f"<</Font<</{FONT_NAME} {self._layer_font} 0 R>>>>")
        self._layers.xref_set_key(layer.xref, "Contents", f"{contents} 0 R")
        page.show_pdf_page(page.rect, self._layers, layer.number, overlay=True, keep_proportion=False)


def image_dpi(path: Path) -> tuple[float, float]:
    """The resolution an image states (300 dpi where it states none), across and down as it is stored."""
    with Image.open(path) as opened:
        return _stated_dpi(opened)


def _stated_dpi(opened: Image.Image) -> tuple[float, float]:
    dpi = opened.info.get("dpi") or (DEFAULT_DPI, DEFAULT_DPI)
    # A resolution no scanner or camera writes (0, 1, 72,000) is a missing one: the page would be a stamp or a field.
    across, down = (float(value) if value and PLAUSIBLE_DPI[0] <= float(value) <= PLAUSIBLE_DPI[1] else DEFAULT_DPI
                    for value in dpi[:2])  # fmt: skip
    return across, down


def add_image_page(document: pymupdf.Document, part: ImagePart) -> tuple[int, int]:
    """An image as a page at its resolution, upright: a JPEG turned by the PDF as it is, others as lossless pixels."""
    data = part.path.read_bytes()
    with Image.open(io.BytesIO(data)) as opened:
        orientation = opened.getexif().get(ORIENTATION_TAG, 1)
        source_format = opened.format
        dpi_x, dpi_y = _stated_dpi(opened)
    prepared = decode_image(data, part.limits)
    width, height = prepared.source_size
    if orientation in (5, 6, 7, 8):
        dpi_x, dpi_y = dpi_y, dpi_x
    page = document.new_page(width=width * 72 / dpi_x, height=height * 72 / dpi_y)
    if source_format == "JPEG" and orientation in JPEG_TURNS:
        page.insert_image(page.rect, stream=data, rotate=-JPEG_TURNS[orientation] % 360, keep_proportion=False)
    elif source_format == "PNG" and orientation == 1 and prepared.image.mode == "RGB":
        page.insert_image(page.rect, stream=data, keep_proportion=False)
    else:
        encoded = io.BytesIO()
        prepared.image.save(encoded, "PNG")
        page.insert_image(page.rect, stream=encoded.getvalue(), keep_proportion=False)
    return width, height


def layer_content(lines: list[TextLine], size: tuple[int, int], page_size: tuple[float, float]) -> bytes:
    """The content stream of the invisible text: each line at its box, scaled to span its width."""
    width_px, height_px = size
    page_width, page_height = page_size
    scale_x, scale_y = page_width / width_px, page_height / height_px
    operations = ["BT", "3 Tr"]
    for line in lines:
        left, top, right, bottom = line.box
        font_size = (bottom - top) * scale_y
        natural = advance(line.text) * font_size
        if font_size <= 0 or natural <= 0:
            continue
        stretch = (right - left) * scale_x / natural * 100
        baseline = page_height - bottom * scale_y + BASELINE * font_size
        operations.append(f"/{FONT_NAME} {font_size:.2f} Tf {stretch:.2f} Tz "
                          f"1 0 0 1 {left * scale_x:.2f} {baseline:.2f} Tm <{_codes(line.text)}> Tj")  # fmt: skip
    operations.append("ET")
    return "\n".join(operations).encode("ascii")


def _codes(text: str) -> str:
    """The text as two-byte character codes (its UTF-16 units; characters beyond them as U+FFFD)."""
    return "".join(f"{ord(character) if ord(character) <= 0xFFFF else 0xFFFD:04X}" for character in text)


def add_layer_font(document: pymupdf.Document) -> int:
    """Add the glyphless font (a Type0 font over Identity-H codes, with its widths and ToUnicode map) to
    ``document``; return its object number."""
    font_file, to_unicode, cid_to_gid = (document.get_new_xref() for _ in range(3))
    document.update_object(font_file, "<<>>")
    document.update_stream(font_file, GLYPHLESS_FONT)
    document.update_object(to_unicode, "<<>>")
    document.update_stream(to_unicode, _to_unicode_cmap())
    document.update_object(cid_to_gid, "<<>>")
    document.update_stream(cid_to_gid, _cid_to_gid_map())
    descriptor = document.get_new_xref()
    document.update_object(
        descriptor,
        "<</Type/FontDescriptor/FontName/GlyphLessFont/Flags 5/FontBBox[0 -200 1000 800]/ItalicAngle 0/Ascent 800"
        f"/Descent -200/CapHeight 800/StemV 80/FontFile2 {font_file} 0 R>>",
    )
    cid_font = document.get_new_xref()
    document.update_object(
        cid_font,
        "<</Type/Font/Subtype/CIDFontType2/BaseFont/GlyphLessFont/CIDSystemInfo<</Registry(Adobe)/Ordering(Identity)"
        f"/Supplement 0>>/FontDescriptor {descriptor} 0 R/DW {DEFAULT_WIDTH}/W {_widths()}"
        f"/CIDToGIDMap {cid_to_gid} 0 R>>",
    )
    font = document.get_new_xref()
    document.update_object(
        font,
        "<</Type/Font/Subtype/Type0/BaseFont/GlyphLessFont/Encoding/Identity-H"
        f"/DescendantFonts[{cid_font} 0 R]/ToUnicode {to_unicode} 0 R>>",
    )
    return font


@cache
def _widths() -> str:
    """The /W array: Helvetica's widths for ASCII, one em for wide East Asian characters, none for combining marks."""
    entries = [f"{code}[{width}]" for code, width in ((ord(char), value) for char, value in HELVETICA_WIDTHS.items())]
    ranges: list[tuple[int, int, int]] = []
    for code in range(0x80, 0x10000):
        character = chr(code)
        width = 0 if unicodedata.combining(character) else (
            1000 if unicodedata.east_asian_width(character) in ("W", "F") else None)  # fmt: skip
        if width is None:
            continue
        if ranges and ranges[-1][1] == code - 1 and ranges[-1][2] == width:
            ranges[-1] = (ranges[-1][0], code, width)
        else:
            ranges.append((code, code, width))
    entries += [f"{first} {last} {width}" for first, last, width in ranges]
    return "[" + " ".join(entries) + "]"


@cache
def _to_unicode_cmap() -> bytes:
    """Every two-byte code is the UTF-16 unit of the same value (surrogates aside)."""
    ranges = [f"<{high:02X}00> <{high:02X}FF> <{high:02X}00>" for high in range(256) if not 0xD8 <= high <= 0xDF]
    chunks = [ranges[start : start + 100] for start in range(0, len(ranges), 100)]
    body = "\n".join(f"{len(chunk)} beginbfrange\n" + "\n".join(chunk) + "\nendbfrange" for chunk in chunks)
    return (
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
        "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n"
        f"{body}\nendcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n"
    ).encode("ascii")


@cache
def _cid_to_gid_map() -> bytes:
    """Every code shows glyph 1, the empty one."""
    return b"\x00\x01" * 0x10000
