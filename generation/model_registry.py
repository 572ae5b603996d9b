"""The model registry: one profile per image model, from which validation, bodies, /models and OpenAPI come."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

TEXT_TO_IMAGE = "text_to_image"
# The editing tasks of POST /edit_images (issue 12), each done by the models whose profile lists it.
EDIT_TASKS = ("variation", "inpaint", "outpaint", "search_replace", "recolor", "erase", "remove_background",
              "upscale", "color_guided", "condition", "style")
AMAZON_TASKS = frozenset({TEXT_TO_IMAGE, "variation", "inpaint", "outpaint", "remove_background", "color_guided",
                          "condition"})

# Titan Image Generator v2's permitted width x height pairs (aws-reference.md section 1.9); Nova Canvas
# accepts them too (its own rule, wave2-reference.md A 3.4: sides 320-4096 in steps of 16, ratio 1:4-4:1,
# under 4,194,304 pixels, is wider; the service offers the pairs both models take, so a fallback from
# one to the other never changes the size).
TITAN_V2_SIZES = frozenset({
    (1024, 1024), (768, 768), (512, 512),
    (768, 1152), (384, 576), (1152, 768), (576, 384),
    (768, 1280), (384, 640), (1280, 768), (640, 384),
    (896, 1152), (448, 576), (1152, 896), (576, 448),
    (768, 1408), (384, 704), (1408, 768), (704, 384),
    (640, 1408), (320, 704), (1408, 640), (704, 320),
    (1152, 640), (1173, 640),
})
# Stability's text-to-image models take one of these ratios (wave2-reference.md B 1.2-1.4) and choose the
# pixel size themselves; AWS does not document it, so the service reads it from the PNG.
STABILITY_RATIOS = ("1:1", "16:9", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
# Cross-region inference profile prefixes (`us.stability...`): the id is invoked as given, the profile
# is the base model's.
GEO_PREFIXES = ("us.", "eu.", "apac.", "us-gov.", "global.")

PLACEHOLDER_MODEL_ID = "placeholder"


@dataclass(frozen=True)
class CfgScale:
    """A model's classifier-free guidance knob: range and default."""

    low: float
    high: float
    default: float


@dataclass(frozen=True)
class InputRule:
    """What a model takes as an input image (wave2-reference.md A 3.5, B 2.2)."""

    min_side: int = 64
    max_side: int = 100_000
    min_pixels: int = 0
    max_pixels: int = 9_437_184
    max_aspect: float = 2.5  # longer side over shorter side
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP")


@dataclass(frozen=True)
class ModelProfile:
    """What one model takes and costs: the single source for validation, request bodies, /models and OpenAPI."""

    model_id: str
    name: str
    family: str  # "amazon", "stability" or "placeholder": which request body the model takes
    regions: tuple[str, ...]
    max_text: int
    sizes: frozenset = frozenset()  # exact width x height pairs (Amazon models)
    aspect_ratios: tuple[str, ...] = ()  # ratios (Stability models); the size comes back in the PNG
    min_seed: int = 0
    max_seed: int = 2_147_483_646
    negative_prompt: bool = True
    cfg_scale: CfgScale | None = None
    quality: bool = False
    max_images: int = 5
    tasks: frozenset = field(default_factory=lambda: frozenset({TEXT_TO_IMAGE}))
    price: str = ""  # per image, on-demand, for the README and /models
    input_rule: InputRule = InputRule()
    # For Stability's Image Services: the service's name, and the kind it is within its task
    # (upscale: fast/conservative/creative; condition: sketch/structure; style: guide/transfer).
    service: str = ""
    kind: str = ""
    # AWS's published lifecycle dates (ISO dates), shown until GetFoundationModel says otherwise.
    legacy_date: str | None = None
    end_of_life_date: str | None = None

    @property
    def default_cfg_scale(self) -> float | None:
        """The model's own cfg default, or None when it takes no cfg."""
        return self.cfg_scale.default if self.cfg_scale else None

    @property
    def default_size(self) -> tuple[int, int] | None:
        """The size asked when a request names none (None: the model picks it from the ratio)."""
        return (1024, 1024) if self.sizes else None

    def fits_size(self, width: int, height: int) -> tuple[int, int]:
        """The model's allowed size nearest in shape (then in area) to width x height."""
        wanted = math.log(width / height)
        return min(sorted(self.sizes), key=lambda s: (abs(math.log(s[0] / s[1]) - wanted),
                                                       abs(s[0] * s[1] - width * height)))

    def ratio_for(self, width: int, height: int) -> str:
        """The aspect ratio nearest in shape to width x height."""
        wanted = math.log(width / height)
        return min(self.aspect_ratios, key=lambda r: abs(math.log(_ratio_value(r)) - wanted))


