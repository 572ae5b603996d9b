"""The request schema of POST /generate_images, declared once with pydantic for each model's profile.

Validation and the OpenAPI document are both made from these classes, so they cannot disagree; pydantic's
errors are turned into messages that name the field and say what to change.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from generation.errors import InvalidRequest
from generation.model_registry import ModelProfile
from image_generation import GenerationRequest

MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length
DEFAULT_COUNT = 4
# The longest suffix a key can get: "-" + epoch seconds with microseconds + ".png".
KEY_SUFFIX_BYTES = len("-9999999999.999999.png")
# Folder and prefix lengths that always leave room for the suffix within S3's 1024 bytes.
MAX_FOLDER, MAX_PREFIX = 780, 200
# A side asked of a model that works in ratios only picks the ratio; this bounds it to something sane.
MAX_SIDE = 100_000
# Letters, digits, '-', '_', '.' only: safe in S3 keys, file names and URLs alike.
SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# A segment never begins with '.': dot names ('.', '..', '.requests', '.idempotency') are the service's
# own. At most 255 bytes, a file system's limit on one name.
MAX_SEGMENT = 255
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}"  # 1 + 254 = MAX_SEGMENT
FOLDER_PATTERN = f"^{_SEGMENT}(/{_SEGMENT})*$"
PREFIX_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$"
# Some non-space character, and no control character but tab, newline and carriage return.
TEXT_PATTERN = r"^(?=[\s\S]*\S)[^\u0000-\u0008\u000b\u000c\u000e-\u001f]*$"
# Every field some model takes: one another model lacks is named as such, not as unknown.
KNOWN_FIELDS = frozenset({"model", "prompt", "output_folder", "file_name_prefix", "count", "seed",
                          "negative_prompt", "width", "height", "aspect_ratio", "quality", "cfg_scale"})
# Free-text fields, checked and explained alike.
TEXT_FIELDS = frozenset({"prompt", "negative_prompt", "mask_prompt", "search_prompt"})
EXAMPLE = {"prompt": "red porsche", "output_folder": "000/111", "file_name_prefix": "porsche_image"}


def _integral(value: Any) -> Any:
    # JSON has one number type: 4.0 is the integer 4 to a JSON Schema validator, so accept it too.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _valid_unicode(value: str) -> str:
    if any("\ud800" <= c <= "\udfff" for c in value):
        # A lone surrogate (JSON allows "\ud800") cannot be encoded as UTF-8 for the model.
        raise PydanticCustomError("unicode", "must be valid Unicode text")
    return value


def _text(profile: ModelProfile):
    return Annotated[str, StringConstraints(min_length=1, max_length=profile.max_text, pattern=TEXT_PATTERN),
                     AfterValidator(_valid_unicode)]


def _integer(low: int, high: int):
    # The bounds first, so they land in the int schema itself (and in the JSON Schema as minimum/maximum).
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_integral)]


class _Body(BaseModel):
    """Settings shared by every model's body: strict types, unknown fields refused, Python regexes."""

    model_config = ConfigDict(strict=True, extra="forbid", regex_engine="python-re")


def place_fields(profile: ModelProfile) -> dict[str, Any]:
    """The fields every request has: where the images go, how many, and their seed."""
    return {
        "output_folder": (Annotated[str, StringConstraints(min_length=1, max_length=MAX_FOLDER,
                                                           pattern=FOLDER_PATTERN)], ...),
        "file_name_prefix": (Annotated[str, StringConstraints(min_length=1, max_length=MAX_PREFIX,
                                                              pattern=PREFIX_PATTERN)], ...),
        "count": (_integer(1, profile.max_images), DEFAULT_COUNT),
        "seed": (_integer(profile.min_seed, profile.max_seed), None),
    }


