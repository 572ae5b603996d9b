"""PNG facts read from the header, and the blur applied to flagged images."""

from __future__ import annotations

import io
import struct

from generation.errors import ModelFailed

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A flagged image is shrunk to this many pixels on its longer side before it is blurred and
# enlarged again: nothing recognisable survives, and it costs a few milliseconds.
BLUR_SHRINK_TO = 16
BLUR_RADIUS = 2


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, without decoding the image; ModelFailed if it is no PNG."""
    if len(data) < 33 or data[:8] != SIGNATURE or data[12:16] != b"IHDR":
        raise ModelFailed("the model returned something that is not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def blur_png(data: bytes) -> bytes:
    """A copy of the PNG so blurred that its content cannot be made out, at the same size."""
    from PIL import Image, ImageFilter  # imported here: only flagged images pay for Pillow

    with Image.open(io.BytesIO(data)) as image:
        size = image.size
        scale = BLUR_SHRINK_TO / max(size)
        small = image.convert("RGB").resize(
            (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))), Image.Resampling.BOX)
    blurred = small.filter(ImageFilter.GaussianBlur(BLUR_RADIUS)).resize(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    blurred.save(out, format="PNG", compress_level=1)
    return out.getvalue()
