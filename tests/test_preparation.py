"""Decoding uploads: the allow-list, bombs, orientation, colour modes, and every corpus image."""

from __future__ import annotations

import io
import subprocess
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageOps

from ocr_api.errors import ApiError
from ocr_api.preparation import MAX_FRAMES_COUNTED, Deadline, ImageLimits, decode_image, sniff_format, to_rgb
from ocr_dev.inputs import animated, many_directory_tiff, png_bytes
from tests.conftest import CORPUS, CORPUS_FILES, CORPUS_IMAGES
from tests.fakes import SteppingClock

LIMITS = ImageLimits(max_pixels=40_000_000, min_side=8, max_aspect_ratio=64)

# What decode_image does with each corpus file: "ok", or the (status, code) of its error.
# Derived from ../shared/corpus/MANIFEST.tsv; a new corpus file fails test_every_corpus_file_is_classified.
EXPECTED = {
    "hopper.png": "ok",
    "hopper.jpg": "ok",
    "hopper.webp": "ok",
    "hopper.bmp": "ok",
    "hopper.gif": "ok",
    "hopper.tif": "ok",
    "hopper_orientation_6.jpg": "ok",
    "hopper_orientation_8.jpg": "ok",
    "hopper_orientation_3.webp": "ok",
    "exif_imagemagick_orientation.png": "ok",
    "pil_sample_cmyk.jpg": "ok",
    "16bit.cropped.tif": "ok",
    "1_trns.png": "ok",
    "l_trns.png": "ok",
    "p_trns_single.png": "ok",
    "rgb_trns.png": "ok",
    "pil123rgba.png": "ok",
    "iss634.gif": "ok",
    "iss634.webp": "ok",
    "decompression_bomb_extents.gif": "ok",
    "tRNS_null_1x1.png": (422, "image_too_small"),  # policy: under MIN_IMAGE_SIDE pixels there is nothing to read
    "broken.png": (422, "corrupt_image"),  # PNG signature, garbage after it
    "zero_width.gif": (422, "corrupt_image"),
    "broken_data_stream.png": (422, "corrupt_image"),
    "cross_scan_line_truncated.tga": (415, "unsupported_media_type"),
    "decompression_bomb.gif": (422, "image_too_large"),
    "reallybig.bmp": (422, "image_too_large"),
    "hopper_1bit.pbm": (415, "unsupported_media_type"),
    "pil_sample_cmyk.eps": (415, "unsupported_media_type"),
}


def _decode(name: str):
    return decode_image((CORPUS / "images" / name).read_bytes(), LIMITS)


def _raw_rgba(name: str) -> Image.Image:
    with Image.open(CORPUS / "images" / name) as image:
        return image.convert("RGBA")


def test_every_corpus_file_is_classified():
    if not CORPUS_FILES:
        pytest.skip(f"no corpus at {CORPUS}")
    assert {entry.name for entry in CORPUS_IMAGES} == set(EXPECTED)


@pytest.mark.parametrize("entry", CORPUS_IMAGES, ids=lambda entry: entry.name)
def test_corpus_image_outcome(entry):
    expected = EXPECTED[entry.name]
    started = time.perf_counter()
    if expected == "ok":
        prepared = decode_image(entry.path.read_bytes(), LIMITS)
        assert prepared.image.mode == "RGB"
        assert prepared.width >= 8
        assert prepared.height >= 8
    else:
        with pytest.raises(ApiError) as caught:
            decode_image(entry.path.read_bytes(), LIMITS)
        assert (caught.value.status, caught.value.code) == expected
        assert "Traceback" not in caught.value.message
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("name", ["decompression_bomb.gif", "reallybig.bmp"])
def test_bombs_are_refused_before_decoding_pixels(name):
    data = (CORPUS / "images" / name).read_bytes()
    tracemalloc.start()
    try:
        with pytest.raises(ApiError, match="pixels"):
            decode_image(data, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024


def test_eps_never_starts_a_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a subprocess was started")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    with pytest.raises(ApiError) as caught:
        _decode("pil_sample_cmyk.eps")
    assert caught.value.status == 415


@pytest.mark.parametrize("name", ["hopper_orientation_6.jpg", "hopper_orientation_8.jpg"])
def test_exif_orientation_is_applied(name):
    upright = np.asarray(_decode("hopper.jpg").image, dtype=np.int16)
    rotated = _decode(name).image
    with Image.open(CORPUS / "images" / name) as raw:
        unturned = np.asarray(raw.convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(rotated, dtype=np.int16) - upright).mean() < 12
    assert np.abs(unturned - upright).mean() > 30


@pytest.mark.parametrize("name", ["hopper_orientation_3.webp", "exif_imagemagick_orientation.png"])
def test_orientation_3_turns_the_page_half_round(name):
    with Image.open(CORPUS / "images" / name) as raw:
        expected = raw.convert("RGB").rotate(180)
    assert np.array_equal(np.asarray(_decode(name).image), np.asarray(expected))


@pytest.mark.parametrize("name", ["1_trns.png", "l_trns.png", "p_trns_single.png", "rgb_trns.png", "pil123rgba.png"])
def test_transparency_is_composited_on_white(name):
    alpha = np.asarray(_raw_rgba(name))[..., 3]
    pixels = np.asarray(_decode(name).image)
    assert (alpha == 0).any()
    assert (pixels[alpha == 0] == 255).all()


def test_16_bit_greyscale_is_stretched_not_clipped():
    prepared = _decode("16bit.cropped.tif")
    with Image.open(CORPUS / "images" / "16bit.cropped.tif") as raw:
        source = np.asarray(raw, dtype=np.int64)
    pixels = np.asarray(prepared.image)[..., 0].astype(np.int64)
    assert prepared.source_mode == "I;16"
    assert (pixels.min(), pixels.max()) == (0, 255)
    # Brighter in the source stays brighter after scaling.
    assert pixels.flat[source.argmax()] == 255
    assert pixels.flat[source.argmin()] == 0


def test_cmyk_becomes_rgb():
    prepared = _decode("pil_sample_cmyk.jpg")
    assert (prepared.source_mode, prepared.image.mode) == ("CMYK", "RGB")


@pytest.mark.parametrize("name", ["iss634.gif", "iss634.webp"])
def test_animated_images_use_the_first_frame(name):
    prepared = _decode(name)
    with Image.open(CORPUS / "images" / name) as raw:
        raw.seek(0)
        first = to_rgb(ImageOps.exif_transpose(raw))
    assert prepared.frames == 42
    assert np.array_equal(np.asarray(prepared.image), np.asarray(first))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (png_bytes(fmt="PNG"), "PNG"),
        (png_bytes(fmt="JPEG"), "JPEG"),
        (png_bytes(fmt="GIF"), "GIF"),
        (png_bytes(fmt="BMP"), "BMP"),
        (png_bytes(fmt="WEBP"), "WEBP"),
        (png_bytes(fmt="TIFF"), "TIFF"),
        (b"%PDF-1.7\n", None),
        (b"<html><body>hi</body></html>", None),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"", None),
    ],
)
def test_sniff_format_reads_the_bytes(data, expected):
    assert sniff_format(data) == expected