@functools.cache
def body_model(profile: ModelProfile, default: bool) -> type[BaseModel]:
    """The request body one model takes; `default` when the model is used without being named."""
    fields: dict[str, Any] = {
        "model": (Literal[profile.model_id], None if default else ...),
        "prompt": (_text(profile), ...),
        **place_fields(profile),
    }
    if profile.negative_prompt:
        fields["negative_prompt"] = (_text(profile), None)
    if profile.sizes:
        fields["width"] = (Annotated[int, Field(ge=1, le=MAX_SIDE, json_schema_extra={
            "enum": sorted({w for w, _ in profile.sizes})}), BeforeValidator(_integral)], None)
        fields["height"] = (Annotated[int, Field(ge=1, le=MAX_SIDE, json_schema_extra={
            "enum": sorted({h for _, h in profile.sizes})}), BeforeValidator(_integral)], None)
    else:
        fields["width"] = (_integer(1, MAX_SIDE), None)
        fields["height"] = (_integer(1, MAX_SIDE), None)
    if profile.aspect_ratios:
        fields["aspect_ratio"] = (Literal[profile.aspect_ratios], None)
    if profile.quality:
        fields["quality"] = (Literal["standard", "premium"], None)
    if profile.cfg_scale:
        fields["cfg_scale"] = (Annotated[float, Field(ge=profile.cfg_scale.low, le=profile.cfg_scale.high)], None)
    name = "Body_" + re.sub(r"\W", "_", profile.model_id)
    return create_model(name, __base__=_Body, __validators__={"size": model_validator(mode="after")(
        functools.partial(_check_size, profile=profile))}, **fields)


def _check_size(body, profile: ModelProfile):
    given = body.model_fields_set
    if ("width" in given) != ("height" in given):
        # A size is a pair: half of one would silently combine with the other half of the default.
        raise PydanticCustomError("size_pair", "width and height must be given together")
    if "aspect_ratio" in given and "width" in given:
        raise PydanticCustomError("size_twice", "give either aspect_ratio or width and height, not both")
    if profile.sizes and "width" in given and (body.width, body.height) not in profile.sizes:
        sizes = ", ".join(f"{w}x{h}" for w, h in sorted(profile.sizes))
        raise PydanticCustomError("size", "{size} is not a size {model} makes; allowed: {sizes}",
                                  {"size": f"{body.width}x{body.height}", "model": profile.model_id,
                                   "sizes": sizes})
    return body


def json_schema(profile: ModelProfile, default: bool) -> dict:
    """The JSON Schema of one model's body, for the OpenAPI document (the same class validation uses)."""
    schema = body_model(profile, default).model_json_schema()
    schema.pop("title", None)
    for name, prop in schema["properties"].items():
        prop.pop("title", None)
        if prop.get("default", 0) is None:
            prop.pop("default")  # absent, not null: null is refused
        if name in ("width", "height") and "enum" in prop:
            prop.pop("maximum", None), prop.pop("minimum", None)
    if profile.sizes:
        # width and height come together, as one of the model's pairs, or not at all.
        neither = {"not": {"anyOf": [{"required": ["width"]}, {"required": ["height"]}]}}
        pairs = [{"required": ["width", "height"], "properties": {"width": {"const": w}, "height": {"const": h}}}
                 for w, h in sorted(profile.sizes)]
        schema["anyOf"] = [neither, *pairs]
    else:
        schema["dependentRequired"] = {"width": ["height"], "height": ["width"]}
        if profile.aspect_ratios:
            schema["not"] = {"required": ["aspect_ratio", "width"]}
    schema["example"] = {**EXAMPLE, **({} if default else {"model": profile.model_id})}
    return schema


def parse_generation_request(body, profile: ModelProfile, *, default_quality: str, root_prefix: str = "",
                             named: bool = False, reserved_prefix: str = "") -> GenerationRequest:
    """Check `body` against the API and the model's limits; raise InvalidRequest naming each bad field.

    `named`: the caller chose this model in the body's `model` field (else it is the default).
    """
    if not isinstance(body, dict):
        raise InvalidRequest([{"field": "body", "message": "must be a JSON object"}])
    model = body_model(profile, not named)
    try:
        checked = model.model_validate(body)
    except ValidationError as error:
        raise InvalidRequest(messages(error, body, profile, model)) from None
    check_place(checked.output_folder, checked.file_name_prefix, root_prefix, reserved_prefix)
    width, height = (checked.width, checked.height) if checked.width else profile.default_size or (1024, 1024)
    return GenerationRequest(
        prompt=checked.prompt, output_folder=checked.output_folder, file_name_prefix=checked.file_name_prefix,
        count=checked.count, negative_prompt=getattr(checked, "negative_prompt", None), width=width, height=height,
        quality=getattr(checked, "quality", None) or default_quality, cfg_scale=getattr(checked, "cfg_scale", None),
        seed=checked.seed, model_id=profile.model_id if named else None,
        aspect_ratio=getattr(checked, "aspect_ratio", None), seed_range=(profile.min_seed, profile.max_seed))


