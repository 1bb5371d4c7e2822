"""A page's text as lines placed on the page: what a searchable PDF's invisible layer and hOCR are made from.

DeepSeek-OCR gives each layout block a box and its text, but not where the block's lines break: a paragraph comes
back as one line of text. The lines are found again the way the page was typeset. Every way the text wraps greedily
at some font size is a candidate, in Helvetica's widths and in Times's (the two archetypes of sans and serif faces;
a wide East Asian character one em); each is taken at the size at which its widest line spans the box, with the
line spacing that then makes its lines fill the box's height, given how far its first line's ink rises and its last
one's falls. The paragraphs of a page share a face and a size to a thousandth, so of a block's candidates the one
that most other blocks have a candidate of the same size for is kept, then the one nearest ordinary spacing. Text the
model wrote on lines of its own (lists, formulas) keeps its breaks; a table's cells go in equal columns of its rows;
figures carry no text.
"""

from __future__ import annotations

import bisect
import dataclasses
import html
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser

from ocr_api.interpretation import Block

# Blocks whose text is not on the page as text: a figure is a picture (its caption is a block of its own).
PICTURE_LABELS = frozenset({"image"})
LINE_SPACING = 1.2  # from a line to the next, over the font size, as most typesetting sets it
# Where a line's ink reaches, in ems from its baseline (Helvetica's): capitals and ascenders, small letters, descenders.
CAP_HEIGHT, X_HEIGHT, DESCENT = 0.72, 0.52, 0.21
SHORT_LETTERS = frozenset("acemnorsuvwxz.,:;-_~'\"")
DESCENDERS = frozenset("gjpqy,;()[]{}|")
BEARINGS = 0.1  # a line's advance exceeds its ink's width by its first and last letters' side bearings, in ems
ASCENT = 0.8  # the text layer's glyph box above its baseline, in ems (its font's: ocr_dev/glyphless_font.py)
LEAST_SPACING, MOST_SPACING = 0.9, 1.8  # the plausible range of it
SIZE_STEPS = 400  # font sizes tried, from one line filling the box to the most lines that could
TABLE_TEXT = 0.5  # a table cell's text over its row's height
PLAUSIBLE = 0.4  # a way of fitting further than this from ordinary spacing (in ems) is not one a page is set in
SAME_SIZE = 0.01  # two blocks' font sizes this close (a share) are taken to be the same: one pixel in 170
WIDE_EM = 1.0  # a CJK character's advance, in ems

# Average advances of Helvetica (1/1000 em) for ASCII; other narrow characters count as an average letter.
ASCII = "".join(chr(code) for code in range(32, 127))
HELVETICA_WIDTHS = dict(
    zip(
        ASCII,
        map(
            int,
            (  # noqa: SIM905 - 95 numbers read better as one string than as 95 list items
                "278 278 355 556 556 889 667 191 333 333 389 584 278 333 278 278 556 556 556 556 556 556 556 556 556 "
                "556 278 278 584 584 584 556 1015 667 667 722 722 667 611 778 722 278 500 667 556 833 722 778 667 778 "
                "722 667 611 722 667 944 667 667 611 278 278 278 469 556 333 556 556 500 556 556 278 556 556 222 222 "
                "500 222 833 556 556 556 556 333 500 278 556 500 722 500 500 500 334 260 334 584 "
            ).split(),
        ),
        strict=True,
    )
)
# And of Times, for text set in a serif face: the two archetypes most documents' faces are near one of.
TIMES_WIDTHS = dict(
    zip(
        ASCII,
        map(
            int,
            (  # noqa: SIM905 - as above
                "250 333 408 500 500 833 778 180 333 333 500 564 250 333 250 278 500 500 500 500 500 500 500 500 500 "
                "500 278 278 564 564 564 444 921 722 667 667 722 611 556 722 722 333 389 722 611 889 722 722 556 722 "
                "667 556 611 722 722 944 722 722 611 333 278 333 469 500 333 444 500 444 500 444 333 500 500 278 278 "
                "500 278 778 500 500 500 500 333 389 278 500 500 722 500 500 444 480 200 480 541 "
            ).split(),
        ),
        strict=True,
    )
)
FACES = (HELVETICA_WIDTHS, TIMES_WIDTHS)
_AVERAGE_LETTER = 0.55
_HEADING = re.compile(r"^#{1,6}\s+")
_EMPHASIS = re.compile(r"\*\*|__")


