"""Reading the model's output: plain text, layout blocks with pixel boxes, and markdown without the markup.

With ``<|grounding|>`` DeepSeek-OCR writes ``<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>`` before
each block's text, with coordinates on a 0..999 scale of the page in both axes. The reference scripts read the
box list with ``eval()``; here it is parsed strictly, and anything that does not parse stays text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

END_OF_SENTENCE = "<｜end▁of▁sentence｜>"
SCALE = 999  # the model's coordinate range is 0..999 in both axes
MAX_BOXES_PER_BLOCK = 64

# A grounding header: label between ref tags, then the box list between det tags. Labels are short and
# single-line; anything longer is not a header the model wrote.
_HEADER = re.compile(r"<\|ref\|>(?P<label>[^<>\n]{1,200}?)<\|/ref\|><\|det\|>(?P<boxes>[^<>]{0,4000}?)<\|/det\|>")
_BOX = r"\[\s*(\d{1,6})\s*,\s*(\d{1,6})\s*,\s*(\d{1,6})\s*,\s*(\d{1,6})\s*\]"
_BOX_LIST = re.compile(rf"\[\s*{_BOX}(?:\s*,\s*{_BOX})*\s*\]")
_ONE_BOX = re.compile(_BOX)
# Markup that must never reach markdown, closed or not.
_STRAY_MARKUP = re.compile(r"<\|/?(?:ref|det|grounding)\|>|" + re.escape(END_OF_SENTENCE))


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels of the page image, left-top inclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    def to_list(self) -> list[int]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass
class Block:
    """One layout block: its label, its boxes in pixels, and the text the model wrote for it."""

    label: str
    boxes: list[Box] = field(default_factory=list)
    text: str = ""
    figure: int | None = None  # 1-based figure number on the page, for ``image`` blocks

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"label": self.label, "boxes": [box.to_list() for box in self.boxes], "text": self.text}
        if self.figure is not None:
            body["figure"] = self.figure
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Block:
        """The block ``to_dict`` wrote (a job's stored page)."""
        return cls(body["label"], [Box(*box) for box in body["boxes"]], body["text"], body.get("figure"))


def clean_text(raw_output: str) -> str:
    """Return the output without the end-of-sentence marker and surrounding blank space."""
    # Engines normally leave the marker out; a model that writes it mid-text still ends there.
    return raw_output.split(END_OF_SENTENCE, 1)[0].strip()


def parse_boxes(text: str, width: int, height: int) -> list[Box] | None:
    """Parse ``[[x1, y1, x2, y2], ...]`` on the 0..999 scale into pixel boxes; None when it is not that shape."""
    text = text.strip()
    if not _BOX_LIST.fullmatch(text):
        return None
    boxes = []
    for match in _ONE_BOX.finditer(text):
        if len(boxes) == MAX_BOXES_PER_BLOCK:
            break
        x1, y1, x2, y2 = (min(int(value), SCALE) for value in match.groups())
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        boxes.append(Box(_to_pixels(x1, width), _to_pixels(y1, height), _to_pixels(x2, width), _to_pixels(y2, height)))
    return boxes


def parse_blocks(raw_output: str, width: int, height: int) -> list[Block]:
    """Split grounded output into blocks; text before the first header, or without any, is one ``text`` block."""
    text = clean_text(raw_output)
    blocks: list[Block] = []
    headers = [match for match in _HEADER.finditer(text) if parse_boxes(match["boxes"], width, height) is not None]
    lead = text[: headers[0].start()] if headers else text
    if _strip_markup(lead):
        blocks.append(Block(label="text", text=_strip_markup(lead)))
    figures = 0
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        label = header["label"].strip()
        block = Block(label=label, boxes=parse_boxes(header["boxes"], width, height) or [])
        block.text = _strip_markup(text[header.end() : end])
        if label == "image":
            figures += 1
            block.figure = figures
        blocks.append(block)
    return blocks


def to_markdown(blocks: list[Block]) -> str:
    """Return the page as markdown: block texts in order, ``image`` regions as figure references."""
    parts = []
    for block in blocks:
        if block.figure is not None:
            parts.append(f"![figure {block.figure}](#figure-{block.figure})")
            if block.text:
                parts.append(block.text)
        elif block.text:
            parts.append(block.text)
    return "\n\n".join(parts)


def looks_repetitive(text: str, min_repeats: int = 4, min_chars: int = 200, max_unit: int = 300) -> bool:
    """Return True when the text ends in one passage repeated ``min_repeats`` times over ``min_chars`` or more.

    A model caught in a loop writes the same line, cell or phrase until the token budget runs out; the n-gram
    guard makes exact loops rarer but not impossible (short units, whitelisted table tags).
    """
    text = text.rstrip()
    for unit_length in range(1, min(max_unit, len(text) // min_repeats) + 1):
        unit = text[-unit_length:]
        repeats = 1
        while text.endswith(unit * (repeats + 1)):
            repeats += 1
        if repeats >= min_repeats and repeats * unit_length >= min_chars:
            return True
    return False


def _strip_markup(text: str) -> str:
    return _STRAY_MARKUP.sub("", text).strip()


def _to_pixels(value: int, size: int) -> int:
    return min(size, round(value / SCALE * size))
