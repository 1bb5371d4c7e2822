"""The engine gets each page at the smallest size from which the model's processor makes the same views.

Checked against transformers' own DeepSeek-OCR-2 image processor (its tile grid and patch count); DeepSeek-OCR v1's
640 tiles against vLLM's processor in tests/test_vllm.py.
"""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image
from urllib3 import encode_multipart_formdata

from ocr_api.profiles import PROFILES
from ocr_api.tiling import engine_size, tile_grid
from ocr_dev.inputs import make_pdf, png_bytes

V1, V2 = PROFILES["deepseek-ocr"], PROFILES["deepseek-ocr-2"]
A4_300_DPI = (2480, 3508)
SIZES = [A4_300_DPI, (4032, 3024), (3024, 4032), (1191, 1684), (6336, 6336), (800, 1100), (640, 640), (769, 200),
         (10_000, 1_000), (1_000, 10_000), (2000, 40), (1537, 2305), (5000, 2500)]  # fmt: skip
RANDOM_SIZES = [(random.Random(seed).randint(8, 9000), random.Random(-seed).randint(8, 9000)) for seed in range(300)]


@pytest.fixture(scope="module")
def processor():
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

    return DeepseekOcr2ImageProcessorPil()


def test_the_profile_matches_the_processor(processor):
    assert (processor.tile_size, processor.min_patches, processor.max_patches) == (V2.tile_size, 2, 6)
    assert processor.size.height == V2.base_size == 1024


@pytest.mark.parametrize("mode", ["gundam", "base"])
def test_same_tile_grid_and_patch_count_as_the_full_page(processor, mode):
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import get_optimal_tiled_canvas

    kwargs = {} if mode == "gundam" else {"min_patches": 1, "max_patches": 1}
    low, high = (2, 6) if mode == "gundam" else (1, 1)
    for width, height in SIZES + RANDOM_SIZES:
        target = engine_size((width, height), V2, mode)
        expected_grid = (
            get_optimal_tiled_canvas((height, width), (768, 768), low, high) if max(width, height) > 768 else None
        )
        assert tile_grid((width, height), V2, mode) == expected_grid, (width, height)
        patches = processor.get_number_of_image_patches(height, width, kwargs)
        assert processor.get_number_of_image_patches(target[1], target[0], kwargs) == patches, (width, height, target)


def test_every_view_is_made_by_shrinking_and_nothing_larger_is_sent():
    for size in SIZES + RANDOM_SIZES:
        for profile in (V1, V2):
            target = engine_size(size, profile)
            grid = tile_grid(size, profile)
            assert target[0] <= size[0]
            assert target[1] <= size[1]
            if target == size:
                continue
            columns, rows = grid
            # Not one pixel smaller than the tile canvas or the global view needs; one side exactly at it.
            assert target[0] >= columns * profile.tile_size
            assert target[1] >= rows * profile.tile_size
            assert max(target) >= profile.base_size
            assert abs(target[0] / target[1] - size[0] / size[1]) < 0.01  # the page's shape is kept
            needed = (columns * profile.tile_size, rows * profile.tile_size)
            assert target[0] == needed[0] or target[1] == needed[1] or max(target) == profile.base_size


def test_a_300_dpi_a4_scan_is_sent_at_a_third_of_its_pixels():
    assert tile_grid(A4_300_DPI, V2) == (2, 3)
    assert engine_size(A4_300_DPI, V2) == (1629, 2304)  # 3 rows of 768 (2 columns would need only 1536)
    assert engine_size(A4_300_DPI, V1) == (1358, 1920)  # 3 rows of 640
    assert engine_size((1191, 1684), V2) == (1191, 1684)  # an A4 PDF page at 144 dpi is already below the canvas


def _post(client, name: str, data: bytes):
    body, content_type = encode_multipart_formdata([("file", (name, data))])
    return client.post("/ocr", data=body, content_type=content_type)


def test_by_default_the_engine_receives_the_page_whole_as_the_authors_pipeline_gives_it(client, fake_engine):
    """PAGE_SIZE=full: the upload decoded and upright, a PDF page at PDF_DPI, nothing resampled (docs/QUALITY.md)."""
    for fmt in ("PNG", "JPEG"):
        assert _post(client, f"scan.{fmt.lower()}", png_bytes(A4_300_DPI, fmt=fmt)).status_code == 200
        assert fake_engine.requests[-1].image.size == A4_300_DPI
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait: turned, not resized
    Image.new("RGB", A4_300_DPI[::-1], "white").save(buffer, format="JPEG", exif=exif)
    assert _post(client, "turned.jpg", buffer.getvalue()).status_code == 200
    assert fake_engine.requests[-1].image.size == A4_300_DPI
    assert _post(client, "page.pdf", make_pdf(1)).status_code == 200
    assert fake_engine.requests[-1].image.size == (1190, 1684)  # A4 at 144 dpi, as DeepSeek's PDF script renders it


def test_page_size_fit_sends_the_page_at_its_processor_size_and_boxes_stay_in_the_uploads_pixels(
    make_client, fake_engine
):
    client = make_client(page_size="fit")
    for fmt in ("PNG", "JPEG"):
        response = _post(client, f"scan.{fmt.lower()}", png_bytes(A4_300_DPI, fmt=fmt))
        assert response.status_code == 200
        assert fake_engine.requests[-1].image.size == engine_size(A4_300_DPI, V2) == (1629, 2304)
        body = response.get_json()
        assert (body["image"]["width"], body["image"]["height"]) == A4_300_DPI
        assert body["blocks"][0]["boxes"] == [[0, 0, *A4_300_DPI]]  # the model's 0-999 scale, in the upload's pixels


def test_a_sideways_jpeg_is_turned_before_its_size_is_chosen(make_client, fake_engine):
    client = make_client(page_size="fit")
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored landscape, shown portrait
    Image.new("RGB", A4_300_DPI[::-1], "white").save(buffer, format="JPEG", exif=exif)
    response = _post(client, "turned.jpg", buffer.getvalue())
    assert response.status_code == 200
    assert fake_engine.requests[-1].image.size == (1629, 2304)
    assert (response.get_json()["image"]["width"], response.get_json()["image"]["height"]) == A4_300_DPI


def test_a_large_pdf_page_is_rendered_directly_at_the_processor_size(make_client, fake_engine):
    client = make_client(page_size="fit")
    poster = make_pdf(1, size=(3160, 3160))  # 44 inches square: 6320 x 6320 pixels at 144 dpi, under MAX_IMAGE_PIXELS
    response = _post(client, "poster.pdf", poster)
    assert response.status_code == 200
    assert fake_engine.requests[-1].image.size == engine_size((6320, 6320), V2) == (1536, 1536)
    page = response.get_json()["pages"][0]
    assert (page["width"], page["height"]) == (6320, 6320)