@dataclass(frozen=True)
class TextLine:
    """One line of text and its box in pixels of the page (left, top, right, bottom)."""

    text: str
    box: tuple[float, float, float, float]
    block: int = 0  # which block of the page it belongs to, in reading order


def page_lines(blocks: tuple[Block, ...] | list[Block], text: str, size: tuple[int, int]) -> list[TextLine]:
    """The page's lines in reading order, each with its box in pixels of a page of ``size``. Without any box (a
    prompt without grounding) the page's text is set from the top of the page, on the model's own lines."""
    width, height = size
    boxed = [block for block in blocks if block.boxes]
    if not boxed:
        whole = Block(label="text", text=text)
        return _unplaced_lines(block_text_lines(whole), width, height)
    placed = [part for block in boxed if block.label not in PICTURE_LABELS and block.figure is None
              for part in _parts(block)]  # fmt: skip
    candidates = [_candidates(block, box) for block, box in placed]
    sizes = {face: sorted((fit.font_size, index, fit.misfit) for index, fits in enumerate(candidates)
                          for fit in fits if fit.face == face and fit.misfit <= PLAUSIBLE)
             for face in range(len(FACES))}  # fmt: skip
    lines: list[TextLine] = []
    for index, (block, box) in enumerate(placed):
        # A page's paragraphs share a face and a size: the way of fitting that most other blocks' ways agree with is
        # the likeliest.
        chosen = max(candidates[index], key=lambda fit: _agreement(fit, index, sizes[fit.face]), default=None)
        lines.extend(dataclasses.replace(line, block=index) for line in _placed_lines(block, box, chosen))
    return lines


def _parts(block: Block) -> list[tuple[Block, tuple[float, float, float, float]]]:
    """A block and its box; a block with several boxes (a paragraph over two columns) as one part a box, its words
    shared out in proportion to the boxes' areas, in order. A table keeps its first box."""
    boxes = [(box.x1, box.y1, box.x2, box.y2) for box in block.boxes]
    words = block.text.split()
    if len(boxes) == 1 or _is_table(block) or len(words) < len(boxes):
        return [(block, boxes[0])]
    areas = [max(right - left, 1) * max(bottom - top, 1) for left, top, right, bottom in boxes]
    parts, start, covered = [], 0, 0.0
    for box, area in zip(boxes, areas, strict=True):
        covered += area
        end = len(words) if box is boxes[-1] else round(len(words) * covered / sum(areas))
        parts.append((dataclasses.replace(block, text=" ".join(words[start:end]), boxes=[]), box))
        start = end
    return [(part, box) for part, box in parts if part.text]


def _unplaced_lines(written: list[str], width: int, height: int) -> list[TextLine]:
    """Text without boxes: its own lines from the top of the page, as large as fit its width and height."""
    if not written:
        return []
    widest = max(0.5, *(advance(line) for line in written))
    font_size = min(height / (len(written) * LINE_SPACING), width / widest)
    step = font_size * LINE_SPACING
    return [
        TextLine(line, (0.0, number * step, min(float(width), advance(line) * font_size), number * step + font_size))
        for number, line in enumerate(written)
    ]


def _agreement(fit: _Fit, index: int, sizes: list[tuple[float, int, float]]) -> tuple[int, float, float]:
    """How many other blocks have a way of fitting in the same face at this font size (within SAME_SIZE); then how
    near their sizes are (same-styled paragraphs' are the same to a thousandth); then how near ordinary spacing this
    way is. A way far from ordinary spacing agrees with nothing."""
    if fit.misfit > PLAUSIBLE:
        return 0, 0.0, -fit.misfit
    low = bisect.bisect_left(sizes, (fit.font_size * (1 - SAME_SIZE),))
    high = bisect.bisect_right(sizes, (fit.font_size * (1 + SAME_SIZE),))
    nearest: dict[int, float] = {}
    for size, other, _ in sizes[low:high]:
        if other != index:
            difference = abs(size - fit.font_size) / fit.font_size
            nearest[other] = min(difference, nearest.get(other, difference))
    return len(nearest), -sum(nearest.values()), -fit.misfit


