"""The service as OCRmyPDF's OCR engine: DeepSeek-OCR's text in OCRmyPDF's PDF/A, with everything else OCRmyPDF does.

    ocrmypdf --plugin ocr_client.ocrmypdf_plugin --deepseek-url http://host:5000 in.pdf out.pdf

OCRmyPDF rasterizes each page that needs OCR (after deskew, rotation and cleaning, when asked), and hands the image to
the engine; this one sends it to the service's ``/ocr`` with ``output=hocr`` and gives OCRmyPDF the page it answers
through OCRmyPDF's own hOCR parser, as the ``OcrElement`` tree of its current engine interface (``generate_ocr``).
OCRmyPDF then renders the invisible text with its own renderer and font, grafts it onto the page and makes the PDF/A,
the sidecar text and the optimization as it would with Tesseract. Tesseract is not needed: the plugin blocks
OCRmyPDF's Tesseract plugin, so its checks do not ask for it.

The page is read with ``--deepseek-task`` (``markdown`` by default: the grounded prompt, whose blocks have boxes);
``--deepseek-key`` (or ``DEEPSEEK_OCR_API_KEY``) is sent as the service's key. Every refusal of the service (a wrong
key, a page it cannot read, an engine down past the retries) ends OCRmyPDF with its message and exit code 7
(``child_process_error``); 503 and 429 are waited out first, as the service's Retry-After asks.
"""

from __future__ import annotations

import os
import tempfile
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

import requests
from ocrmypdf import hookimpl
from ocrmypdf.builtin_plugins.tesseract_ocr import TesseractOptions
from ocrmypdf.exceptions import BadArgsError, ExitCode, ExitCodeException
from ocrmypdf.hocrtransform import HocrParser, OcrElement
from ocrmypdf.pluginspec import OcrEngine, OrientationConfidence

from ocr_client.client import ApiError, Client

ENGINE_NAME = "deepseek"
KEY_VARIABLE = "DEEPSEEK_OCR_API_KEY"
TESSERACT_PLUGIN = "ocrmypdf.builtin_plugins.tesseract_ocr"


class ServiceRefused(ExitCodeException):
    """The service refused a page, or could not be reached: OCRmyPDF stops with the service's own message."""

    exit_code = ExitCode.child_process_error


@hookimpl
def initialize(plugin_manager: Any) -> None:
    # This plugin is the OCR engine; Tesseract's plugin would demand its program and check its own options.
    plugin_manager.set_blocked(TESSERACT_PLUGIN)


@hookimpl
def register_options() -> dict[str, Any]:
    # OCRmyPDF's own checks read the Tesseract plugin's options (their defaults), blocked plugin or not.
    return {"tesseract": TesseractOptions}


@hookimpl
def add_options(parser: ArgumentParser) -> None:
    group = parser.add_argument_group("DeepSeek-OCR", "The DeepSeek-OCR API service as the OCR engine")
    group.add_argument("--deepseek-url", metavar="URL", help="The service, e.g. http://host:5000 (required).")
    group.add_argument("--deepseek-key", metavar="KEY", help=f"Its API key (default: ${KEY_VARIABLE}).")
    group.add_argument("--deepseek-task", metavar="TASK", default="markdown",
                       help="The service's task preset to read pages with (default: markdown, whose blocks have "
                            "boxes; ocr gives the text as one block over the page).")  # fmt: skip
    group.add_argument("--deepseek-timeout", metavar="SECONDS", type=float, default=600.0,
                       help="How long one page may take, waits for the service included (default: 600).")  # fmt: skip


@hookimpl
def check_options(options: Any) -> None:
    url = getattr(options, "deepseek_url", None)
    if not url or not str(url).startswith(("http://", "https://")):
        raise BadArgsError("--deepseek-url must name the DeepSeek-OCR API service, e.g. http://host:5000")


@hookimpl
def get_ocr_engine(options: Any) -> OcrEngine | None:
    return DeepSeekEngine()


class DeepSeekEngine(OcrEngine):
    """Reads each page image with the service."""

    @staticmethod
    def version() -> str:
        return "1"

    @staticmethod
    def creator_tag(options: Any) -> str:
        return f"DeepSeek-OCR API {getattr(options, 'deepseek_url', '')}".strip()

    def __str__(self) -> str:
        return "DeepSeek-OCR API"

    @staticmethod
    def languages(options: Any) -> set[str]:
        return set()  # the model reads whatever it was trained on; OCRmyPDF's -l is not asked of it

    @staticmethod
    def get_orientation(input_file: Path, options: Any) -> OrientationConfidence:
        return OrientationConfidence(angle=0, confidence=0.0)  # the model reads the page as it is

    @staticmethod
    def get_deskew(input_file: Path, options: Any) -> float:
        return 0.0

    @staticmethod
    def supports_generate_ocr() -> bool:
        return True

    @staticmethod
    def generate_ocr(input_file: Path, options: Any, page_number: int = 0) -> tuple[OcrElement, str]:
        """The page as the service reads it: its lines and words, placed, and its text."""
        hocr = _read_page(Path(input_file), options, page_number)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "page.hocr"
            path.write_bytes(hocr)
            page = HocrParser(path).parse()
        page.page_number = page_number
        return page, page_text(page)

    @staticmethod
    def generate_hocr(input_file: Path, output_hocr: Path, output_text: Path, options: Any) -> None:
        """The older interface (``--pdf-renderer hocr``-era callers): the service's hOCR and the page's text."""
        hocr = _read_page(Path(input_file), options, 0)
        Path(output_hocr).write_bytes(hocr)
        Path(output_text).write_text(page_text(HocrParser(output_hocr).parse()), encoding="utf-8")

    @staticmethod
    def generate_pdf(input_file: Path, output_pdf: Path, output_text: Path, options: Any) -> None:
        raise BadArgsError("The DeepSeek-OCR engine gives hOCR, not a text-only PDF: leave --pdf-renderer at auto.")


def page_text(page: OcrElement) -> str:
    """The page's text for the sidecar: a line per line, a blank line between paragraphs."""
    paragraphs = [
        "\n".join(" ".join(word.text for word in line.words) for line in paragraph.lines)
        for paragraph in page.paragraphs
    ]
    return "\n\n".join(paragraphs) + ("\n" if paragraphs else "")


def _read_page(image: Path, options: Any, page_number: int) -> bytes:
    url = str(options.deepseek_url)
    key = getattr(options, "deepseek_key", None) or os.environ.get(KEY_VARIABLE)
    client = Client(url, key, timeout_s=float(getattr(options, "deepseek_timeout", 600.0)))
    try:
        return client.ocr_document(image, output="hocr", task=str(getattr(options, "deepseek_task", "markdown"))).data
    except ApiError as error:
        raise ServiceRefused(f"DeepSeek-OCR API at {url} refused page {page_number + 1}: {error}") from None
    except requests.RequestException as error:
        raise ServiceRefused(f"DeepSeek-OCR API at {url} could not be reached: {error}") from None
