"""A page's text as lines placed on the page: what a searchable PDF's invisible layer and hOCR are made from.

DeepSeek-OCR gives each layout block a box and its text, but not where the block's lines break: a paragraph comes
back as one line of text. The lines are found again here the way the page was typeset: the block's text wrapped
greedily at the box's width, at the font size that makes as many lines as fill the box's height (text widths as
Helvetica's, a wide East Asian character one em). Text the model wrote on lines of its own (lists, formulas, table
rows) keeps its breaks. Each line gets its share of the box's height, and a width in proportion to its text, so
that a short last line does not stretch across the box.
"""

from __future__ import annotations

import html
import re
import unicodedata
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
# The faces' widths over Helvetica's that lines are tried in: Helvetica and Arial; narrower sans; Times.
NARROWINGS = (1.0, 0.93, 0.86)
WIDE_EM = 1.0  # a CJK character's advance, in ems

# Average advances of Helvetica (1/1000 em) for ASCII; other narrow characters count as an average letter.
HELVETICA_WIDTHS = dict(
    zip(
        " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~",
        map(
            int,
            (
                "278 278 355 556 556 889 667 191 333 333 389 584 278 333 278 278 556 556 556 556 556 556 556 556 556 "
                "556 278 278 584 584 584 556 1015 667 667 722 722 667 611 778 722 278 500 667 556 833 722 778 667 778 "
                "722 667 611 722 667 944 667 667 611 278 278 278 469 556 333 556 556 500 556 556 278 556 556 222 222 "
                "500 222 833 556 556 556 556 333 500 278 556 500 722 500 500 500 334 260 334 584 "
            ).split(),  # noqa: SIM905 - 95 numbers read better as one string than as 95 list items
        ),
        strict=True,
    )
)
_AVERAGE_LETTER = 0.55
_HEADING = re.compile(r"^#{1,6}\s+")
_EMPHASIS = re.compile(r"\*\*|__")


@dataclass(frozen=True)
class TextLine:
    """One line of text and its box in pixels of the page (left, top, right, bottom)."""

    text: str
    box: tuple[float, float, float, float]


def page_lines(blocks: tuple[Block, ...] | list[Block], text: str, size: tuple[int, int]) -> list[TextLine]:
    """The page's lines in reading order. Without any box (a prompt without grounding) the page's text is one
    block over the whole page."""
    width, height = size
    boxed = [block for block in blocks if block.boxes]
    if not boxed:
        whole = Block(label="text", text=text)
        return _block_lines(whole, (0.0, 0.0, float(width), float(height)), 1.0) if text.strip() else []
    # a block over two columns has a box for each part; its text goes in the first
    placed = [(block, (block.boxes[0].x1, block.boxes[0].y1, block.boxes[0].x2, block.boxes[0].y2))
              for block in boxed if block.label not in PICTURE_LABELS and block.figure is None]  # fmt: skip
    # A page is mostly set in one face: the face's widths are the ones that make its paragraphs fit best.
    narrowing = min(NARROWINGS, key=lambda tried: sum(_misfit(block, box, tried) for block, box in placed))
    return [line for block, box in placed for line in _block_lines(block, box, narrowing)]


def _misfit(block: Block, box: tuple[float, float, float, float], narrowing: float) -> float:
    """How far from ordinary spacing a block's text fits its box in a face of that narrowing (0 for a table)."""
    written = block_text_lines(block)
    if not written or _is_table(block):
        return 0.0
    left, top, right, bottom = box
    return _wrap_to_box(written, max(right - left, 1.0), max(bottom - top, 1.0), narrowing)[0]


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


def advance(text: str) -> float:
    """The text's width in ems, as Helvetica would set it (a wide East Asian character one em)."""
    total = 0.0
    for character in text:
        if character in HELVETICA_WIDTHS:
            total += HELVETICA_WIDTHS[character] / 1000
        elif unicodedata.east_asian_width(character) in ("W", "F"):
            total += WIDE_EM
        elif not unicodedata.combining(character):
            total += _AVERAGE_LETTER
    return total


def _block_lines(block: Block, box: tuple[float, float, float, float], narrowing: float) -> list[TextLine]:
    left, top, right, bottom = box
    written = block_text_lines(block)
    if not written:
        return []
    width, height = max(right - left, 1.0), max(bottom - top, 1.0)
    if _is_table(block):  # a row is a line across the whole table, its cells spread over it
        step = height / len(written)
        return [TextLine(row, (left, top + number * step, right, top + (number + 1) * step))
                for number, row in enumerate(written)]  # fmt: skip
    _, fit = _wrap_to_box(written, width, height, narrowing)
    first_baseline = top + _ink_above(fit.lines[0]) * fit.font_size
    placed = []
    for number, line in enumerate(fit.lines):
        baseline = first_baseline + number * fit.spacing * fit.font_size
        line_width = min(width, advance(line) * fit.narrowing * fit.font_size)
        # the layer's glyph box: ASCENT of the font size above the baseline, the rest below
        placed.append(TextLine(line, (left, baseline - ASCENT * fit.font_size, left + line_width,
                                      baseline + (1 - ASCENT) * fit.font_size)))  # fmt: skip
    return placed


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
    lines: list[str]
    font_size: float
    spacing: float  # baseline to baseline, over the font size
    narrowing: float = 1.0  # the face's widths over Helvetica's


