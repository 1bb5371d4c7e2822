"""Pictures made from a page and its blocks: figure crops, and a copy of the page with the boxes drawn.

Both are made from the page's pixels at the size the engine saw it and the model's own output, so they can be made
again at any time from the stored file: ``/ocr`` returns them inline as PNG data URLs, a job serves each one at its
own URL (``picture_png``) and stores nothing but the file and the page's output, which it keeps anyway.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageDraw

from ocr_api.interpretation import Block, parse_blocks
from ocr_api.preparation import png_data_url

# One colour per kind of block, so an annotated page reads at a glance.
COLOURS = {"title": "#d62728", "sub_title": "#ff7f0e", "table": "#2ca02c", "image": "#1f77b4", "equation": "#9467bd"}
DEFAULT_COLOUR = "#7f7f7f"
ANNOTATED = "annotated"
FIGURE = "figure"


def figure_blocks(blocks: list[Block] | tuple[Block, ...]) -> list[Block]:
    """The ``image`` blocks that have a box: the figures a page's pictures crop, numbered as the blocks number them."""
    return [block for block in blocks if block.figure is not None and block.boxes]


def crop_figure(page: Image.Image, block: Block) -> Image.Image:
    """The block's first box cut from the page (at least one pixel each way, so a degenerate box still shows)."""
    box = block.boxes[0]
    right, bottom = max(box.x2, min(page.width, box.x1 + 1)), max(box.y2, min(page.height, box.y1 + 1))
    return page.crop((box.x1, box.y1, right, bottom))


def annotate(page: Image.Image, blocks: list[Block]) -> Image.Image:
    """Return a copy of the page with every block's boxes and label drawn on it."""
    copy = page.convert("RGB")
    draw = ImageDraw.Draw(copy)
    width = max(2, round(max(copy.size) / 500))
    for block in blocks:
        colour = COLOURS.get(block.label, DEFAULT_COLOUR)
        for box in block.boxes:
            draw.rectangle((box.x1, box.y1, box.x2, box.y2), outline=colour, width=width)
            draw.text((box.x1 + width, max(0, box.y1 - 12)), block.label[:40], fill=colour)
    return copy


def inline_pictures(
    page: Image.Image, raw_output: str, page_blocks: tuple[Block, ...], *, figures: bool, annotated: bool
) -> dict[str, Any]:
    """The pictures ``/ocr`` returns inline: ``figures`` (each crop with its box in the page's own pixels, as the
    blocks give it) and ``annotated_image``, as PNG data URLs."""
    seen = parse_blocks(raw_output, *page.size)  # the same blocks, in the pixels of the page as the engine saw it
    pictures: dict[str, Any] = {}
    if figures:
        boxes = {block.figure: block.boxes[0].to_list() for block in figure_blocks(page_blocks)}
        pictures["figures"] = [
            {"figure": block.figure, "box": boxes.get(block.figure), "image": png_data_url(crop_figure(page, block))}
            for block in figure_blocks(seen)
        ]
    if annotated:
        pictures["annotated_image"] = png_data_url(annotate(page, seen))
    return pictures


def picture_links(page_blocks: tuple[Block, ...], base: str, *, figures: bool, annotated: bool) -> dict[str, Any]:
    """A job page's pictures as links under ``base`` (its page's URL): made when asked for, not stored."""
    links: dict[str, Any] = {}
    if figures:
        links["figures"] = [
            {"figure": block.figure, "box": block.boxes[0].to_list(), "image_url": f"{base}/figures/{block.figure}.png"}
            for block in figure_blocks(page_blocks)
        ]
    if annotated:
        links["annotated_image_url"] = f"{base}/annotated.png"
    return links


def has_figure(raw_output: str, number: int) -> bool:
    """Whether the page's output has figure ``number`` (read from the markup alone: nothing is drawn)."""
    return any(block.figure == number for block in figure_blocks(parse_blocks(raw_output, 1000, 1000)))


def picture_png(page: Image.Image, raw_output: str, kind: str, number: int = 0) -> bytes | None:
    """One picture of a page as PNG bytes: the annotated page, or figure ``number``; None when there is no such one."""
    blocks = parse_blocks(raw_output, *page.size)
    if kind == ANNOTATED:
        picture = annotate(page, blocks)
    else:
        found = [block for block in figure_blocks(blocks) if block.figure == number]
        if not found:
            return None
        picture = crop_figure(page, found[0])
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
