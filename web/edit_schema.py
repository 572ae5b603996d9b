"""The request schema of POST /edit_images: one pydantic class per model family, task and kind, declared once.

Which fields a task takes on a model comes from one table (TASK_FIELDS); validation and the OpenAPI
document are both made from the classes built from it.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

from generation.errors import InvalidRequest
from generation.model_registry import EDIT_TASKS, ModelProfile
from web.request_schema import (
    _Body,
    _integer,
    _text,
    messages,
    place_fields,
)

COLOR = r"^#[0-9A-Fa-f]{6}$"
# A key of the store, checked for shape here and for what it names when it is read.
KEY = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
BASE64 = Annotated[str, StringConstraints(min_length=1)]


def _number(low: float, high: float):
    return Annotated[float, Field(ge=low, le=high)]


def _field_types(profile: ModelProfile, task: str) -> dict[str, Any]:
    """Every edit field's type and limits, for this model."""
    creativity = (0.1, 1.0) if task == "outpaint" else (0.1, 0.5)
    control = ("canny_edge", "segmentation") if profile.family == "amazon" else ("sketch", "structure")
    types = {
        "prompt": _text(profile), "negative_prompt": _text(profile), "mask_prompt": _text(profile),
        "search_prompt": _text(profile),
        "similarity": _number(0.2, 1.0), "strength": _number(0.0, 1.0), "control_strength": _number(0.0, 1.0),
        "fidelity": _number(0.0, 1.0), "style_strength": _number(0.0, 1.0),
        "composition_fidelity": _number(0.0, 1.0), "change_strength": _number(0.1, 1.0),
        "creativity": _number(*creativity), "grow_mask": _integer(0, 20),
        "left": _integer(0, 2000), "right": _integer(0, 2000), "up": _integer(0, 2000), "down": _integer(0, 2000),
        "outpainting_mode": Literal["default", "precise"],
        "colors": Annotated[list[Annotated[str, StringConstraints(pattern=COLOR)]], Field(min_length=1, max_length=10)],
        "control_mode": Literal[control],
        "upscale": Literal["fast", "conservative", "creative"], "style": Literal["guide", "transfer"],
        "quality": Literal["standard", "premium"],
        "mask_image": BASE64, "style_source_key": KEY, "style_image": BASE64,
    }
    if profile.aspect_ratios or profile.family in ("stability_service", "placeholder"):
        types["aspect_ratio"] = Literal[profile.aspect_ratios or ("1:1", "16:9", "21:9", "2:3", "3:2", "4:5",
                                                                 "5:4", "9:16", "9:21")]
    if profile.cfg_scale:
        types["cfg_scale"] = _number(profile.cfg_scale.low, profile.cfg_scale.high)
    if profile.sizes:
        types["width"] = Annotated[int, Field(json_schema_extra={"enum": sorted({w for w, _ in profile.sizes})})]
        types["height"] = Annotated[int, Field(json_schema_extra={"enum": sorted({h for _, h in profile.sizes})})]
    return types


# (family, task, kind) -> {field: required}. The image itself (source_key or image) is common to all.
_AMAZON_LOOK = {"negative_prompt": False, "quality": False, "cfg_scale": False}
_SIZE = {"width": False, "height": False}
TASK_FIELDS: dict[tuple[str, str, str], dict[str, bool]] = {
    # Nova's schema marks the variation's text required (its overview says optional): required here.
    ("amazon", "variation", ""): {"prompt": True, "similarity": False, **_AMAZON_LOOK, **_SIZE},
    ("amazon", "inpaint", ""): {"prompt": False, "mask_prompt": False, "mask_image": False, **_AMAZON_LOOK},
    ("amazon", "outpaint", ""): {"prompt": False, "mask_prompt": False, "mask_image": False,
                                 "outpainting_mode": False, **_AMAZON_LOOK},
    ("amazon", "remove_background", ""): {},
    ("amazon", "color_guided", ""): {"prompt": True, "colors": True, **_AMAZON_LOOK, **_SIZE},
    ("amazon", "condition", ""): {"prompt": True, "control_mode": False, "control_strength": False,
                                  **_AMAZON_LOOK, **_SIZE},
    ("stability", "variation", ""): {"prompt": True, "negative_prompt": False, "strength": False},
    ("stability_service", "inpaint", ""): {"prompt": True, "negative_prompt": False, "mask_image": False,
                                           "grow_mask": False},
    ("stability_service", "outpaint", ""): {"prompt": False, "left": False, "right": False, "up": False,
                                            "down": False, "creativity": False},
    ("stability_service", "search_replace", ""): {"prompt": True, "negative_prompt": False, "search_prompt": True,
                                                  "grow_mask": False},
    ("stability_service", "recolor", ""): {"prompt": True, "negative_prompt": False, "search_prompt": True,
                                           "grow_mask": False},
    ("stability_service", "erase", ""): {"mask_image": False, "grow_mask": False},
    ("stability_service", "remove_background", ""): {},
    ("stability_service", "upscale", "fast"): {"upscale": False},
    ("stability_service", "upscale", "conservative"): {"upscale": False, "prompt": True, "negative_prompt": False,
                                                       "creativity": False},
    ("stability_service", "upscale", "creative"): {"upscale": False, "prompt": True, "negative_prompt": False,
                                                   "creativity": False},
    ("stability_service", "condition", "sketch"): {"prompt": True, "negative_prompt": False, "control_mode": False,
                                                   "control_strength": False},
    ("stability_service", "condition", "structure"): {"prompt": True, "negative_prompt": False,
                                                      "control_mode": False, "control_strength": False},
    ("stability_service", "style", "guide"): {"style": False, "prompt": True, "negative_prompt": False,
                                              "fidelity": False, "aspect_ratio": False},
    ("stability_service", "style", "transfer"): {"style": False, "prompt": False, "negative_prompt": False,
                                                 "style_source_key": False, "style_image": False,
                                                 "style_strength": False, "composition_fidelity": False,
                                                 "change_strength": False},
}
# The field that picks a kind, and the kind picked when a request names none.
KIND_FIELDS = {"upscale": ("upscale", "fast"), "condition": ("control_mode", ""), "style": ("style", "guide")}
# Tasks whose input image may be left out (Nova's colour guidance takes a reference image or none).
IMAGE_OPTIONAL = frozenset({"color_guided"})


