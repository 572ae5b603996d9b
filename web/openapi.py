"""The OpenAPI 3.1 document of the service, built from the chosen model's limits."""

from __future__ import annotations

from generation.model_registry import ModelProfile
from web.edit_schema import edit_json_schema
from web.request_schema import FOLDER_PATTERN, MAX_FOLDER, json_schema

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
                "model_id": {"type": "string"},
                "skipped_models": {"type": "array", "items": {
                    "type": "object", "required": ["model_id", "reason"],
                    "properties": {"model_id": {"type": "string"}, "reason": {"type": "string"}}}},
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

IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "pattern": "^[!-~]([ -~]{0,253}[!-~])?$"},
                   "description": "A retried POST with the same key returns the first answer"}

OPENAI_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
OPENAI_IMAGES = {"type": "object", "required": ["created"], "properties": {
    "created": {"type": "integer"}, "output_format": {"type": "string"}, "size": {"type": "string"},
    "data": {"type": "array", "items": {"type": "object", "properties": {
        "url": {"type": "string"}, "b64_json": {"type": "string"}}}}}}
OPENAI_LIST = {"type": "object", "required": ["object", "data"], "properties": {
    "object": {"const": "list"}, "data": {"type": "array", "items": {"type": "object", "required": ["id", "object"]}}}}
_OPENAI_COMMON = {
    "model": {"type": "string"}, "n": {"type": "integer", "minimum": 1, "maximum": 10},
    "size": {"type": "string"}, "response_format": {"enum": ["url", "b64_json"]},
    "output_format": {"enum": ["png", "jpeg", "webp"]}, "user": {"type": "string"},
    "seed": {"type": "integer", "minimum": 0}, "negative_prompt": {"type": "string"}}
OPENAI_GENERATE = {"type": "object", "required": ["prompt"], "properties": {
    "prompt": {"type": "string", "minLength": 1}, "quality": {"type": "string"}, "style": {"type": "string"},
    **_OPENAI_COMMON}}
OPENAI_EDIT = {"type": "object", "required": ["image", "prompt"], "properties": {
    "image": {"type": "string", "contentMediaType": "image/png"}, "mask": {"type": "string"},
    "prompt": {"type": "string"}, **_OPENAI_COMMON}}
OPENAI_VARIATION = {"type": "object", "required": ["image"], "properties": {
    "image": {"type": "string", "contentMediaType": "image/png"}, **_OPENAI_COMMON}}


def _openai_images(summary: str, media_type: str, schema: dict) -> dict:
    """One OpenAI-compatible image route: its body, ImagesResponse, and errors in OpenAI's shape."""
    return {"post": {
        "summary": summary, "parameters": [IDEMPOTENCY_KEY],
        "requestBody": {"required": True, "content": {media_type: {"schema": schema}}},
        "responses": {"200": _json_response("OpenAI's ImagesResponse", OPENAI_IMAGES),
                      **_openai_errors(400, 401, 403, 404, 409, 413, 422, 429, 500, 502, 503, 504)}}}


def _openai_errors(*statuses: int) -> dict:
    return {str(s): {"description": "An error in OpenAI's shape (x-should-retry: false where a retry pays again)",
                     "content": {"application/json": {"schema": OPENAI_ERROR}}} for s in statuses}


