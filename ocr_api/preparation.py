"""Turn uploaded bytes into upright 8-bit RGB page images the model can read."""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import io
import logging
import struct
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

from ocr_api.errors import BadRequest, UnprocessableFile, UnsupportedMediaType

logger = logging.getLogger(__name__)

# Allow-list: the formats offered, keyed by the Pillow plugin that alone may decode them.
# Pillow cannot tell "not an image" from "a broken PNG", so the leading bytes decide the format first
# and a decoding failure afterwards is a corrupt file (422), not an unsupported one (415).
SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("JPEG", b"\xff\xd8\xff", 0),
    ("GIF", b"GIF87a", 0),
    ("GIF", b"GIF89a", 0),
    ("BMP", b"BM", 0),
    ("WEBP", b"WEBP", 8),  # after "RIFF" and a 4-byte size
    ("TIFF", b"II*\x00", 0),
    ("TIFF", b"MM\x00*", 0),
)
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif"}
WHITE = (255, 255, 255)
# Only the first frame of an animated or multi-page image is read; the rest are counted for the response, up to
# this many. Counting them all is a CPU bomb: Pillow walks every TIFF directory (146,248 of them in a 16 MB file
# took 150 s) and every GIF frame.
MAX_FRAMES_COUNTED = 1000


class Deadline:
    """A time budget for preparing one file or page, checked between its steps (a decoder cannot be interrupted)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self._end = clock() + seconds

    def check(self) -> None:
        """Raise 422 ``preparation_timeout`` once the budget is spent."""
        if self._clock() > self._end:
            raise UnprocessableFile(
                f"Preparing the file took longer than {self.seconds:g} s (PREPARE_TIMEOUT_S); it was abandoned.",
                code="preparation_timeout",
            )


@dataclass(frozen=True)
class ImageLimits:
    """Bounds an image must meet before and after its header is read, and the time its preparation may take."""

    max_pixels: int
    min_side: int
    max_aspect_ratio: float
    timeout_s: float = field(default=float("inf"))


# Given a page's upright size, the size the engine should get (ocr_api.tiling.engine_size for the loaded model).
FitSize = Callable[[tuple[int, int]], tuple[int, int]]


def within_pixels(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """``size``, shrunk (its shape kept) to at most ``max_pixels`` pixels; a FitSize with max_pixels bound."""
    width, height = size
    if width * height <= max_pixels:
        return size
    scale = (max_pixels / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


# ENGINE_IMAGE_FORMAT=auto, by a page's pixels (bench/fidelity.py measures what the model's processor makes of each):
# up to the global view's 1024x1024 the processor enlarges every view, JPEG's artefacts with it, and a lossless PNG is
# small anyway; up to six 768-pixel tiles (3.6 megapixels) it still enlarges the tiles, and JPEG needs quality 95 to
# stay above 45 dB (a PDF page at 144 dpi: 48.7 dB, 43.2 at quality 90); above, it shrinks every view, and quality
# 90 stays above 50 dB at less CPU and fewer bytes. Chroma is 4:2:0, as cameras write: text lives in the luma (4:4:4
# gave a text page the same dB for 40% more encoding time).
LOSSLESS_UP_TO_PIXELS = 1024 * 1024
FINE_JPEG_UP_TO_PIXELS = 6 * 768 * 768
JPEG_QUALITY = 90  # ENGINE_IMAGE_FORMAT=jpeg, and auto above FINE_JPEG_UP_TO_PIXELS
FINE_JPEG_QUALITY = 95


@dataclass(frozen=True)
class PreparedImage:
    """A decoded page at the size the engine gets, with what it was decoded from."""

    image: Image.Image
    source_format: str
    source_mode: str
    frames: int
    source_size: tuple[int, int]  # the upright upload's own pixels: boxes are given in these

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


@dataclass(frozen=True)
class RenderedPage:
    """A page ready for the engine, from an image or a PDF: its pixels at the engine's size, and its own size."""

    image: Image.Image
    size: tuple[int, int]  # the page's own pixels (an upload's, or a PDF page's at PDF_DPI): boxes are in these


def png_data_url(image: Image.Image) -> str:
    """Encode an image as a lossless PNG data URL (figure crops, annotated pages)."""
    return data_url(image, "png")