def test_name_and_content_type_are_ignored_only_bytes_count():
    html = b"<!DOCTYPE html><html><script>alert(1)</script></html>"
    with pytest.raises(ApiError) as caught:
        decode_image(html, LIMITS)
    assert caught.value.status == 415


def test_truncated_png_is_corrupt():
    noisy = Image.frombytes("RGB", (300, 300), np.random.default_rng(0).bytes(300 * 300 * 3))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    data = buffer.getvalue()
    with pytest.raises(ApiError) as caught:
        decode_image(data[: len(data) // 2], LIMITS)
    assert (caught.value.status, caught.value.code) == (422, "corrupt_image")


def test_empty_file_is_rejected():
    with pytest.raises(ApiError) as caught:
        decode_image(b"", LIMITS)
    assert (caught.value.status, caught.value.code) == (400, "empty_file")


@pytest.mark.parametrize(
    ("size", "code"),
    [((7, 100), "image_too_small"), ((8, 600), "image_aspect_ratio"), ((7000, 7000), "image_too_large")],
)
def test_size_policy(size, code):
    data = png_bytes(size, mode="L")
    with pytest.raises(ApiError) as caught:
        decode_image(data, LIMITS)
    assert (caught.value.status, caught.value.code) == (422, code)


@pytest.mark.parametrize("mode", ["LA", "PA", "I", "F", "I;16", "1", "P", "L", "RGBA"])
def test_every_mode_ends_as_8_bit_rgb(mode):
    image = Image.new(mode, (16, 16))
    if mode in ("I", "F", "I;16"):
        image = Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16).astype(np.int32)).convert(mode)
    result = to_rgb(image)
    assert result.mode == "RGB"
    assert result.size == (16, 16)


def test_flat_high_bit_depth_image_becomes_white():
    image = Image.new("I;16", (16, 16), 500)
    assert to_rgb(image).getextrema() == ((255, 255), (255, 255), (255, 255))


FRAME_BOMBS = {
    "TIFF": lambda: many_directory_tiff(20_000),
    "GIF": lambda: animated("GIF", 1500),
    "WEBP": lambda: animated("WEBP", 1500),
    "APNG": lambda: animated("PNG", 1500),
}


@pytest.mark.parametrize("kind", FRAME_BOMBS)
def test_frames_are_counted_up_to_the_cap_and_only_the_first_is_decoded(kind):
    prepared = decode_image(FRAME_BOMBS[kind](), LIMITS)
    assert prepared.frames == MAX_FRAMES_COUNTED
    # The first frame: black in the animations, the 0..255 ramp of the TIFF strip.
    pixels = np.asarray(prepared.image)
    assert pixels.shape == (16, 16, 3)
    expected_first_pixel = 0
    assert pixels[0, 0, 0] == expected_first_pixel
    if kind == "TIFF":
        assert pixels[15, 15, 0] == 255


def test_frames_under_the_cap_are_counted_exactly():
    assert decode_image(many_directory_tiff(37), LIMITS).frames == 37
    assert decode_image(animated("GIF", 37), LIMITS).frames == 37


@pytest.mark.parametrize("kind", FRAME_BOMBS)
def test_preparation_past_its_budget_is_422_preparation_timeout(kind):
    data = FRAME_BOMBS[kind]()
    # 20 s a reading against a 30 s budget: the second check finds it spent (WEBP and APNG have two, after
    # decoding the first frame and after converting it; GIF and TIFF one more every 100 frames counted).
    with pytest.raises(ApiError) as raised:
        decode_image(data, LIMITS, deadline=Deadline(30, clock=SteppingClock(20)))
    assert (raised.value.status, raised.value.code) == (422, "preparation_timeout")
    assert "PREPARE_TIMEOUT_S" in raised.value.message
    # The same file within its budget is served.
    assert decode_image(data, LIMITS, deadline=Deadline(30, clock=SteppingClock(0))).frames == MAX_FRAMES_COUNTED


def test_the_budget_comes_from_the_limits_when_no_deadline_is_given():
    limits = ImageLimits(max_pixels=40_000_000, min_side=8, max_aspect_ratio=64, timeout_s=0)
    with pytest.raises(ApiError) as raised:
        decode_image(many_directory_tiff(20_000), limits)
    assert raised.value.code == "preparation_timeout"