def _ratio_value(ratio: str) -> float:
    w, h = ratio.split(":")
    return int(w) / int(h)


# Nova Canvas takes JPEG or PNG inputs with sides of 320-4096 px, under 4,194,304 pixels (the pages
# disagree on that exact figure: the service stays below it), ratio up to 4:1 (wave2-reference.md A 3.4-3.5).
NOVA_INPUT = InputRule(min_side=320, max_side=4096, max_pixels=4_194_303, max_aspect=4.0, formats=("PNG", "JPEG"))
# Titan v2: JPEG or PNG, the longer side at most 1,408 px (aws-reference.md 1.10); 256 px as the
# shortest side follows a third-party plugin (AWS states none).
TITAN_INPUT = InputRule(min_side=256, max_side=1408, max_pixels=1408 * 1408, max_aspect=5.5,
                        formats=("PNG", "JPEG"))
TITAN_V2 = ModelProfile(
    "amazon.titan-image-generator-v2:0", "Titan Image Generator v2", "amazon", ("us-east-1", "us-west-2"),
    max_text=512, sizes=TITAN_V2_SIZES, cfg_scale=CfgScale(1.1, 10.0, 8.0), quality=True,
    tasks=AMAZON_TASKS, input_rule=TITAN_INPUT,
    price="$0.008-0.012 (512 or 1024 class, standard or premium)",
    legacy_date="2025-12-30", end_of_life_date="2026-06-30")
NOVA_CANVAS = ModelProfile(
    "amazon.nova-canvas-v1:0", "Nova Canvas", "amazon", ("us-east-1", "eu-west-1", "ap-northeast-1"),
    max_text=1024, sizes=TITAN_V2_SIZES, cfg_scale=CfgScale(1.1, 10.0, 6.5), quality=True,
    tasks=AMAZON_TASKS, input_rule=NOVA_INPUT,
    price="$0.04 standard, $0.06 premium (up to 1024x1024)",
    legacy_date="2026-03-30", end_of_life_date="2026-09-30")
# Stability's seeds: 0 asks the model for a random one, so the service's seeds start at 1; the top of the
# range is SD3.5's (Core and Ultra allow one more).
STABLE_IMAGE_CORE = ModelProfile(
    "stability.stable-image-core-v1:1", "Stable Image Core", "stability", ("us-west-2",),
    max_text=10_000, aspect_ratios=STABILITY_RATIOS, min_seed=1, max_seed=4_294_967_294, price="$0.04")
STABLE_IMAGE_ULTRA = ModelProfile(
    "stability.stable-image-ultra-v1:1", "Stable Image Ultra", "stability", ("us-west-2",),
    max_text=10_000, aspect_ratios=STABILITY_RATIOS, min_seed=1, max_seed=4_294_967_294, price="$0.14")
SD3_5_LARGE = ModelProfile(
    "stability.sd3-5-large-v1:0", "Stable Diffusion 3.5 Large", "stability", ("us-west-2",),
    max_text=10_000, aspect_ratios=STABILITY_RATIOS, min_seed=1, max_seed=4_294_967_294, price="$0.08",
    # Its image-to-image mode makes variations (wave2-reference.md B 1.2).
    tasks=frozenset({TEXT_TO_IMAGE, "variation"}))


def _service(name: str, label: str, task: str, kind: str = "", rule: InputRule = InputRule(),
             negative: bool = True) -> ModelProfile:
    """One of Stability's Image Services, invoked through its US cross-region profile (B 2.1)."""
    return ModelProfile(
        f"us.stability.{name}-v1:0", label, "stability_service", ("us-east-1", "us-east-2", "us-west-2"),
        max_text=10_000, min_seed=1, max_seed=4_294_967_294, negative_prompt=negative,
        tasks=frozenset({task}), input_rule=rule, service=name, kind=kind,
        price="see the Bedrock pricing page (Image Services)")