def data_url(image: Image.Image, image_format: str) -> str:
    """Encode a page for the remote engine (ENGINE_IMAGE_FORMAT, ocr_api.settings.ENGINE_IMAGE_FORMATS): auto by its
    size (see LOSSLESS_UP_TO_PIXELS), JPEG at JPEG_QUALITY, or PNG at fast compression (lossless)."""
    pixels = image.width * image.height
    if image_format == "auto":
        image_format = "png" if pixels <= LOSSLESS_UP_TO_PIXELS else "jpeg"
        fine = pixels <= FINE_JPEG_UP_TO_PIXELS
    else:
        fine = False
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=FINE_JPEG_QUALITY if fine else JPEG_QUALITY, subsampling="4:2:0")
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return f"data:image/{image_format};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def sniff_format(data: bytes) -> str | None:
    """Return the allow-listed format the leading bytes announce, or None."""
    for name, magic, offset in SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    return None


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says, read without decoding its pixels."""

    format: str
    mode: str
    frames: int
    size: tuple[int, int]  # upright: after the EXIF orientation


def inspect_image(data: bytes, limits: ImageLimits, deadline: Deadline | None = None) -> ImageInfo:
    """Read and check an image's header (format, size, frames) without decoding a pixel: 415 or 422 if unusable."""
    return _read_image(data, limits, deadline or Deadline(limits.timeout_s), None, decode=False)[0]


def decode_image(
    data: bytes, limits: ImageLimits, fit: FitSize | None = None, deadline: Deadline | None = None
) -> PreparedImage:
    """Decode ``data`` into an upright RGB image of the size ``fit`` asks, refusing bombs and unusable sizes first.

    A JPEG is decoded at a reduced scale where libjpeg can (draft mode, up to 8x fewer pixels), then every image
    is resized once; transparency is flattened onto white after the resize.
    """
    info, rgb = _read_image(data, limits, deadline or Deadline(limits.timeout_s), fit, decode=True)
    assert rgb is not None
    return PreparedImage(rgb, info.format, info.mode, info.frames, info.size)


def _read_image(
    data: bytes, limits: ImageLimits, deadline: Deadline, fit: FitSize | None, decode: bool
) -> tuple[ImageInfo, Image.Image | None]:
    if not data:
        raise BadRequest("The file is empty (0 bytes).", code="empty_file")
    image_format = sniff_format(data)
    if image_format is None:
        raise UnsupportedMediaType(
            f"The file is not a PDF nor an image in a supported format ({', '.join(SUPPORTED_FORMATS)}).",
            code="unsupported_media_type",
        )
    try:
        with warnings.catch_warnings():
            # Sizes between Pillow's warning and error thresholds are refused by our own, lower limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[image_format]) as opened:
                check_size(opened.size, limits)
                orientation = opened.getexif().get(ORIENTATION_TAG, 1)
                turned = orientation in SIDEWAYS_ORIENTATIONS
                upright_size = opened.size[::-1] if turned else opened.size
                info = ImageInfo(image_format, opened.mode, count_frames(opened, data, deadline), upright_size)
                if not decode:
                    return info, None
                target = fit(upright_size) if fit else upright_size
                if opened.format == "JPEG" and target != upright_size:
                    opened.draft(opened.mode, target[::-1] if turned else target)
                opened.load()  # the first frame only
                deadline.check()
                upright = ImageOps.exif_transpose(opened) if orientation != 1 else opened
                resized = _resized(upright, target)
                # A new image needs no copy; the opened one does, as it is closed on leaving this block.
                rgb = resized if resized.mode == "RGB" and resized is not opened else to_rgb(resized)
                deadline.check()
    except Image.DecompressionBombError:
        raise _too_large(None, limits) from None
    except UnprocessableFile:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure on these bytes is the file's fault
        logger.info("could not decode a %s upload: %s: %s", image_format, type(exc).__name__, exc)
        raise UnprocessableFile(
            f"The file looks like {image_format} but could not be decoded: it is corrupt or truncated.",
            code="corrupt_image",
        ) from None
    return info, rgb


