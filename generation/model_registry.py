"""What each image model accepts: sizes, text length, seed and cfg ranges, defaults."""

from __future__ import annotations

from dataclasses import dataclass

# Titan Image Generator v2's permitted width x height pairs (aws-reference.md section 1.9).
TITAN_V2_SIZES = frozenset({
    (1024, 1024), (768, 768), (512, 512),
    (768, 1152), (384, 576), (1152, 768), (576, 384),
    (768, 1280), (384, 640), (1280, 768), (640, 384),
    (896, 1152), (448, 576), (1152, 896), (576, 448),
    (768, 1408), (384, 704), (1408, 768), (704, 384),
    (640, 1408), (320, 704), (1408, 640), (704, 320),
    (1152, 640), (1173, 640),
})

PLACEHOLDER_MODEL_ID = "placeholder"


@dataclass(frozen=True)
class ModelProfile:
    """The limits of one model, used to validate a request before any paid call."""

    model_id: str
    max_text: int
    sizes: frozenset
    default_cfg_scale: float
    min_cfg_scale: float = 1.1
    max_cfg_scale: float = 10.0
    max_seed: int = 2_147_483_646
    max_images: int = 5


TITAN_V2 = ModelProfile("amazon.titan-image-generator-v2:0", max_text=512, sizes=TITAN_V2_SIZES,
                        default_cfg_scale=8.0)
# Nova Canvas takes Titan's body; it allows longer text and defaults cfgScale to 6.5.
NOVA_CANVAS = ModelProfile("amazon.nova-canvas-v1:0", max_text=1024, sizes=TITAN_V2_SIZES,
                           default_cfg_scale=6.5)
# The offline model mirrors Titan v2's limits so that offline validation matches production's default.
PLACEHOLDER = ModelProfile(PLACEHOLDER_MODEL_ID, max_text=512, sizes=TITAN_V2_SIZES, default_cfg_scale=8.0)

PROFILES = {p.model_id: p for p in (TITAN_V2, NOVA_CANVAS, PLACEHOLDER)}
