"""HTTP stand-in for Bedrock Runtime InvokeModel, Bedrock GetFoundationModel and Rekognition.

Wire formats, limits, status codes and messages follow /work/shared/aws-reference.md
(sections 1, 2, 4 and the checklist in section 7) and /work/shared/wave2-reference.md Part A 3
(Nova Canvas task types and input images) and Part B (Stability bodies, Image Services, regions,
GetFoundationModel, lifecycle errors). Run it as
``python -m standins.aws_standin --port 0`` (prints ``READY <url>``) or in-process via
``StandinServer``. One port serves every client: ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``,
``AWS_ENDPOINT_URL_BEDROCK`` and ``AWS_ENDPOINT_URL_REKOGNITION`` may all point at it.

Routes: ``POST /model/{modelId}/invoke`` (Titan v2 and Nova Canvas with every task type but
VIRTUAL_TRY_ON, Stability SD3.5 Large / Stable Image Core / Stable Image Ultra, and the 13
Stability Image Services through their ``us.stability.*`` profiles, Part B 2),
``GET /foundation-models/{modelIdentifier}`` (GetFoundationModel), ``POST /`` with
``X-Amz-Target`` (DetectModerationLabels). The region is read from the SigV4 credential scope; a
model invoked outside its regions is refused (bearer calls skip the check). Input images are
decoded in full (Pillow) and checked against each model's limits before any image is counted.

Prompt markers: ``[[blocked]]`` (Titan/Nova: 400 content filter; Stability: 200 with
``finish_reasons ["Filter reason: prompt"]``), ``[[blocked-output]]`` (Titan/Nova: 200 with
"error"; Stability: 200 with ``["Filter reason: output image"]``), ``[[inference-error]]``
(Stability: 200 with ``["Inference error"]``), ``[[flag:<label>]]`` (Rekognition reports it).

Control API: ``GET /_standin/stats``, ``GET|POST /_standin/config``, ``POST /_standin/reset``.
Knobs (start-up keyword/flag or config JSON): latency, latency_jitter, throttle_rate, error_rate,
error_code, fail_next, disabled_models, disabled_error, no_access_models (InvokeModel 403),
retired_models (InvokeModel and GetFoundationModel 404 end of life), legacy_models
(``{"<model id>": {"legacyTime": "2026-03-30", "endOfLifeTime": "2026-09-30",
"publicExtendedAccessTime": "..."}}``: GetFoundationModel says LEGACY), control_plane_error
("" or AccessDeniedException / ThrottlingException / InternalServerException for every
GetFoundationModel), png_kind, rekognition_latency, rekognition_down, rekognition_throttle_rate,
rekognition_fail_next, flag_all, flag_confidence, seed. For an Image Service the model-id knobs
and legacy_models accept its base id or its ``us.`` profile id alike.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import hashlib
import io
import json
import random
import re
import signal
import socketserver
import struct
import sys
import threading
import time
import traceback
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

# --------------------------------------------------------------------------------------
# Bedrock facts (reference sections 1 and 2)
# --------------------------------------------------------------------------------------

TITAN_V2 = "amazon.titan-image-generator-v2:0"
NOVA_CANVAS = "amazon.nova-canvas-v1:0"

TASK_TYPES = (
    "TEXT_IMAGE",
    "INPAINTING",
    "OUTPAINTING",
    "IMAGE_VARIATION",
    "COLOR_GUIDED_GENERATION",
    "BACKGROUND_REMOVAL",
)
# Each task names its own params object (section 1.1; wave2 Part A 3.2).
TASK_PARAMS = {
    "TEXT_IMAGE": "textToImageParams",
    "INPAINTING": "inPaintingParams",
    "OUTPAINTING": "outPaintingParams",
    "IMAGE_VARIATION": "imageVariationParams",
    "COLOR_GUIDED_GENERATION": "colorGuidedGenerationParams",
    "BACKGROUND_REMOVAL": "backgroundRemovalParams",
}
BACKGROUND_REMOVAL = "BACKGROUND_REMOVAL"
# Output follows the input for these, so imageGenerationConfig takes no width/height (Part A 3.4).
INPUT_SIZED_TASKS = frozenset({"INPAINTING", "OUTPAINTING", BACKGROUND_REMOVAL})
CONFIG_KEYS = frozenset({"quality", "numberOfImages", "height", "width", "cfgScale", "seed"})
TEXT_KEYS = frozenset({"text", "negativeText", "conditionImage", "controlMode", "controlStrength"})
# `returnMask` (Titan, section 1.4) is refused: the stand-in does not model the mask it returns,
# and Nova documents it only for VIRTUAL_TRY_ON (Part A 3.3), so no caller may rely on it.
INPAINT_KEYS = frozenset({"image", "maskPrompt", "maskImage", "text", "negativeText"})
OUTPAINT_KEYS = INPAINT_KEYS | {"outPaintingMode"}
VARIATION_KEYS = frozenset({"images", "similarityStrength", "text", "negativeText"})
COLOR_KEYS = frozenset({"colors", "referenceImage", "text", "negativeText"})
BACKGROUND_KEYS = frozenset({"image"})
QUALITIES = ("standard", "premium")
CONTROL_MODES = ("CANNY_EDGE", "SEGMENTATION")
OUTPAINTING_MODES = ("DEFAULT", "PRECISE")
COLOR_PATTERN = "^#[0-9A-Fa-f]{6}$"
COLOR_RE = re.compile(COLOR_PATTERN)
MASK_COLORS = frozenset({(0, 0, 0), (255, 255, 255)})  # pure black and white only (Part A 3.5)

PERMITTED_SIZES = frozenset({
    (1024, 1024), (768, 768), (512, 512),
    (768, 1152), (384, 576), (1152, 768), (576, 384),
    (768, 1280), (384, 640), (1280, 768), (640, 384),
    (896, 1152), (448, 576), (1152, 896), (576, 448),
    (768, 1408), (384, 704), (1408, 768), (704, 384),
    (640, 1408), (320, 704), (1408, 640), (704, 320),
    (1152, 640), (1173, 640),
})
DOC_DEFAULT_SIDE = 1408  # the doc's per-side default; 1408x1408 itself is not permitted
OMITTED_SIZE = (1024, 1024)  # stand-in choice when the caller sends neither width nor height
DEFAULT_SEED = 42
MAX_SEED = 2_147_483_646
MAX_INVOKE_BODY = 25_000_000


@dataclass(frozen=True)
class ImageRule:
    """Limits one input image must meet; sides and pixel counts are inclusive bounds."""

    formats: tuple[str, ...]
    min_side: int = 1
    max_side: int | None = None
    min_pixels: int = 1
    max_pixels: int | None = None
    max_aspect: float | None = None  # long side / short side
    opaque: bool = False  # refuse transparent or translucent pixels
    max_bytes: int | None = None


# Titan: "<= 1,408 on the longer side" and "Max input image size - 5 MB" (section 1.10). No
# minimum is documented; 256 follows the third-party plugin there (UNVERIFIED), a stand-in choice
# that also keeps input-sized answers renderable. 5 MB is read as 5 MiB (stand-in choice).
TITAN_INPUT = ImageRule(("png", "jpeg"), min_side=256, max_side=1408, max_bytes=5 * 1024 * 1024)
# Nova: sides 320-4096, aspect 1:4-4:1, fewer than 4,194,304 pixels, no transparent pixels
# (Part A 3.4, 3.5; secondary sources). Whether exactly 4,194,304 is allowed is disputed: the
# stand-in refuses it (strict side of the conflict).
NOVA_INPUT = ImageRule(("png", "jpeg"), min_side=320, max_side=4096, max_pixels=4_194_303,
                       max_aspect=4.0, opaque=True)


@dataclass(frozen=True)
class ModelSpec:
    """Schema differences between the image models the stand-in knows."""

    model_id: str
    text_max: int
    cfg_default: float
    text_keys: frozenset
    input_rule: ImageRule
    text_required: frozenset  # tasks whose params must carry `text`


# Titan: text required for TEXT_IMAGE, OUTPAINTING and COLOR_GUIDED_GENERATION, optional for
# INPAINTING and IMAGE_VARIATION (sections 1.2-1.7). Nova: the schema marks IMAGE_VARIATION's text
# "Required" while the overview calls it optional (Part A 3.3); the stand-in takes the strict side.
# Nova OUTPAINTING shares INPAINTING's optional text (Part A 3.3).
MODELS = {
    TITAN_V2: ModelSpec(TITAN_V2, 512, 8.0, TEXT_KEYS, TITAN_INPUT,
                        frozenset({"TEXT_IMAGE", "OUTPAINTING", "COLOR_GUIDED_GENERATION"})),
    NOVA_CANVAS: ModelSpec(NOVA_CANVAS, 1024, 6.5, TEXT_KEYS | {"style"}, NOVA_INPUT,
                           frozenset({"TEXT_IMAGE", "IMAGE_VARIATION", "COLOR_GUIDED_GENERATION"})),
}

# --------------------------------------------------------------------------------------
# Stability text-to-image facts (wave2 reference Part B sections 1.1-1.6)
# --------------------------------------------------------------------------------------

SD3_5_LARGE = "stability.sd3-5-large-v1:0"
STABLE_IMAGE_CORE = "stability.stable-image-core-v1:1"
STABLE_IMAGE_ULTRA = "stability.stable-image-ultra-v1:1"

ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
PROMPT_MAX = 10_000
TEXT_TO_IMAGE = "text-to-image"
IMAGE_TO_IMAGE = "image-to-image"
MIN_INPUT_SIDE = 64  # SD3.5 image-to-image: "Minimum 64 pixels per side" (1.2)

# Output pixel sizes are NOT documented by AWS (Part B 1.5, open item 1): these tables are the
# stand-in's own choice. SD3.5 is "1 megapixel" (1.2), so it uses the ~1 MP SDXL-style list.
SD3_5_SIZES = {
    "1:1": (1024, 1024), "16:9": (1344, 768), "21:9": (1536, 640), "2:3": (832, 1216),
    "3:2": (1216, 832), "4:5": (896, 1088), "5:4": (1088, 896), "9:16": (768, 1344),
    "9:21": (640, 1536),
}
# Core gave 1536x1536 at 1:1 (1.1, awsdocs PR #7989) and Core/Ultra sides are 640..1536 (1.3, 1.4).
# Stand-in choice for the rest: long side 1536, short side scaled and rounded to a multiple of 16.
CORE_ULTRA_SIZES = {
    "1:1": (1536, 1536), "16:9": (1536, 864), "21:9": (1536, 656), "2:3": (1024, 1536),
    "3:2": (1536, 1024), "4:5": (1232, 1536), "5:4": (1536, 1232), "9:16": (864, 1536),
    "9:21": (656, 1536),
}


@dataclass(frozen=True)
class StabilitySpec:
    """What differs between the three Stability text-to-image bodies (Part B 1.2-1.4)."""

    model_id: str
    keys: frozenset
    modes: tuple[str, ...]
    seed_max: int
    formats: tuple[str, ...]
    sizes: dict[str, tuple[int, int]]

    def parse(self, body: bytes) -> StabilityRequest:
        """Validate a body for this model (see parse_stability)."""
        return parse_stability(self, body)


_STABILITY_COMMON = frozenset({"prompt", "aspect_ratio", "mode", "seed", "negative_prompt",
                               "output_format"})
# Not accepted by any of them: style_preset, cfg_scale, steps and counts are undocumented on
# Bedrock today (1.2, 1.4; the sample notebook's style_preset is UNCONFIRMED), so the stand-in
# refuses them rather than let the service rely on a field AWS may ignore.
STABILITY_MODELS = {
    SD3_5_LARGE: StabilitySpec(SD3_5_LARGE, _STABILITY_COMMON | {"image", "strength"},
                               (TEXT_TO_IMAGE, IMAGE_TO_IMAGE), 4_294_967_294,
                               ("jpeg", "png", "webp"), SD3_5_SIZES),
    # Ultra image-to-image is self-contradictory in the docs (1.3): text-to-image only here.
    STABLE_IMAGE_ULTRA: StabilitySpec(STABLE_IMAGE_ULTRA, _STABILITY_COMMON, (TEXT_TO_IMAGE,),
                                      4_294_967_295, ("jpeg", "png"), CORE_ULTRA_SIZES),
    # Core's page lists no `mode`; the stand-in accepts mode=text-to-image like Ultra (1.4).
    STABLE_IMAGE_CORE: StabilitySpec(STABLE_IMAGE_CORE, _STABILITY_COMMON, (TEXT_TO_IMAGE,),
                                     4_294_967_295, ("jpeg", "png"), CORE_ULTRA_SIZES),
}

FILTER_PROMPT = "Filter reason: prompt"
FILTER_OUTPUT = "Filter reason: output image"
INFERENCE_ERROR = "Inference error"

# --------------------------------------------------------------------------------------
# Stability Image Services facts (wave2 reference Part B sections 2.1-2.3)
# --------------------------------------------------------------------------------------

# Invoked only through US cross-Region profiles, from these source Regions (2.1).
SERVICE_REGIONS = ("us-east-1", "us-east-2", "us-west-2")
PROFILE_PREFIX = "us."
# Part B 4 quotes this for a profile-only model (Nova 2 Lite) invoked by its base id. Whether the
# Image Services answer a base id the same way is UNCONFIRMED (2.1, 6.6): the stand-in's choice.
ON_DEMAND_MESSAGE = (
    "Invocation of model ID {model_id} with on-demand throughput isn't supported. Retry your "
    "request with the ID or ARN of an inference profile that contains this model."
)
SERVICE_SEED_MAX = 4_294_967_294  # "Range 0 to 4294967294" (2.2)
SERVICE_FORMATS = ("jpeg", "png", "webp")  # "Enum: jpeg, png, webp. Default png" (2.2)
STYLE_PRESETS = (
    "3d-model", "analog-film", "anime", "cinematic", "comic-book", "digital-art", "enhance",
    "fantasy-art", "isometric", "line-art", "low-poly", "modeling-compound", "neon-punk", "origami",
    "photographic", "pixel-art", "tile-texture",
)
# Input limits (2.2, 2.3). The standard rule covers every image of every service but the two
# upscalers that state their own; applying it to Inpaint/Erase `mask` too is a stand-in choice.
STANDARD_INPUT = ImageRule(SERVICE_FORMATS, min_side=64, max_pixels=9_437_184, max_aspect=2.5)
CREATIVE_UPSCALE_INPUT = ImageRule(SERVICE_FORMATS, min_side=64, min_pixels=4_096,
                                   max_pixels=1_048_576)
FAST_UPSCALE_INPUT = ImageRule(SERVICE_FORMATS, min_side=32, max_side=1536, min_pixels=1_024,
                               max_pixels=1_048_576)
UPSCALE_FACTOR = 4  # Fast Upscale: "4 times" (2.3)
# Not documented for Conservative/Creative (2.3 says only "to 4K resolution" and, in the notebook,
# "9mp"): the stand-in's choice is 4x each side, capped so the long side is at most 4096, and
# never smaller than the input.
UPSCALE_LONG_SIDE_CAP = 4096


@dataclass(frozen=True)
class FieldRule:
    """How one Image Services body field is checked: text, number, integer, enum or image."""

    kind: str
    low: float = 0
    high: float = 0
    options: tuple[str, ...] = ()
    image: ImageRule | None = None


def _between(low: float, high: float, integer: bool = False) -> FieldRule:
    """A number (or integer) field with inclusive bounds."""
    return FieldRule("integer" if integer else "number", low, high)


def _image_field(rule: ImageRule) -> FieldRule:
    """A base64 image field checked against ``rule``."""
    return FieldRule("image", image=rule)


TEXT_FIELD = FieldRule("text", 0, PROMPT_MAX)  # prompts: "0-10000" / "Maximum 10000 characters"
SEED_FIELD = _between(0, SERVICE_SEED_MAX, integer=True)
FORMAT_FIELD = FieldRule("enum", options=SERVICE_FORMATS)
STYLE_FIELD = FieldRule("enum", options=STYLE_PRESETS)
# grow_mask: "Range between 0 and 20"; integer-ness is not stated, so any number is accepted.
GROW_MASK_FIELD = _between(0, 20)
IMAGE_FIELD = _image_field(STANDARD_INPUT)
OUTPAINT_SIDES = ("left", "right", "up", "down")
MARGIN_FIELD = _between(0, 2000, integer=True)  # each "an integer, Range 0 to 2000", default 0
_PROMPTED = {"negative_prompt": TEXT_FIELD, "seed": SEED_FIELD, "output_format": FORMAT_FIELD}
# Required prompts must not be blank: the documented minimum is 0, refusing blank is the stand-in's
# choice, as for the text-to-image models.
NON_BLANK = ("prompt", "select_prompt", "search_prompt")


@dataclass(frozen=True)
class ServiceSpec:
    """One Image Service: its fields (2.3), which are required, and how its output is sized."""

    name: str  # e.g. "stable-image-inpaint"
    title: str
    required: tuple[str, ...]
    fields: dict[str, FieldRule]  # every accepted field, required ones included
    output: str  # key of OUTPUT_SIZES
    transparent: bool = False
    seed_max: int = SERVICE_SEED_MAX

    @property
    def model_id(self) -> str:
        """The base (foundation-model) id."""
        return f"stability.{self.name}-v1:0"

    @property
    def profile_id(self) -> str:
        """The US inference profile id callers invoke."""
        return PROFILE_PREFIX + self.model_id

    def parse(self, body: bytes) -> StabilityRequest:
        """Validate a body for this service (see parse_service)."""
        return parse_service(self, body)


# Output sizes are not documented for any service (2.3): each rule below is a stand-in choice.
# "input": the `image` size (the notebook's "4 MP" for Inpaint is not followed); "outpaint": input
# plus left+right and up+down; "fast-upscale": 4x; "upscale": see UPSCALE_LONG_SIDE_CAP;
# "aspect": the Core/Ultra table by aspect_ratio; "init-image": the init_image size.
_SERVICES = (
    ServiceSpec("stable-conservative-upscale", "Conservative Upscale", ("prompt", "image"),
                {"prompt": TEXT_FIELD, "image": IMAGE_FIELD, "creativity": _between(0.1, 0.5),
                 **_PROMPTED}, "upscale"),
    ServiceSpec("stable-creative-upscale", "Creative Upscale", ("prompt", "image"),
                {"prompt": TEXT_FIELD, "image": _image_field(CREATIVE_UPSCALE_INPUT),
                 "creativity": _between(0.1, 0.5), **_PROMPTED, "style_preset": STYLE_FIELD},
                "upscale"),
    # output_format is "listed as required" for Fast Upscale (2.3); no prompt, no seed.
    ServiceSpec("stable-fast-upscale", "Fast Upscale", ("image", "output_format"),
                {"image": _image_field(FAST_UPSCALE_INPUT), "output_format": FORMAT_FIELD},
                "fast-upscale"),
    ServiceSpec("stable-image-inpaint", "Inpaint", ("prompt", "image"),
                {"prompt": TEXT_FIELD, "image": IMAGE_FIELD, "style_preset": STYLE_FIELD,
                 **_PROMPTED, "mask": IMAGE_FIELD, "grow_mask": GROW_MASK_FIELD}, "input"),
    # Outpaint lists no negative_prompt (2.3).
    ServiceSpec("stable-outpaint", "Outpaint", ("image",),
                {"image": IMAGE_FIELD, "prompt": TEXT_FIELD, "style_preset": STYLE_FIELD,
                 "seed": SEED_FIELD, "output_format": FORMAT_FIELD,
                 "creativity": _between(0.1, 1.0), **dict.fromkeys(OUTPAINT_SIDES, MARGIN_FIELD)},
                "outpaint"),
    ServiceSpec("stable-image-search-recolor", "Search and Recolor",
                ("prompt", "image", "select_prompt"),
                {"prompt": TEXT_FIELD, "image": IMAGE_FIELD, "select_prompt": TEXT_FIELD,
                 "style_preset": STYLE_FIELD, **_PROMPTED, "grow_mask": GROW_MASK_FIELD}, "input"),
    ServiceSpec("stable-image-search-replace", "Search and Replace",
                ("prompt", "image", "search_prompt"),
                {"prompt": TEXT_FIELD, "image": IMAGE_FIELD, "search_prompt": TEXT_FIELD,
                 "style_preset": STYLE_FIELD, **_PROMPTED, "grow_mask": GROW_MASK_FIELD}, "input"),
    ServiceSpec("stable-image-erase-object", "Erase Object", ("image",),
                {"image": IMAGE_FIELD, "seed": SEED_FIELD, "output_format": FORMAT_FIELD,
                 "mask": IMAGE_FIELD, "grow_mask": GROW_MASK_FIELD}, "input"),
    ServiceSpec("stable-image-remove-background", "Remove Background", ("image",),
                {"image": IMAGE_FIELD, "output_format": FORMAT_FIELD}, "input", transparent=True),
    ServiceSpec("stable-image-control-sketch", "Control Sketch", ("prompt", "image"),
                {"prompt": TEXT_FIELD, "image": IMAGE_FIELD, "control_strength": _between(0, 1),
                 **_PROMPTED, "style_preset": STYLE_FIELD}, "input"),
    ServiceSpec("stable-image-control-structure", "Control Structure", ("prompt", "image"),
                {"prompt": TEXT_FIELD, "image": IMAGE_FIELD, "control_strength": _between(0, 1),
                 **_PROMPTED, "style_preset": STYLE_FIELD}, "input"),
    ServiceSpec("stable-image-style-guide", "Style Guide", ("prompt", "image"),
                {"prompt": TEXT_FIELD, "image": IMAGE_FIELD,
                 "aspect_ratio": FieldRule("enum", options=ASPECT_RATIOS), **_PROMPTED,
                 "fidelity": _between(0, 1), "style_preset": STYLE_FIELD}, "aspect"),
    ServiceSpec("stable-style-transfer", "Style Transfer", ("init_image", "style_image"),
                {"init_image": IMAGE_FIELD, "style_image": IMAGE_FIELD, "prompt": TEXT_FIELD,
                 **_PROMPTED, "composition_fidelity": _between(0, 1),
                 "style_strength": _between(0, 1), "change_strength": _between(0.1, 1)},
                "init-image"),
)
IMAGE_SERVICES = {spec.model_id: spec for spec in _SERVICES}  # by base id
SERVICE_PROFILES = {spec.profile_id: spec for spec in _SERVICES}

# --------------------------------------------------------------------------------------
# Catalogue: regions and GetFoundationModel details (Part B sections 1.1, 3.1, 5.1)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogEntry:
    """Where a model is offered and what GetFoundationModel says about it."""

    name: str
    provider: str
    regions: tuple[str, ...]
    inputs: tuple[str, ...]
    inference_types: tuple[str, ...] = ("ON_DEMAND",)


# Regions: Titan v2 and Nova Canvas from Part B 5.1, Stability from 1.1 (us-west-2 only).
# Names and providers: Stability from 1.1 and the 3.1 sample dump, Titan/Nova from 5.1.
# Input modalities: Core "Text only" (1.1) and Ultra TEXT (3.1 dump); TEXT+IMAGE for SD3.5,
# Titan and Nova (they take input images) is the stand-in's choice.
CATALOG = {
    TITAN_V2: CatalogEntry("Titan Image Generator G1 v2", "Amazon", ("us-east-1", "us-west-2"),
                           ("TEXT", "IMAGE")),
    NOVA_CANVAS: CatalogEntry("Nova Canvas", "Amazon", ("us-east-1", "eu-west-1", "ap-northeast-1"),
                              ("TEXT", "IMAGE")),
    SD3_5_LARGE: CatalogEntry("Stable Diffusion 3.5 Large", "Stability AI", ("us-west-2",),
                              ("TEXT", "IMAGE")),
    STABLE_IMAGE_CORE: CatalogEntry("Stable Image Core 1.0", "Stability AI", ("us-west-2",),
                                    ("TEXT",)),
    STABLE_IMAGE_ULTRA: CatalogEntry("Stable Image Ultra 1.0", "Stability AI", ("us-west-2",),
                                     ("TEXT",)),
}
# Image Services by base id (2.1). modelName is the 2.1 table's service name and the modalities
# follow the body (TEXT when a prompt is accepted): both stand-in choices. The service reports
# INFERENCE_PROFILE for profile-only models although botocore's enum lacks it (3.1).
CATALOG.update({
    spec.model_id: CatalogEntry(spec.title, "Stability AI", SERVICE_REGIONS,
                                ("TEXT", "IMAGE") if "prompt" in spec.fields else ("IMAGE",),
                                ("INFERENCE_PROFILE",))
    for spec in _SERVICES
})
# The real Legacy/EOL dates (Part B 5.1), ready for the legacy_models knob. The stand-in's
# default is ACTIVE so tests opt in to lifecycle behaviour.
DOCUMENTED_LIFECYCLE = {
    NOVA_CANVAS: {"legacyTime": "2026-03-30", "endOfLifeTime": "2026-09-30"},
    TITAN_V2: {"legacyTime": "2025-12-30", "endOfLifeTime": "2026-06-30"},
}
LIFECYCLE_DATES = ("legacyTime", "endOfLifeTime", "publicExtendedAccessTime")
# botocore bedrock 2023-04-20 GetFoundationModelIdentifier pattern (Part B 3.1); the stand-in
# matches it whole, an assumption since Smithy patterns are not anchored.
MODEL_IDENTIFIER_PATTERN = (
    r"(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}::foundation-model/[a-z0-9-]{1,63}[.]{1}"
    r"([a-z0-9-]{1,63}[.]){0,2}[a-z0-9-]{1,63}([:][a-z0-9-]{1,63}){0,2})|([a-z0-9-]{1,63}[.]{1}"
    r"[a-z0-9-]{1,63}([.]?[a-z0-9-]{1,63})([:][a-z0-9-]{1,63}){0,2})"
)
MODEL_IDENTIFIER_RE = re.compile(MODEL_IDENTIFIER_PATTERN)
SCOPE_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/[^/,\s]+/aws4_request")

FOUNDATION_ARN_RE = re.compile(r"^arn:aws[a-z-]*:bedrock:[a-z0-9-]*::foundation-model/(.+)$")
PROFILE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:bedrock:[a-z0-9-]*:\d{12}:inference-profile/(.+)$")

ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
MALFORMED = "Malformed input request: {pointer}: {reason}, please reformat your input and try again."
MALFORMED_PLAIN = "Malformed input request, please reformat your input and try again."
BLOCKED_PROMPT_MESSAGE = (
    "This request has been blocked by our content filters. Our filters automatically flagged "
    "this prompt because it may conflict our AUP or AWS Responsible AI Policy. Please adjust "
    "your text prompt to submit a new request."
)
# Exact service wording for output blocks is unknown (reference 1.12); keep both detectable
# substrings so either classification rule matches.
BLOCKED_OUTPUT_MESSAGE = (
    "This request has been blocked by our content filters. Our filters automatically flagged "
    "the generated image(s) because they may conflict our AUP or AWS Responsible AI Policy. "
    "Please adjust your text prompt to submit a new request."
)
ACCESS_DENIED_MESSAGE = "You don't have access to the model with the specified model ID."
EOL_MESSAGE = (
    "This model version has reached the end of its life. "
    "Please refer to the AWS documentation for more details."
)
UNKNOWN_MODEL_MESSAGE = "Could not resolve the foundation model from the provided model identifier."
# Observed for a model not offered in the caller's region (Part B section 4).
INVALID_MODEL_MESSAGE = "The provided model identifier is invalid."
# GetFoundationModel on an EOL model (Part B 3.1, litellm PR #42053).
EOL_CONTROL_MESSAGE = "This model version has reached the end of its life."
# Message text is the stand-in's choice; only the code and status are modelled (Part B 3.1).
CONTROL_PLANE_ERRORS = {
    "AccessDeniedException": "User is not authorized to perform: bedrock:GetFoundationModel",
    "ThrottlingException": "Too many requests, please wait before trying again.",
    "InternalServerException": "The server encountered an internal error while processing "
                               "the request.",
}
REFUSAL_MESSAGES = {"AccessDeniedException": ACCESS_DENIED_MESSAGE,
                    "ResourceNotFoundException": EOL_MESSAGE}

# code -> (HTTP status, message used when the stand-in injects it); statuses from section 2.3.
BEDROCK_ERRORS: dict[str, tuple[int, str]] = {
    "AccessDeniedException": (403, ACCESS_DENIED_MESSAGE),
    "ResourceNotFoundException": (404, EOL_MESSAGE),
    "ThrottlingException": (429, "Too many requests, please wait before trying again."),
    "ModelTimeoutException": (408, "Model has timed out in processing the request. "
                                   "Try your request again."),
    "InternalServerException": (500, "The server encountered an internal error while "
                                     "processing the request."),
    "ServiceUnavailableException": (503, "Bedrock is unable to process your request."),
    "ValidationException": (400, MALFORMED_PLAIN),
    "ServiceQuotaExceededException": (400, "Your request exceeds the service quota for your "
                                           "account. You can view your quotas at Service Quotas."),
    "ModelNotReadyException": (429, "Model is not ready to serve inference requests. "
                                    "The AWS SDK will automatically retry the operation."),
    "ModelErrorException": (424, "The model returned an error while processing the request."),
}

MARK_BLOCKED = "[[blocked]]"
MARK_BLOCKED_OUTPUT = "[[blocked-output]]"
MARK_INFERENCE_ERROR = "[[inference-error]]"
FLAG_RE = re.compile(r"\[\[flag:([^\]]+)\]\]")
MODERATION_KEYWORD = "standin-moderation"

# --------------------------------------------------------------------------------------
# Rekognition facts (reference section 4)
# --------------------------------------------------------------------------------------

DETECT_TARGET = "RekognitionService.DetectModerationLabels"
REK_MAX_BYTES = 5_242_880
REK_MIN_SIDE = 80
REK_MAX_SIDE = 10_000
REK_DEFAULT_MIN_CONFIDENCE = 50.0
MODERATION_MODEL_VERSION = "7.0"

REKOGNITION_ERRORS: dict[str, tuple[int, str]] = {
    "InvalidImageFormatException": (400, "Request has invalid image format"),
    "ImageTooLargeException": (400, "Image is too large"),
    "InvalidS3ObjectException": (400, "Unable to get object metadata from S3. Check object key, "
                                      "region and/or access permissions."),
    "InvalidParameterException": (400, "Request has invalid parameters"),
    "AccessDeniedException": (400, "User is not authorized to perform: "
                                   "rekognition:DetectModerationLabels"),
    "ProvisionedThroughputExceededException": (400, "Provisioned rate exceeded."),
    "ThrottlingException": (500, "Rate exceeded"),
    "InternalServerError": (500, "Internal server error"),
    "ResourceNotFoundException": (400, "The requested resource was not found."),
    "ValidationException": (400, "1 validation error detected"),
    "SerializationException": (400, "Could not parse the request body as JSON"),
    "UnknownOperationException": (400, "The stand-in only implements DetectModerationLabels"),
}

# Taxonomy v7 (section 4.4): (L1, L2, L3 children).
_TAXONOMY_ROWS = (
    ("Explicit", "Explicit Nudity", ("Exposed Male Genitalia", "Exposed Female Genitalia",
                                     "Exposed Buttocks or Anus", "Exposed Female Nipple")),
    ("Explicit", "Explicit Sexual Activity", ()),
    ("Explicit", "Sex Toys", ()),
    ("Non-Explicit Nudity of Intimate parts and Kissing", "Non-Explicit Nudity",
     ("Bare Back", "Exposed Male Nipple", "Partially Exposed Buttocks",
      "Partially Exposed Female Breast", "Implied Nudity")),
    ("Non-Explicit Nudity of Intimate parts and Kissing", "Obstructed Intimate Parts",
     ("Obstructed Female Nipple", "Obstructed Male Genitalia")),
    ("Non-Explicit Nudity of Intimate parts and Kissing", "Kissing on the Lips", ()),
    ("Swimwear or Underwear", "Female Swimwear or Underwear", ()),
    ("Swimwear or Underwear", "Male Swimwear or Underwear", ()),
    ("Violence", "Weapons", ()),
    ("Violence", "Graphic Violence", ("Weapon Violence", "Physical Violence", "Self-Harm",
                                      "Blood & Gore", "Explosions and Blasts")),
    ("Visually Disturbing", "Death and Emaciation", ("Emaciated Bodies", "Corpses")),
    ("Visually Disturbing", "Crashes", ("Air Crash",)),
    ("Drugs & Tobacco", "Products", ("Pills",)),
    ("Drugs & Tobacco", "Drugs & Tobacco Paraphernalia & Use", ("Smoking",)),
    ("Alcohol", "Alcohol Use", ("Drinking",)),
    ("Alcohol", "Alcoholic Beverages", ()),
    ("Rude Gestures", "Middle Finger", ()),
    ("Gambling", "Gambling", ()),
    ("Hate Symbols", "Nazi Party", ()),
    ("Hate Symbols", "White Supremacy", ()),
    ("Hate Symbols", "Extremist", ()),
)


def _build_taxonomy() -> dict[str, tuple[str, str, int]]:
    """Map lower-cased label name -> (canonical name, parent name, taxonomy level)."""
    table: dict[str, tuple[str, str, int]] = {}
    for level1, level2, leaves in _TAXONOMY_ROWS:
        table.setdefault(level1.lower(), (level1, "", 1))
        # "Gambling" is both L1 and L2; keep it as L1 so its chain ends cleanly.
        table.setdefault(level2.lower(), (level2, level1, 2))
        for leaf in leaves:
            table[leaf.lower()] = (leaf, level2, 3)
    return table


TAXONOMY = _build_taxonomy()

# --------------------------------------------------------------------------------------
# Knobs
# --------------------------------------------------------------------------------------


def _seconds(value: Any) -> float:
    """Parse a non-negative duration in seconds."""
    number = float(value)
    if number < 0:
        raise ValueError(f"expected seconds >= 0, got {value!r}")
    return number


def _rate(value: Any) -> float:
    """Parse a probability between 0 and 1."""
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"expected a rate in 0..1, got {value!r}")
    return number


def _percent(value: Any) -> float:
    """Parse a confidence between 0 and 100."""
    number = float(value)
    if not 0.0 <= number <= 100.0:
        raise ValueError(f"expected 0..100, got {value!r}")
    return number


def _flag(value: Any) -> bool:
    """Parse a boolean that may arrive as a string from the CLI."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _names(value: Any) -> list[str]:
    """Parse a list of names from a JSON list or a comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value]


def _one_of(*options: str) -> Callable[[Any], str]:
    """Build a parser accepting exactly one of ``options``."""
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return value
    return parse


def _codes(table: dict[str, tuple[int, str]]) -> Callable[[Any], list[str]]:
    """Build a parser for a list of error codes known to ``table``."""
    def parse(value: Any) -> list[str]:
        codes = _names(value)
        unknown = [code for code in codes if code not in table]
        if unknown:
            raise ValueError(f"unknown error code(s) {unknown}; known: {sorted(table)}")
        return codes
    return parse


def _model_set(value: Any) -> frozenset:
    """Parse a set of model ids."""
    return frozenset(_names(value))


def _optional_label(value: Any) -> str | None:
    """Parse a label name, treating empty/None as 'off'."""
    return str(value) if value not in (None, "") else None


def _optional_int(value: Any) -> int | None:
    """Parse an optional integer RNG seed."""
    return None if value in (None, "") else int(value)


def _iso_time(value: Any) -> str:
    """Normalise an ISO date or date-time to the UTC iso8601 form botocore parses."""
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lifecycles(value: Any) -> dict[str, dict[str, str]]:
    """Parse {model id: {legacyTime, endOfLifeTime[, publicExtendedAccessTime]}} (or its JSON)."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError("expected an object of model id -> lifecycle dates")
    parsed = {}
    for model_id, dates in value.items():
        keys = set(dates) if isinstance(dates, dict) else set()
        if not {"legacyTime", "endOfLifeTime"} <= keys or keys - set(LIFECYCLE_DATES):
            raise ValueError(f"{model_id}: expected legacyTime and endOfLifeTime, optional "
                             "publicExtendedAccessTime")
        parsed[str(model_id)] = {key: _iso_time(dates[key]) for key in LIFECYCLE_DATES
                                 if key in dates}
    return parsed


