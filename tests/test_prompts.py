"""Prompts: presets, the <image> placeholder rule, literal backslash-n, limits."""

from __future__ import annotations

import pytest

from ocr_api.errors import BadRequest
from ocr_api.prompts import normalize_prompt, resolve_prompt, task_prompt

DEFAULT = "<image>\nFree OCR."


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("free", "<image>\nFree OCR."),
        ("markdown", "<image>\n<|grounding|>Convert the document to markdown."),
        ("ocr", "<image>\n<|grounding|>OCR this image."),
        ("figure", "<image>\nParse the figure."),
        ("describe", "<image>\nDescribe this image in detail."),
    ],
)
def test_task_presets(task, expected):
    assert task_prompt(task) == expected


def test_locate_wraps_the_phrase_in_ref_markup():
    assert task_prompt("locate", " the total ") == "<image>\nLocate <|ref|>the total<|/ref|> in the image."


@pytest.mark.parametrize(
    ("task", "phrase", "code"),
    [
        ("locate", None, "missing_phrase"),
        ("locate", "   ", "missing_phrase"),
        ("locate", "x" * 201, "phrase_too_long"),
        ("locate", "a<|/ref|>b", "invalid_phrase"),
        ("locate", "<image>", "invalid_phrase"),
        ("free", "total", "unexpected_phrase"),
        ("translate", None, "unknown_task"),
    ],
)
def test_bad_task_fields_are_400(task, phrase, code):
    with pytest.raises(BadRequest) as caught:
        task_prompt(task, phrase)
    assert caught.value.code == code
    assert caught.value.status == 400


def test_literal_backslash_n_from_curl_becomes_a_newline():
    assert normalize_prompt(r"<image>\nFree OCR.", 100) == "<image>\nFree OCR."


def test_missing_placeholder_is_prepended():
    assert normalize_prompt("Free OCR.", 100) == "<image>\nFree OCR."


@pytest.mark.parametrize(
    ("prompt", "code"),
    [
        ("Free OCR. <image>", "invalid_prompt"),
        ("<image>\n<image>\nFree OCR.", "invalid_prompt"),
        ("   ", "invalid_prompt"),
        ("<image>\nbad\x00byte", "invalid_prompt"),
        ("x" * 101, "prompt_too_long"),
    ],
)
def test_bad_prompts_are_400(prompt, code):
    with pytest.raises(BadRequest) as caught:
        normalize_prompt(prompt, 100)
    assert caught.value.code == code


def test_resolve_prefers_nothing_when_both_prompt_and_task_are_sent():
    with pytest.raises(BadRequest) as caught:
        resolve_prompt("Free OCR.", "markdown", None, DEFAULT, 100)
    assert caught.value.code == "conflicting_fields"


def test_resolve_falls_back_to_the_default_prompt():
    assert resolve_prompt(None, None, None, DEFAULT, 100) == (DEFAULT, None)
    assert resolve_prompt("", "", None, DEFAULT, 100) == (DEFAULT, None)


def test_resolve_reports_the_task_name():
    assert resolve_prompt(None, " Markdown ", None, DEFAULT, 100)[1] == "markdown"


def test_phrase_without_locate_is_rejected():
    with pytest.raises(BadRequest) as caught:
        resolve_prompt(None, None, "total", DEFAULT, 100)
    assert caught.value.code == "unexpected_phrase"