def task_fields(profile: ModelProfile, task: str) -> dict[str, bool]:
    """The fields `task` takes on this model (the placeholder takes every family's, none required)."""
    if profile.family == "placeholder":
        union: dict[str, bool] = {}
        for (_, each, _), fields in TASK_FIELDS.items():
            if each == task:
                union.update(dict.fromkeys(fields, False))
        return union
    return TASK_FIELDS[(profile.family, task, profile.kind)]


@functools.cache
def edit_model(profile: ModelProfile, task: str, named: bool) -> type[BaseModel]:
    """The body one model takes for one task; `named` when the request names the model."""
    types = _field_types(profile, task)
    fields: dict[str, Any] = {
        "task": (Literal[task], ...),
        "model": (Literal[profile.model_id], ... if named else None),
        **place_fields(profile),
        "source_key": (KEY, None),
        "image": (BASE64, None),
        # Inputs outside the model's sides or pixel count are refused unless the caller lets them be resized.
        "resize": (bool, False),
    }
    for name, required in task_fields(profile, task).items():
        fields[name] = (types[name], ... if required else None)
    name = re.sub(r"\W", "_", f"Edit_{task}_{profile.model_id}")
    return create_model(name, __base__=_Body, __validators__={"inputs": model_validator(mode="after")(
        functools.partial(_check_inputs, task=task))}, **fields)


def _check_inputs(body, task: str):
    given = body.model_fields_set
    if "source_key" in given and "image" in given:
        raise PydanticCustomError("one_image", "give either source_key or image, not both", {"field": "image"})
    if not given & {"source_key", "image"} and task not in IMAGE_OPTIONAL:
        raise PydanticCustomError("no_image", "give the image to edit: source_key (an image already in the "
                                  "store) or image (base64)", {"field": "source_key"})
    if "style_source_key" in given and "style_image" in given:
        raise PydanticCustomError("one_image", "give either style_source_key or style_image, not both",
                                  {"field": "style_image"})
    if "mask_prompt" in given and "mask_image" in given:
        raise PydanticCustomError("one_mask", "give either mask_prompt or mask_image, not both",
                                  {"field": "mask_image"})
    if ("width" in given) != ("height" in given):
        raise PydanticCustomError("size_pair", "width and height must be given together",
                                  {"field": "height" if "width" in given else "width"})
    if task == "outpaint" and "left" in type(body).model_fields \
            and not any(getattr(body, side) for side in ("left", "right", "up", "down")):
        raise PydanticCustomError("margins", "give at least one of left, right, up, down above 0",
                                  {"field": "left"})
    return body


def parse_edit(body: dict, profile: ModelProfile, task: str, *, named: bool):
    """The checked body (a pydantic object) for this model and task; InvalidRequest naming each bad field."""
    model = edit_model(profile, task, named)
    try:
        checked = model.model_validate(body)
    except ValidationError as error:
        raise InvalidRequest(messages(error, body, profile, model)) from None
    if profile.sizes and checked.model_fields_set >= {"width", "height"} \
            and (checked.width, checked.height) not in profile.sizes:
        sizes = ", ".join(f"{w}x{h}" for w, h in sorted(profile.sizes))
        raise InvalidRequest([{"field": "width", "message": f"{checked.width}x{checked.height} is not a size "
                                                            f"{profile.model_id} makes; allowed: {sizes}"}])
    return checked


def edit_json_schema(profile: ModelProfile, task: str, named: bool) -> dict:
    """One (model, task) body as JSON Schema, for the OpenAPI document."""
    schema = edit_model(profile, task, named).model_json_schema()
    schema.pop("title", None)
    for prop in schema["properties"].values():
        prop.pop("title", None)
        if prop.get("default", 0) is None:
            prop.pop("default")
    schema["not"] = {"required": ["source_key", "image"]}
    return schema


__all__ = ["EDIT_TASKS", "KIND_FIELDS", "TASK_FIELDS", "edit_json_schema", "edit_model", "parse_edit",
           "task_fields"]