def check_place(folder: str, prefix: str, root_prefix: str, reserved_prefix: str) -> None:
    """InvalidRequest when the folder is the quarantine's, or folder and prefix make keys over S3's limit."""
    errors = []
    if reserved_prefix and f"{folder}/".startswith(reserved_prefix):
        errors.append({"field": "output_folder", "message": f"'{reserved_prefix.rstrip('/')}' is reserved for "
                                                            f"quarantined originals (AIG_QUARANTINE_PREFIX)"})
    key_bytes = len(f"{root_prefix}{folder}/{prefix}".encode()) + KEY_SUFFIX_BYTES
    if key_bytes > MAX_KEY_BYTES:
        errors.append({"field": "output_folder", "message": f"folder and prefix make keys of {key_bytes} bytes; "
                                                            f"the limit is {MAX_KEY_BYTES}"})
    if errors:
        raise InvalidRequest(errors)


def messages(error: ValidationError, body: dict, profile: ModelProfile, model: type[BaseModel]) -> list[dict]:
    """Each pydantic error as {field, message}, one per field, in the words of the service's API."""
    found: dict[str, str] = {}
    for item in error.errors(include_url=False):
        field = str(item["loc"][0]) if item["loc"] else _whole_body_field(item, body)
        if field not in found:
            found[field] = _message(item, field, body, profile, model)
    return [{"field": field, "message": message} for field, message in found.items()]


def _message(item: dict, field: str, body: dict, profile: ModelProfile, model: type[BaseModel]) -> str:
    kind, value = item["type"], item.get("input")
    if not item["loc"]:
        return item["msg"]  # the size rules, already in the service's words
    if kind == "extra_forbidden":
        allowed = ", ".join(sorted(model.model_fields))
        if field in KNOWN_FIELDS:
            return f"{profile.model_id} does not take this field (it takes: {allowed})"
        return f"unknown field (allowed: {allowed})"
    if field in TEXT_FIELDS:
        if kind == "string_too_long":
            return f"must be at most {profile.max_text} characters for {profile.model_id}, not {len(value)}"
        if kind in ("unicode", "string_unicode"):
            return "must be valid Unicode text"
        if kind == "string_pattern_mismatch" and value.strip():
            return "must not contain control characters"
        return "must be a non-empty string"
    if field == "output_folder":
        return _folder_message(kind, value)
    if field == "file_name_prefix":
        if kind in ("missing", "string_type", "string_too_short"):
            return "must be a non-empty string"
        if kind == "string_too_long":
            return f"must be at most {MAX_PREFIX} characters"
        if value.startswith("."):
            return "must not begin with '.' (such names are hidden and never served)"
        return "may hold only letters, digits, '-', '_' and '.', with no '/'"
    if field == "model":
        return f"must be {profile.model_id!r} here"  # checked against the offered models before
    low, high = _bounds(model, field)
    if low is not None or high is not None:
        kind_word = "an integer" if model.model_fields[field].annotation is int else "a number"
        return f"must be {kind_word} from {low} to {high}"
    if kind == "literal_error":
        return f"must be one of {item['ctx']['expected']}"
    return item["msg"][0].lower() + item["msg"][1:]  # pydantic's words for the rest (types, list lengths)


def _whole_body_field(item: dict, body: dict) -> str:
    """The field a whole-body error names: its own, or the one the caller should add or change."""
    return (item.get("ctx") or {}).get("field") or _size_field(item["type"], body)


def _size_field(kind: str, body: dict) -> str:
    """The field a whole-body size error names: the one the caller should add or change."""
    if kind == "size_pair":
        return "height" if "width" in body else "width"
    return "aspect_ratio" if kind == "size_twice" else "width"


def _folder_message(kind: str, value) -> str:
    if kind in ("missing", "string_type", "string_too_short"):
        return "must be a non-empty string"
    if value.startswith("/"):
        return "must not start with '/'"
    if kind == "string_too_long":
        return f"must be at most {MAX_FOLDER} characters"
    segments = value.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "must not contain empty, '.' or '..' segments"
    if any(segment.startswith(".") for segment in segments):
        return "segments must not begin with '.' (such names are the service's own)"
    if any(len(segment) > MAX_SEGMENT for segment in segments):
        return f"each segment may be at most {MAX_SEGMENT} characters"
    return "segments may hold only letters, digits, '-', '_' and '.', joined by '/'"


def _bounds(model: type[BaseModel], field: str) -> tuple[int, int]:
    """A numeric field's inclusive bounds, read from its declaration."""
    low = high = None
    for rule in model.model_fields[field].metadata:
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    return low, high
