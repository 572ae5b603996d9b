"""CORS for the browser UI, with flask-cors: only the origins AIG_CORS_ORIGINS allows."""

from __future__ import annotations

import logging

from flask import Flask
from flask_cors import CORS

from settings import Settings

log = logging.getLogger("ai_image_generator.cors")
# What a browser UI calls; health and /metrics are for operators, not pages.
BROWSER_ROUTES = r"^/(generate_images|edit_images|models|records|jobs|jobs/.*|images/.*|v1/.*)$"
# Preflights are cached this long (seconds), so a UI pays one OPTIONS per ten minutes, not per call.
PREFLIGHT_MAX_AGE = 600


def install_cors(app: Flask, settings: Settings) -> None:
    """Answer CORS for the allowed origins; with none configured, add no CORS header at all."""
    if not settings.cors_origins:
        return
    CORS(
        app,
        resources={BROWSER_ROUTES: {"origins": list(settings.cors_origins)}},
        methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Content-Type", "Authorization", "X-API-Key", "X-Request-ID", "Idempotency-Key"],
        expose_headers=["X-Request-ID", "Retry-After", "Server-Timing", "Idempotent-Replayed", "Location"],
        # Keys travel in a header, never in cookies, so the browser need not send credentials.
        supports_credentials=False,
        max_age=PREFLIGHT_MAX_AGE,
    )
    log.info("CORS allows %s", ", ".join(settings.cors_origins))
