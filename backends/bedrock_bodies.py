"""InvokeModel request bodies: one per model family and task (wave2-reference.md A 3, B 1-2)."""

from __future__ import annotations

import pybase64

from generation.model_registry import TEXT_TO_IMAGE, ModelProfile
from image_generation import ImageSpec

# Nova Canvas / Titan v2 task types (wave2-reference.md A 3.2).
AMAZON_TASK_TYPES = {TEXT_TO_IMAGE: "TEXT_IMAGE", "condition": "TEXT_IMAGE", "variation": "IMAGE_VARIATION",
                     "inpaint": "INPAINTING", "outpaint": "OUTPAINTING", "remove_background": "BACKGROUND_REMOVAL",
                     "color_guided": "COLOR_GUIDED_GENERATION"}
# Tasks whose output follows the input image: Nova and Titan refuse a width or height for them (A 3.4).
AMAZON_UNSIZED = frozenset({"inpaint", "outpaint"})
# Stability's image-to-image strength when the caller gives none: halfway between the input and the prompt.
DEFAULT_STRENGTH = 0.5


def b64(data: bytes) -> str:
    """Base64 text of an input image."""
    return pybase64.b64encode(data).decode()


def request_body(spec: ImageSpec, profile: ModelProfile) -> dict:
    """The body `profile`'s model takes for `spec`, one image per call."""
    if profile.family == "stability_service":
        return service_body(spec, profile)
    if profile.family == "stability":
        return stability_body(spec)
    return amazon_body(spec)


def _texts(spec: ImageSpec, prompt_key: str, negative_key: str) -> dict:
    """The prompt and negative prompt, when there are any (edits may have none)."""
    texts = {}
    if spec.prompt:
        texts[prompt_key] = spec.prompt
    if spec.negative_prompt:
        texts[negative_key] = spec.negative_prompt
    return texts


def amazon_body(spec: ImageSpec) -> dict:
    """Nova Canvas and Titan v2: a task type, its params object, and the generation config."""
    task = spec.task
    image = spec.input("image")
    if task == "remove_background":
        # The one task without an imageGenerationConfig: Bedrock refuses one (A 3.3).
        return {"taskType": "BACKGROUND_REMOVAL", "backgroundRemovalParams": {"image": b64(image)}}
    config = {"numberOfImages": 1, "quality": spec.quality, "cfgScale": spec.cfg_scale, "seed": spec.seed}
    if task not in AMAZON_UNSIZED:
        config.update(width=spec.width, height=spec.height)
    body = {"taskType": AMAZON_TASK_TYPES[task], "imageGenerationConfig": config}
    if task in (TEXT_TO_IMAGE, "condition"):
        params = _texts(spec, "text", "negativeText")
        if task == "condition":
            params["conditionImage"] = b64(image)
            params["controlMode"] = spec.param("control_mode", "canny_edge").upper()
            if spec.param("control_strength") is not None:
                params["controlStrength"] = spec.param("control_strength")
        body["textToImageParams"] = params
    elif task == "variation":
        params = {"images": [b64(image)], **_texts(spec, "text", "negativeText")}
        if spec.param("similarity") is not None:
            params["similarityStrength"] = spec.param("similarity")
        body["imageVariationParams"] = params
    elif task in ("inpaint", "outpaint"):
        params = {"image": b64(image), **_texts(spec, "text", "negativeText")}
        mask = spec.input("mask")
        if mask is not None:
            params["maskImage"] = b64(mask)
        else:
            params["maskPrompt"] = spec.param("mask_prompt")  # the request was refused without one or the other
        if task == "outpaint":
            params["outPaintingMode"] = spec.param("outpainting_mode", "default").upper()
        body["inPaintingParams" if task == "inpaint" else "outPaintingParams"] = params
    elif task == "color_guided":
        params = {"colors": [c.upper() for c in spec.param("colors")], **_texts(spec, "text", "negativeText")}
        if image is not None:
            params["referenceImage"] = b64(image)
        body["colorGuidedGenerationParams"] = params
    return body


def stability_body(spec: ImageSpec) -> dict:
    """SD3.5 / Core / Ultra: text-to-image by ratio, or SD3.5's image-to-image for a variation (B 1.2-1.4)."""
    body = {"prompt": spec.prompt, "seed": spec.seed, "output_format": "png"}
    if spec.task == "variation":
        body.update(mode="image-to-image", image=b64(spec.input("image")),
                    strength=spec.param("strength", DEFAULT_STRENGTH))
    else:
        body["aspect_ratio"] = spec.aspect_ratio or "1:1"
    if spec.negative_prompt:
        body["negative_prompt"] = spec.negative_prompt
    return body


# Each Image Service's own fields, as the API names them -> as the service names them (B 2.3).
SERVICE_FIELDS = {
    "stable-image-inpaint": {"grow_mask": "grow_mask"},
    "stable-outpaint": {"left": "left", "right": "right", "up": "up", "down": "down", "creativity": "creativity"},
    "stable-image-search-replace": {"search_prompt": "search_prompt", "grow_mask": "grow_mask"},
    "stable-image-search-recolor": {"search_prompt": "select_prompt", "grow_mask": "grow_mask"},
    "stable-image-erase-object": {"grow_mask": "grow_mask"},
    "stable-image-remove-background": {},
    "stable-fast-upscale": {},
    "stable-conservative-upscale": {"creativity": "creativity"},
    "stable-creative-upscale": {"creativity": "creativity"},
    "stable-image-control-sketch": {"control_strength": "control_strength"},
    "stable-image-control-structure": {"control_strength": "control_strength"},
    "stable-image-style-guide": {"fidelity": "fidelity", "aspect_ratio": "aspect_ratio"},
    "stable-style-transfer": {"style_strength": "style_strength", "composition_fidelity": "composition_fidelity",
                              "change_strength": "change_strength"},
}
# Services that take no prompt, and those that take no seed (B 2.3).
NO_PROMPT = frozenset({"stable-image-erase-object", "stable-image-remove-background", "stable-fast-upscale"})
NO_SEED = frozenset({"stable-image-remove-background", "stable-fast-upscale"})


def service_body(spec: ImageSpec, profile: ModelProfile) -> dict:
    """One of Stability's Image Services: the input image(s), its own fields, PNG out (B 2.2-2.3)."""
    name = profile.service
    body: dict = {"output_format": "png"}
    if name == "stable-style-transfer":
        body.update(init_image=b64(spec.input("image")), style_image=b64(spec.input("style")))
    else:
        body["image"] = b64(spec.input("image"))
    if name not in NO_PROMPT:
        body.update(_texts(spec, "prompt", "negative_prompt") if profile.negative_prompt
                    else _texts(spec, "prompt", "_"))
        body.pop("_", None)
    if name not in NO_SEED:
        body["seed"] = spec.seed
    mask = spec.input("mask")
    if mask is not None and name in ("stable-image-inpaint", "stable-image-erase-object"):
        body["mask"] = b64(mask)
    for ours, theirs in SERVICE_FIELDS[name].items():
        value = spec.param(ours)
        if value is not None:
            body[theirs] = value
    return body
