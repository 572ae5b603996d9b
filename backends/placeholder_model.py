"""The offline image model: draws a labelled placeholder picture, deterministic in (prompt, seed, size)."""

from __future__ import annotations

import hashlib
import io
import random
import textwrap
import threading
import time

from PIL import Image, ImageDraw, ImageFont

from backends.placeholder_fonts import CaptionFont
from generation.errors import ModelTimeout
from generation.model_registry import PLACEHOLDER, PLACEHOLDER_MODEL_ID, TEXT_TO_IMAGE
from generation.png import png_size
from image_generation import ImageSpec

_thread_fonts = threading.local()
# Upscales are drawn 4x, but never past this long side (offline pictures are for looking at).
MAX_UPSCALED_SIDE = 4096


class PlaceholderModel:
    """Draws placeholders, not generated images; says so in every picture."""

    model_id = PLACEHOLDER_MODEL_ID
    placeholder = True
    profile = PLACEHOLDER

    def __init__(self, latency_seconds: float = 0.0):
        # Simulated model time, so a UI or a drain test can see a request take a while.
        self.latency_seconds = latency_seconds

    def start(self, spec: ImageSpec, deadline: float):
        """Wait the simulated latency; the returned call draws a PNG of exactly spec.width x spec.height."""
        if self.latency_seconds:
            if time.monotonic() + self.latency_seconds > deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                raise ModelTimeout("the placeholder model's simulated latency outlasts the deadline")
            time.sleep(self.latency_seconds)
        if spec.task == TEXT_TO_IMAGE:
            return lambda: draw_placeholder(spec.prompt, spec.seed, spec.width, spec.height)
        return lambda: draw_edit(spec)


def edit_size(spec: ImageSpec) -> tuple[int, int]:
    """The size the task would give on Bedrock: the asked size, or the source's grown or kept."""
    if spec.exact_size:
        return spec.width, spec.height
    width, height = png_size(spec.input("image")) if spec.input("image") else (spec.width, spec.height)
    if spec.task == "outpaint":
        return width + spec.param("left", 0) + spec.param("right", 0), height + spec.param("up", 0) + spec.param(
            "down", 0)
    if spec.task == "upscale":
        scale = min(4.0, MAX_UPSCALED_SIDE / max(width, height))
        return round(width * scale), round(height * scale)
    if spec.task == "style" and spec.param("kind", "guide") == "guide":
        w, h = (int(n) for n in spec.param("aspect_ratio", "1:1").split(":"))
        return round((1_048_576 * w / h) ** 0.5), round((1_048_576 * h / w) ** 0.5)
    return width, height


def draw_edit(spec: ImageSpec) -> bytes:
    """A labelled placeholder of the size the task gives, with the source image drawn into it."""
    width, height = edit_size(spec)
    label = f"{spec.task}: {spec.prompt}" if spec.prompt else spec.task
    with Image.open(io.BytesIO(draw_placeholder(label, spec.seed, width, height))) as picture:
        image = picture.convert("RGBA")
    source = spec.input("image")
    if source is not None:
        with Image.open(io.BytesIO(source)) as original:
            # The source, shrunk into the picture's upper part, so a person sees what was edited.
            thumb = original.convert("RGBA")
            thumb.thumbnail((width * 3 // 4, height * 5 // 8 - height // 12))
        image.alpha_composite(thumb, ((width - thumb.width) // 2, height // 24))
    if spec.task == "remove_background":
        # A cut-out: everything outside an ellipse is transparent, as the real task's PNG would be.
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).ellipse((width // 8, height // 16, width * 7 // 8, height * 15 // 16), fill=255)
        image.putalpha(mask)
    out = io.BytesIO()
    (image if spec.task == "remove_background" else image.convert("RGB")).save(out, format="PNG",
                                                                               compress_level=1)
    return out.getvalue()


def draw_placeholder(prompt: str, seed: int, width: int, height: int) -> bytes:
    """A picture whose colours and shapes come from the seed, with 'PLACEHOLDER' and the prompt in it."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    rng = random.Random(digest)
    background = tuple(rng.randrange(40, 200) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        radius = rng.randrange(min(width, height) // 16, min(width, height) // 3)
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0 - radius, y0 - radius, x0 + radius, y0 + radius), fill=colour)
    _draw_caption(draw, prompt, seed, width, height)
    out = io.BytesIO()
    # Level 1: offline pictures are for looking at, not archiving; fast beats small.
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def caption_font(size: int) -> CaptionFont:
    """This thread's caption font of that size (FreeType faces are not shared between threads)."""
    fonts = _thread_fonts.__dict__.setdefault("by_size", {})
    if size not in fonts:
        fonts[size] = CaptionFont(size)
    return fonts[size]


def _draw_caption(draw: ImageDraw.ImageDraw, prompt: str, seed: int, width: int, height: int) -> None:
    big = ImageFont.load_default(size=max(12, width // 12))
    small = caption_font(max(10, width // 36))
    band_top = height * 5 // 8
    draw.rectangle((0, band_top, width, height), fill=(0, 0, 0))
    draw.text((width // 24, band_top + height // 48), "PLACEHOLDER", font=big, fill=(255, 255, 255))
    lines = textwrap.wrap(prompt, width=max(10, width // max(1, int(small.size * 0.6))))[:4]
    lines.append(f"seed {seed} - offline mode, not a generated image")
    line_height = int(small.size * 1.3)
    y = band_top + height // 48 + int(big.size * 1.3)
    for line in lines:
        small.draw(draw, (width // 24, y), line, fill=(230, 230, 230))
        y += line_height