ORIENTATION_TAG = 0x0112
SIDEWAYS_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Shrink once, by area averaging (box): the standard filter for shrinking, and on a 300-DPI scan 2.3x faster
    than bicubic (bench/page_cost.py); the model's processor resizes what it gets once more, bicubic. 1-bit and
    palette images are expanded first."""
    if image.size == size:
        return image
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    elif image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N", "CMYK"):
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    return image.resize(size, Image.Resampling.BOX)


def count_frames(opened: Image.Image, data: bytes, deadline: Deadline) -> int:
    """Return how many frames the image has, counting at most MAX_FRAMES_COUNTED, without decoding any of them.

    WEBP and PNG declare their count (libwebp's demuxer, APNG's acTL chunk); GIF and TIFF are walked here, block by
    block and directory by directory, which reads no pixels and stops at the cap.
    """
    if opened.format == "GIF":
        return _count_gif_frames(data, deadline)
    if opened.format == "TIFF":
        return _count_tiff_directories(data, deadline)
    return min(int(getattr(opened, "n_frames", 1)), MAX_FRAMES_COUNTED)


def _count_gif_frames(data: bytes, deadline: Deadline) -> int:
    # GIF89a: header (6), screen descriptor (7) and its colour table, then extensions (0x21), images (0x2C) and
    # the trailer (0x3B); extension and image data come as sub-blocks, each led by its length.
    flags = data[10] if len(data) > 10 else 0
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    while position < len(data) and frames < MAX_FRAMES_COUNTED:
        introducer = data[position]
        if introducer == 0x2C:
            frames += 1
            local = data[position + 9] if position + 9 < len(data) else 0
            position += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1  # descriptor, table, code size
        elif introducer == 0x21:
            position += 2
        else:  # the trailer, or junk after the last frame
            break
        while position < len(data) and data[position]:  # sub-blocks until the empty one
            position += data[position] + 1
        position += 1
        if frames % 100 == 0:
            deadline.check()
    return max(frames, 1)


def _count_tiff_directories(data: bytes, deadline: Deadline) -> int:
    # A TIFF is a chain of image file directories: a 2-byte entry count, 12 bytes an entry, the next one's offset.
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(f"{order}I", data, 4)
    seen: set[int] = set()
    while offset and offset not in seen and offset + 2 <= len(data) and len(seen) < MAX_FRAMES_COUNTED:
        seen.add(offset)
        (entries,) = struct.unpack_from(f"{order}H", data, offset)
        next_at = offset + 2 + 12 * entries
        if next_at + 4 > len(data):
            break
        (offset,) = struct.unpack_from(f"{order}I", data, next_at)
        if len(seen) % 100 == 0:
            deadline.check()
    return max(len(seen), 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: transparency onto white, high bit depths stretched, not clipped."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _stretch_to_8bit(image).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        page = Image.new("RGBA", rgba.size, (*WHITE, 255))
        page.alpha_composite(rgba)
        return page.convert("RGB")
    if image.mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def _stretch_to_8bit(image: Image.Image) -> Image.Image:
    # Scanners often fill only 10-12 of 16 bits: dividing by 256 gives a black page and Pillow's
    # convert("L") clips to white, so map the image's own darkest..lightest range onto 0..255.
    values = np.asarray(image, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return Image.new("L", image.size, 255)
    scaled = (values - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def check_size(size: tuple[int, int], limits: ImageLimits, what: str = "The image") -> None:
    """Refuse a page size the model cannot use, whatever its source: an image's header or a PDF page at its dpi."""
    width, height = size
    if width <= 0 or height <= 0:
        raise UnprocessableFile(f"{what} declares an empty size ({width}x{height}).", code="corrupt_image")
    if width * height > limits.max_pixels:
        raise _too_large(size, limits, what)
    if min(width, height) < limits.min_side:
        raise UnprocessableFile(
            f"{what} is {width}x{height} pixels; both sides must be at least {limits.min_side} pixels.",
            code="image_too_small",
        )
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise UnprocessableFile(
            f"{what} is {width}x{height} pixels; its aspect ratio is beyond {limits.max_aspect_ratio:g}:1.",
            code="image_aspect_ratio",
        )


def _too_large(size: tuple[int, int] | None, limits: ImageLimits, what: str = "The image") -> UnprocessableFile:
    declared = f"declares {size[0]}x{size[1]} pixels" if size else "declares a size beyond Pillow's bomb limit"
    return UnprocessableFile(
        f"{what} {declared}; the limit is {limits.max_pixels} pixels (width x height).", code="image_too_large"
    )


# glibc hands a freed block back to the system only if it was mmapped, and by default it raises its mmap threshold
# to the size of each mmapped block freed (up to 32 MiB): after the first full-size page, Pillow's 16 MiB blocks come
# from the heap and stay in the process. A fixed threshold keeps every large block mmapped, so a worker's memory
# falls back after a large page (tests/test_hostile.py measures it). 1 MiB: rows of pixels, not Python objects.
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def give_large_blocks_back() -> bool:
    """Make large allocations return to the system when freed (glibc); False where that cannot be set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (musl, macOS): their allocators decide for themselves
        return False
