"""THE single image decode/validate path of DyRef (gateway, generators, policy, rewards all use it).

Bytes in, PIL RGB out, with three guards applied in order so that a hostile file costs almost
nothing: the encoded size (``max_bytes``), the header's pixel count (``max_pixels``, read before the
pixel data is decoded; a decompression-bomb guard like ``Image.MAX_IMAGE_PIXELS`` but per call), then
the full decode. Every failure raises :class:`ImageError` naming what is wrong.
"""
from __future__ import annotations

import io
import logging
import warnings

from PIL import Image, UnidentifiedImageError

__all__ = ["ImageError", "decode_image", "encode_image", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS",
           "ALLOWED_FORMATS"]

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")


log = logging.getLogger(__name__)


class ImageError(ValueError):
    """An image that is not bytes, too big, not a PNG/JPEG/WebP, truncated or otherwise unreadable."""


def decode_image(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
                 what: str = "image") -> Image.Image:
    """Encoded PNG/JPEG/WebP bytes -> fully loaded PIL image in RGB mode.

    ``what`` names the image in error messages (e.g. ``"reference 3 (style)"``).
    Raises ImageError: not bytes, empty, over ``max_bytes``, unknown format, over ``max_pixels``
    (checked from the header, before the pixel data is decoded), or truncated/corrupt.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"{what}: expected encoded image bytes, got {type(data).__name__}")
    n = len(data)
    if n == 0:
        raise ImageError(f"{what}: empty image data")
    if n > max_bytes:
        raise ImageError(f"{what}: {n} bytes exceeds the limit of {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # PIL's own bomb warning is replaced by our explicit per-call pixel limit below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)), formats=list(ALLOWED_FORMATS))
    except UnidentifiedImageError:
        raise ImageError(f"{what}: not a readable image (expected one of {', '.join(ALLOWED_FORMATS)})") from None
    except Image.DecompressionBombError:
        # Pillow's own words name its internal limit, not ours: say ours
        raise ImageError(f"{what}: too many pixels (more than the limit of {max_pixels} pixels)") from None
    except Exception as e:  # noqa: BLE001 - any parser failure is the caller's bad input
        log.debug("%s: image header: %s: %s", what, type(e).__name__, e)
        raise ImageError(f"{what}: cannot parse the image header (corrupt image data)") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{what}: invalid size {w}x{h}")
    if w * h > max_pixels:
        raise ImageError(f"{what}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Exception as e:  # noqa: BLE001 - the message reaches clients: no library text or class names
        log.debug("%s: image data: %s: %s", what, type(e).__name__, e)
        raise ImageError(f"{what}: truncated or corrupt {img.format} data") from None
    if img.mode != "RGB":
        # alpha is composited on white (what a viewer shows), palette/greyscale expanded
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            img = bg
        else:
            img = img.convert("RGB")
    return img


def encode_image(img: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """PIL image -> encoded bytes (png, jpeg or webp); non-RGB modes are converted for JPEG."""
    f = fmt.upper().replace("JPG", "JPEG")
    if f not in ALLOWED_FORMATS:
        raise ImageError(f"unsupported output format {fmt!r}; expected png, jpeg or webp")
    if f == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    kw = {"quality": quality} if f in ("JPEG", "WEBP") else {}
    img.save(buf, format=f, **kw)
    return buf.getvalue()
