"""Held-in text pages for the searchable PDF's benchmark and tests: typeset, scanned, and their true blocks and words.

Each page is typeset with PyMuPDF (one column, two columns, several sizes of a sans and a serif face at ordinary line
spacing, a table drawn cell by cell), rasterized at ``dpi`` into an image-only PDF (a scan), and described by what an
exact model would answer for it: every block's box and text in DeepSeek-OCR's grounded markup (a paragraph's lines
joined into one line, as the model writes them; a table as HTML), and every word's true box in the scan's pixels.
``score`` measures a searchable PDF made from the scan against them.
"""

from __future__ import annotations

import io
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pymupdf

from ocr_api.interpretation import SCALE

PAGE = pymupdf.Rect(0, 0, 612, 792)
# "fi" as a model writes it; boxes around the ink, as a model draws them
TEXT_FLAGS = (pymupdf.TEXTFLAGS_DICT | pymupdf.TEXT_ACCURATE_BBOXES) & ~pymupdf.TEXT_PRESERVE_LIGATURES
SENTENCES = (
    "Searchable documents let a reader find every word the scanner saw.",
    "The text layer sits under the picture, invisible, one line at a time.",
    "Selecting a line in a viewer selects that line of the page.",
    "Archives keep the pages as they were and add only what can be searched.",
    "Invoices, letters and reports come back looking exactly as they went in.",
    "A table keeps its cells in reading order within the table's box.",
    "Numbers such as 1,234.56 and dates like 2026-12-07 stay as written.",
    "Every paragraph here is typeset at ordinary spacing in one of two faces.",
)


@dataclass(frozen=True)
class TruePage:
    """A scanned page's truth: the model's exact answer, and each word with its box in the scan's pixels."""

    markup: str
    words: list[tuple[str, pymupdf.Rect]]
    size: tuple[int, int]


# The faces: Nimbus Sans and Nimbus Roman, Helvetica's and Times's metrics, as PyMuPDF carries them.
FACES = ("<style>@font-face {font-family: sans; src: url(helv.otf);} "
         "@font-face {font-family: serif; src: url(tiro.otf);}</style>")  # fmt: skip


def _archive() -> pymupdf.Archive:
    archive = pymupdf.Archive()
    archive.add(pymupdf.Font("helv").buffer, "helv.otf")
    archive.add(pymupdf.Font("tiro").buffer, "tiro.otf")
    return archive


def paragraph(seed: int, sentences: int) -> str:
    return " ".join(SENTENCES[(seed + step) % len(SENTENCES)] for step in range(sentences))


def _html(text: str, size: float, face: str) -> str:
    return f'<p style="font-family:{face};font-size:{size}pt;line-height:1.2;margin:0 0 8pt 0">{text}</p>'


def _inset(left: float, top: float, right: float, bottom: float) -> pymupdf.Rect:
    return pymupdf.Rect(PAGE.x0 + left, PAGE.y0 + top, PAGE.x1 - right, PAGE.y1 - bottom)


def text_pages() -> bytes:
    """The typeset pages (real text, before scanning)."""
    sans, serif = "sans", "serif"
    layouts = [
        [("<h1>", 20, sans, _inset(72, 72, 72, 600)), ("", 11, sans, _inset(72, 200, 72, 72))],
        [("", 10, serif, _inset(54, 72, 316, 72)), ("", 10, serif, _inset(316, 72, 54, 72))],
        [
            ("", 9, sans, _inset(72, 72, 72, 560)),
            ("<table>", 10, sans, _inset(72, 300, 72, 300)),
            ("", 14, serif, _inset(72, 520, 72, 72)),
        ],
    ]
    buffer = io.BytesIO()
    writer = pymupdf.DocumentWriter(buffer)
    for number, layout in enumerate(layouts):
        device = writer.begin_page(PAGE)
        for part, (kind, size, face, where) in enumerate(layout):
            if kind == "<table>":
                continue  # drawn below, cell by cell
            if kind == "<h1>":
                html = _html("Searchable documents", size, face)
            else:
                html = "".join(
                    _html(paragraph(number * 3 + part + item, 2 + item % 2), size, face) for item in range(3)
                )
            story = pymupdf.Story(FACES + html, archive=_archive())
            more, _ = story.place(where)
            if more:
                raise ValueError("the text does not fit its column")
            story.draw(device)
        writer.end_page()
    writer.close()
    buffer.seek(0)
    document = pymupdf.open(stream=buffer.read(), filetype="pdf")
    for number, layout in enumerate(layouts):
        for kind, size, _face, where in layout:
            if kind == "<table>":
                draw_table(document[number], where, size)
    return document.tobytes()


