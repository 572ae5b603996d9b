"""The README tells the truth about settings and set-up."""


import pytest

from scripts.settings_table import README, render

pytestmark = pytest.mark.unit


def test_readme_settings_table_matches_settings_py():
    text = README.read_text()
    assert render(text) == text, "run: .venv/bin/python scripts/settings_table.py"


def test_readme_gives_the_two_setup_commands_and_ci_calls_the_test_one():
    text = README.read_text()
    assert "./scripts/serve" in text and "./scripts/test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test" in ci
