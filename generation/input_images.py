"""Input images of an edit, checked before any paid call: decoded, within the model's limits, re-encoded clean."""

from __future__ import annotations

import io
import math

from generation.errors import InvalidRequest
from generation.model_registry import InputRule

# Pillow refuses to decode more pixels than this (a decompression bomb: a small file that inflates to
# gigabytes); it is well above every model's limit, so a real input never comes near it.
MAX_DECODE_PIXELS = 40_000_000
FORMAT_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}


def _refuse(field: str, message: str) -> InvalidRequest:
    return InvalidRequest([{"field": field, "message": message}])


def _open(data: bytes, field: str):
    """The decoded image; InvalidRequest when it is not a real PNG, JPEG or WebP, or a bomb."""
    from PIL import Image, UnidentifiedImageError  # imported here: only edits pay for Pillow

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_DECODE_PIXELS:
            raise _refuse(field, f"is {image.width}x{image.height}: more than {MAX_DECODE_PIXELS} pixels, "
                                 "far past any model's limit")
        image.load()  # decode it all now: a truncated or corrupt file fails here, not at the model
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        raise _refuse(field, "is not a PNG, JPEG or WebP image that can be decoded") from None
    return image


def check_image(data: bytes, rule: InputRule, *, field: str, model_id: str, resize: bool = False,
                keep_alpha: bool = False) -> bytes:
    """The input as a clean PNG (no metadata) within `rule`, resized into it only when `resize` allows."""
    image = _open(data, field)
    if image.format not in rule.formats:
        names = ", ".join(FORMAT_NAMES[f] for f in rule.formats)
        raise _refuse(field, f"is {image.format}; {model_id} takes {names}")
    width, height = image.size
    aspect = max(width, height) / min(width, height)
    if aspect > rule.max_aspect:
        raise _refuse(field, f"is {width}x{height}, a ratio of {aspect:.2f}:1; {model_id} takes at most "
                             f"{rule.max_aspect:g}:1")
    scale = _fit_scale(width, height, rule)
    if scale != 1.0:
        if not resize:
            raise _refuse(field, f"is {width}x{height}; {model_id} takes {_limits(rule)} (send \"resize\": true "
                                 "to have it resized)")
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.resize((width, height))
    # Transparency only where the model wants it (Stability's inpaint reads it as a mask); the rest
    # take flat RGB. Re-encoding drops EXIF, text chunks and anything else the file carried.
    transparent = "A" in image.getbands() or "transparency" in image.info  # palette PNGs keep it in tRNS
    image = image.convert("RGBA" if keep_alpha and transparent else "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _fit_scale(width: int, height: int, rule: InputRule) -> float:
    """The factor that brings width x height inside the rule's sides and pixel count (1.0 when inside)."""
    scale = 1.0
    if max(width, height) > rule.max_side:
        scale = rule.max_side / max(width, height)
    if width * height * scale * scale > rule.max_pixels:
        scale = min(scale, math.sqrt(rule.max_pixels / (width * height)))
    if min(width, height) * scale < rule.min_side:
        scale = max(scale, rule.min_side / min(width, height))
    if width * height * scale * scale < rule.min_pixels:
        scale = max(scale, math.sqrt(rule.min_pixels / (width * height)))
    # A hair under the limit, so rounding never lands one pixel over.
    return 1.0 if scale == 1.0 else scale * (0.999 if scale < 1 else 1.001)


def _limits(rule: InputRule) -> str:
    parts = [f"sides of {rule.min_side} to {rule.max_side} px" if rule.max_side < 100_000
             else f"sides of at least {rule.min_side} px", f"at most {rule.max_pixels:,} pixels"]
    if rule.min_pixels:
        parts.append(f"at least {rule.min_pixels:,} pixels")
    return ", ".join(parts)


def check_mask(data: bytes, size: tuple[int, int], *, field: str, change_is_white: bool,
               resize: bool = False) -> bytes:
    """A mask as the model wants it: the image's size, pure black and white, in the model's polarity.

    The API's convention is the common one: white marks what the model may change. Nova Canvas and
    Titan want black there for inpainting, so their masks are inverted.
    """
    from PIL import ImageOps

    mask = _open(data, field).convert("L")
    if mask.size != size:
        if not resize:
            raise _refuse(field, f"is {mask.size[0]}x{mask.size[1]}; it must be the image's size, "
                                 f"{size[0]}x{size[1]} (send \"resize\": true to have it resized)")
        mask = mask.resize(size)
    mask = mask.point(lambda value: 255 if value >= 128 else 0)
    if not change_is_white:
        mask = ImageOps.invert(mask)
    out = io.BytesIO()
    mask.convert("RGB").save(out, format="PNG", compress_level=1)
    return out.getvalue()


def has_transparency(png: bytes) -> bool:
    """True when a checked input has at least one pixel that is not fully opaque."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return "A" in image.getbands() and image.getchannel("A").getextrema()[0] < 255


def strictest(rules: list[InputRule]) -> InputRule:
    """One rule that every one of `rules` accepts (the inputs of a request that may fall back)."""
    if len(rules) == 1:
        return rules[0]
    formats = tuple(f for f in rules[0].formats if all(f in r.formats for r in rules))
    return InputRule(min_side=max(r.min_side for r in rules), max_side=min(r.max_side for r in rules),
                     min_pixels=max(r.min_pixels for r in rules), max_pixels=min(r.max_pixels for r in rules),
                     max_aspect=min(r.max_aspect for r in rules), formats=formats)


def image_size(png: bytes) -> tuple[int, int]:
    """(width, height) of a checked input."""
    from generation.png import png_size

    return png_size(png)
