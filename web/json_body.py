"""The request body as a JSON object, or an error that says where it broke and what is expected."""

from __future__ import annotations

import json

from generation.errors import InvalidRequest

EXPECTED = ('send a JSON object such as {"prompt": "red porsche", "output_folder": "000/111", '
            '"file_name_prefix": "porsche_image"}')
JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
              type(None): "null"}


def read_json_object(raw: bytes) -> dict:
    """Parse `raw` whatever the Content-Type says (the original curl line sends a form type with JSON)."""
    if not raw.strip():
        raise _body_error(f"is empty; {EXPECTED}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _body_error(f"is not UTF-8 text (byte {error.start}); {EXPECTED}") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        hint = " It looks like a form (name=value&...): the API takes JSON." if _looks_like_form(text) else ""
        raise _body_error(f"is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}.{hint} "
                          f"{EXPECTED[0].upper()}{EXPECTED[1:]}") from None
    except RecursionError:
        # Thousands of nested brackets exhaust the parser's stack: a hostile body, not a server fault.
        raise _body_error("is nested too deeply to be a request") from None
    if not isinstance(body, dict):
        raise _body_error(f"must be a JSON object, not {JSON_KINDS.get(type(body), 'that')}; {EXPECTED}")
    return body


def _looks_like_form(text: str) -> bool:
    head = text.lstrip()[:1]
    return head not in ("{", "[", '"') and "=" in text


def _body_error(message: str) -> InvalidRequest:
    return InvalidRequest([{"field": "body", "message": message}])