def _wrap_to_box(written: list[str], width: float, height: float, narrowing: float) -> tuple[float, _Fit]:
    """The lines the text fills the box with, their font size and spacing.

    Every way the text wraps at some font size is a candidate; its size is the one at which its widest line spans
    the box (a left-aligned or justified paragraph's widest line does), and the candidate kept is the one whose
    spacing, given the box's height and how far its first line's ink rises and its last one's falls, is nearest
    ordinary. Which words end a line hangs on it.
    """
    paragraphs = [_pieces(line) for line in written]
    most = max(len(written), int(height / 4) or 1)  # lines under 4 pixels high are not text anyone set
    best: tuple[float, _Fit] | None = None  # its distance from ordinary spacing, and the fit
    seen: set[tuple[int, ...]] = set()
    for step in range(SIZE_STEPS + 1):
        # font sizes from one line filling the box's height down to the most lines that could
        font_size = height / (1 + (most - 1) * LEAST_SPACING * step / SIZE_STEPS)
        breaks = _breaks(paragraphs, width / font_size + BEARINGS)
        if breaks in seen:
            continue
        seen.add(breaks)
        lines = _lines(paragraphs, breaks)
        if len(lines) > most:
            continue
        fit = _fit(lines, width, height, narrowing)
        if fit is not None and (best is None or fit[0] < best[0]):
            best = fit
    if best is not None:
        return best
    font_size = height / ((len(written) - 1) * LINE_SPACING + 1.0)  # a box too small for its text: its own lines
    return MOST_SPACING, _Fit(written, font_size, LINE_SPACING, narrowing)


def _fit(lines: list[str], width: float, height: float, narrowing: float) -> tuple[float, _Fit] | None:
    """Lines wrapped at some size, in a face ``narrowing`` times Helvetica's widths: the size at which the widest
    spans the box, and how far the spacing that makes is from ordinary (None: no plausible spacing)."""
    tight = width / max((max(advance(line) for line in lines) - BEARINGS) * narrowing, 1e-6)
    ink = _ink_above(lines[0]) + _ink_below(lines[-1])
    gaps = len(lines) - 1
    spacing = (height / tight - ink) / gaps if gaps else LINE_SPACING
    if gaps and not LEAST_SPACING <= spacing <= MOST_SPACING:
        return None
    # in ems: how far the spacing is from ordinary (for one line, how far its ink is from the box's height)
    distance = abs(spacing - LINE_SPACING) if gaps else abs(height / tight - ink)
    return distance, _Fit(lines, tight, spacing, narrowing)


def _pieces(line: str) -> list[tuple[str, float, float]]:
    """A line cut where it may wrap: each piece's text, its advance without and with its trailing space."""
    pieces = re.findall(r"\S+\s*", line) if " " in line else _wide_pieces(line)
    return [(piece, advance(piece.rstrip()), advance(piece)) for piece in pieces]


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
    lines, remaining = [], iter(breaks)
    for pieces in paragraphs:
        start = 0
        while start < len(pieces) or start == 0:
            count = next(remaining)
            lines.append("".join(piece for piece, _, _ in pieces[start : start + count]).rstrip())
            start += count
            if count == 0:
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
    """One ``ocr_page`` of hOCR: each line an ``ocr_line``, its words ``ocrx_word`` placed in proportion to their
    advance along the line. ``number`` is the page's 0-based position."""
    width, height = size
    resolution = f"; scan_res {round(dpi)} {round(dpi)}" if dpi else ""
    parts = [f"<div class='ocr_page' id='page_{number + 1}' title='bbox 0 0 {width} {height}; "
             f"ppageno {number}{resolution}'>"]  # fmt: skip
    for line_number, line in enumerate(lines, start=1):
        line_id = f"line_{number + 1}_{line_number}"
        parts.append(f"<span class='ocr_line' id='{line_id}' title='{_bbox(line.box)}; baseline 0 0'>")
        for word_number, (word, box) in enumerate(word_boxes(line), start=1):
            parts.append(f"<span class='ocrx_word' id='word_{line_id[5:]}_{word_number}' title='{_bbox(box)}'>"
                         f"{html.escape(word)}</span> ")  # fmt: skip
        parts.append("</span>")
    parts.append("</div>")
    return "\n".join(parts)


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
    left, top, right, bottom = box
    return f"bbox {int(left)} {int(top)} {max(int(right), int(left) + 1)} {max(int(bottom), int(top) + 1)}"
