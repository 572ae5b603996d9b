"""An /edit_images body turned into a checked request: the model for the task, the input images read,
checked, cleaned and screened, all before any paid call."""

from __future__ import annotations

import binascii
import hashlib

import pybase64

from generation.errors import InputFlagged, InvalidRequest, ServiceError, SourceNotFound
from generation.input_images import check_image, check_mask, has_transparency, image_size, strictest
from generation.model_chain import ModelChain
from generation.model_registry import EDIT_TASKS, ModelProfile
from image_generation import SIZED_TASKS, GenerationRequest
from web.edit_schema import KIND_FIELDS, parse_edit, task_fields
from web.model_catalog import named_profile, task_profiles
from web.request_schema import SEGMENT, check_place

# When a request names no model, today's active models come first: Stability's services and SD3.5,
# then the offline placeholder, then the Amazon models kept for accounts that still have them.
FAMILY_ORDER = {"stability_service": 0, "stability": 1, "placeholder": 2, "amazon": 3}
# Fields the request carries itself; the rest of a task's fields travel to the model as its params.
NOT_PARAMS = {"prompt", "negative_prompt", "task", "model", "output_folder", "file_name_prefix", "count", "seed",
              "source_key", "image", "resize", "mask_image", "style_source_key", "style_image", "width", "height",
              "quality", "cfg_scale"}
AMAZON_CONTROL = ("canny_edge", "segmentation")


def plan_edit(body: dict, chain: ModelChain, store, screener, *, default_quality: str,
              private_prefix: str) -> GenerationRequest:
    """Check an edit body and its inputs; the request for the pipeline, or a 4xx naming the problem."""
    task = body.get("task")
    if task not in EDIT_TASKS:
        raise InvalidRequest([{"field": "task", "message": f"must be one of {', '.join(EDIT_TASKS)}"}])
    named = "model" in body
    primary, candidates, wanted, default_kind = _models_for(body, task, chain)
    # The kind of the task this request asks (upscale, style, condition): the service's own, or the asked one.
    kind = primary.kind or wanted or default_kind
    checked = parse_edit(body, primary, task, named=named)
    check_place(checked.output_folder, checked.file_name_prefix, store.key_prefix, private_prefix)
    _need_a_mask(primary, task, checked)
    images = _Inputs(store, private_prefix, checked.resize)
    # Every model the request may fall back to must take the inputs: check them against the strictest.
    rule = strictest([p.input_rule for p in candidates])
    image = None
    alpha_mask = primary.family == "stability_service" and task in ("inpaint", "erase")
    if checked.source_key is not None or checked.image is not None:
        field = "source_key" if checked.source_key is not None else "image"
        raw = images.read(checked.source_key, checked.image, field)
        image = check_image(raw, rule, field=field, model_id=primary.model_id, resize=checked.resize,
                            keep_alpha=alpha_mask)
        if alpha_mask and getattr(checked, "mask_image", None) is None and not has_transparency(image):
            raise InvalidRequest([{"field": "mask_image", "message": f"{primary.model_id} needs a mask: send "
                                   "mask_image, or an image whose transparent pixels mark what to change"}])
        _screen(screener, image, field)
    inputs = [("image", image)] if image is not None else []
    if getattr(checked, "mask_image", None) is not None:
        # White marks what may change; Nova and Titan want black there for inpainting.
        change_is_white = primary.family != "amazon" or task == "outpaint"
        inputs.append(("mask", check_mask(images.decode(checked.mask_image, "mask_image"), image_size(image),
                                          field="mask_image", change_is_white=change_is_white,
                                          resize=checked.resize)))
    style_key, style_b64 = getattr(checked, "style_source_key", None), getattr(checked, "style_image", None)
    if style_key is not None or style_b64 is not None:
        field = "style_source_key" if style_key is not None else "style_image"
        style = check_image(images.read(style_key, style_b64, field), primary.input_rule, field=field,
                            model_id=primary.model_id, resize=checked.resize)
        _screen(screener, style, field)
        inputs.append(("style", style))
    elif task == "style" and kind == "transfer":
        raise InvalidRequest([{"field": "style_source_key", "message": "style transfer needs the style image: "
                                                                       "style_source_key or style_image"}])
    width, height = _size(checked, primary, task, image)
    params = {name: getattr(checked, name) for name in task_fields(primary, task)
              if name not in NOT_PARAMS and getattr(checked, name) is not None}
    if kind:
        params["kind"] = kind
    source = checked.source_key if checked.source_key is not None else \
        f"upload:sha256:{hashlib.sha256(image).hexdigest()[:16]}" if image is not None else None
    return GenerationRequest(
        prompt=getattr(checked, "prompt", None) or "", output_folder=checked.output_folder,
        file_name_prefix=checked.file_name_prefix, count=checked.count,
        negative_prompt=getattr(checked, "negative_prompt", None), width=width, height=height,
        quality=getattr(checked, "quality", None) or default_quality, cfg_scale=getattr(checked, "cfg_scale", None),
        seed=checked.seed, model_id=primary.model_id if named else None,
        seed_range=(primary.min_seed, primary.max_seed), task=task, params=tuple(sorted(params.items())),
        inputs=tuple(inputs), source=source, candidates=tuple(p.model_id for p in candidates))


