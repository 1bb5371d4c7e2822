"""What the model sees by default: every view its processor makes from the page the service sends a remote engine is
within 45 dB of the view made from the page as the model authors' pipeline gives it (bench/fidelity.py measures the
corpus, the vLLM processor too, and the other settings; docs/QUALITY.md has the table)."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image

from ocr_api.preparation import data_url
from ocr_api.service import OcrService
from ocr_api.settings import Settings
from ocr_dev.inputs import make_pdf, scanned_page
from tests.fakes import FakeEngine

pytestmark = pytest.mark.slow  # the processor's views of a full page take a second or two

TARGET_DB = 45.0


def views(image: Image.Image) -> list[np.ndarray]:
    from transformers import DeepseekOcr2ImageProcessorPil

    processed = DeepseekOcr2ImageProcessorPil()(images=[image], return_tensors="np")
    return [processed["pixel_values"][0], *processed.get("pixel_values_local", [])]


def worst_db(reference: Image.Image, sent: Image.Image) -> float:
    worst = math.inf
    for a, b in zip(views(reference), views(sent), strict=True):
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        worst = min(worst, math.inf if mse == 0 else 10 * math.log10(4.0 / mse))
    return worst


def sent_by_default(data: bytes, tmp_path: Path) -> Image.Image:
    """The page as a remote engine gets it under the default settings (the service's own choice of size and
    encoding), decoded as vLLM decodes it."""
    settings = Settings(upload_folder=str(tmp_path / "uploads"))  # the rest the defaults
    service = OcrService(settings, FakeEngine())
    source, _ = service.open_upload(data, service.options_from({}), None)
    page = source.render(0).image
    source.close()
    encoded = data_url(page, settings.engine_image_format).split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")


def test_a_pdf_page_is_sent_as_the_authors_render_it_within_45_db(tmp_path):
    data = make_pdf(1)
    with pymupdf.open(stream=data, filetype="pdf") as document:
        pixmap = document.load_page(0).get_pixmap(dpi=144, alpha=False)  # DeepSeek's PDF script
        authors = Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)
    assert worst_db(authors, sent_by_default(data, tmp_path)) >= TARGET_DB


@pytest.mark.parametrize("size", [(300, 200), (1500, 2000), (2480, 3508)], ids=["small", "medium", "A4 300 dpi"])
def test_a_scan_is_sent_within_45_db_of_the_decoded_upload(size, tmp_path):
    data = scanned_page(size, "PNG")
    authors = Image.open(io.BytesIO(data)).convert("RGB")
    assert worst_db(authors, sent_by_default(data, tmp_path)) >= TARGET_DB