# Stability's Image Services (wave2-reference.md B 2): one profile per service, each doing one task.
STABILITY_SERVICES = (
    _service("stable-image-inpaint", "Stable Image Inpaint", "inpaint"),
    _service("stable-outpaint", "Stable Outpaint", "outpaint", negative=False),
    _service("stable-image-search-replace", "Stable Image Search and Replace", "search_replace"),
    _service("stable-image-search-recolor", "Stable Image Search and Recolor", "recolor"),
    _service("stable-image-erase-object", "Stable Image Erase Object", "erase", negative=False),
    _service("stable-image-remove-background", "Stable Image Remove Background", "remove_background",
             negative=False),
    _service("stable-fast-upscale", "Stable Fast Upscale", "upscale", "fast",
             InputRule(min_side=32, max_side=1536, min_pixels=1_024, max_pixels=1_048_576, max_aspect=48.0),
             negative=False),
    _service("stable-conservative-upscale", "Stable Conservative Upscale", "upscale", "conservative"),
    _service("stable-creative-upscale", "Stable Creative Upscale", "upscale", "creative",
             InputRule(min_pixels=4_096, max_pixels=1_048_576, max_aspect=16.0)),
    _service("stable-image-control-sketch", "Stable Image Control Sketch", "condition", "sketch"),
    _service("stable-image-control-structure", "Stable Image Control Structure", "condition", "structure"),
    _service("stable-image-style-guide", "Stable Image Style Guide", "style", "guide"),
    _service("stable-style-transfer", "Stable Style Transfer", "style", "transfer"),
)
# The offline model mirrors Titan v2's limits so that offline validation matches the specified default.
PLACEHOLDER = ModelProfile(
    PLACEHOLDER_MODEL_ID, "Offline placeholder (not a generated image)", "placeholder", (),
    max_text=512, sizes=TITAN_V2_SIZES, cfg_scale=CfgScale(1.1, 10.0, 8.0), quality=True, price="$0",
    tasks=frozenset({TEXT_TO_IMAGE, *EDIT_TASKS}))

TEXT_TO_IMAGE_PROFILES = (TITAN_V2, NOVA_CANVAS, STABLE_IMAGE_CORE, STABLE_IMAGE_ULTRA, SD3_5_LARGE)
BEDROCK_PROFILES = (*TEXT_TO_IMAGE_PROFILES, *STABILITY_SERVICES)
PROFILES = {p.model_id: p for p in (*BEDROCK_PROFILES, PLACEHOLDER)}


def base_model_id(model_id: str) -> str:
    """The foundation model behind an id: `us.stability.x` -> `stability.x`."""
    for prefix in GEO_PREFIXES:
        if model_id.startswith(prefix):
            return model_id[len(prefix):]
    return model_id


def profile_for(model_id: str) -> ModelProfile | None:
    """The profile of a model id, cross-region profile ids included; None when the registry lacks it."""
    return PROFILES.get(model_id) or PROFILES.get(base_model_id(model_id)) or _SERVICE_BY_BASE.get(
        base_model_id(model_id))


# The Image Services by their base ids too (`stability.stable-image-inpaint-v1:0`).
_SERVICE_BY_BASE = {base_model_id(p.model_id): p for p in STABILITY_SERVICES}


def call_region(model_id: str, session_region: str, override: str = "") -> str:
    """The region to call `model_id` in: the override, else this session's if the model is there, else its own."""
    if override:
        return override
    profile = profile_for(model_id)
    regions = profile.regions if profile else ()
    if model_id != base_model_id(model_id):
        # A cross-region profile is called from a region of its geography (us. -> us-*).
        geo = model_id.split(".", 1)[0]
        return session_region if session_region.startswith(geo + "-") or geo == "global" else \
            next((r for r in regions if r.startswith(geo + "-")), session_region)
    return session_region if not regions or session_region in regions else regions[0]