def _need_a_mask(profile: ModelProfile, task: str, checked) -> None:
    """Nova and Titan in/outpaint need to be told where: a mask image or a mask prompt (no guessing, it is paid)."""
    if profile.family == "amazon" and task in ("inpaint", "outpaint") \
            and getattr(checked, "mask_image", None) is None and getattr(checked, "mask_prompt", None) is None:
        raise InvalidRequest([{"field": "mask_prompt", "message": f"{task} on {profile.model_id} needs mask_prompt "
                                                                  "(what to change, in words) or mask_image"}])


def _models_for(body: dict, task: str, chain: ModelChain):
    """The model the body is checked against, the models to try in order (the same family only), and the
    kind the body asked with the task's default kind."""
    kind_field, default_kind = KIND_FIELDS.get(task, ("", ""))
    wanted = body.get(kind_field) if kind_field else None
    if "model" in body:
        profile = named_profile(body["model"], chain, task)
        if profile.kind and wanted is not None and wanted != profile.kind:
            raise InvalidRequest([{"field": kind_field, "message": f"{profile.model_id} does the {profile.kind} "
                                                                   f"kind of {task}, not {wanted!r}"}])
        return profile, [profile], wanted, default_kind

    def fits(profile: ModelProfile) -> bool:
        if profile.kind:
            return profile.kind == (wanted or default_kind or profile.kind)
        if profile.family == "amazon" and task == "condition" and wanted is not None:
            return wanted in AMAZON_CONTROL
        return profile.family != "amazon" or task != "condition" or wanted in (None, *AMAZON_CONTROL)

    able = [p for p in task_profiles(chain, task) if fits(p)]
    if task == "condition" and wanted is None and any(p.family == "stability_service" for p in able):
        able = [p for p in able if p.family != "stability_service" or p.kind == "sketch"]
    if not able:
        offered = [p.model_id for p in task_profiles(chain, task)]
        raise InvalidRequest([{"field": "task", "message": f"no offered model does {task}"
                                                           + (f" as asked; models that do it: {', '.join(offered)}"
                                                              if offered else " (see GET /models)")}])
    able.sort(key=lambda p: FAMILY_ORDER.get(p.family, 9))
    usable = [p for p in able if chain.unusable(p.model_id) is None] or able
    primary = usable[0]
    return primary, [p for p in usable if p.family == primary.family], wanted, default_kind


def _size(checked, profile: ModelProfile, task: str, image: bytes | None) -> tuple[int, int]:
    """The output size asked (Amazon's sized tasks), else the input's (the model follows it)."""
    if task in SIZED_TASKS and profile.sizes:
        if "width" in checked.model_fields_set:
            return checked.width, checked.height
        return profile.fits_size(*image_size(image)) if image is not None else (1024, 1024)
    return image_size(image) if image is not None else (1024, 1024)


def _screen(screener, png: bytes, field: str) -> None:
    """An input the screener flags is refused before any paid call; a screener that fails fails closed."""
    verdict = screener.screen(png)
    if verdict.verdict == "flagged":
        labels = ", ".join(label.name for label in verdict.labels) or "a moderation label"
        raise InputFlagged(f"{field}: the input image was flagged by screening ({labels}); it was not sent to "
                           f"a model", errors=[{"field": field, "message": "was flagged by screening"}])


class _Inputs:
    """Reads an input image from the store (a key) or the body (base64), never anything private."""

    def __init__(self, store, private_prefix: str, resize: bool):
        self.store = store
        self.private_prefix = private_prefix
        self.resize = resize

    def read(self, key: str | None, encoded: str | None, field: str) -> bytes:
        """The raw bytes of the input named by `key` or carried in `encoded`."""
        return self.fetch(key, field) if key is not None else self.decode(encoded, field)

    @staticmethod
    def decode(encoded: str, field: str) -> bytes:
        """Base64 from the body (a `data:` URL prefix is allowed)."""
        if encoded.startswith("data:") and "," in encoded:
            encoded = encoded.split(",", 1)[1]
        try:
            return pybase64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest([{"field": field, "message": "is not valid base64"}]) from None

    def fetch(self, key: str, field: str) -> bytes:
        """A published image of the store; anything else (missing, hidden, quarantined, a record) is a 404."""
        segments = key.split("/")
        visible = all(SEGMENT.fullmatch(s) and not s.startswith(".") for s in segments)
        data = None
        if visible and key.endswith(".png") and not key.startswith(self.private_prefix):
            try:
                data = self.store.get(key)
            except ServiceError:
                data = None
        if data is None:
            raise SourceNotFound(f"{field}: no image {key!r} in the store", errors=[
                {"field": field, "message": "names no image of this service's store"}])
        return data