TABLE = [("Item", "Count", "Price"), ("Apples", "12", "3.40"), ("Pears", "7", "2.15"), ("Plums", "30", "6.00")]


def draw_table(page: pymupdf.Page, where: pymupdf.Rect, size: float) -> None:
    """A table drawn cell by cell with its grid."""
    column = where.width / len(TABLE[0])
    row_height = size * 2
    for row_number, row in enumerate(TABLE):
        top = where.y0 + row_number * row_height
        for column_number, cell in enumerate(row):
            left = where.x0 + column_number * column
            page.draw_rect(pymupdf.Rect(left, top, left + column, top + row_height), width=0.5)
            page.insert_text((left + 4, top + row_height * 0.7), cell, fontsize=size, fontname="helv")


def scan(text_pdf: bytes, dpi: int) -> tuple[bytes, list[TruePage]]:
    """The pages rasterized into an image-only PDF, and each page's truth in the scan's pixels."""
    zoom = dpi / 72
    source = pymupdf.open(stream=text_pdf, filetype="pdf")
    scanned = pymupdf.open()
    truths = []
    for page in source:
        picture = page.get_pixmap(dpi=dpi)
        scanned_page = scanned.new_page(width=page.rect.width, height=page.rect.height)
        scanned_page.insert_image(scanned_page.rect, pixmap=picture)
        size = (picture.width, picture.height)
        words = [(word[4], pymupdf.Rect(word[:4]) * zoom) for word in page.get_text("words", flags=TEXT_FLAGS)]
        truths.append(TruePage(markup(page, size, zoom), words, size))
    return scanned.tobytes(garbage=1, deflate=True), truths


def markup(page: pymupdf.Page, size: tuple[int, int], zoom: float) -> str:
    """The page as an exact DeepSeek-OCR answer: each block's label, box (0..999) and text."""
    width, height = size
    parts = []
    table_cells = {cell for row in TABLE for cell in row}
    table_box = pymupdf.Rect()
    for block in page.get_text("dict", flags=TEXT_FLAGS)["blocks"]:
        lines = ["".join(span["text"] for span in line["spans"]).strip() for line in block.get("lines", [])]
        lines = [line for line in lines if line]
        if not lines:
            continue
        box = pymupdf.Rect(block["bbox"]) * zoom
        if all(cell in table_cells for line in lines for cell in line.split()):
            table_box |= box
            continue
        largest = max(span["size"] for line in block["lines"] for span in line["spans"])
        label = "title" if largest >= 18 else "text"
        text = ("# " if label == "title" else "") + " ".join(lines)
        parts.append((box, label, text))
    if not table_box.is_empty:  # a model's table box is the table's, grid and all
        for drawing in page.get_drawings():
            table_box |= drawing["rect"] * zoom
        rows = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in TABLE)
        parts.append((table_box, "table", f"<table>{rows}</table>"))
    parts.sort(key=lambda part: (part[0].x0 > width / 2 and part[0].y0 < height * 0.6, part[0].y0))
    return "\n\n".join(f"<|ref|>{label}<|/ref|><|det|>[{_scaled(box, width, height)}]<|/det|>\n{text}"
                       for box, label, text in parts)  # fmt: skip


def _scaled(box: pymupdf.Rect, width: int, height: int) -> str:
    x1, x2 = (round(value / width * SCALE) for value in (box.x0, box.x1))
    y1, y2 = (round(value / height * SCALE) for value in (box.y0, box.y1))
    return f"[{x1}, {y1}, {x2}, {y2}]"


@dataclass(frozen=True)
class Score:
    """How a searchable PDF made from the scan measures against the truth (words: the answer's words)."""

    words: int
    found_pdftotext: float  # share of the answer's words pdftotext finds
    found_pymupdf: float  # share PyMuPDF finds
    in_order: float  # share of the answer's words the layer draws in the answer's order (pdftotext -raw; longest run)
    # the same in pdftotext's own reading order, from its layout analysis (which reads the original typeset pages'
    # two columns the same way: 135 of 168 words of the second page, as this layer's)
    in_order_as_laid_out: float
    on_their_line: float  # share of true words with a layer word of that text over them, on their line
    pages_identical: bool  # every page renders exactly as the scan's
    qpdf_clean: bool
    bytes_added_per_page: float


