"""The offered models as the HTTP layer shows them: the `model` field's choice, GET /models, Sunset headers."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from flask import Response

from generation.errors import InvalidRequest
from generation.model_chain import LEGACY, Lifecycle, ModelChain
from generation.model_registry import PLACEHOLDER, TEXT_TO_IMAGE, ModelProfile, profile_for
from image_generation import GenerationResult


def choose_profile(body, chain: ModelChain) -> tuple[ModelProfile, bool]:
    """The profile a /generate_images body is checked against, and whether the caller named the model."""
    if not isinstance(body, dict) or "model" not in body:
        return profile_of(chain, chain.default_id), False
    return named_profile(body["model"], chain, TEXT_TO_IMAGE), True


def named_profile(named, chain: ModelChain, task: str) -> ModelProfile:
    """The profile of the model a request named; 400 when it is not offered or cannot do the task."""
    if not isinstance(named, str) or named not in chain.models:
        raise InvalidRequest([{"field": "model", "message": f"must be one of the offered models: "
                                                            f"{', '.join(chain.offered())} (see GET /models)"}])
    profile = profile_of(chain, named)
    if task not in profile.tasks:
        able = [m for m in chain.offered() if task in profile_of(chain, m).tasks]
        raise InvalidRequest([{"field": "model", "message": f"{named} cannot do {task}; models that can: "
                                                            f"{', '.join(able) or 'none offered'}"}])
    return profile


def task_profiles(chain: ModelChain, task: str) -> list[ModelProfile]:
    """The offered models that can do `task`, in the order they are offered."""
    return [profile_of(chain, m) for m in chain.offered() if task in profile_of(chain, m).tasks]


def profile_of(chain: ModelChain, model_id: str) -> ModelProfile:
    """The registry profile of an offered model (a test's fake model takes the placeholder's limits)."""
    return chain.models[model_id].profile or profile_for(model_id) or PLACEHOLDER


def lifecycle_json(lifecycle: Lifecycle, profile: ModelProfile) -> dict:
    """A model's lifecycle for /models and /readyz: what Bedrock said, else AWS's published dates."""
    def day(moment, published):
        return moment.date().isoformat() if moment else published

    return {"status": lifecycle.status,
            "legacy_date": day(lifecycle.legacy_time, profile.legacy_date),
            "end_of_life_date": day(lifecycle.end_of_life_time, profile.end_of_life_date),
            "public_extended_access_date": day(lifecycle.public_extended_access_time, None),
            "checked_at": lifecycle.checked_at.isoformat(timespec="seconds") if lifecycle.checked_at else None,
            "detail": lifecycle.detail or None}


def models_document(chain: ModelChain) -> dict:
    """GET /models: every offered model with its limits, tasks, price and lifecycle."""
    entries = []
    for model_id in chain.offered():
        profile = profile_of(chain, model_id)
        unusable = chain.unusable(model_id)
        entries.append({
            "id": model_id, "name": profile.name, "family": profile.family,
            "default": model_id == chain.default_id,
            "fallback_position": chain.fallback_chain.index(model_id) if model_id in chain.fallback_chain else None,
            "tasks": sorted(profile.tasks), "regions": list(profile.regions),
            "placeholder": chain.models[model_id].placeholder,
            "limits": {
                "max_prompt_characters": profile.max_text,
                "sizes": [f"{w}x{h}" for w, h in sorted(profile.sizes)] or None,
                "aspect_ratios": list(profile.aspect_ratios) or None,
                "seed": [profile.min_seed, profile.max_seed],
                "max_count": profile.max_images,
                "negative_prompt": profile.negative_prompt,
                "quality": ["standard", "premium"] if profile.quality else None,
                "cfg_scale": ({"min": profile.cfg_scale.low, "max": profile.cfg_scale.high,
                               "default": profile.cfg_scale.default} if profile.cfg_scale else None),
            },
            "price_per_image_usd": profile.price,
            "lifecycle": lifecycle_json(chain.lifecycle(model_id), profile),
            "available": unusable is None,
            "unavailable_reason": unusable,
        })
    return {"default": chain.default_id, "fallback_chain": list(chain.fallback_chain), "models": entries}


def add_sunset_headers(response: Response, result: GenerationResult, chain: ModelChain) -> None:
    """Deprecation (RFC 9745) and Sunset (RFC 8594) on an answer made with a LEGACY model."""
    used = {r.model_id for r in result.stored}
    legacy = [(chain.lifecycle(m), profile_of(chain, m)) for m in used]
    legacy = [(lc, p) for lc, p in legacy if lc.status == LEGACY]
    if not legacy:
        return
    # When Bedrock gave no legacy date, AWS's published one (the registry's) stands in.
    since = [lc.legacy_time or _day(p.legacy_date) for lc, p in legacy if lc.legacy_time or p.legacy_date]
    if since:
        # A structured-field date: '@' and epoch seconds (RFC 9745 section 2.1).
        response.headers["Deprecation"] = f"@{int(min(since).timestamp())}"
    ends = [lc.end_of_life_time or _day(p.end_of_life_date) for lc, p in legacy
            if lc.end_of_life_time or p.end_of_life_date]
    if ends:
        response.headers["Sunset"] = format_datetime(min(ends).astimezone(UTC), usegmt=True)


def _day(iso_date: str) -> datetime:
    """Midnight UTC of an ISO date."""
    return datetime.fromisoformat(iso_date).replace(tzinfo=UTC)
