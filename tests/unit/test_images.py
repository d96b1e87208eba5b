import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from common.images import ImageError, decode_image, encode_image


def _img(mode="RGB", size=(20, 12)):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 4 if mode == "RGBA" else 3), dtype=np.uint8)
    return Image.fromarray(arr, mode)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_round_trip_formats(fmt):
    im = _img()
    out = decode_image(encode_image(im, fmt))
    assert out.mode == "RGB" and out.size == im.size
    if fmt == "png":
        assert np.array_equal(np.asarray(out), np.asarray(im))


def test_alpha_is_composited_on_white():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    out = decode_image(encode_image(im, "png"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_limits_and_bad_input():
    data = encode_image(_img(size=(64, 64)))
    with pytest.raises(ImageError, match="exceeds the limit of 100 bytes"):
        decode_image(data, max_bytes=100)
    with pytest.raises(ImageError, match="64x64 = 4096 pixels exceeds the limit of 1000"):
        decode_image(data, max_pixels=1000)
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageError, match="expected encoded image bytes"):
        decode_image("not bytes")
    with pytest.raises(ImageError, match="not a readable image"):
        decode_image(b"GIF89a" + b"\0" * 50)  # GIF is not an accepted format
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])
    with pytest.raises(ImageError, match="unsupported output format"):
        encode_image(_img(), "bmp")


def test_pixel_limit_is_checked_before_decoding():
    # a PNG header that claims 100000 x 100000 pixels with almost no data: refused from the header
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="pixels"):
        decode_image(png, max_pixels=4096 * 4096)
