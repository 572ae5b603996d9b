"""A body turned into a checked GenerationRequest, the same way for the synchronous routes and for /jobs."""

from __future__ import annotations

from image_generation import GenerationRequest
from web.edit_request import plan_edit
from web.model_catalog import choose_profile
from web.request_schema import parse_generation_request


def checked_generation(body: dict, settings, services) -> GenerationRequest:
    """A /generate_images body, checked against the model it names (or the default)."""
    profile, named = choose_profile(body, services.models)
    return parse_generation_request(body, profile, default_quality=settings.default_quality,
                                    root_prefix=services.store.key_prefix, named=named,
                                    reserved_prefix=settings.quarantine_prefix)


def checked_edit(body: dict, settings, services) -> GenerationRequest:
    """An /edit_images body: its task, model and input images checked (and screened) before any paid call."""
    return plan_edit(body, services.models, services.store, services.screener,
                     default_quality=settings.default_quality, private_prefix=settings.quarantine_prefix)
