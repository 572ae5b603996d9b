"""The OpenAPI document is valid and describes every route the app serves."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

pytestmark = pytest.mark.unit


def test_openapi_document_is_valid_and_covers_every_route(app, client):
    document = client.get("/openapi.json").get_json()
    validate(document)
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        served |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert served == documented


def test_openapi_builder_marks_keyed_routes():
    from generation.model_registry import TITAN_V2
    from web.openapi import openapi_document
    document = openapi_document([TITAN_V2], api_keys=True)
    validate(document)
    assert document["paths"]["/generate_images"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "security" not in document["paths"]["/healthz"]["get"]
