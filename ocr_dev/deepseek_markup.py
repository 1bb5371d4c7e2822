"""A page's markdown written as DeepSeek-OCR writes a page: grounded blocks with boxes, tables as HTML, formulas as
LaTeX. For the stand-in engine (tests/test_quality.py): it answers each page of olmOCR-Bench's sample with olmOCR's own
output in the model's markup, so that what the service makes of it can be scored against the output itself.

The boxes are made up (the blocks stacked down the page): the scorer reads text, not layout.
"""

from __future__ import annotations

import re

_TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")
_DISPLAY_MATH = re.compile(r"^(\\\[.*\\\]|\$\$.*\$\$)$", re.DOTALL)


def blocks_of(markdown: str) -> list[str]:
    """The page's blocks: paragraphs split at blank lines, a markdown table (its rows kept together) one block."""
    blocks: list[str] = []
    current: list[str] = []
    for line in markdown.splitlines():
        table_row = line.lstrip().startswith("|")
        starts_table = table_row and (not current or not current[-1].lstrip().startswith("|"))
        if not line.strip() or starts_table or (current and current[-1].lstrip().startswith("|") and not table_row):
            if current:
                blocks.append("\n".join(current))
            current = []
        if line.strip():
            current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def table_html(block: str) -> str:
    """A markdown table as the HTML table DeepSeek-OCR writes (rows of cells, no header markup)."""
    rows = []
    for line in block.splitlines():
        if _TABLE_RULE.match(line.strip()):
            continue
        cells = line.strip().strip("|").split("|")
        rows.append("<tr>" + "".join(f"<td>{cell.strip()}</td>" for cell in cells) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def label_of(block: str) -> str:
    if block.lstrip().startswith("|"):
        return "table"
    if block.startswith("# "):
        return "title"
    if block.startswith("#"):
        return "sub_title"
    if _DISPLAY_MATH.match(block.strip()):
        return "equation"
    return "text"


def as_deepseek_output(markdown: str) -> str:
    """``markdown`` as DeepSeek-OCR's grounded output: one ``<|ref|>label<|/ref|><|det|>[[box]]<|/det|>`` header per
    block, its text after it; tables as HTML; formulas left as they are (LaTeX)."""
    blocks = blocks_of(markdown)
    step = 960 // max(1, len(blocks))
    parts = []
    for index, block in enumerate(blocks):
        label = label_of(block)
        top = 20 + index * step
        text = table_html(block) if label == "table" else block
        parts.append(f"<|ref|>{label}<|/ref|><|det|>[[50, {top}, 950, {top + max(1, step - 4)}]]<|/det|>\n{text}")
    return "\n\n".join(parts)