MODELS = {
    "type": "object", "required": ["default", "fallback_chain", "models"],
    "properties": {
        "default": {"type": "string"},
        "fallback_chain": {"type": "array", "items": {"type": "string"}},
        "models": {"type": "array", "items": {"type": "object", "required": ["id", "limits", "lifecycle", "available"],
                                              "properties": {"id": {"type": "string"},
                                                             "available": {"type": "boolean"}}}},
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


def request_schema(profiles: list[ModelProfile]) -> dict:
    """The body of POST /generate_images: the default model's (no `model` field needed) or a named model's."""
    default, *named = profiles
    schemas = [json_schema(default, True), *(json_schema(p, False) for p in named)]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def edit_request_schema(variants: list[tuple[ModelProfile, str]]) -> dict:
    """The body of POST /edit_images: one schema per offered (model, task)."""
    schemas = [edit_json_schema(profile, task, False) for profile, task in variants]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
WEBHOOK_URL = {"type": "string", "maxLength": 2048, "format": "uri",
               "description": "Where the signed webhook goes when the job ends (public http/https addresses only)"}
JOB = {
    "type": "object",
    "required": ["job_id", "state", "kind", "links"],
    "properties": {
        "job_id": {"type": "string"},
        "state": {"enum": ["queued", "running", "succeeded", "partial", "failed", "cancelled", "expired"]},
        "kind": {"enum": ["generate", "edit"]},
        "attempts": {"type": "integer"},
        "created_at": {"type": "string"}, "started_at": {"type": "string"}, "finished_at": {"type": "string"},
        "manifest": MANIFEST,
        "error": {"type": "object", "properties": {"code": {"type": "string"}, "detail": {"type": "string"},
                                                    "status": {"type": "integer"}}},
        "webhook": {"type": "object", "properties": {
            "url": {"type": "string"}, "state": {"enum": ["pending", "queued", "retrying", "delivered", "failed"]},
            "attempts": {"type": "array", "items": {"type": "object"}}}},
        "stored_images": {"type": "array", "items": {"type": "object"}},
        "links": {"type": "object"},
    },
}


def job_request_schema(generate: dict, edit: dict | None) -> dict:
    """The body of POST /jobs: a generation's or an edit's, each with an optional `webhook_url`."""
    variants = []
    for schema in (generate, edit):
        if schema is None:
            continue
        for branch in schema.get("anyOf", [schema]):
            variants.append({**branch, "properties": {**branch.get("properties", {}), "webhook_url": WEBHOOK_URL}})
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def openapi_document(profiles: list[ModelProfile], *, api_keys: bool = False,
                     edits: list[tuple[ModelProfile, str]] = ()) -> dict:
    """Every route, its bodies and every answer it can give; with `api_keys`, the routes that need one."""
    status = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "ai-image-generator", "version": "1.0.0",
                 "description": "Turns a prompt into images, screens them and stores them under a chosen "
                                "folder. Models: " + ", ".join(p.model_id for p in profiles) + "."},
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
            "/models": {"get": {"summary": "The offered models: limits, tasks, price per image, lifecycle",
                                "responses": {"200": _json_response("The models", MODELS), **_problems(401, 500)}}},
            "/generate_images": {"post": {
                "summary": "Generate, screen and store images; answer the manifest",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": request_schema(profiles)}}},
                "responses": {"200": _json_response("The manifest", MANIFEST),
                              **_problems(400, 401, 403, 409, 413, 422, 429, 500, 502, 503, 504)},
            }},
            "/edit_images": {"post": {
                "summary": "Edit an image (variation, inpaint, outpaint, upscale, ...); the same manifest",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": edit_request_schema(list(edits)) if edits else {"type": "object"}}}},
                "responses": {"200": _json_response("The manifest", MANIFEST),
                              **_problems(400, 401, 403, 404, 409, 413, 422, 429, 500, 502, 503, 504)},
            }},
            "/jobs": {"post": {
                "summary": "Queue a generation (a /generate_images body) or an edit (an /edit_images body, with "
                           "`task`); answer 202 with the job at once",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {"required": True, "content": {"application/json": {"schema": job_request_schema(
                    request_schema(profiles), edit_request_schema(list(edits)) if edits else None)}}},
                "responses": {"202": {**_json_response("The job, queued (Location: /jobs/{job_id})", JOB),
                                      "headers": {"Location": {"schema": {"type": "string"}}}},
                              **_problems(400, 401, 403, 404, 413, 422, 429, 500, 503)},
            }},
            "/jobs/{job_id}": {
                "get": {"summary": "A job's state; once ended, its manifest or error",
                        "parameters": [JOB_ID],
                        "responses": {"200": _json_response("The job", JOB), **_problems(401, 404, 500, 503)}},
                "delete": {"summary": "Cancel a job that has not started",
                           "parameters": [JOB_ID],
                           "responses": {"200": _json_response("The job, cancelled", JOB),
                                         **_problems(401, 403, 404, 409, 500, 503)}},
            },
            "/webhooks/secret": {"get": {
                "summary": "The calling API key's webhook secret (with API keys on)",
                "responses": {"200": _json_response("The secret", {
                    "type": "object", "required": ["secret"], "properties": {"secret": {"type": "string"}}}),
                              **_problems(401, 403, 500, 503)}}},
            "/v1/models": {"get": {"summary": "OpenAI-compatible: the offered models in OpenAI's list shape",
                                   "responses": {"200": _json_response("The models", OPENAI_LIST),
                                                 **_openai_errors(401, 500)}}},
            "/v1/images/generations": _openai_images("OpenAI-compatible image generation (README: field table)",
                                                      "application/json", OPENAI_GENERATE),
            "/v1/images/edits": _openai_images("OpenAI-compatible image edit (multipart: image, mask, prompt, ...)",
                                               "multipart/form-data", OPENAI_EDIT),
            "/v1/images/variations": _openai_images("OpenAI-compatible image variation (multipart: image, n, ...)",
                                                    "multipart/form-data", OPENAI_VARIATION),
            "/records": {"get": {
                "summary": "A folder's finished requests, newest first, ten a page (the picker page's history)",
                "parameters": [{"name": "folder", "in": "query", "required": True,
                                "schema": {"type": "string", "pattern": FOLDER_PATTERN, "maxLength": MAX_FOLDER}},
                               {"name": "page", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1}}],
                "responses": {"200": _json_response("One page of records", {"type": "object"}),
                              **_problems(400, 401, 500, 503)}}},
            "/ui/": {"get": {"summary": "The picker web page", "responses": {
                "200": {"description": "The page", "content": {"text/html": {}}}, **_problems(500)}}},
            "/ui/static/{filename}": {"get": {
                "summary": "The picker page's script and style",
                "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The file"}, **_problems(404, 500)}}},
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
        for path in ("/generate_images", "/edit_images", "/images/{key}", "/openapi.json", "/models", "/records",
                     "/v1/models", "/jobs", "/jobs/{job_id}", "/webhooks/secret",
                     "/v1/images/generations", "/v1/images/edits", "/v1/images/variations"):
            for operation in document["paths"][path].values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                operation["responses"].setdefault("401", _problem_response("Missing or wrong API key"))
    return document
