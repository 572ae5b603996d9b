"""The OpenAI Images API over this service: any OpenAI client generates, edits and varies images here.

Each call becomes a native request (the same schema, models, screening, store, records, idempotency
and limits); the answer is OpenAI's shape, with only the fields that are true (wave2-reference.md A 1).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import time
from dataclasses import replace
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, g, request

from generation.errors import InvalidRequest
from web.model_catalog import choose_profile, profile_of
from web.problems import PROBLEM_JSON, json_response

log = logging.getLogger("ai_image_generator.openai")
openai_routes = Blueprint("openai", __name__, url_prefix="/v1")
# OpenAI's own image models: a client that names one gets the operator's default model.
OPENAI_MODEL = re.compile(r"^(dall-e-\d|gpt-image-[\w.-]+|chatgpt-image-[\w.-]+)$")
SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")
MAX_N = 10
QUALITY = {"standard": "standard", "low": "standard", "medium": "standard", "auto": None, "hd": "premium",
           "high": "premium"}
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
# OpenAI's variations take no prompt; the models that make variations here want one.
VARIATION_PROMPT = "a variation of this image"
# Accepted and ignored: they change nothing here (`moderation`: screening always applies).
IGNORED = {"style": ("vivid", "natural"), "moderation": ("auto", "low"), "background": ("auto", "opaque"),
           "input_fidelity": ("high", "low"), "partial_images": None, "output_compression": None}
# Problem codes after which a retry of the same call only pays again (the SDKs retry 408/409/429/5xx).
NO_RETRY = {"deadline_exceeded", "model_timeout", "model_failed", "model_unavailable", "store_failed",
            "screening_failed", "internal_error", "content_filtered", "input_flagged", "invalid_request"}
# Fields that are numbers (multipart forms send them as text).
NUMBERS = frozenset({"n", "seed", "output_compression", "partial_images"})
# Our field names -> OpenAI's, for `param` in errors.
PARAMS = {"count": "n", "width": "size", "height": "size", "aspect_ratio": "size", "body": None,
          "source_key": "image", "mask_image": "mask"}


@openai_routes.get("/models")
def list_models():
    """GET /v1/models: the offered models in OpenAI's list shape."""
    chain = current_app.extensions["aig"]["services"].models
    data = [{"id": m, "object": "model", "created": 0, "owned_by": profile_of(chain, m).family}
            for m in chain.offered()]
    return json_response({"object": "list", "data": data})


@openai_routes.post("/images/generations")
def generations():
    """POST /v1/images/generations (JSON)."""
    body = _json_body()
    native = _native_fields(body, {"prompt", "model", "n", "size", "quality", "response_format", "output_format",
                                   "user", "negative_prompt", "seed", "stream", *IGNORED})
    native["prompt"] = body.get("prompt")
    chain = current_app.extensions["aig"]["services"].models
    profile, _ = choose_profile({k: v for k, v in native.items() if k == "model"}, chain)
    _size_fields(body.get("size") or None, profile, native)
    _quality(body.get("quality") or None, profile, native)
    return _run_native("generate", native, body)


@openai_routes.post("/images/edits")
def edits():
    """POST /v1/images/edits (multipart, as the SDKs send it): with a mask an inpaint, else a variation."""
    form, image = _multipart(("image", "image[]"))
    mask = request.files.get("mask")
    native = _native_fields(form, {"prompt", "model", "n", "size", "quality", "response_format", "output_format",
                                   "user", "negative_prompt", "seed", "stream", *IGNORED})
    native.update(prompt=form.get("prompt"), image=_b64(image))
    if mask is not None:
        native.update(task="inpaint", mask_image=_b64(_openai_mask(mask.read())))
    else:
        native["task"] = "variation"
    return _run_native("edit", native, form)


@openai_routes.post("/images/variations")
def variations():
    """POST /v1/images/variations (multipart)."""
    form, image = _multipart(("image",))
    native = _native_fields(form, {"model", "n", "size", "response_format", "output_format", "user", "seed",
                                   "negative_prompt", *IGNORED})
    native.update(task="variation", prompt=VARIATION_PROMPT, image=_b64(image))
    return _run_native("edit", native, form)


def _json_body() -> dict:
    from web.json_body import read_json_object

    return read_json_object(request.get_data(cache=False))


