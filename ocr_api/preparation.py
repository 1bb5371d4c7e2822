"""Turn uploaded bytes into upright 8-bit RGB page images the model can read."""

from __future__ import annotations

import base64
import io
import logging
import warnings
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ImageLimits:
    """Bounds an image must meet before and after its header is read."""

    max_pixels: int
    min_side: int
    max_aspect_ratio: float


@dataclass
class PreparedImage:
    """A decoded page ready for the engine, with what it was decoded from."""

    image: Image.Image
    source_format: str
    source_mode: str
    frames: int

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def png_data_url(image: Image.Image) -> str:
    """Encode an image as a lossless PNG data URL; fast compression, as it only travels to a local peer."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def sniff_format(data: bytes) -> str | None:
    """Return the allow-listed format the leading bytes announce, or None."""
    for name, magic, offset in SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    return None


def decode_image(data: bytes, limits: ImageLimits) -> PreparedImage:
    """Decode ``data`` into an upright RGB image, refusing bombs and unusable sizes before decoding pixels."""
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
                _check_declared_size(opened.size, limits)
                frames = getattr(opened, "n_frames", 1)
                opened.seek(0)  # animated images: the first frame only
                opened.load()
                source_mode = opened.mode
                upright = ImageOps.exif_transpose(opened)
                rgb = to_rgb(upright)
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
    return PreparedImage(image=rgb, source_format=image_format, source_mode=source_mode, frames=frames)


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


def _check_declared_size(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise UnprocessableFile(f"The image declares an empty size ({width}x{height}).", code="corrupt_image")
    if width * height > limits.max_pixels:
        raise _too_large(size, limits)
    if min(width, height) < limits.min_side:
        raise UnprocessableFile(
            f"The image is {width}x{height} pixels; both sides must be at least {limits.min_side} pixels.",
            code="image_too_small",
        )
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise UnprocessableFile(
            f"The image is {width}x{height} pixels; its aspect ratio is beyond {limits.max_aspect_ratio:g}:1.",
            code="image_aspect_ratio",
        )


def _too_large(size: tuple[int, int] | None, limits: ImageLimits) -> UnprocessableFile:
    declared = f"declares {size[0]}x{size[1]} pixels" if size else "declares a size beyond Pillow's bomb limit"
    return UnprocessableFile(
        f"The image {declared}; the limit is {limits.max_pixels} pixels (width x height).", code="image_too_large"
    )
