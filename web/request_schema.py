"""Turns a request body into a GenerationRequest, or names every field that is wrong."""

from __future__ import annotations

import re

from generation.errors import InvalidRequest
from generation.model_registry import ModelProfile
from image_generation import GenerationRequest

MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length
DEFAULT_COUNT = 4
FIELDS = {"prompt", "output_folder", "file_name_prefix", "count", "negative_prompt", "width", "height",
          "quality", "cfg_scale", "seed"}
# Letters, digits, '-', '_', '.' only: safe in S3 keys, file names and URLs alike.
SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# The longest suffix a key can get: "-" + epoch seconds with microseconds + ".png".
KEY_SUFFIX_BYTES = len("-9999999999.999999.png")
# Folder and prefix lengths that always leave room for the suffix within S3's 1024 bytes.
MAX_FOLDER, MAX_PREFIX = 780, 200


def _check_folder(value, errors):
    if not isinstance(value, str) or not value:
        errors.append({"field": "output_folder", "message": "must be a non-empty string"})
        return
    if value.startswith("/"):
        errors.append({"field": "output_folder", "message": "must not start with '/'"})
        return
    if len(value) > MAX_FOLDER:
        errors.append({"field": "output_folder", "message": f"must be at most {MAX_FOLDER} characters"})
        return
    for segment in value.split("/"):
        if segment in ("", ".", ".."):
            errors.append({"field": "output_folder",
                           "message": "must not contain empty, '.' or '..' segments"})
            return
        if not SEGMENT.fullmatch(segment):
            errors.append({"field": "output_folder",
                           "message": "segments may hold only letters, digits, '-', '_' and '.', joined by '/'"})
            return


def _check_prefix(value, errors):
    if not isinstance(value, str) or not value:
        errors.append({"field": "file_name_prefix", "message": "must be a non-empty string"})
    elif value in (".", "..") or not SEGMENT.fullmatch(value):
        errors.append({"field": "file_name_prefix",
                       "message": "may hold only letters, digits, '-', '_' and '.', with no '/'"})
    elif len(value) > MAX_PREFIX:
        errors.append({"field": "file_name_prefix", "message": f"must be at most {MAX_PREFIX} characters"})


def _text(body, name, profile, errors, *, required):
    if name not in body and not required:
        return None
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        errors.append({"field": name, "message": "must be a non-empty string"})
        return None
    if len(value) > profile.max_text:
        errors.append({"field": name,
                       "message": f"must be at most {profile.max_text} characters for {profile.model_id}, "
                                  f"not {len(value)}"})
        return None
    if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
        errors.append({"field": name, "message": "must not contain control characters"})
        return None
    if any("\ud800" <= c <= "\udfff" for c in value):
        # A lone surrogate (JSON allows "\ud800") cannot be encoded as UTF-8 for the model.
        errors.append({"field": name, "message": "must be valid Unicode text"})
        return None
    return value


def _integer(body, name, low, high, default, errors):
    value = body.get(name, default)
    # JSON has one number type: 4.0 is the integer 4 to a JSON Schema validator, so accept it too.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    # bool is an int in Python; a caller who sends true meant something else.
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        if value is not None or name in body:
            errors.append({"field": name, "message": f"must be an integer from {low} to {high}"})
        return None
    if not low <= value <= high:
        errors.append({"field": name, "message": f"must be an integer from {low} to {high}"})
        return None
    return value


def parse_generation_request(body, profile: ModelProfile, *, default_quality: str,
                             root_prefix: str = "") -> GenerationRequest:
    """Check `body` against the API and the model's limits; raise InvalidRequest naming each bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest([{"field": "body", "message": "must be a JSON object"}])
    errors: list[dict] = []
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        errors.append({"field": unknown[0], "message": f"unknown field (allowed: {', '.join(sorted(FIELDS))})"})
    prompt = _text(body, "prompt", profile, errors, required=True)
    negative = _text(body, "negative_prompt", profile, errors, required=False)
    folder, prefix = body.get("output_folder"), body.get("file_name_prefix")
    _check_folder(folder, errors)
    _check_prefix(prefix, errors)
    if not errors:
        key_bytes = len(f"{root_prefix}{folder}/{prefix}".encode()) + KEY_SUFFIX_BYTES
        if key_bytes > MAX_KEY_BYTES:
            errors.append({"field": "output_folder",
                           "message": f"folder and prefix make keys of {key_bytes} bytes; "
                                      f"the limit is {MAX_KEY_BYTES}"})
    count = _integer(body, "count", 1, profile.max_images, DEFAULT_COUNT, errors)
    if ("width" in body) != ("height" in body):
        # A size is a pair: half of one would silently combine with the other half of the default.
        errors.append({"field": "width" if "height" in body else "height",
                       "message": "width and height must be given together"})
    width = _integer(body, "width", 1, 100_000, 1024, errors)
    height = _integer(body, "height", 1, 100_000, 1024, errors)
    if width and height and (width, height) not in profile.sizes:
        sizes = ", ".join(f"{w}x{h}" for w, h in sorted(profile.sizes))
        errors.append({"field": "width", "message": f"{width}x{height} is not a size {profile.model_id} makes; "
                                                   f"allowed: {sizes}"})
    quality = body.get("quality", default_quality)
    if quality not in ("standard", "premium"):
        errors.append({"field": "quality", "message": "must be 'standard' or 'premium'"})
    cfg_scale = body.get("cfg_scale", profile.default_cfg_scale)
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) \
            or not profile.min_cfg_scale <= cfg_scale <= profile.max_cfg_scale:
        errors.append({"field": "cfg_scale",
                       "message": f"must be a number from {profile.min_cfg_scale} to {profile.max_cfg_scale}"})
    seed = _integer(body, "seed", 0, profile.max_seed, None, errors)
    if errors:
        raise InvalidRequest(errors)
    return GenerationRequest(prompt=prompt, output_folder=folder, file_name_prefix=prefix, count=count,
                             negative_prompt=negative, width=width, height=height, quality=quality,
                             cfg_scale=float(cfg_scale), seed=seed)