# name -> (default, parser, help)
KNOBS: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "latency": (0.0, _seconds, "seconds each InvokeModel takes"),
    "latency_jitter": (0.0, _seconds, "+/- uniform jitter added to latency"),
    "throttle_rate": (0.0, _rate, "probability of 429 ThrottlingException per invoke"),
    "error_rate": (0.0, _rate, "probability of injecting error_code per invoke"),
    "error_code": ("InternalServerException", _one_of(*BEDROCK_ERRORS), "code for error_rate"),
    "fail_next": ([], _codes(BEDROCK_ERRORS), "codes returned by the next invokes, in order"),
    "disabled_models": (frozenset(), _model_set, "model ids that are refused"),
    "disabled_error": ("AccessDeniedException",
                       _one_of("AccessDeniedException", "ResourceNotFoundException"),
                       "error for disabled models (ResourceNotFoundException = end of life)"),
    "no_access_models": (frozenset(), _model_set, "model ids InvokeModel refuses with 403"),
    "retired_models": (frozenset(), _model_set,
                       "model ids past end of life (InvokeModel and GetFoundationModel 404)"),
    "legacy_models": ({}, _lifecycles,
                      'JSON {"<id>": {"legacyTime": ..., "endOfLifeTime": ...}}: LEGACY models'),
    "control_plane_error": ("", _one_of("", *CONTROL_PLANE_ERRORS),
                            "error every GetFoundationModel answers with (empty = none)"),
    "png_kind": ("noise", _one_of("noise", "flat"), "noise (realistic size) or flat (tiny)"),
    "rekognition_latency": (0.0, _seconds, "seconds each DetectModerationLabels takes"),
    "rekognition_down": (False, _flag, "every DetectModerationLabels -> 500 InternalServerError"),
    "rekognition_throttle_rate": (0.0, _rate, "probability of 500 ThrottlingException"),
    "rekognition_fail_next": ([], _codes(REKOGNITION_ERRORS),
                              "codes returned by the next DetectModerationLabels calls"),
    "flag_all": (None, _optional_label, "label name reported for every image"),
    "flag_confidence": (97.5, _percent, "confidence of reported moderation labels"),
    "seed": (None, _optional_int, "RNG seed for reproducible fault sequences"),
}


