"""Pictures made from a page and its blocks: figure crops, and a copy of the page with the boxes drawn."""

from __future__ import annotations

from PIL import Image, ImageDraw

from ocr_api.interpretation import Block
from ocr_api.preparation import png_data_url

# One colour per kind of block, so an annotated page reads at a glance.
COLOURS = {"title": "#d62728", "sub_title": "#ff7f0e", "table": "#2ca02c", "image": "#1f77b4", "equation": "#9467bd"}
DEFAULT_COLOUR = "#7f7f7f"


def crop_figures(page: Image.Image, blocks: list[Block]) -> list[dict[str, object]]:
    """Return each ``image`` block's first box cropped from the page, as ``{figure, box, image}`` entries."""
    figures = []
    for block in blocks:
        if block.figure is None or not block.boxes:
            continue
        box = block.boxes[0]
        if box.x2 - box.x1 < 1 or box.y2 - box.y1 < 1:
            continue  # a degenerate box has nothing to show
        crop = page.crop((box.x1, box.y1, box.x2, box.y2))
        figures.append({"figure": block.figure, "box": box.to_list(), "image": png_data_url(crop)})
    return figures


def annotate(page: Image.Image, blocks: list[Block]) -> str:
    """Return a copy of the page with every block's boxes and label drawn on it, as a PNG data URL."""
    copy = page.convert("RGB")
    draw = ImageDraw.Draw(copy)
    width = max(2, round(max(copy.size) / 500))
    for block in blocks:
        colour = COLOURS.get(block.label, DEFAULT_COLOUR)
        for box in block.boxes:
            draw.rectangle((box.x1, box.y1, box.x2, box.y2), outline=colour, width=width)
            draw.text((box.x1 + width, max(0, box.y1 - 12)), block.label[:40], fill=colour)
    return png_data_url(copy)
