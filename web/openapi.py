"""The OpenAPI 3.1 document of the service, built from the chosen model's limits."""

from __future__ import annotations

from generation.model_registry import ModelProfile
from web.request_schema import MAX_FOLDER, MAX_PREFIX

PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem_response(description: str) -> dict:
    return {"description": description, "content": {"application/problem+json": {"schema": PROBLEM}}}


def _problems(*statuses: int) -> dict:
    text = {400: "Invalid request or blocked by the content filter", 401: "Missing or wrong API key",
            403: "Not served to this caller",
            404: "Not found", 405: "Method not allowed", 409: "The same Idempotency-Key is still running",
            413: "Body too large", 422: "Idempotency-Key reused with a different body",
            429: "Rate limited or the model is throttling (see Retry-After)", 500: "Internal error",
            502: "The model failed", 503: "A backend is unavailable", 504: "Deadline passed"}
    return {str(s): _problem_response(text[s]) for s in statuses}


def _json_response(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# A segment of letters, digits, '-', '_', '.' that is not '.' or '..'.
SEGMENT = r"(?!\.\.?(/|$))[A-Za-z0-9._-]+"
# Some non-space character, and no control character but tab, newline and carriage return.
TEXT = r"^(?=[\s\S]*\S)[^\u0000-\u0008\u000b\u000c\u000e-\u001f]*$"


def _size_pairs(profile: ModelProfile) -> list[dict]:
    """width and height come together, as one of the model's pairs, or not at all."""
    pairs = [{"required": ["width", "height"],
              "properties": {"width": {"const": w}, "height": {"const": h}}} for w, h in sorted(profile.sizes)]
    neither = {"not": {"anyOf": [{"required": ["width"]}, {"required": ["height"]}]}}
    return [neither, *pairs]


def _request_schema(profile: ModelProfile) -> dict:
    text = {"type": "string", "minLength": 1, "maxLength": profile.max_text, "pattern": TEXT}
    return {
        "type": "object",
        "required": ["prompt", "output_folder", "file_name_prefix"],
        "additionalProperties": False,
        "anyOf": _size_pairs(profile),
        "properties": {
            "prompt": text,
            "negative_prompt": text,
            "output_folder": {"type": "string", "pattern": f"^{SEGMENT}(/{SEGMENT})*$", "maxLength": MAX_FOLDER},
            "file_name_prefix": {"type": "string", "pattern": f"^{SEGMENT}$", "maxLength": MAX_PREFIX},
            "count": {"type": "integer", "minimum": 1, "maximum": profile.max_images, "default": 4},
            "width": {"type": "integer", "enum": sorted({w for w, _ in profile.sizes}), "default": 1024},
            "height": {"type": "integer", "enum": sorted({h for _, h in profile.sizes}), "default": 1024},
            "quality": {"type": "string", "enum": ["standard", "premium"]},
            "cfg_scale": {"type": "number", "minimum": profile.min_cfg_scale, "maximum": profile.max_cfg_scale},
            "seed": {"type": "integer", "minimum": 0, "maximum": profile.max_seed},
        },
        "example": {"prompt": "red porsche", "output_folder": "000/111", "file_name_prefix": "porsche_image"},
    }


MANIFEST = {
    "type": "object",
    "required": ["images", "request_id", "model_id", "image_details", "errors"],
    "properties": {
        "images": {"type": "array", "items": {"type": "string"}},
        "request_id": {"type": "string"},
        "record": {"type": "string"},
        "model_id": {"type": "string"},
        "placeholder": {"type": "boolean"},
        "notice": {"type": "string"},
        "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        "image_details": {"type": "array", "items": {
            "type": "object",
            "required": ["key", "seed", "width", "height", "moderation"],
            "properties": {
                "key": {"type": "string"}, "seed": {"type": "integer"},
                "width": {"type": "integer"}, "height": {"type": "integer"},
                "placeholder": {"type": "boolean"}, "url": {"type": "string"}, "s3_uri": {"type": "string"},
                "moderation": {"type": "object", "required": ["verdict", "labels", "action"], "properties": {
                    "verdict": {"enum": ["clean", "flagged", "not_screened"]},
                    "action": {"enum": ["none", "blurred", "blurred_withheld"]},
                    "labels": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "parent": {"type": "string"},
                        "confidence": {"type": "number"}}}},
                }},
            },
        }},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["index", "seed", "status", "code", "detail"],
            "properties": {"index": {"type": "integer"}, "seed": {"type": "integer"},
                           "status": {"type": "integer"}, "code": {"type": "string"},
                           "detail": {"type": "string"}},
        }},
    },
}

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "code": {"type": "string"}, "request_id": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "required": ["field", "message"],
                                              "properties": {"field": {"type": "string"},
                                                             "message": {"type": "string"}}}},
        "images": {"type": "array", "items": {"type": "string"}},
        "record": {"type": "string"},
        "image_errors": {"type": "array", "items": {"type": "object", "required": ["index", "code"]}},
    },
}


def openapi_document(profile: ModelProfile, *, api_keys: bool = False) -> dict:
    """Every route, its bodies and every answer it can give; with `api_keys`, the routes that need one."""
    status = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "ai-image-generator", "version": "1.0.0",
                 "description": "Turns a prompt into images, screens them and stores them under a chosen "
                                f"folder. Model: {profile.model_id}."},
        "paths": {
            "/": {"get": {"summary": "Health, as the original service answered", "responses": {
                "200": _json_response("Alive", {"type": "object", "properties": {"health": {"const": "true"}}}),
                **_problems(500)}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {
                "200": _json_response("Alive", status), **_problems(500)}}},
            "/readyz": {"get": {"summary": "Readiness", "responses": {
                "200": _json_response("Ready", status), **_problems(500, 503)}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": _json_response("OpenAPI 3.1", {"type": "object"})}}},
            "/generate_images": {"post": {
                "summary": "Generate, screen and store images; answer the manifest",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "pattern": "^[!-~]([ -~]{0,253}[!-~])?$"},
                                "description": "A retried POST with the same key returns the first answer"}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _request_schema(profile)}}},
                "responses": {"200": _json_response("The manifest", MANIFEST),
                              **_problems(400, 401, 409, 413, 422, 429, 500, 502, 503, 504)},
            }},
            "/images/{key}": {"get": {
                "summary": "A stored image (offline mode only)",
                "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The PNG", "content": {"image/png": {}}},
                              **_problems(401, 404, 500)}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics: to this host, or with the metrics key",
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}},
                              **_problems(401, 403, 500)}}},
        },
        "components": {
            "schemas": {"Problem": PROBLEM_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }
    if api_keys:
        for path in ("/generate_images", "/images/{key}", "/openapi.json"):
            for operation in document["paths"][path].values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                operation["responses"].setdefault("401", _problem_response("Missing or wrong API key"))
    return document