def parse_knobs(values: dict[str, Any]) -> dict[str, Any]:
    """Validate and coerce knob values; raise ValueError on unknown names or bad values."""
    unknown = sorted(set(values) - set(KNOBS))
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown}; known: {sorted(KNOBS)}")
    parsed = {}
    for name, value in values.items():
        try:
            parsed[name] = KNOBS[name][1](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad value for {name}: {exc}") from None
    return parsed


def _jsonable(value: Any) -> Any:
    """Copy lists and dicts and render sets as sorted lists so knob values serialise safely."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return list(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------------------
# PNG synthesis
# --------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZLIB_HEADER = b"\x78\x01"  # deflate, 32K window, "fastest" level hint
BAND_ROWS = 8
# Editing answers take the input's size, so sizes are no longer a short fixed list: bound the cache.
MAX_TEMPLATES = 64
ADLER_BASE = 65521
# 16 grey levels: about 4 bits of entropy per byte, so a 1024x1024 RGB image deflates to
# ~1.5 MB, the size of a real Titan PNG, instead of 3 MB of pure noise.
NOISE_TABLE = bytes((byte & 0x0F) * 17 for byte in range(256))
FLAT_GREY = 0x80


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """Frame ``data`` as a PNG chunk with length and CRC."""
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def text_chunk(keyword: str, value: str) -> bytes:
    """Build a tEXt chunk (Latin-1 keyword and value)."""
    return png_chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + value.encode("latin-1", "replace"))


IEND_CHUNK = png_chunk(b"IEND", b"")


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """Adler-32 of A+B from adler(A), adler(B) and len(B), as zlib's adler32_combine."""
    rem = len2 % ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % ADLER_BASE
    sum1 = (sum1 + (adler2 & 0xFFFF) + ADLER_BASE - 1) % ADLER_BASE
    sum2 = (sum2 + (adler1 >> 16) + (adler2 >> 16) + ADLER_BASE - rem) % ADLER_BASE
    return (sum2 << 16) | sum1


def _rows(pixels: bytes, row_bytes: int) -> bytes:
    """Prefix each scanline with filter type 0 (None)."""
    return b"".join(b"\0" + pixels[i:i + row_bytes] for i in range(0, len(pixels), row_bytes))


def _deflate(raw: bytes, final: bool) -> bytes:
    """Raw-deflate ``raw``; a non-final stream ends byte-aligned so another can follow."""
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    return comp.compress(raw) + comp.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


@dataclass(frozen=True)
class PngTemplate:
    """Per-size cached part of every generated image: everything below the first band."""

    width: int
    height: int
    ihdr: bytes
    body_chunk: bytes  # IDAT with the cached deflate data; its length is a multiple of 3
    body_b64: bytes
    carry: bytes  # last 0-2 deflate bytes, moved to the final IDAT to keep the 3-alignment
    tail_len: int
    tail_adler: int


class PngFactory:
    """Makes valid, distinct, realistically sized PNGs cheaply.

    The image is a seed-specific band of BAND_ROWS rows followed by a per-size body that is
    deflated once and cached. The two raw-deflate streams are concatenated (the first ends
    with a sync flush), the Adler-32 is combined arithmetically, and chunk boundaries are
    arranged so the cached body's base64 can be spliced in without re-encoding it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._templates: dict[tuple[int, int, str], PngTemplate] = {}

    def template(self, width: int, height: int, kind: str) -> PngTemplate:
        """Return (building once) the cached body for a size and kind."""
        key = (width, height, kind)
        template = self._templates.get(key)
        if template is None:
            with self._lock:
                template = self._templates.get(key) or self._build(width, height, kind)
                if key not in self._templates and len(self._templates) >= MAX_TEMPLATES:
                    self._templates.pop(next(iter(self._templates)))  # oldest first
                self._templates[key] = template
        return template

    def parts(self, width: int, height: int, kind: str, material: bytes,
              texts: list[tuple[str, str]]) -> tuple[bytes, PngTemplate, bytes]:
        """Return (prefix, template, suffix); prefix + body_chunk + suffix is the PNG."""
        template = self.template(width, height, kind)
        band = _rows(self._band_pixels(width, kind, material), width * 3)
        idat_head = png_chunk(b"IDAT", ZLIB_HEADER + _deflate(band, final=False))
        adler = adler32_combine(zlib.adler32(band), template.tail_adler, template.tail_len)
        suffix = png_chunk(b"IDAT", template.carry + struct.pack(">I", adler)) + IEND_CHUNK
        extra = b"".join(text_chunk(key, value) for key, value in texts)
        id_value = f"standin {hashlib.blake2b(material, digest_size=8).hexdigest()}"
        # Pad the id chunk so the prefix length is a multiple of 3 (base64 splice).
        fixed = len(PNG_SIGNATURE) + len(template.ihdr) + len(extra) + len(idat_head)
        fixed += len(text_chunk("standin-id", id_value))
        id_chunk = text_chunk("standin-id", id_value + " " * (-fixed % 3))
        prefix = PNG_SIGNATURE + template.ihdr + id_chunk + extra + idat_head
        return prefix, template, suffix

    def render(self, width: int, height: int, kind: str, material: bytes,
               texts: list[tuple[str, str]] = ()) -> bytes:
        """Return the PNG bytes."""
        prefix, template, suffix = self.parts(width, height, kind, material, list(texts))
        return prefix + template.body_chunk + suffix

    def render_b64(self, width: int, height: int, kind: str, material: bytes,
                   texts: list[tuple[str, str]] = ()) -> list[bytes]:
        """Return the PNG as base64 pieces whose concatenation is base64(render(...))."""
        prefix, template, suffix = self.parts(width, height, kind, material, list(texts))
        return [base64.b64encode(prefix), template.body_b64, base64.b64encode(suffix)]

    @staticmethod
    def _band_pixels(width: int, kind: str, material: bytes) -> bytes:
        """Seed-specific top band: noise from the seed, or a seed-derived flat colour."""
        size = BAND_ROWS * width * 3
        if kind == "flat":
            return hashlib.blake2b(material, digest_size=3).digest() * (size // 3)
        return random.Random(material).randbytes(size).translate(NOISE_TABLE)

    @staticmethod
    def _build(width: int, height: int, kind: str) -> PngTemplate:
        """Deflate the shared body once for a size (the expensive part)."""
        rows = height - BAND_ROWS
        if rows <= 0:
            raise ValueError(f"height must exceed {BAND_ROWS}")
        size = rows * width * 3
        if kind == "flat":
            pixels = bytes([FLAT_GREY]) * size
        else:
            pixels = random.Random(f"{width}x{height}").randbytes(size).translate(NOISE_TABLE)
        tail = _rows(pixels, width * 3)
        deflated = _deflate(tail, final=True)
        cut = len(deflated) - len(deflated) % 3  # chunk overhead (12) is already 0 mod 3
        body_chunk = png_chunk(b"IDAT", deflated[:cut])
        ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        return PngTemplate(width, height, ihdr, body_chunk, base64.b64encode(body_chunk),
                           deflated[cut:], len(tail), zlib.adler32(tail))


# --------------------------------------------------------------------------------------
# Image inspection (Rekognition and conditionImage)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What the stand-in needs to know about an uploaded image."""

    fmt: str
    width: int | None
    height: int | None
    labels: tuple[str, ...] = ()


def inspect_image(data: bytes) -> ImageInfo | None:
    """Identify a PNG or JPEG by walking its structure; None if it is neither."""
    if data.startswith(PNG_SIGNATURE):
        return _inspect_png(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _inspect_jpeg(data)
    return None


def _inspect_png(data: bytes) -> ImageInfo | None:
    """Read IHDR and standin-moderation tEXt chunks without decoding pixels."""
    pos, width, height, labels = 8, None, None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        start = pos + 8
        if width is None and (kind != b"IHDR" or length != 13):
            return None  # IHDR must come first
        if kind == b"IHDR":
            width, height = struct.unpack_from(">II", data, start)
        elif kind == b"tEXt":
            keyword, _, value = data[start:start + length].partition(b"\0")
            if keyword.decode("latin-1") == MODERATION_KEYWORD:
                labels.append(value.decode("latin-1"))
        elif kind == b"IEND":
            break
        pos = start + length + 4
    if width is None:
        return None
    return ImageInfo("png", width, height, tuple(labels))


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _inspect_jpeg(data: bytes) -> ImageInfo:
    """Read the SOF dimensions and 'standin-moderation:' COM segments of a JPEG."""
    pos, width, height, labels = 2, None, None, []
    prefix = (MODERATION_KEYWORD + ":").encode()
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 1 if marker == 0xFF else 2  # fill byte or parameterless marker
            continue
        (seg_len,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF_MARKERS and pos + 9 <= len(data):
            height, width = struct.unpack_from(">HH", data, pos + 5)
        elif marker == 0xFE:
            comment = data[pos + 4:pos + 2 + seg_len]
            if comment.startswith(prefix):
                labels.append(comment[len(prefix):].decode("latin-1"))
        elif marker == 0xDA:
            break  # entropy-coded data follows; no more headers worth reading
        pos += 2 + seg_len
    return ImageInfo("jpeg", width, height, tuple(labels))


def moderation_labels(names: list[str], confidence: float, min_confidence: float) -> list[dict]:
    """Expand label names to their full L3 -> L2 -> L1 chain, filtered by MinConfidence."""
    if confidence < min_confidence:
        return []
    labels, seen = [], set()
    for name in names:
        for label, parent, level in _chain(name):
            if label not in seen:
                seen.add(label)
                labels.append({"Confidence": confidence, "Name": label,
                               "ParentName": parent, "TaxonomyLevel": level})
    return labels


def _chain(name: str) -> list[tuple[str, str, int]]:
    """Return the label and its ancestors; unknown names are reported as top-level."""
    entry = TAXONOMY.get(name.strip().lower())
    if entry is None:
        return [(name.strip(), "", 1)]
    chain = [entry]
    while chain[-1][1]:
        chain.append(TAXONOMY[chain[-1][1].lower()])
    return chain


# --------------------------------------------------------------------------------------
# Shared state: knobs, stats, RNG
# --------------------------------------------------------------------------------------


def _fresh_stats() -> dict[str, Any]:
    """Zeroed counters."""
    return {
        "invoke_calls": 0,
        "invoke_calls_by_model": Counter(),
        "max_in_flight": 0,
        "attempts": Counter(),
        "retries_seen": 0,
        "auth_schemes": Counter(),
        "images_generated": 0,
        "images_by_model": Counter(),
        "blocked_outputs": 0,
        "finish_reasons": Counter(),
        "errors_returned": Counter(),
        "control_plane_calls": 0,
        "control_plane_calls_by_model": Counter(),
        "control_plane_errors_returned": Counter(),
        "rekognition_calls": 0,
        "rekognition_attempts": Counter(),
        "rekognition_flagged": 0,
        "rekognition_errors_returned": Counter(),
    }


class StandinState:
    """Knobs, statistics and the RNG, shared by all request threads."""

    def __init__(self, **knobs: Any) -> None:
        self._lock = threading.Lock()
        self._startup = parse_knobs(knobs)
        self._knobs: dict[str, Any] = {}
        self._rng = random.Random()
        self._stats = _fresh_stats()
        self._in_flight = 0
        self.pngs = PngFactory()
        self._apply({name: spec[0] for name, spec in KNOBS.items()} | self._startup)

    def _apply(self, parsed: dict[str, Any]) -> None:
        """Store parsed knobs (caller holds the lock or is the constructor)."""
        for name, value in parsed.items():
            self._knobs[name] = list(value) if isinstance(value, list) else value
        if "seed" in parsed:
            self._rng.seed(parsed["seed"])

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs at run time; returns the resulting knob values."""
        parsed = parse_knobs(knobs)
        with self._lock:
            self._apply(parsed)
        return self.knobs()

    def knobs(self) -> dict[str, Any]:
        """Current knob values, JSON-friendly."""
        with self._lock:
            return {name: _jsonable(value) for name, value in self._knobs.items()}

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the knobs for one request."""
        with self._lock:
            return dict(self._knobs)

    def reset(self) -> None:
        """Zero the stats and put knobs back to their start-up values."""
        defaults = {name: spec[0] for name, spec in KNOBS.items()}
        with self._lock:
            self._apply(defaults | self._startup)  # also reseeds the RNG
            self._stats = _fresh_stats()
            self._stats["max_in_flight"] = self._in_flight

    def stats(self) -> dict[str, Any]:
        """Counters as plain JSON-friendly dicts."""
        with self._lock:
            out = {k: dict(v) if isinstance(v, Counter) else v for k, v in self._stats.items()}
            out["in_flight"] = self._in_flight
        out["attempts"] = {str(k): v for k, v in sorted(out["attempts"].items())}
        out["rekognition_attempts"] = {
            str(k): v for k, v in sorted(out["rekognition_attempts"].items())}
        return out

    def roll(self, rate: float) -> bool:
        """True with probability ``rate`` (seedable for reproducible fault sequences)."""
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def latency(self, base: float, jitter: float) -> float:
        """Base latency plus uniform +/- jitter, never negative."""
        if jitter <= 0:
            return base
        with self._lock:
            return max(0.0, base + self._rng.uniform(-jitter, jitter))

    def random_seed(self, high: int) -> int:
        """A non-zero seed for a caller that asked for a random one (seedable like faults)."""
        with self._lock:
            return self._rng.randint(1, high)

    def pop_fail(self, knob: str) -> str | None:
        """Consume the next scripted error code from a fail-next queue."""
        with self._lock:
            queue = self._knobs[knob]
            return queue.pop(0) if queue else None

    def begin_invoke(self, model_id: str, headers: Any) -> None:
        """Count an InvokeModel call and track concurrency."""
        attempt, scheme = _attempt(headers), _auth_scheme(headers)
        with self._lock:
            self._in_flight += 1
            stats = self._stats
            stats["max_in_flight"] = max(stats["max_in_flight"], self._in_flight)
            stats["invoke_calls"] += 1
            stats["invoke_calls_by_model"][model_id] += 1
            stats["auth_schemes"][scheme] += 1
            if attempt is not None:
                stats["attempts"][attempt] += 1
                stats["retries_seen"] += attempt > 1

    def end_invoke(self, model_id: str, reply: Reply) -> None:
        """Finish an InvokeModel call and count its outcome."""
        with self._lock:
            self._in_flight -= 1
            self._stats["images_generated"] += reply.images
            if reply.images:
                self._stats["images_by_model"][model_id] += reply.images
            self._stats["blocked_outputs"] += reply.blocked_output
            if reply.finish_reason:
                self._stats["finish_reasons"][reply.finish_reason] += 1
            if reply.error_code:
                self._stats["errors_returned"][reply.error_code] += 1

    def count_control_plane(self, model_id: str, reply: Reply) -> None:
        """Count a GetFoundationModel call and its outcome."""
        with self._lock:
            self._stats["control_plane_calls"] += 1
            self._stats["control_plane_calls_by_model"][model_id] += 1
            if reply.error_code:
                self._stats["control_plane_errors_returned"][reply.error_code] += 1

    def count_rekognition(self, attempt: int | None, reply: Reply, flagged: bool) -> None:
        """Count a DetectModerationLabels call and its outcome."""
        with self._lock:
            self._stats["rekognition_calls"] += 1
            if attempt is not None:
                self._stats["rekognition_attempts"][attempt] += 1
            self._stats["rekognition_flagged"] += flagged
            if reply.error_code:
                self._stats["rekognition_errors_returned"][reply.error_code] += 1


# --------------------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------------------


@dataclass
class Reply:
    """An HTTP response as status, headers and body pieces (written without joining)."""

    status: int
    headers: dict[str, str]
    pieces: list[bytes]
    error_code: str | None = None
    images: int = 0
    blocked_output: bool = False
    flagged: bool = False
    finish_reason: str | None = None  # Stability's non-null finish_reasons[0]


def _request_id() -> str:
    """A fresh request id like the x-amzn-RequestId AWS sends."""
    return str(uuid.uuid4())


def json_reply(status: int, payload: Any, content_type: str = "application/json") -> Reply:
    """Serialise ``payload`` as the whole body."""
    body = json.dumps(payload).encode()
    return Reply(status, {"Content-Type": content_type, "x-amzn-RequestId": _request_id()}, [body])


def bedrock_error(code: str, message: str | None = None, **extra: Any) -> Reply:
    """A rest-json error: code in x-amzn-ErrorType, message in the body."""
    status, default_message = BEDROCK_ERRORS[code]
    reply = json_reply(status, {"message": message or default_message, **extra})
    reply.headers["x-amzn-ErrorType"] = code + ERROR_TYPE_SUFFIX
    reply.error_code = code
    return reply


def rekognition_error(code: str, message: str | None = None) -> Reply:
    """A JSON 1.1 error: botocore reads the code only from the body __type (section 4.6)."""
    status, default_message = REKOGNITION_ERRORS[code]
    payload = {"__type": code, "Message": message or default_message}
    reply = json_reply(status, payload, "application/x-amz-json-1.1")
    reply.error_code = code
    return reply


def _auth_scheme(headers: Any) -> str:
    """Which auth the client used (never verified): sigv4, bearer or none."""
    authorization = headers.get("Authorization") or ""
    if authorization.startswith("AWS4-HMAC-SHA256"):
        return "sigv4"
    return "bearer" if authorization.startswith("Bearer ") else ("none" if not authorization else "other")


def scope_region(headers: Any) -> str | None:
    """Region from the SigV4 credential scope; None for bearer or unsigned calls."""
    match = SCOPE_RE.search(headers.get("Authorization") or "")
    return match.group(1) if match else None


def _attempt(headers: Any) -> int | None:
    """Attempt number from botocore's ``amz-sdk-request: attempt=N; max=M`` header."""
    match = re.search(r"attempt=(\d+)", headers.get("amz-sdk-request") or "")
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------------------
# InvokeModel
# --------------------------------------------------------------------------------------


class InvalidRequest(Exception):
    """A request body that the real service would reject with ValidationException."""

    @classmethod
    def at(cls, pointer: str, reason: str) -> InvalidRequest:
        """Build the schema-violation message Bedrock uses."""
        return cls(MALFORMED.format(pointer=pointer, reason=reason))


@dataclass(frozen=True)
class AmazonImageRequest:
    """The validated parts of a Titan v2 / Nova Canvas body that shape the output."""

    task: str
    text: str  # "" when the task has no (or an omitted optional) text
    negative_text: str
    count: int
    width: int
    height: int
    seed: int
    cfg_scale: float
    quality: str
    digest: str = ""  # of the input images, so different inputs give different pictures
    transparent: bool = False  # BACKGROUND_REMOVAL answers an RGBA PNG


@dataclass(frozen=True)
class TaskInput:
    """What a task's params object contributes: its prompts and, for edits, the input size."""

    text: str
    negative_text: str
    size: tuple[int, int] | None = None


_MISSING = object()


def _json_type(value: Any) -> str:
    """Name a JSON value's type the way the JSON-schema validator does."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Integer"
    if isinstance(value, float):
        return "BigDecimal"
    if isinstance(value, str):
        return "String"
    return "JSONArray" if isinstance(value, list) else "JSONObject"


def _object(value: Any, pointer: str, allowed: frozenset) -> dict:
    """Require a JSON object with no keys outside ``allowed``."""
    if not isinstance(value, dict):
        raise InvalidRequest.at(pointer, f"expected type: JSONObject, found: {_json_type(value)}")
    for key in value:
        if key not in allowed:
            raise InvalidRequest.at(pointer, f"extraneous key [{key}] is not permitted")
    return value


def _required(obj: dict, key: str, pointer: str) -> Any:
    """Fetch a required key."""
    if key not in obj:
        raise InvalidRequest.at(pointer, f"required key [{key}] not found")
    return obj[key]


def _string(value: Any, pointer: str, min_len: int = 0, max_len: int | None = None) -> str:
    """Require a string within length bounds."""
    if not isinstance(value, str):
        raise InvalidRequest.at(pointer, f"expected type: String, found: {_json_type(value)}")
    if len(value) < min_len:
        raise InvalidRequest.at(pointer, f"expected minLength: {min_len}, actual: {len(value)}")
    if max_len is not None and len(value) > max_len:
        raise InvalidRequest.at(pointer, f"expected maxLength: {max_len}, actual: {len(value)}")
    return value


def _number(value: Any, pointer: str, low: float, high: float, integer: bool = False) -> Any:
    """Require a number (or integer) within [low, high]."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or (integer and not isinstance(value, int)):
        wanted = "Integer" if integer else "Number"
        raise InvalidRequest.at(pointer, f"expected type: {wanted}, found: {_json_type(value)}")
    if value < low:
        raise InvalidRequest.at(pointer, f"{value} is not greater or equal to {low}")
    if value > high:
        raise InvalidRequest.at(pointer, f"{value} is not less or equal to {high}")
    return value


def _enum(value: Any, pointer: str, options: tuple[str, ...]) -> str:
    """Require one of the enumerated strings."""
    if value not in options or not isinstance(value, str):
        raise InvalidRequest.at(pointer, f"{value} is not a valid enum value")
    return value


def _optional(obj: dict, key: str, default: Any) -> Any:
    """Value of an optional key; an explicit null stays null so it fails type checks."""
    value = obj.get(key, _MISSING)
    return default if value is _MISSING else value


def _load_object(body: bytes) -> dict:
    """Parse the body as a JSON object."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(MALFORMED_PLAIN) from None
    if not isinstance(doc, dict):
        raise InvalidRequest.at("#", f"expected type: JSONObject, found: {_json_type(doc)}")
    return doc


def _array(value: Any, pointer: str, min_items: int, max_items: int) -> list:
    """Require a JSON array with an item count within bounds."""
    if not isinstance(value, list):
        raise InvalidRequest.at(pointer, f"expected type: JSONArray, found: {_json_type(value)}")
    if len(value) < min_items:
        raise InvalidRequest.at(pointer, f"expected minimum item count: {min_items}, "
                                         f"found: {len(value)}")
    if len(value) > max_items:
        raise InvalidRequest.at(pointer, f"expected maximum item count: {max_items}, "
                                         f"found: {len(value)}")
    return value


# --------------------------------------------------------------------------------------
# Input images (Titan/Nova params and the Image Services)
# --------------------------------------------------------------------------------------

PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP"}


def decode_image(value: Any, pointer: str, rule: ImageRule) -> Any:
    """Decode a base64 input image fully and check it against ``rule``; return the Pillow image."""
    from PIL import Image  # lazy: only bodies with input images need Pillow

    encoded = _string(value, pointer, 1)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if rule.max_bytes is not None and len(data) > rule.max_bytes:
        raise InvalidRequest.at(pointer, f"image must be at most {rule.max_bytes} bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InvalidRequest.at(pointer, "image has too many pixels") from None
    except (OSError, ValueError, SyntaxError):
        image = None
    if image is None or PILLOW_FORMATS.get(image.format) not in rule.formats:
        raise InvalidRequest.at(pointer, f"image must be a base64-encoded {_format_list(rule)}")
    _check_dimensions(image.size, pointer, rule)  # from the header, before decoding pixels
    try:
        image.load()
    except (OSError, ValueError, SyntaxError):
        raise InvalidRequest.at(pointer, "image data is truncated or corrupt") from None
    if rule.opaque and _has_transparency(image):
        raise InvalidRequest.at(pointer, "image must not contain transparent or translucent pixels")
    return image


def _format_list(rule: ImageRule) -> str:
    """'PNG or JPEG' / 'JPEG, PNG or WebP'."""
    names = [FORMAT_NAMES[fmt] for fmt in rule.formats]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _check_dimensions(size: tuple[int, int], pointer: str, rule: ImageRule) -> None:
    """Side, pixel-count and aspect-ratio limits."""
    short, long = sorted(size)
    if short < rule.min_side or (rule.max_side is not None and long > rule.max_side):
        bound = (f"at least {rule.min_side}" if rule.max_side is None
                 else f"between {rule.min_side} and {rule.max_side}")
        raise InvalidRequest.at(pointer, f"every side must be {bound} pixels, got "
                                         f"{size[0]}x{size[1]}")
    pixels = size[0] * size[1]
    if pixels < rule.min_pixels or (rule.max_pixels is not None and pixels > rule.max_pixels):
        bound = (f"at most {rule.max_pixels}" if rule.min_pixels <= 1
                 else f"between {rule.min_pixels} and {rule.max_pixels}")
        raise InvalidRequest.at(pointer, f"total pixel count must be {bound}, got {pixels}")
    if rule.max_aspect is not None and long > short * rule.max_aspect:
        ratio = f"{rule.max_aspect:g}"
        raise InvalidRequest.at(pointer, f"aspect ratio must be between 1:{ratio} and {ratio}:1")


def _has_transparency(image: Any) -> bool:
    """Whether any pixel is not fully opaque."""
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        return False
    return image.convert("RGBA").getchannel("A").getextrema()[0] < 255


def _mask_image(spec: ModelSpec, value: Any, pointer: str, size: tuple[int, int]) -> None:
    """A Titan/Nova maskImage: same size as the image, pure black and white only (Part A 3.5)."""
    mask = decode_image(value, pointer, spec.input_rule)
    if mask.size != size:
        raise InvalidRequest.at(pointer, "maskImage must be the same size as image ({}x{}), got "
                                         "{}x{}".format(*size, *mask.size))
    colours = mask.convert("RGB").getcolors(len(MASK_COLORS))
    if colours is None or any(colour not in MASK_COLORS for _, colour in colours):
        raise InvalidRequest.at(pointer, "maskImage must contain only pure black (0 0 0) and "
                                         "pure white (255 255 255) pixels")


def _digest(*parts: Any) -> str:
    """A short stable hash of the inputs that shape an edit."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=8).hexdigest()


# --------------------------------------------------------------------------------------
# InvokeModel: Titan v2 / Nova Canvas task types (reference sections 1.1-1.9, Part A 3.2-3.5)
# --------------------------------------------------------------------------------------


def parse_text_image(spec: ModelSpec, body: bytes) -> AmazonImageRequest:
    """Validate a Titan v2 / Nova Canvas body of any task type; raise InvalidRequest."""
    doc = _load_object(body)
    task = _enum(_required(doc, "taskType", "#"), "#/taskType", TASK_TYPES)
    params_key = TASK_PARAMS[task]
    # imageGenerationConfig "is common to all task types except BACKGROUND_REMOVAL" (Part A 3.3).
    top = {"taskType", params_key}
    if task != BACKGROUND_REMOVAL:
        top.add("imageGenerationConfig")
    _object(doc, "#", frozenset(top))
    given = TASK_PARSERS[task](spec, task, _required(doc, params_key, "#"), "#/" + params_key)
    digest = "" if task == "TEXT_IMAGE" else _digest(doc[params_key])
    if task == BACKGROUND_REMOVAL:
        return AmazonImageRequest(task, "", "", 1, *given.size, DEFAULT_SEED, spec.cfg_default,
                                  "standard", digest, transparent=True)
    keys = CONFIG_KEYS - {"width", "height"} if task in INPUT_SIZED_TASKS else CONFIG_KEYS
    config = _object(_optional(doc, "imageGenerationConfig", {}), "#/imageGenerationConfig", keys)
    width, height = given.size or _size(config)
    return AmazonImageRequest(
        task=task,
        text=given.text,
        negative_text=given.negative_text,
        count=_number(_optional(config, "numberOfImages", 1),
                      "#/imageGenerationConfig/numberOfImages", 1, 5, integer=True),
        width=width,
        height=height,
        seed=_number(_optional(config, "seed", DEFAULT_SEED),
                     "#/imageGenerationConfig/seed", 0, MAX_SEED, integer=True),
        cfg_scale=_number(_optional(config, "cfgScale", spec.cfg_default),
                          "#/imageGenerationConfig/cfgScale", 1.1, 10.0),
        quality=_enum(_optional(config, "quality", "standard"),
                      "#/imageGenerationConfig/quality", QUALITIES),
        digest=digest,
    )


def _prompts(spec: ModelSpec, task: str, params: dict, pointer: str) -> tuple[str, str]:
    """Validate text (required or optional per task and model) and negativeText."""
    text = ""
    if task in spec.text_required or "text" in params:
        text = _string(_required(params, "text", pointer), pointer + "/text", 1, spec.text_max)
    negative = ""
    if "negativeText" in params:
        negative = _string(params["negativeText"], pointer + "/negativeText", 1, spec.text_max)
    return text, negative


def _text_image_params(spec: ModelSpec, task: str, value: Any, pointer: str) -> TaskInput:
    """textToImageParams: text, negativeText, style and image conditioning."""
    params = _object(value, pointer, spec.text_keys)
    text, negative = _prompts(spec, task, params, pointer)
    if "style" in params:
        _string(params["style"], pointer + "/style", 1)
    _conditioning(spec, params, pointer)
    return TaskInput(text, negative)


def _conditioning(spec: ModelSpec, params: dict, pointer: str) -> None:
    """Validate the optional conditionImage / controlMode / controlStrength trio."""
    if "controlMode" in params:
        _enum(params["controlMode"], pointer + "/controlMode", CONTROL_MODES)
    if "controlStrength" in params:
        _number(params["controlStrength"], pointer + "/controlStrength", 0.0, 1.0)
    if "conditionImage" not in params:
        if "controlMode" in params or "controlStrength" in params:
            raise InvalidRequest.at(pointer, "required key [conditionImage] not found")
        return
    decode_image(params["conditionImage"], pointer + "/conditionImage", spec.input_rule)


def _variation_params(spec: ModelSpec, task: str, value: Any, pointer: str) -> TaskInput:
    """imageVariationParams: 1-5 images, similarityStrength 0.2-1.0, text, negativeText."""
    params = _object(value, pointer, VARIATION_KEYS)
    text, negative = _prompts(spec, task, params, pointer)
    images = _array(_required(params, "images", pointer), pointer + "/images", 1, 5)
    for index, image in enumerate(images):
        decode_image(image, f"{pointer}/images/{index}", spec.input_rule)
    if "similarityStrength" in params:
        _number(params["similarityStrength"], pointer + "/similarityStrength", 0.2, 1.0)
    return TaskInput(text, negative)


def _painting_params(spec: ModelSpec, task: str, value: Any, pointer: str) -> TaskInput:
    """in/outPaintingParams: image, exactly one of maskPrompt/maskImage, prompts, mode."""
    params = _object(value, pointer, OUTPAINT_KEYS if task == "OUTPAINTING" else INPAINT_KEYS)
    text, negative = _prompts(spec, task, params, pointer)
    image = decode_image(_required(params, "image", pointer), pointer + "/image", spec.input_rule)
    if ("maskPrompt" in params) == ("maskImage" in params):
        raise InvalidRequest.at(pointer, "exactly one of [maskPrompt, maskImage] is required")
    if "maskPrompt" in params:
        # No length is documented for maskPrompt; the model's text limit is the stand-in's choice.
        _string(params["maskPrompt"], pointer + "/maskPrompt", 1, spec.text_max)
    else:
        _mask_image(spec, params["maskImage"], pointer + "/maskImage", image.size)
    if "outPaintingMode" in params:
        _enum(params["outPaintingMode"], pointer + "/outPaintingMode", OUTPAINTING_MODES)
    # "The output size is the same as the input size" (section 1.4).
    return TaskInput(text, negative, image.size)


def _color_params(spec: ModelSpec, task: str, value: Any, pointer: str) -> TaskInput:
    """colorGuidedGenerationParams: text, 1-10 #RRGGBB colors, optional referenceImage."""
    params = _object(value, pointer, COLOR_KEYS)
    text, negative = _prompts(spec, task, params, pointer)
    colors = _array(_required(params, "colors", pointer), pointer + "/colors", 1, 10)
    for index, colour in enumerate(colors):
        colour_pointer = f"{pointer}/colors/{index}"
        if not COLOR_RE.match(_string(colour, colour_pointer)):
            raise InvalidRequest.at(colour_pointer,
                                    f"string [{colour}] does not match pattern {COLOR_PATTERN}")
    if "referenceImage" in params:
        decode_image(params["referenceImage"], pointer + "/referenceImage", spec.input_rule)
    return TaskInput(text, negative)


def _background_params(spec: ModelSpec, task: str, value: Any, pointer: str) -> TaskInput:
    """backgroundRemovalParams: the image only; the answer has the input's size."""
    params = _object(value, pointer, BACKGROUND_KEYS)
    image = decode_image(_required(params, "image", pointer), pointer + "/image", spec.input_rule)
    return TaskInput("", "", image.size)


TASK_PARSERS: dict[str, Callable[[ModelSpec, str, Any, str], TaskInput]] = {
    "TEXT_IMAGE": _text_image_params,
    "INPAINTING": _painting_params,
    "OUTPAINTING": _painting_params,
    "IMAGE_VARIATION": _variation_params,
    "COLOR_GUIDED_GENERATION": _color_params,
    BACKGROUND_REMOVAL: _background_params,
}


def _size(config: dict) -> tuple[int, int]:
    """Validate width/height as a pair from the permitted table."""
    pointer = "#/imageGenerationConfig"
    if "width" not in config and "height" not in config:
        return OMITTED_SIZE
    width = _number(_optional(config, "width", DOC_DEFAULT_SIDE), pointer + "/width",
                    1, 10**6, integer=True)
    height = _number(_optional(config, "height", DOC_DEFAULT_SIDE), pointer + "/height",
                     1, 10**6, integer=True)
    if (width, height) not in PERMITTED_SIZES:
        raise InvalidRequest.at(pointer, f"width {width} and height {height} is not a "
                                         "supported image size")
    return width, height


# --------------------------------------------------------------------------------------
# InvokeModel: model resolution, access and dispatch
# --------------------------------------------------------------------------------------


def _strip_arn(model_id: str) -> str:
    """The id inside a foundation-model or inference-profile ARN (or the id itself)."""
    match = FOUNDATION_ARN_RE.match(model_id) or PROFILE_ARN_RE.match(model_id)
    return match.group(1) if match else model_id


def canonical_model(model_id: str, profiles: bool = True) -> str | None:
    """Map a model id, ARN or (if ``profiles``) Image Services profile to a catalogued model id."""
    known = _strip_arn(model_id)
    if profiles and known in SERVICE_PROFILES:
        known = SERVICE_PROFILES[known].model_id
    return known if known in CATALOG else None


def _aliases(known: str | None) -> set[str]:
    """A catalogued id plus its US profile id, so knobs may name either (Image Services)."""
    if known in IMAGE_SERVICES:
        return {known, IMAGE_SERVICES[known].profile_id}
    return {known} if known else set()


def _model_arn(model_id: str, region: str | None = None) -> str:
    """Foundation-model ARN used as ModelErrorException.resourceName."""
    if model_id.startswith("arn:"):
        return model_id
    return f"arn:aws:bedrock:{region or 'us-east-1'}::foundation-model/{model_id}"


def _injected(code: str, model_id: str, region: str | None) -> Reply:
    """An error chosen by a knob, with the extra members its shape models."""
    if code == "ModelErrorException":
        return bedrock_error(code, originalStatusCode=500,
                             resourceName=_model_arn(model_id, region))
    return bedrock_error(code)


def handle_invoke(state: StandinState, raw_model: str, headers: Any, body: bytes) -> Reply:
    """Serve POST /model/<id>/invoke, counting concurrency and outcome."""
    model_id = unquote(raw_model)  # one segment: an encoded '/' in an ARN stays inside it
    state.begin_invoke(model_id, headers)
    reply = None
    try:
        reply = _invoke(state, model_id, scope_region(headers), body)
        return reply
    finally:
        state.end_invoke(model_id,
                         reply or Reply(500, {}, [], error_code="InternalServerException"))


def _invoke(state: StandinState, model_id: str, region: str | None, body: bytes) -> Reply:
    """Fault injection, model access, then the model family's validation and generation."""
    started = time.monotonic()
    knobs = state.snapshot()
    fault = _access_fault(state, knobs, model_id, region)
    if fault is not None:
        return fault
    if len(body) > MAX_INVOKE_BODY:
        return bedrock_error("ValidationException", "Input is too long for requested model.")
    known = canonical_model(model_id)
    stability = IMAGE_SERVICES.get(known) or STABILITY_MODELS.get(known)
    if stability is not None:
        reply = _invoke_stability(state, knobs, stability, body)
    else:
        reply = _invoke_titan(state, knobs, MODELS[known], body)
    if reply.status == 200:
        elapsed_ms = int((time.monotonic() - started) * 1000)
        reply.headers["X-Amzn-Bedrock-Invocation-Latency"] = str(elapsed_ms)
    return reply


def _invoke_titan(state: StandinState, knobs: dict, spec: ModelSpec, body: bytes) -> Reply:
    """Titan v2 / Nova Canvas: validation, content filter (400 or 200 "error"), images."""
    try:
        request = parse_text_image(spec, body)
    except InvalidRequest as exc:
        return bedrock_error("ValidationException", str(exc))
    if MARK_BLOCKED in request.text:
        return bedrock_error("ValidationException", BLOCKED_PROMPT_MESSAGE)
    time.sleep(state.latency(knobs["latency"], knobs["latency_jitter"]))
    if MARK_BLOCKED_OUTPUT in request.text:
        reply = json_reply(200, {"images": [], "error": BLOCKED_OUTPUT_MESSAGE})
        reply.blocked_output = True
        return reply
    return _images_reply(state, spec, request, knobs["png_kind"])


def _access_fault(state: StandinState, knobs: dict, model_id: str,
                  region: str | None) -> Reply | None:
    """Scripted/random faults and model availability, checked before the body is read."""
    scripted = state.pop_fail("fail_next")
    if scripted:
        return _injected(scripted, model_id, region)
    known = canonical_model(model_id)
    if known is not None and not _offered(known, region):
        return bedrock_error("ValidationException", INVALID_MODEL_MESSAGE)  # Part B section 4
    if known in IMAGE_SERVICES and _strip_arn(model_id) not in SERVICE_PROFILES:
        # Image Services are invoked through `us.` profiles only (2.1); stand-in choice, see
        # ON_DEMAND_MESSAGE.
        return bedrock_error("ValidationException", ON_DEMAND_MESSAGE.format(model_id=model_id))
    refusal = _refusal(knobs, {model_id, _strip_arn(model_id)} | _aliases(known))
    if refusal is not None:
        return refusal
    if known is None:
        return bedrock_error("ResourceNotFoundException", UNKNOWN_MODEL_MESSAGE)
    if state.roll(knobs["throttle_rate"]):
        return bedrock_error("ThrottlingException")
    if state.roll(knobs["error_rate"]):
        return _injected(knobs["error_code"], model_id, region)
    return None


def _offered(known: str, region: str | None) -> bool:
    """Whether a known model exists in the caller's region (no SigV4 scope: assume yes)."""
    return region is None or region in CATALOG[known].regions


def _refusal(knobs: dict, ids: set) -> Reply | None:
    """InvokeModel's answer for retired, no-access and disabled models (one rule for all)."""
    if ids & knobs["retired_models"]:
        code = "ResourceNotFoundException"  # EOL, Part B section 4
    elif ids & knobs["no_access_models"]:
        code = "AccessDeniedException"
    elif ids & knobs["disabled_models"]:
        code = knobs["disabled_error"]
    else:
        return None
    return bedrock_error(code, REFUSAL_MESSAGES[code])


def _images_reply(state: StandinState, spec: ModelSpec, request: AmazonImageRequest,
                  kind: str) -> Reply:
    """Build {"images": [...], "error": null} from spliced base64 pieces."""
    texts = _flag_texts(request.text)
    pieces = [b'{"images": [']
    for index in range(request.count):
        parts = (spec.model_id, request.text, request.negative_text, str(request.seed), str(index))
        if request.digest:  # edits: the inputs shape the picture too
            parts += (request.task, request.digest)
        material = "\0".join(parts).encode()
        if index:
            pieces.append(b", ")
        pieces.append(b'"')
        if request.transparent:
            pieces.append(base64.b64encode(pillow_image(request.width, request.height, "png", kind,
                                                        material, [], transparent=True)))
        else:
            pieces.extend(state.pngs.render_b64(request.width, request.height, kind, material,
                                                texts))
        pieces.append(b'"')
    pieces.append(b'], "error": null}')
    headers = {"Content-Type": "application/json", "x-amzn-RequestId": _request_id()}
    return Reply(200, headers, pieces, images=request.count)


def _flag_texts(prompt: str) -> list[tuple[str, str]]:
    """tEXt entries for the [[flag:<label>]] markers Rekognition will report."""
    return [(MODERATION_KEYWORD, label.strip()) for label in FLAG_RE.findall(prompt)]


# --------------------------------------------------------------------------------------
# InvokeModel: Stability text-to-image (Part B 1.2-1.6)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StabilityRequest:
    """The validated parts of a Stability body that shape the output."""

    prompt: str
    negative_prompt: str
    mode: str
    seed: int  # 0 = random
    output_format: str
    width: int
    height: int
    digest: str = ""  # Image Services: of the input images and settings
    transparent: bool = False  # Remove Background: an alpha channel where the format has one


def parse_stability(spec: StabilitySpec, body: bytes) -> StabilityRequest:
    """Validate a Stability body against the documented fields; raise InvalidRequest."""
    doc = _load_object(body)
    _object(doc, "#", spec.keys)
    prompt = _string(_required(doc, "prompt", "#"), "#/prompt", 0, PROMPT_MAX)
    if not prompt.strip():
        # Documented min is 0 (1.2-1.4); refusing a blank prompt is the stand-in's choice.
        raise InvalidRequest.at("#/prompt", "prompt must not be blank")
    mode = _enum(_optional(doc, "mode", TEXT_TO_IMAGE), "#/mode", spec.modes)
    negative = _string(_optional(doc, "negative_prompt", ""), "#/negative_prompt", 0, PROMPT_MAX)
    seed = _number(_optional(doc, "seed", 0), "#/seed", 0, spec.seed_max, integer=True)
    output_format = _enum(_optional(doc, "output_format", "png"), "#/output_format", spec.formats)
    if mode == IMAGE_TO_IMAGE:
        width, height = _image_to_image_size(spec, doc)
    else:
        _refuse_keys(doc, ("image", "strength"), mode)
        ratio = _enum(_optional(doc, "aspect_ratio", "1:1"), "#/aspect_ratio", ASPECT_RATIOS)
        width, height = spec.sizes[ratio]
    return StabilityRequest(prompt, negative, mode, seed, output_format, width, height)


def _refuse_keys(doc: dict, keys: tuple[str, ...], mode: str) -> None:
    """Reject keys that belong to the other mode.

    SD3.5 documents image/strength for image-to-image and aspect_ratio for text-to-image only
    (1.2); refusing instead of inferring the mode (AWS's own example omits it) is a stand-in
    choice so that callers always send ``mode`` explicitly, as the reference advises.
    """
    for key in keys:
        if key in doc:
            raise InvalidRequest.at("#", f"key [{key}] is not permitted in {mode} mode")


def _image_to_image_size(spec: StabilitySpec, doc: dict) -> tuple[int, int]:
    """Validate image + strength; the output takes the table size nearest the input's shape."""
    _refuse_keys(doc, ("aspect_ratio",), IMAGE_TO_IMAGE)
    _number(_required(doc, "strength", "#"), "#/strength", 0.0, 1.0)
    encoded = _string(_required(doc, "image", "#"), "#/image", 1)
    try:
        size = input_image_size(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        size = None
    if size is None:
        raise InvalidRequest.at("#/image", "image must be a base64-encoded JPEG, PNG or WebP")
    if min(size) < MIN_INPUT_SIDE:
        raise InvalidRequest.at("#/image", f"every side must be at least {MIN_INPUT_SIDE} pixels")
    # Stand-in choice: AWS does not say how image-to-image output is sized.
    shape = size[0] / size[1]
    return min(spec.sizes.values(), key=lambda wh: abs(wh[0] / wh[1] - shape))


def input_image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, JPEG or WebP; None if it is none of them."""
    info = inspect_image(data)
    if info is not None and info.width and info.height:
        return info.width, info.height
    return _webp_size(data)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """Read a RIFF WebP's size from its VP8, VP8L or VP8X header."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind = data[12:16]
    if kind == b"VP8X":
        return (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    if kind == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


def _invoke_stability(state: StandinState, knobs: dict, spec: StabilitySpec | ServiceSpec,
                      body: bytes) -> Reply:
    """Validation, then a finish reason from the markers, or one image (1.5, 1.6, 2.2)."""
    try:
        request = spec.parse(body)
    except InvalidRequest as exc:
        return bedrock_error("ValidationException", str(exc))
    if MARK_BLOCKED in request.prompt:
        return _finish_reply(FILTER_PROMPT)
    time.sleep(state.latency(knobs["latency"], knobs["latency_jitter"]))
    if MARK_INFERENCE_ERROR in request.prompt:
        return _finish_reply(INFERENCE_ERROR)
    if MARK_BLOCKED_OUTPUT in request.prompt:
        return _finish_reply(FILTER_OUTPUT)
    seed = request.seed or state.random_seed(spec.seed_max)  # 0 or absent = random (1.2)
    return _stability_image_reply(state, spec, request, seed, knobs["png_kind"])


def _finish_reply(reason: str) -> Reply:
    """A filtered or failed call: HTTP 200 with only finish_reasons.

    Part B 1.6: a non-null finish reason "will look like" {"finish_reasons": [...]}, and the
    filter response has no seeds (epam PR #301); the 200 status is implied, not stated.
    """
    reply = json_reply(200, {"finish_reasons": [reason]})
    reply.finish_reason = reason
    reply.blocked_output = reason == FILTER_OUTPUT
    return reply


def _stability_image_reply(state: StandinState, spec: StabilitySpec | ServiceSpec,
                           request: StabilityRequest, seed: int, kind: str) -> Reply:
    """{"seeds": [seed], "finish_reasons": [null], "images": [one image]} (1.5: one per call)."""
    parts = [spec.model_id, request.prompt, request.negative_prompt, str(seed),
             request.output_format]
    if request.digest:  # Image Services: the inputs shape the picture too
        parts.append(request.digest)
    material = "\0".join(parts).encode()
    texts = _flag_texts(request.prompt)
    if request.output_format == "png" and not request.transparent:
        image_b64 = state.pngs.render_b64(request.width, request.height, kind, material, texts)
    else:
        image_b64 = [base64.b64encode(pillow_image(request.width, request.height,
                                                   request.output_format, kind, material,
                                                   [label for _, label in texts],
                                                   transparent=request.transparent))]
    head = f'{{"seeds": [{seed}], "finish_reasons": [null], "images": ["'.encode()
    headers = {"Content-Type": "application/json", "x-amzn-RequestId": _request_id()}
    return Reply(200, headers, [head, *image_b64, b'"]}'], images=1)


def pillow_image(width: int, height: int, fmt: str, kind: str, material: bytes,
                 labels: list[str], transparent: bool = False) -> bytes:
    """Encode a JPEG, WebP or (transparent) PNG answer: the cached base plus the seed band."""
    from PIL import Image, PngImagePlugin  # lazy: only these answers need Pillow

    image = _pillow_base(width, height, kind).copy()
    band = PngFactory._band_pixels(width, kind, material)
    image.paste(Image.frombytes("RGB", (width, BAND_ROWS), band), (0, 0))
    if transparent and fmt != "jpeg":  # JPEG has no alpha channel, so it stays opaque
        image.putalpha(_cutout_alpha(width, height))
    out = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        for label in labels:
            info.add_text(MODERATION_KEYWORD, label)
        image.save(out, "PNG", pnginfo=info, compress_level=1)
    else:
        image.save(out, "JPEG" if fmt == "jpeg" else "WEBP", quality=85)
    data = out.getvalue()
    if fmt == "jpeg" and labels:
        # COM segments right after SOI carry [[flag:...]] labels to the Rekognition stand-in.
        comments = b"".join(_jpeg_comment(f"{MODERATION_KEYWORD}:{label}") for label in labels)
        data = data[:2] + comments + data[2:]
    return data


def _jpeg_comment(text: str) -> bytes:
    """A JPEG COM segment."""
    payload = text.encode("latin-1", "replace")
    return b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload


@functools.lru_cache(maxsize=32)
def _cutout_alpha(width: int, height: int) -> Any:
    """A background-removal alpha: an opaque centred "subject" on a fully transparent ground."""
    from PIL import Image, ImageDraw  # lazy: only transparent answers need Pillow

    alpha = Image.new("L", (width, height), 0)
    ImageDraw.Draw(alpha).ellipse((width // 4, height // 4, width * 3 // 4, height * 3 // 4),
                                  fill=255)
    return alpha


@functools.lru_cache(maxsize=32)
def _pillow_base(width: int, height: int, kind: str) -> Any:
    """The per-size picture every JPEG/WebP answer starts from (built once)."""
    from PIL import Image  # lazy: only jpeg/webp answers need Pillow

    if kind == "flat":
        return Image.new("RGB", (width, height), (FLAT_GREY,) * 3)
    noise = random.Random(f"{width}x{height}").randbytes(width * height * 3)
    return Image.frombytes("RGB", (width, height), noise.translate(NOISE_TABLE))


# --------------------------------------------------------------------------------------
# InvokeModel: Stability Image Services (Part B 2.1-2.3)
# --------------------------------------------------------------------------------------


def parse_service(spec: ServiceSpec, body: bytes) -> StabilityRequest:
    """Validate an Image Services body against its documented fields; raise InvalidRequest."""
    doc = _load_object(body)
    _object(doc, "#", frozenset(spec.fields))
    for key in spec.required:
        _required(doc, key, "#")
    # Cheap checks first, images (decoded in full) last.
    for key, rule in spec.fields.items():
        if key in doc and rule.kind != "image":
            _service_field(doc[key], "#/" + key, rule)
    for key in NON_BLANK:
        if key in spec.required and not doc[key].strip():
            raise InvalidRequest.at("#/" + key, f"{key} must not be blank")
    sizes = {key: decode_image(doc[key], "#/" + key, rule.image).size
             for key, rule in spec.fields.items() if key in doc and rule.kind == "image"}
    width, height = OUTPUT_SIZES[spec.output](doc, sizes)
    return StabilityRequest(
        prompt=doc.get("prompt", ""),
        negative_prompt=doc.get("negative_prompt", ""),
        mode=spec.name,
        seed=doc.get("seed", 0),  # no seed field (Fast Upscale, Remove Background): random
        output_format=doc.get("output_format", "png"),
        width=width,
        height=height,
        digest=_digest({key: value for key, value in doc.items() if key != "seed"}),
        transparent=spec.transparent,
    )


def _service_field(value: Any, pointer: str, rule: FieldRule) -> None:
    """Check one non-image field by its rule."""
    if rule.kind == "text":
        _string(value, pointer, int(rule.low), int(rule.high))
    elif rule.kind == "enum":
        _enum(value, pointer, rule.options)
    else:
        _number(value, pointer, rule.low, rule.high, integer=rule.kind == "integer")


def _input_size(doc: dict, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """The `image` size (stand-in choice, see _SERVICES)."""
    return sizes["image"]


def _init_image_size(doc: dict, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Style Transfer: the init_image size (stand-in choice)."""
    return sizes["init_image"]


def _outpaint_size(doc: dict, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """The input grown by its margins; at least one margin must be non-zero (2.3)."""
    left, right, up, down = (doc.get(side, 0) for side in OUTPAINT_SIDES)
    if not (left or right or up or down):
        raise InvalidRequest.at("#", "at least one outpaint direction [left, right, up, down] "
                                     "must be supplied with a non-zero value")
    width, height = sizes["image"]
    return width + left + right, height + up + down


def _fast_upscale_size(doc: dict, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Fast Upscale: 4x each side (2.3 "4 times"; per side is the stand-in's reading)."""
    width, height = sizes["image"]
    return width * UPSCALE_FACTOR, height * UPSCALE_FACTOR


def _upscale_size(doc: dict, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Conservative/Creative: 4x, long side at most 4096, never shrunk (stand-in choice)."""
    width, height = sizes["image"]
    scale = max(1.0, min(float(UPSCALE_FACTOR), UPSCALE_LONG_SIDE_CAP / max(width, height)))
    return round(width * scale), round(height * scale)


def _aspect_size(doc: dict, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Style Guide: the Core/Ultra table size for aspect_ratio (default 1:1, 2.3)."""
    return CORE_ULTRA_SIZES[doc.get("aspect_ratio", "1:1")]


OUTPUT_SIZES: dict[str, Callable[[dict, dict[str, tuple[int, int]]], tuple[int, int]]] = {
    "input": _input_size,
    "init-image": _init_image_size,
    "outpaint": _outpaint_size,
    "fast-upscale": _fast_upscale_size,
    "upscale": _upscale_size,
    "aspect": _aspect_size,
}


# --------------------------------------------------------------------------------------
# GetFoundationModel (Part B 3.1)
# --------------------------------------------------------------------------------------


def handle_get_foundation_model(state: StandinState, raw_id: str, headers: Any) -> Reply:
    """Serve GET /foundation-models/<id> and count it."""
    identifier = unquote(raw_id)  # botocore percent-encodes ':' and '/' in the URI label
    reply = _foundation_model(state.snapshot(), identifier, scope_region(headers))
    state.count_control_plane(identifier, reply)
    return reply


def _foundation_model(knobs: dict, identifier: str, region: str | None) -> Reply:
    """Injected error, identifier pattern, lifecycle and region, then the details."""
    if knobs["control_plane_error"]:
        code = knobs["control_plane_error"]
        return bedrock_error(code, CONTROL_PLANE_ERRORS[code])
    if not MODEL_IDENTIFIER_RE.fullmatch(identifier):
        # ValidationException is modelled (Part B 3.1); this text mirrors InvokeModel's regex
        # failure (section 4) and is the stand-in's choice.
        return bedrock_error("ValidationException", (
            f"1 validation error detected: Value '{identifier}' at 'modelIdentifier' failed to "
            f"satisfy constraint: Member must satisfy regular expression pattern: "
            f"{MODEL_IDENTIFIER_PATTERN}"))
    # A `us.` profile id is not a foundation model: GetInferenceProfile describes it (3.1).
    known = canonical_model(identifier, profiles=False)
    offered = known is not None and _offered(known, region)
    if (offered or known is None) and ({identifier} | _aliases(known)) & knobs["retired_models"]:
        return bedrock_error("ResourceNotFoundException", EOL_CONTROL_MESSAGE)
    if not offered:
        # Never-existing / not-in-region text is UNCONFIRMED (Part B 3.1, 6.8): stand-in choice.
        return bedrock_error("ResourceNotFoundException", UNKNOWN_MODEL_MESSAGE)
    return json_reply(200, {"modelDetails": model_details(knobs, known, region)})


def model_details(knobs: dict, model_id: str, region: str | None) -> dict[str, Any]:
    """FoundationModelDetails; image models omit responseStreamingSupported (3.1 sample)."""
    entry = CATALOG[model_id]
    dates = next((knobs["legacy_models"][alias] for alias in sorted(_aliases(model_id))
                  if alias in knobs["legacy_models"]), None)
    # Timestamps are iso8601 strings (botocore Timestamp shape); ACTIVE models carry only the
    # status because no launch date is documented for them.
    lifecycle = {"status": "LEGACY", **dates} if dates else {"status": "ACTIVE"}
    return {
        "modelArn": f"arn:aws:bedrock:{region or entry.regions[0]}::foundation-model/{model_id}",
        "modelId": model_id,
        "modelName": entry.name,
        "providerName": entry.provider,
        "inputModalities": list(entry.inputs),
        "outputModalities": ["IMAGE"],
        "customizationsSupported": [],
        "inferenceTypesSupported": list(entry.inference_types),
        "modelLifecycle": lifecycle,
    }

# --------------------------------------------------------------------------------------
# DetectModerationLabels
# --------------------------------------------------------------------------------------


def handle_rekognition(state: StandinState, target: str, headers: Any, body: bytes) -> Reply:
    """Serve POST / for the RekognitionService JSON 1.1 target."""
    if target != DETECT_TARGET:
        return rekognition_error("UnknownOperationException")
    reply = _detect(state, body)
    state.count_rekognition(_attempt(headers), reply, reply.flagged)
    return reply


def _detect(state: StandinState, body: bytes) -> Reply:
    """Faults, request checks, then labels from the image's marker chunk."""
    knobs = state.snapshot()
    time.sleep(knobs["rekognition_latency"])
    fault = _rekognition_fault(state, knobs)
    if fault is not None:
        return fault
    try:
        doc = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return rekognition_error("SerializationException")
    if not isinstance(doc, dict):
        return rekognition_error("SerializationException")
    min_confidence = doc.get("MinConfidence", REK_DEFAULT_MIN_CONFIDENCE)
    if (isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float))
            or not 0 <= min_confidence <= 100):
        return rekognition_error("InvalidParameterException")
    image = _image_bytes(doc.get("Image"))
    if isinstance(image, Reply):
        return image
    info = inspect_image(image)
    problem = _image_problem(info)
    if problem is not None:
        return problem
    names = list(info.labels) + ([knobs["flag_all"]] if knobs["flag_all"] else [])
    labels = moderation_labels(names, knobs["flag_confidence"], float(min_confidence))
    reply = json_reply(200, {"ModerationLabels": labels,
                             "ModerationModelVersion": MODERATION_MODEL_VERSION,
                             "ContentTypes": []}, "application/x-amz-json-1.1")
    reply.flagged = bool(labels)
    return reply


def _rekognition_fault(state: StandinState, knobs: dict) -> Reply | None:
    """Scripted, outage and throttling faults."""
    scripted = state.pop_fail("rekognition_fail_next")
    if scripted:
        return rekognition_error(scripted)
    if knobs["rekognition_down"]:
        return rekognition_error("InternalServerError")
    if state.roll(knobs["rekognition_throttle_rate"]):
        return rekognition_error("ThrottlingException")
    return None


def _image_bytes(image: Any) -> bytes | Reply:
    """Decode Image.Bytes, or the error Rekognition gives for the Image member."""
    if image is None:
        return rekognition_error("ValidationException", "1 validation error detected: Value null "
                                 "at 'image' failed to satisfy constraint: "
                                 "Member must not be null")
    if not isinstance(image, dict) or ("Bytes" in image) == ("S3Object" in image):
        return rekognition_error("InvalidParameterException")
    if "S3Object" in image:
        return rekognition_error("InvalidS3ObjectException")  # the stand-in has no S3
    try:
        data = base64.b64decode(image["Bytes"], validate=True)
    except (binascii.Error, ValueError, TypeError):
        return rekognition_error("SerializationException", "Invalid base64 in Image.Bytes")
    if not 1 <= len(data) <= REK_MAX_BYTES:
        bound = ("less than or equal to 5242880" if data else "greater than or equal to 1")
        return rekognition_error(
            "ValidationException",
            f"1 validation error detected: Value 'java.nio.HeapByteBuffer[pos=0 lim={len(data)} "
            f"cap={len(data)}]' at 'image.bytes' failed to satisfy constraint: "
            f"Member must have length {bound}")
    return data


def _image_problem(info: ImageInfo | None) -> Reply | None:
    """Format and dimension checks (section 4.5)."""
    if info is None:
        return rekognition_error("InvalidImageFormatException")
    width, height = info.width, info.height
    if width is None or height is None:
        return None
    if width > REK_MAX_SIDE or height > REK_MAX_SIDE:
        return rekognition_error(
            "ImageTooLargeException",
            f"Input image dimensions {width} x {height} exceed maximum dimension size of "
            f"{REK_MAX_SIDE} pixels")
    if width < REK_MIN_SIDE or height < REK_MIN_SIDE:
        # The reference gives no code for undersized images; treat them as unreadable.
        return rekognition_error("InvalidImageFormatException")
    return None


# --------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------

INVOKE_PATH_RE = re.compile(r"^/model/([^/]+)/invoke$")
FOUNDATION_PATH_RE = re.compile(r"^/foundation-models/([^/]+)$")
CONTROL_PREFIX = "/_standin/"


def route_post(state: StandinState, path: str, headers: Any, body: bytes) -> Reply:
    """Dispatch a POST to Bedrock, Rekognition or the control API."""
    match = INVOKE_PATH_RE.match(path)
    if match:
        return handle_invoke(state, match.group(1), headers, body)
    target = headers.get("X-Amz-Target")
    if path == "/" and target:
        return handle_rekognition(state, target, headers, body)
    if path.startswith(CONTROL_PREFIX):
        return _control_post(state, path[len(CONTROL_PREFIX):], body)
    return _not_found(path)


def route_get(state: StandinState, path: str, headers: Any) -> Reply:
    """Dispatch a GET to GetFoundationModel or the control API."""
    match = FOUNDATION_PATH_RE.match(path)
    if match:
        return handle_get_foundation_model(state, match.group(1), headers)
    name = path[len(CONTROL_PREFIX):] if path.startswith(CONTROL_PREFIX) else None
    if name == "stats":
        return json_reply(200, state.stats())
    if name == "config":
        return json_reply(200, state.knobs())
    if name == "health":
        return json_reply(200, {"ok": True})
    return _not_found(path)


def _control_post(state: StandinState, name: str, body: bytes) -> Reply:
    """POST /_standin/config (merge knobs) and /_standin/reset."""
    if name == "reset":
        state.reset()
        return json_reply(200, {"ok": True})
    if name != "config":
        return _not_found(CONTROL_PREFIX + name)
    try:
        values = json.loads(body or b"{}")
        if not isinstance(values, dict):
            raise ValueError("expected a JSON object of knob values")
        return json_reply(200, state.configure(**values))
    except ValueError as exc:
        return json_reply(400, {"message": str(exc)})


def _not_found(path: str) -> Reply:
    """Unknown route."""
    reply = json_reply(404, {"message": f"No stand-in route for {path}"})
    reply.headers["x-amzn-ErrorType"] = "UnknownOperationException" + ERROR_TYPE_SUFFIX
    return reply


class _Handler(BaseHTTPRequestHandler):
    """One thread per connection; keep-alive like the real endpoints."""

    protocol_version = "HTTP/1.1"
    server_version = "aws-standin"
    sys_version = ""

    def do_POST(self) -> None:
        """Read the whole body first so errors never desynchronise keep-alive."""
        body = self._read_body()
        self._dispatch(lambda path: route_post(self.server.state, path, self.headers, body))

    def do_GET(self) -> None:
        """GetFoundationModel and control API reads."""
        self._dispatch(lambda path: route_get(self.server.state, path, self.headers))

    def _dispatch(self, route: Callable[[str], Reply]) -> None:
        """Run a route, turning stand-in bugs into a visible 500."""
        try:
            reply = route(urlsplit(self.path).path)
        except Exception:  # a bug in the stand-in must not look like a hung server
            traceback.print_exc()
            reply = bedrock_error("InternalServerException", "stand-in crashed; see its stderr")
        self._send(reply)

    def _read_body(self) -> bytes:
        """Read Content-Length bytes (botocore always sends a length)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, reply: Reply) -> None:
        """Write status, headers and body pieces; tolerate clients that gave up."""
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(sum(map(len, reply.pieces))))
            self.end_headers()
            for piece in reply.pieces:
                self.wfile.write(piece)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Log only when asked: per-request stderr lines slow down benchmarks."""
        if self.server.verbose:
            super().log_message(format, *args)


class _HTTPServer(ThreadingHTTPServer):
    """Threaded server sized for hundreds of concurrent slow calls."""

    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: StandinState, verbose: bool) -> None:
        self.state = state
        self.verbose = verbose
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup, which can stall start-up."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class StandinServer:
    """In-process handle: ``StandinServer(port=0, latency=0.5).start()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False,
                 **knobs: Any) -> None:
        self.state = StandinState(**knobs)
        self._httpd = _HTTPServer((host, port), self.state, verbose)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL for endpoint_url / AWS_ENDPOINT_URL_*."""
        host = self._httpd.server_address[0]
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}"

    def start(self) -> StandinServer:
        """Serve on a background daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="aws-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting requests and close the listening socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs at run time."""
        return self.state.configure(**knobs)

    def knobs(self) -> dict[str, Any]:
        """Current knob values."""
        return self.state.knobs()

    def stats(self) -> dict[str, Any]:
        """Current counters."""
        return self.state.stats()

    def reset(self) -> None:
        """Zero counters, knobs back to their start-up values."""
        self.state.reset()

    def prewarm(self, sizes: list[tuple[int, int]], kind: str | None = None) -> None:
        """Build PNG templates ahead of time so the first calls are not slower."""
        for width, height in sizes:
            self.state.pngs.template(width, height, kind or self.state.knobs()["png_kind"])

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _size_list(value: str) -> list[tuple[int, int]]:
    """Parse '1024x1024,512x512'."""
    sizes = []
    for item in _names(value):
        width, _, height = item.lower().partition("x")
        sizes.append((int(width), int(height)))
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """CLI flags: --host/--port/--verbose/--prewarm plus one flag per knob."""
    parser = argparse.ArgumentParser(prog="python -m standins.aws_standin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument("--prewarm", type=_size_list, default=[],
                        help="sizes to pre-build, e.g. 1024x1024,512x512")
    for name, (default, parse, help_text) in KNOBS.items():
        flag = "--" + name.replace("_", "-")
        if parse is _flag:
            parser.add_argument(flag, dest=name, action="store_const", const=True, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None,
                                help=f"{help_text} (default: {_jsonable(default)})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Start the server, print READY <url>, serve until SIGTERM/SIGINT."""
    args = vars(build_parser().parse_args(argv))
    knobs = {name: args[name] for name in KNOBS if args[name] is not None}
    try:
        server = StandinServer(args["host"], args["port"], verbose=args["verbose"], **knobs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server.prewarm(args["prewarm"])
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server.start()
    print(f"READY {server.url}", flush=True)
    try:
        while not stopping.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
