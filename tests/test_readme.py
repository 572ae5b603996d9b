"""The README tells the truth about settings and set-up."""

import textwrap
import time

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


def test_readme_webhook_check_verifies_the_service_signatures():
    text = README.read_text()
    start = text.index("  ```python\n  import base64, hashlib, hmac, time")
    block = text[start:text.index("  ```\n", start + 10)].split("\n", 1)[1]
    namespace: dict = {}
    exec(textwrap.dedent(block), namespace)  # noqa: S102 - the README's own example, run as a reader would
    from jobs.webhooks import new_secret, sign

    secret, body, now = new_secret(), b'{"type": "job.succeeded"}', int(time.time())
    headers = {"webhook-id": "job.succeeded", "webhook-timestamp": str(now),
               "webhook-signature": sign(secret, "job.succeeded", now, body)}
    assert namespace["verify"](secret, headers, body)
    assert not namespace["verify"](secret, headers, body + b" ")
    assert not namespace["verify"](new_secret(), headers, body)
