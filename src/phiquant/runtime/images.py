"""Images given to a vision model: read, checked and decoded to RGB before libmtmd sees them.

Only PNG, JPEG and WebP are accepted (what the model's processor is used with; libmtmd's own stb_image
cannot read WebP, so decoding is Pillow's).  The size is read from the header and checked before any
pixel is decoded, so a small file that declares a huge image (a decompression bomb) costs nothing;
libmtmd then resizes what is accepted to the model's pixel limits.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path

from phiquant.errors import PhiquantError

MAX_IMAGE_BYTES = 64 * 1024 * 1024  # an encoded file larger than this is refused before it is read
MAX_IMAGE_PIXELS = (
    40_000_000  # width x height declared in the header (a 40-megapixel photo decodes to 120 MB)
)
FORMATS = ("PNG", "JPEG", "WEBP")
# What a wrong file usually is, told by its first bytes.
NOT_RASTER = (
    (re.compile(rb"^\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<svg", re.S), "an SVG drawing"),
    (re.compile(rb"^%PDF-"), "a PDF document"),
    (re.compile(rb"^GIF8[79]a"), "a GIF"),
)
DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$", re.S)


@dataclass(frozen=True)
class ImageInput:
    """An image decoded to 8-bit RGB, row-major (what mtmd_bitmap_init takes)."""

    width: int
    height: int
    rgb: bytes
    origin: str  # the file or "image_url #n", for messages


def sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, origin: str) -> ImageInput:
    """Check the header, then decode; every problem is one PhiquantError naming `origin`."""
    from PIL import Image

    kind = sniff_format(data)
    if kind is None:
        head = data[:1024].lstrip()
        described = next((name for pattern, name in NOT_RASTER if pattern.match(head)), None)
        what = described or ("empty" if not data else "not a PNG, JPEG or WebP image")
        raise PhiquantError(f"{origin}: {what}; give a PNG, JPEG or WebP image")
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as image:
            width, height = image.size
            check_dimensions(width, height, origin)
            image.load()
            rgb = image.convert("RGB")
            return ImageInput(width, height, rgb.tobytes(), origin)
    except PhiquantError:
        raise
    except Image.DecompressionBombError:
        raise PhiquantError(
            f"{origin}: the image declares far more than {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels (the most "
            "phiquant decodes; the model sees far fewer): downscale it"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise PhiquantError(f"{origin}: corrupt or truncated {kind} image ({error})") from None


def check_dimensions(width: int, height: int, origin: str) -> None:
    if width < 1 or height < 1:
        raise PhiquantError(f"{origin}: the image is {width}x{height}; it has no pixels")
    if width * height > MAX_IMAGE_PIXELS:
        raise PhiquantError(
            f"{origin}: the image is {width}x{height} ({width * height / 1e6:.0f} megapixels); at most "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels are decoded (the model sees far fewer): downscale it"
        )


def read_image_file(path: str | Path) -> ImageInput:
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise PhiquantError("not a file", path=path)
        if size > MAX_IMAGE_BYTES:
            raise PhiquantError(
                f"the file is {size / 1e6:.0f} MB; images of at most {MAX_IMAGE_BYTES // 2**20} MiB are read",
                path=path,
            )
        data = path.read_bytes()
    except OSError as error:
        raise PhiquantError(f"cannot read the image: {error.strerror}", path=path) from None
    return decode_image(data, str(path))


def decode_data_url(url: str, origin: str) -> ImageInput:
    """An OpenAI `image_url` of the form data:image/png;base64,...."""
    match = DATA_URL.match(url)
    if match is None:
        raise PhiquantError(f"{origin}: not a base64 data: URL (data:image/png;base64,...)")
    if len(match["data"]) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise PhiquantError(f"{origin}: the image is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise PhiquantError(f"{origin}: the data: URL's base64 is invalid") from None
    return decode_image(data, origin)