def _candidates(block: Block, box: tuple[float, float, float, float]) -> list[_Fit]:
    """Every way the block's text may fit its box, in each face (none for a table, whose rows are its lines)."""
    written = [] if _is_table(block) else block_text_lines(block)
    if not written:
        return []
    left, top, right, bottom = box
    width, height = max(right - left, 1.0), max(bottom - top, 1.0)
    return [fit for face in range(len(FACES)) for fit in _wrap_to_box(written, width, height, face)]


def block_text_lines(block: Block) -> list[str]:
    """The lines a block's text is written on: a table's rows (cells in reading order), else the model's lines."""
    if _is_table(block):
        return [" ".join(cells) for cells in table_rows(block.text) if cells]
    lines = []
    for raw in block.text.splitlines():
        line = _EMPHASIS.sub("", _HEADING.sub("", raw)).strip()
        if line:
            lines.append(line)
    return lines


def table_rows(table_html: str) -> list[list[str]]:
    """The text of each cell of an HTML table, row by row."""
    reader = _TableReader()
    reader.feed(table_html)
    reader.close()
    return reader.rows


def advance(text: str, widths: dict[str, int] = HELVETICA_WIDTHS) -> float:
    """The text's width in ems, as Helvetica (or the face of ``widths``) would set it (a wide East Asian character
    one em)."""
    total = 0.0
    for character in text:
        if character in widths:
            total += widths[character] / 1000
        elif unicodedata.east_asian_width(character) in ("W", "F"):
            total += WIDE_EM
        elif not unicodedata.combining(character):
            total += _AVERAGE_LETTER
    return total


def _placed_lines(block: Block, box: tuple[float, float, float, float], fit: _Fit | None) -> list[TextLine]:
    """The lines of a block as ``fit`` sets them in its box (none: a table's cells, or nothing to set)."""
    left, top, right, _ = box
    if fit is None:
        return _table_lines(block.text, box) if _is_table(block) else []
    first_baseline = top + _ink_above(fit.lines[0]) * fit.font_size
    placed = []
    for number, line in enumerate(fit.lines):
        baseline = first_baseline + number * fit.spacing * fit.font_size
        line_width = min(right - left, advance(line, FACES[fit.face]) * fit.font_size)
        # the layer's glyph box: ASCENT of the font size above the baseline, the rest below
        placed.append(TextLine(line, (left, baseline - ASCENT * fit.font_size, left + line_width,
                                      baseline + (1 - ASCENT) * fit.font_size)))  # fmt: skip
    return placed


def _table_lines(table_html: str, box: tuple[float, float, float, float]) -> list[TextLine]:
    """A table's cells, row by row: each row its share of the table's height, each cell its column's share of the
    width (the columns taken as equal: where the lines between them are is not in the model's answer)."""
    left, top, right, bottom = box
    rows = [cells for cells in table_rows(table_html) if cells]
    if not rows:
        return []
    columns = max(len(cells) for cells in rows)
    row_height, column_width = (bottom - top) / len(rows), (right - left) / columns
    font_size = row_height * TABLE_TEXT
    lines = []
    for number, cells in enumerate(rows):
        row_top = top + number * row_height + (row_height - font_size) / 2
        for column, cell in enumerate(cells):
            start = left + column * column_width
            width = min(column_width, advance(cell) * font_size)
            lines.append(TextLine(cell, (start, row_top, start + width, row_top + font_size)))
    return lines


def _is_table(block: Block) -> bool:
    return "<table" in block.text.lower()


def _ink_above(line: str) -> float:
    """How far above its baseline a line's ink reaches, in ems: capitals and ascenders, or only small letters."""
    return CAP_HEIGHT if any(character not in SHORT_LETTERS for character in line if not character.isspace()) else (
        X_HEIGHT)  # fmt: skip