def _multipart(names: tuple[str, ...]):
    """The form fields and the first image file, as the SDK sends them (`image` or repeated `image[]`)."""
    request.max_content_length = current_app.extensions["aig"]["settings"].max_edit_body_bytes
    files = [f for name in names for f in request.files.getlist(name)]
    if not files:
        raise InvalidRequest([{"field": "image", "message": "send the image as a multipart file field `image`"}])
    form = {key: value for key, value in request.form.items()}
    image = files[0].read()
    # The uploads are part of what an Idempotency-Key stands for: another image is another request.
    form["_image_sha256"] = hashlib.sha256(image).hexdigest()
    if "mask" in request.files:
        mask = request.files["mask"]
        form["_mask_sha256"] = hashlib.sha256(mask.read()).hexdigest()
        mask.seek(0)
    return form, image


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _openai_mask(data: bytes) -> bytes:
    """OpenAI's mask (transparent where to edit) as ours (white where to edit)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as mask:
            alpha = mask.convert("RGBA").getchannel("A")
    except (OSError, ValueError):
        raise InvalidRequest([{"field": "mask", "message": "is not a PNG image that can be decoded"}]) from None
    if alpha.getextrema()[0] != 0:
        raise InvalidRequest([{"field": "mask", "message": "has no fully transparent pixel: OpenAI masks mark "
                                                           "where to edit with transparency (alpha 0)"}])
    out = io.BytesIO()
    alpha.point(lambda a: 255 if a == 0 else 0).save(out, format="PNG")
    return out.getvalue()


def _native_fields(body: dict, allowed: set[str]) -> dict:
    """The OpenAI fields this service takes, checked; an unknown one is refused naming it."""
    # The SDKs send an explicit None as "" in multipart forms: the same as leaving the field out.
    body = {name: value for name, value in body.items() if value not in ("", None) and not name.startswith("_")}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest([{"field": unknown[0], "message": "is not a field this endpoint takes"}])
    for name, value in body.items():
        wanted = (int, str) if name in NUMBERS else (str, bool) if name == "stream" else (str,)
        if isinstance(value, bool) and name != "stream" or not isinstance(value, wanted):
            kind = "a number" if name in NUMBERS else "true or false" if name == "stream" else "a string"
            raise InvalidRequest([{"field": name, "message": f"must be {kind}"}])
    for name, values in IGNORED.items():
        if name in body and values is not None and body[name] not in values:
            raise InvalidRequest([{"field": name, "message": f"must be one of {', '.join(values)} here"}])
    if str(body.get("stream", "false")).lower() not in ("false", "", "none"):
        raise InvalidRequest([{"field": "stream", "message": "streaming is not supported; omit it"}])
    native: dict = {}
    model = body.get("model")
    if model and not OPENAI_MODEL.match(str(model)):
        native["model"] = model  # one of ours; OpenAI's own names mean the operator's default
    n = body.get("n", 1)
    try:
        if isinstance(n, bool) or not isinstance(n, (int, str)):
            raise TypeError(n)
        n = int(n)
    except (TypeError, ValueError):
        raise InvalidRequest([{"field": "n", "message": f"must be an integer from 1 to {MAX_N}"}]) from None
    if not 1 <= n <= MAX_N:
        raise InvalidRequest([{"field": "n", "message": f"must be an integer from 1 to {MAX_N}"}])
    native["n"] = n
    if body.get("response_format", "url") not in ("url", "b64_json"):
        raise InvalidRequest([{"field": "response_format", "message": "must be url or b64_json"}])
    if body.get("output_format", "png") not in OUTPUT_FORMATS:
        raise InvalidRequest([{"field": "output_format", "message": "must be png, jpeg or webp"}])
    for extension in ("negative_prompt", "seed"):
        if extension in body:
            value = body[extension]
            # A multipart form sends numbers as text; anything else goes to the schema, which names it.
            native[extension] = int(value) if extension == "seed" and isinstance(value, str) and value.isdigit() \
                else value
    return native


def _size_fields(size, profile, native: dict) -> None:
    """OpenAI's `size` (WxH or auto) as the model's size, or its nearest ratio."""
    if size in (None, "", "auto"):
        return
    match = SIZE.match(str(size))
    if not match:
        raise InvalidRequest([{"field": "size", "message": "must be WIDTHxHEIGHT (e.g. 1024x1024) or auto"}])
    width, height = int(match.group(1)), int(match.group(2))
    if profile.aspect_ratios:
        native["aspect_ratio"] = profile.ratio_for(width, height)
    elif profile.sizes:
        native["width"], native["height"] = profile.fits_size(width, height)


def _quality(quality, profile, native: dict) -> None:
    if quality in (None, ""):
        return
    if quality not in QUALITY:
        raise InvalidRequest([{"field": "quality", "message": f"must be one of {', '.join(QUALITY)}"}])
    if QUALITY[quality] and profile.quality:
        native["quality"] = QUALITY[quality]


def _place(native: dict) -> None:
    """Where OpenAI callers' images land: <AIG_OPENAI_FOLDER>/<key name>/<date>/image-<epoch>.png."""
    settings = current_app.extensions["aig"]["settings"]
    who = g.get("api_key_name") or "anonymous"
    native["output_folder"] = f"{settings.openai_folder}/{who}/{datetime.now(UTC):%Y-%m-%d}"
    native["file_name_prefix"] = "image"


