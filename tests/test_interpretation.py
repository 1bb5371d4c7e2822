"""Parsing the grounding markup: realistic outputs, malformed and hostile ones, and box scaling to pixels."""

from __future__ import annotations

import pytest

from ocr_api.interpretation import (
    END_OF_SENTENCE,
    Box,
    clean_text,
    looks_repetitive,
    parse_blocks,
    parse_boxes,
    to_markdown,
)

# The shape DeepSeek-OCR writes for "<|grounding|>Convert the document to markdown."
DOCUMENT = (
    "<|ref|>title<|/ref|><|det|>[[57, 225, 567, 255]]<|/det|>\n# Quarterly Report\n\n"
    "<|ref|>text<|/ref|><|det|>[[57, 270, 940, 330]]<|/det|>\nRevenue grew 12% over the quarter.\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 400, 500, 700]]<|/det|>\n\n"
    "<|ref|>image_caption<|/ref|><|det|>[[100, 705, 500, 720]]<|/det|>\nFigure 1: revenue by month\n\n"
    "<|ref|>table<|/ref|><|det|>[[57, 750, 940, 900], [57, 905, 940, 950]]<|/det|>\n"
    "<table><tr><td>Q1</td><td>10</td></tr></table>"
)


def test_a_realistic_page_becomes_ordered_blocks_in_pixels():
    blocks = parse_blocks(DOCUMENT + END_OF_SENTENCE, width=999, height=1998)
    assert [b.label for b in blocks] == ["title", "text", "image", "image_caption", "table"]
    assert blocks[0].boxes == [Box(57, 450, 567, 510)]  # y doubled: the page is twice as tall as the scale
    assert blocks[0].text == "# Quarterly Report"
    assert blocks[2].figure == 1
    assert blocks[2].text == ""
    assert len(blocks[4].boxes) == 2
    assert blocks[4].text.startswith("<table>")


def test_box_scaling_matches_known_pixel_positions():
    # A 1654x2339 A4 scan at 200 dpi: 0 and 999 are the page edges, 500 is the middle.
    (box,) = parse_boxes("[[0, 0, 999, 999]]", 1654, 2339)
    assert box == Box(0, 0, 1654, 2339)
    (middle,) = parse_boxes("[[500, 500, 500, 500]]", 1654, 2339)
    assert (middle.x1, middle.y1) == (round(500 / 999 * 1654), round(500 / 999 * 2339)) == (828, 1171)


def test_markdown_drops_the_markup_and_references_figures():
    markdown = to_markdown(parse_blocks(DOCUMENT, 1000, 1000))
    assert "<|" not in markdown
    assert "[[" not in markdown
    assert markdown.startswith("# Quarterly Report\n\nRevenue grew 12%")
    assert "![figure 1](#figure-1)\n\nFigure 1: revenue by month" in markdown


def test_output_without_markup_is_one_text_block():
    blocks = parse_blocks("Just some free OCR text.\nSecond line.", 100, 100)
    assert [(b.label, b.boxes, b.text) for b in blocks] == [("text", [], "Just some free OCR text.\nSecond line.")]
    assert parse_blocks("   ", 100, 100) == []


def test_locate_output_gives_the_found_boxes():
    (block,) = parse_blocks("<|ref|>Total due<|/ref|><|det|>[[600, 800, 900, 850]]<|/det|>", 2000, 1000)
    assert block.label == "Total due"
    assert block.boxes == [Box(1201, 801, 1802, 851)]


@pytest.mark.parametrize(
    "boxes",
    [
        "[[1, 2, 3]]",  # three numbers
        "[[1, 2, 3, 4, 5]]",
        "[1, 2, 3, 4]",  # not a list of boxes
        "[[1, 2, 3, 4]",  # unclosed
        "[[a, b, c, d]]",
        "[[-1, 2, 3, 4]]",
        "[[1.5, 2, 3, 4]]",
        "__import__('os').system('echo pwned')",  # what eval() would have run
        "",
    ],
)
def test_malformed_box_lists_are_refused(boxes):
    assert parse_boxes(boxes, 100, 100) is None


def test_a_header_with_malformed_boxes_stays_text_without_markup():
    blocks = parse_blocks("<|ref|>text<|/ref|><|det|>[[1, 2, 3]]<|/det|>\nhello", 100, 100)
    assert [(b.label, b.boxes) for b in blocks] == [("text", [])]
    assert "<|" not in blocks[0].text
    assert "hello" in blocks[0].text


def test_boxes_out_of_range_are_clamped_and_ordered():
    (box,) = parse_boxes("[[900, 950, 100, 99999]]", 1000, 500)
    assert box == Box(100, 475, 901, 500)


def test_unclosed_tags_and_imitated_markup_never_leak_into_markdown():
    hostile = (
        "<|ref|>title<|/ref|><|det|>[[0, 0, 999, 100]]<|/det|>\nReal title\n"
        "The page says <|ref|>fake<|/ref|> and <|det|>[[1, 2, 3, 4]] but never closes it\n"
        "<|ref|>text<|/ref|><|det|>[[0, 100, 999, 200]"  # cut off by the token limit
    )
    blocks = parse_blocks(hostile, 100, 100)
    assert [b.label for b in blocks] == ["title"]
    markdown = to_markdown(blocks)
    assert "<|" not in markdown
    assert "Real title" in markdown
    assert "never closes it" in markdown


def test_a_flood_of_boxes_is_bounded():
    boxes = "[" + ", ".join("[1, 2, 3, 4]" for _ in range(500)) + "]"
    assert len(parse_boxes(boxes, 10, 10)) == 64


def test_clean_text_stops_at_the_end_of_sentence_marker():
    assert clean_text(f"  page text {END_OF_SENTENCE} garbage") == "page text"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Total: 12.00\n" + "| 0 | 0 |\n" * 40, True),  # a table row repeated to the budget
        ("intro " + "ha" * 150, True),
        ("The quick brown fox jumps over the lazy dog. " * 3, False),  # three times is prose that repeats
        ("A normal page of text with many different words in it." * 1, False),
        ("-" * 80, False),  # a rule line: repetitive but short
        ("", False),
    ],
)
def test_repetition_loops_are_detected_from_the_text(text, expected):
    assert looks_repetitive(text) is expected