def answer_words(truths: list[TruePage]) -> list[list[str]]:
    """Each page's words as the exact answer holds them (markup and table tags aside)."""
    pages = []
    for truth in truths:
        text = re.sub(r"<\|ref\|>.*?<\|/det\|>", " ", truth.markup)
        text = re.sub(r"<[^>]+>", " ", text).replace("#", " ")
        pages.append(text.split())
    return pages


def score(scan_pdf: bytes, searchable: bytes, truths: list[TruePage]) -> Score:
    """Measure ``searchable`` (made from ``scan_pdf``) against the pages' truth."""
    expected = answer_words(truths)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "searchable.pdf"
        path.write_bytes(searchable)
        extracted = [_pdftotext(path, number) for number in range(1, len(truths) + 1)]
        drawn = [_pdftotext(path, number, "-raw") for number in range(1, len(truths) + 1)]
        check = subprocess.run(["qpdf", "--check", str(path)], capture_output=True, text=True, check=False)
    made = pymupdf.open(stream=searchable, filetype="pdf")
    original = pymupdf.open(stream=scan_pdf, filetype="pdf")
    total = sum(len(words) for words in expected)
    found_pdftotext = found_pymupdf = in_order = as_laid_out = placed = true_total = 0
    for number, words in enumerate(expected):
        found_pdftotext += _found(words, extracted[number])
        layer = made[number].get_text("words")
        found_pymupdf += _found(words, [word[4] for word in layer])
        in_order += _longest_common_run(words, drawn[number])
        as_laid_out += _longest_common_run(words, extracted[number])
        zoom = truths[number].size[0] / made[number].rect.width
        placed += sum(_on_its_line(text, box, layer, zoom) for text, box in truths[number].words)
        true_total += len(truths[number].words)
    identical = made.page_count == original.page_count and all(
        made[number].get_pixmap(dpi=72).samples == original[number].get_pixmap(dpi=72).samples
        for number in range(original.page_count)
    )
    return Score(
        words=total,
        found_pdftotext=found_pdftotext / total,
        found_pymupdf=found_pymupdf / total,
        in_order=in_order / total,
        in_order_as_laid_out=as_laid_out / total,
        on_their_line=placed / true_total,
        pages_identical=identical,
        qpdf_clean=check.returncode == 0,
        bytes_added_per_page=(len(searchable) - len(scan_pdf)) / len(truths),
    )


def _pdftotext(path: Path, number: int, *mode: str) -> list[str]:
    """The words pdftotext (Poppler) finds on page ``number`` (``-raw``: in the order the page draws them)."""
    command = ["pdftotext", *mode, "-f", str(number), "-l", str(number), str(path), "-"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()


def _found(words: list[str], extracted: list[str]) -> int:
    """How many of ``words`` are among ``extracted`` (each found word used once)."""
    left: dict[str, int] = {}
    for word in extracted:
        left[word] = left.get(word, 0) + 1
    found = 0
    for word in words:
        if left.get(word, 0) > 0:
            left[word] -= 1
            found += 1
    return found


def _longest_common_run(expected: list[str], extracted: list[str]) -> int:
    """The length of the longest common subsequence: how many words come in the expected order."""
    previous = [0] * (len(extracted) + 1)
    for word in expected:
        current = [0]
        for position, other in enumerate(extracted):
            current.append(previous[position] + 1 if word == other else max(previous[position + 1], current[-1]))
        previous = current
    return previous[-1]


def _on_its_line(text: str, box: pymupdf.Rect, layer: list[tuple], zoom: float) -> bool:
    """A layer word of the same text overlaps the true word's box and has its middle within the true line's."""
    for word in layer:
        if word[4] != text:
            continue
        placed = pymupdf.Rect(word[:4]) * zoom
        middle = (placed.y0 + placed.y1) / 2
        if box.y0 <= middle <= box.y1 and placed.x0 < box.x1 and box.x0 < placed.x1:
            return True
    return False