def _run_native(kind: str, native: dict, openai_body: dict) -> Response:
    """Check and run the native request; answer in OpenAI's shape."""
    state = current_app.extensions["aig"]
    services, settings = state["services"], state["settings"]
    _place(native)
    n = native.pop("n")
    if openai_body.get("user"):
        # Logged for abuse tracing, never stored in clear.
        g.openai_user = hashlib.sha256(str(openai_body["user"]).encode()).hexdigest()[:16]
        log.info("OpenAI call for user %s", g.openai_user)
    if kind == "generate":
        from web.request_schema import parse_generation_request

        profile, named = choose_profile(native, services.models)
        generation = parse_generation_request({**native, "count": min(n, profile.max_images)}, profile,
                                              default_quality=settings.default_quality,
                                              root_prefix=services.store.key_prefix, named=named,
                                              reserved_prefix=settings.quarantine_prefix)
    else:
        from web.edit_request import plan_edit

        generation = plan_edit({**native, "count": 1}, services.models, services.store, services.screener,
                               default_quality=settings.default_quality, private_prefix=settings.quarantine_prefix)
    # Images beyond one model call's limit are just more calls side by side.
    generation = replace(generation, count=n)
    manifest = state["respond"](openai_body, generation)
    if manifest.status_code != 200:
        return manifest
    return _images_response(json.loads(manifest.get_data()), openai_body, services.store, manifest)


def _images_response(manifest: dict, body: dict, store, native_response: Response) -> Response:
    """OpenAI's ImagesResponse: created, data[] (url or b64_json), output_format and size when known."""
    output = body.get("output_format", "png")
    as_b64 = body.get("response_format", "url") == "b64_json"
    data = []
    for detail in manifest["image_details"]:
        if as_b64 or output != "png":
            png = store.get(detail["key"])
            converted = png if output == "png" else _convert(png, output, body.get("output_compression"))
            if as_b64:
                data.append({"b64_json": base64.b64encode(converted).decode()})
                continue
            data.append({"url": _stored_copy(store, detail, converted, output)})
        else:
            data.append({"url": detail.get("url") or detail.get("s3_uri")})
    answer = {"created": int(time.time()), "data": data, "output_format": output}
    first = manifest["image_details"][0] if manifest["image_details"] else None
    if first:
        answer["size"] = f"{first['width']}x{first['height']}"
    response = json_response(answer)
    for header in ("Deprecation", "Sunset", "Idempotent-Replayed"):
        if header in native_response.headers:
            response.headers[header] = native_response.headers[header]
    return response


def _convert(png: bytes, output: str, compression) -> bytes:
    """The screened PNG as JPEG or WebP (converted after screening, so the check saw the same picture)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        out = io.BytesIO()
        quality = int(compression) if compression not in (None, "") else 90
        (image.convert("RGB") if output == "jpeg" else image).save(out, format=OUTPUT_FORMATS[output],
                                                                   quality=max(1, min(quality, 100)))
    return out.getvalue()


def _stored_copy(store, detail: dict, data: bytes, output: str) -> str:
    """Store the converted copy beside the PNG and return its URL."""
    from generation.errors import KeyExists

    key = detail["key"].rsplit(".", 1)[0] + "." + output
    try:
        store.put_new(key, data, {"source": detail["key"]}, content_type=f"image/{output}")
    except KeyExists:
        pass  # an idempotent replay converted it before
    return store.address(key, current_app.extensions["aig"]["image_url"])["url"]


@openai_routes.after_request
def openai_error(response: Response) -> Response:
    """A problem answer on a /v1 route rewritten in OpenAI's error shape, with x-should-retry where it helps."""
    if response.mimetype != PROBLEM_JSON:
        return response
    problem = json.loads(response.get_data())
    code = problem.get("code")
    errors = problem.get("errors") or []
    param = PARAMS.get(errors[0]["field"], errors[0]["field"]) if errors else None
    kind = ("invalid_request_error" if response.status_code < 500 else "server_error")
    openai_code = {"content_filtered": "content_policy_violation", "invalid_api_key": "invalid_api_key",
                   "missing_api_key": "invalid_api_key", "rate_limited": "rate_limit_exceeded",
                   "model_throttled": "rate_limit_exceeded"}.get(code, code)
    body = {"error": {"message": problem.get("detail") or problem.get("title"), "type": kind, "param": param,
                      "code": openai_code}}
    rewritten = json_response(body, response.status_code)
    for name, value in response.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            rewritten.headers[name] = value
    if code in NO_RETRY or response.status_code in (408, 500, 502, 504):
        rewritten.headers["x-should-retry"] = "false"
    return rewritten