def _ink_below(line: str) -> float:
    """How far below its baseline a line's ink reaches, in ems."""
    return DESCENT if any(character in DESCENDERS for character in line) else 0.0


@dataclass(frozen=True)
class _Fit:
    """One way a block's text fits its box: its lines, their font size and spacing, and how far that is from
    ordinary spacing (for one line: how far its ink is from the box's height), in ems."""

    lines: list[str]
    font_size: float
    spacing: float  # baseline to baseline, over the font size
    misfit: float
    face: int = 0  # which of FACES its widths are


def _wrap_to_box(written: list[str], width: float, height: float, face: int = 0) -> list[_Fit]:
    """Every way the text fits the box: each way it wraps at some font size, at the size at which its widest line
    spans the box (a left-aligned or justified paragraph's widest line does), with the spacing that makes given the
    box's height and how far its first line's ink rises and its last one's falls, when that is plausible."""
    widths = FACES[face]
    paragraphs = [_pieces(line, widths) for line in written]
    most = max(len(written), int(height / 4) or 1)  # lines under 4 pixels high are not text anyone set
    fits: list[_Fit] = []
    seen: set[tuple[int, ...]] = set()
    for step in range(SIZE_STEPS + 1):
        # font sizes from one line filling the box's height down to the most lines that could
        font_size = height / (1 + (most - 1) * LEAST_SPACING * step / SIZE_STEPS)
        breaks = _breaks(paragraphs, width / font_size + BEARINGS)
        if breaks in seen:
            continue
        seen.add(breaks)
        lines = _lines(paragraphs, breaks)
        if len(lines) <= most:
            fit = _fit(lines, width, height, face)
            if fit is not None:
                fits.append(fit)
    if not fits:  # a box too small for its text: the text's own lines, at ordinary spacing
        font_size = height / ((len(written) - 1) * LINE_SPACING + 1.0)
        fits.append(_Fit(written, font_size, LINE_SPACING, MOST_SPACING, face))
    return fits


def _fit(lines: list[str], width: float, height: float, face: int) -> _Fit | None:
    """Lines wrapped at some size, at the size at which the widest spans the box (None: no plausible spacing makes
    them fill its height)."""
    tight = width / max(max(advance(line, FACES[face]) for line in lines) - BEARINGS, 1e-6)
    ink = _ink_above(lines[0]) + _ink_below(lines[-1])
    gaps = len(lines) - 1
    if not gaps:
        return _Fit(lines, tight, LINE_SPACING, abs(height / tight - ink), face)
    spacing = (height / tight - ink) / gaps
    if not LEAST_SPACING <= spacing <= MOST_SPACING:
        return None
    return _Fit(lines, tight, spacing, abs(spacing - LINE_SPACING), face)


def _pieces(line: str, widths: dict[str, int]) -> list[tuple[str, float, float]]:
    """A line cut where it may wrap: each piece's text, its advance without and with its trailing space."""
    pieces = re.findall(r"\S+\s*", line) if " " in line else _wide_pieces(line)
    return [(piece, advance(piece.rstrip(), widths), advance(piece, widths)) for piece in pieces]


def _breaks(paragraphs: list[list[tuple[str, float, float]]], width_ems: float) -> tuple[int, ...]:
    """Greedy wrapping, as typesetting does: the number of pieces on each line, paragraph after paragraph."""
    breaks: list[int] = []
    for pieces in paragraphs:
        count, used = 0, 0.0
        for _, bare, spaced in pieces:
            if count and used + bare > width_ems:
                breaks.append(count)
                count, used = 0, 0.0
            count += 1
            used += spaced
        breaks.append(count)
    return tuple(breaks)


