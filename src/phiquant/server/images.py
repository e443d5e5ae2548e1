"""OpenAI `image_url` content parts: checked when the request is read, decoded off the event loop.

A part is {"type": "image_url", "image_url": {"url": ..., "detail": ...}}.  `data:` URLs carry the image
(base64); a remote URL is fetched only when the server was started with --allow-image-urls (bounded in
time and size), and is otherwise a 400.  The message text keeps a placeholder where each image was; the
runner's image marker replaces it once the prompt is rendered.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from phiquant.errors import PhiquantError
from phiquant.runtime.images import MAX_IMAGE_BYTES, ImageInput, decode_data_url, decode_image
from phiquant.server.errors import bad_request

IMAGE_PLACEHOLDER = "\ufffc"  # OBJECT REPLACEMENT CHARACTER: where an image part sat in a message's text
FETCH_TIMEOUT_SECONDS = 10.0
DETAILS = (None, "auto", "low", "high")


@dataclass(frozen=True)
class ImageRef:
    url: str
    param: str  # e.g. messages[0].content[1].image_url


def image_part(part: dict[str, Any], where: str) -> ImageRef:
    image_url = part.get("image_url")
    if isinstance(image_url, str):
        image_url = {"url": image_url}
    if not isinstance(image_url, dict) or not isinstance(image_url.get("url"), str):
        raise bad_request(
            f"Invalid '{where}.image_url': expected an object with a 'url' string.",
            param=f"{where}.image_url",
        )
    if image_url.get("detail") not in DETAILS:
        raise bad_request(
            f"Invalid '{where}.image_url.detail': {image_url.get('detail')!r} (auto, low or high).",
            param=f"{where}.image_url.detail",
        )
    return ImageRef(image_url["url"], f"{where}.image_url")


def load_images(refs: Sequence[ImageRef], *, allow_urls: bool) -> list[ImageInput]:
    """Decode every image; the first problem is a 400 naming its part."""
    images = []
    for ref in refs:
        try:
            if ref.url.startswith("data:"):
                images.append(decode_data_url(ref.url, ref.param))
            elif ref.url.startswith(("http://", "https://")):
                if not allow_urls:
                    raise PhiquantError(
                        f"{ref.param}: this server reads images from data: URLs only (base64); remote URLs "
                        "need --allow-image-urls"
                    )
                images.append(decode_image(fetch(ref.url, ref.param), ref.param))
            else:
                raise PhiquantError(
                    f"{ref.param}: an image URL must be a data: URL (or http(s) with --allow-image-urls)"
                )
        except PhiquantError as error:
            raise bad_request(error.message, param=ref.param, code="invalid_image") from None
    return images


def fetch(url: str, where: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "phiquant"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:  # noqa: S310 (http/https checked)
            data: bytes = response.read(MAX_IMAGE_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise PhiquantError(f"{where}: could not fetch the image ({error})") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise PhiquantError(f"{where}: the image is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    return data
