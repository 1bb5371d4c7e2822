"""Synthetic inputs: images, PDFs, and files built to cost a decoder as much as possible."""

from __future__ import annotations

import base64
import io
import struct

import pymupdf
from PIL import Image


def png_bytes(size: tuple[int, int] = (64, 48), color: str = "white", mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """Return an encoded synthetic image."""
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def data_url(data: bytes, declared: str = "image/png") -> str:
    """Return ``data`` as a base64 data URL of the declared type, as chat clients send images."""
    return f"data:{declared};base64,{base64.b64encode(data).decode()}"


A4 = (595, 842)  # points


def make_pdf(pages: int = 3, size: tuple[float, float] = A4, password: str | None = None, **page_sizes) -> bytes:
    """A PDF with ``pages`` pages saying "Page N"; ``page_sizes`` maps 1-based page numbers to other sizes."""
    document = pymupdf.open()
    for number in range(1, pages + 1):
        width, height = page_sizes.get(f"p{number}", size)
        page = document.new_page(width=width, height=height)
        page.insert_text((72, 72), f"Page {number}", fontsize=24)
    options = {}
    if password:
        options = {"encryption": pymupdf.PDF_ENCRYPT_AES_256, "user_pw": password, "owner_pw": password + "-owner"}
    data = document.tobytes(**options)
    document.close()
    return data


def many_directory_tiff(directories: int) -> bytes:
    """A little-endian TIFF: one 16x16 grey strip and ``directories`` image directories chained, all showing it.

    Pillow counts such frames by seeking through every directory (20,000 cost 4 s of CPU; 146,248 about 150 s).
    """
    strip = bytes(range(256))
    entries = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 3, 16),  # ImageWidth
        (257, 3, 16),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # PhotometricInterpretation: black is zero
        (273, 4, 8),  # StripOffsets: right after the header
        (278, 3, 16),  # RowsPerStrip
        (279, 4, len(strip)),  # StripByteCounts
    ]
    directory_size = 2 + 12 * len(entries) + 4
    first = 8 + len(strip)
    out = bytearray(b"II*\0" + struct.pack("<I", first) + strip)
    for number in range(directories):
        following = first + (number + 1) * directory_size if number + 1 < directories else 0
        out += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            out += struct.pack("<HHII", tag, kind, 1, value)
        out += struct.pack("<I", following)
    return bytes(out)


def animated(fmt: str, frames: int) -> bytes:
    """A 16x16 animation in ``fmt`` (GIF, WEBP, PNG for APNG) of ``frames`` frames, alternating black and white."""
    first, *rest = [Image.new("L", (16, 16), 255 * (number % 2)).convert("RGB") for number in range(frames)]
    buffer = io.BytesIO()
    first.save(buffer, format=fmt, save_all=True, append_images=rest, duration=10, loop=0)
    return buffer.getvalue()


A4_300_DPI = (2480, 3508)
PHONE_PHOTO = (4032, 3024)


def scanned_page(size: tuple[int, int] = A4_300_DPI, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A text page as a scanner or a phone writes it: dense lines of text, a little sensor noise, encoded as ``fmt``.

    The noise matters: it is what makes real scans large as PNG and what an encoder must keep or smooth.
    """
    from PIL import ImageDraw, ImageFont

    width, height = size
    page = Image.new("L", size, 245)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=max(12, width // 60))
    line = "The quick brown fox jumps over the lazy dog; 0123456789 invoices, tables and totals. " * 3
    step = max(16, width // 40)
    for top in range(step * 3, height - step * 3, step):
        draw.text((width // 12, top), line, fill=20, font=font)
    import numpy as np

    pixels = np.asarray(page, dtype=np.float32) + np.random.default_rng(seed).normal(0, 8, (height, width))
    grey = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")
    rgb = Image.merge("RGB", (grey, grey, grey))
    buffer = io.BytesIO()
    rgb.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def text_page_pdf() -> bytes:
    """An A4 page of lines of 5 to 9 pt text."""
    document = pymupdf.open()
    page = document.new_page(width=595, height=842)
    top, sizes = 40.0, [5, 6, 7, 8, 9]
    for line in range(80):
        size = sizes[line % len(sizes)]
        if top > 800:
            break
        page.insert_text((40, top), f"{line + 1}. The quick brown fox jumps over the lazy dog: 0123456789, totals.",
                         fontsize=size)  # fmt: skip
        top += size + 3
    return document.tobytes()
