"""Fonts for the placeholder's captions: a chain of Debian fonts, so a prompt in any script draws as text."""

from __future__ import annotations

import functools
import logging
import unicodedata
from pathlib import Path

from PIL import ImageDraw, ImageFont

log = logging.getLogger("ai_image_generator.placeholder")
# Tried in order for each character (Debian packages fonts-dejavu-core, fonts-droid-fallback and
# fonts-unifont): DejaVu for Latin, Greek, Cyrillic, Arabic and Hebrew; Droid Sans Fallback for
# Chinese and Japanese; GNU Unifont for the rest of Unicode's basic plane (Korean, Indic, ...) and beyond.
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/opentype/unifont/unifont.otf",
    "/usr/share/fonts/opentype/unifont/unifont_upper.otf",
)
DEBIAN_PACKAGES = "fonts-dejavu-core fonts-droid-fallback fonts-unifont"


@functools.cache
def _coverage(path: str) -> frozenset[int] | None:
    """The code points a font file has glyphs for; None when the file is absent or unreadable."""
    from fontTools.ttLib import TTFont  # imported here: only offline captions need it

    if not Path(path).is_file():
        return None
    try:
        return frozenset(TTFont(path, lazy=True).getBestCmap())
    except Exception:  # noqa: BLE001 - a broken font file is skipped like a missing one
        log.warning("could not read the font %s; captions skip it", path)
        return None


@functools.cache
def installed_fonts() -> tuple[str, ...]:
    """The chain's font files that are installed; says once which packages would add the missing ones."""
    found = tuple(path for path in FONT_FILES if _coverage(path) is not None)
    if len(found) < len(FONT_FILES):
        log.warning("placeholder captions: %d of %d fonts found; text in some scripts draws as boxes "
                    "(apt-get install %s)", len(found), len(FONT_FILES), DEBIAN_PACKAGES)
    return found


class CaptionFont:
    """Draws text at one size, each character in the first font of the chain that has it."""

    def __init__(self, size: int):
        self.size = size
        # Basic layout: one glyph after another. Complex shaping (raqm) fails on some code points, and a
        # caption must never fail an image.
        self.fonts = [(ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC), _coverage(path))
                      for path in installed_fonts()]
        # Pillow's own font, when none of the chain is installed (or a character is in none of them).
        self.fallback = ImageFont.load_default(size=size)

    def font_for(self, char: str):
        """The first font of the chain with a glyph for `char`."""
        point = ord(char)
        return next((font for font, covered in self.fonts if point in covered), self.fallback)

    def runs(self, text: str):
        """`text` cut into (font, run) pieces, each run drawable with one font."""
        pieces: list[list] = []
        for char in text:
            font = self.font_for(char)
            if pieces and pieces[-1][0] is font:
                pieces[-1][1] += char
            else:
                pieces.append([font, char])
        return [(font, run) for font, run in pieces]

    def draw(self, draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, fill) -> None:
        """Draw `text` from `xy`, run by run; control characters become spaces, an undrawable run a '?'."""
        x, y = xy
        text = "".join(" " if unicodedata.category(char) in ("Cc", "Cs", "Co", "Cn") else char for char in text)
        for font, run in self.runs(text):
            try:
                draw.text((x, y), run, font=font, fill=fill)
                x += font.getlength(run)
            except (OSError, RuntimeError, ValueError):
                draw.text((x, y), "?", font=self.fallback, fill=fill)
                x += self.fallback.getlength("?")