def _lines(paragraphs: list[list[tuple[str, float, float]]], breaks: tuple[int, ...]) -> list[str]:
    """The lines ``breaks`` (pieces a line, as ``_breaks`` counts them) make of the paragraphs."""
    lines, counts = [], iter(breaks)
    for pieces in paragraphs:
        start = 0
        while True:  # _breaks gives each paragraph one count a line, and one (0) to an empty one
            count = next(counts)
            lines.append("".join(piece for piece, _, _ in pieces[start : start + count]).rstrip())
            start += count
            if start >= len(pieces):
                break
    return [line for line in lines if line]


def _wide_pieces(line: str) -> list[str]:
    """A line without spaces: its wide characters one piece each, runs of narrow ones together."""
    return re.findall(r"[^\s]*?[\u1100-\uffff]|[^\s]+", line) if line else []


class _TableReader(HTMLParser):
    """Collects the text of every cell, row by row, from the HTML tables the model writes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            if not self.rows:
                self.rows.append([])
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            if text:
                self.rows[-1].append(text)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def hocr_page(lines: list[TextLine], size: tuple[int, int], number: int, dpi: float | None = None) -> str:
    """One ``ocr_page`` of hOCR: each block an ``ocr_carea`` holding an ``ocr_par``, its lines ``ocr_line``, their
    words ``ocrx_word`` placed in proportion to their advance along the line. ``number`` is the page's 0-based
    position."""
    width, height = size
    resolution = f"; scan_res {round(dpi)} {round(dpi)}" if dpi else ""
    page_id = number + 1
    parts = [f"<div class='ocr_page' id='page_{page_id}' title='bbox 0 0 {width} {height}; ppageno {number}"
             f"{resolution}'>"]  # fmt: skip
    blocks: dict[int, list[TextLine]] = {}
    for line in lines:
        blocks.setdefault(line.block, []).append(line)
    for block_number, (_, block_lines) in enumerate(blocks.items(), start=1):
        box = _union(line.box for line in block_lines)
        block_id = f"{page_id}_{block_number}"
        parts.append(f"<div class='ocr_carea' id='block_{block_id}' title='{_bbox(box)}'>")
        parts.append(f"<p class='ocr_par' id='par_{block_id}' title='{_bbox(box)}'>")
        for line_number, line in enumerate(block_lines, start=1):
            line_id = f"{block_id}_{line_number}"
            parts.append(f"<span class='ocr_line' id='line_{line_id}' title='{_bbox(line.box)}; baseline 0 0'>")
            for word_number, (word, word_box) in enumerate(word_boxes(line), start=1):
                parts.append(f"<span class='ocrx_word' id='word_{line_id}_{word_number}' title='{_bbox(word_box)}'>"
                             f"{html.escape(word)}</span>")  # fmt: skip
            parts.append("</span>")
        parts.append("</p>\n</div>")
    parts.append("</div>")
    return "\n".join(parts)


def _union(boxes: Iterable[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    lefts, tops, rights, bottoms = zip(*boxes, strict=True)
    return min(lefts), min(tops), max(rights), max(bottoms)


def hocr_document(pages: list[str]) -> str:
    """A whole hOCR document around its pages."""
    body = "\n".join(pages)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n<head>\n<title>DeepSeek-OCR</title>\n'
        '<meta http-equiv="Content-Type" content="text/html;charset=utf-8"/>\n'
        "<meta name='ocr-system' content='DeepSeek-OCR API'/>\n"
        "<meta name='ocr-capabilities' content='ocr_page ocr_line ocrx_word'/>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def word_boxes(line: TextLine) -> list[tuple[str, tuple[float, float, float, float]]]:
    """The line's words, each with the part of the line's box its advance takes."""
    left, top, right, bottom = line.box
    total = advance(line.text) or 1.0
    scale = (right - left) / total
    words = []
    for match in re.finditer(r"\S+", line.text):
        start = left + advance(line.text[: match.start()]) * scale
        end = left + advance(line.text[: match.end()]) * scale
        words.append((match.group(), (start, top, end, bottom)))
    return words


def _bbox(box: tuple[float, float, float, float]) -> str:
    left, top, right, bottom = (max(value, 0.0) for value in box)
    return f"bbox {int(left)} {int(top)} {max(int(right), int(left) + 1)} {max(int(bottom), int(top) + 1)}"
