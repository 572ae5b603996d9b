"""Rewrite the settings table in README.md from settings.py (run after adding a setting)."""

import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from settings import settings_table  # noqa: E402

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- settings-table:[^\n]*-->\n).*?(<!-- end settings-table -->)", re.S)


def render(text: str) -> str:
    """The README text with its settings table regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + settings_table() + "\n" + m.group(2), text)


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
