"""Refuses writes a browser sends on behalf of another site (cross-site request forgery)."""

from __future__ import annotations

import logging
from functools import partial
from urllib.parse import urlsplit

from flask import Flask, Response, request

from settings import Settings
from web.problems import problem

log = logging.getLogger("ai_image_generator.cross_site")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def install_cross_site_guard(app: Flask, settings: Settings) -> None:
    """Refuse a browser's write from an origin not in AIG_CORS_ORIGINS; curl and back ends send no Origin."""
    app.before_request(partial(_refuse_cross_site, frozenset(settings.cors_origins), _own_origins(settings)))


def _own_origins(settings: Settings) -> frozenset[str]:
    """The service's own origins: its public base URL's, and the allowed hosts' (any scheme and port).

    Never the request's Host: a page on a rebinding domain sends a Host and an Origin that match.
    """
    own = {urlsplit(settings.public_base_url)._replace(path="", query="", fragment="").geturl()} \
        if settings.public_base_url else set()
    return frozenset(own | {host.strip("[]") for host in settings.allowed_hosts})


def _same_service(origin: str, own: frozenset[str]) -> bool:
    parts = urlsplit(origin)
    return origin.rstrip("/") in own or (parts.hostname or "") in own


def _refuse_cross_site(allowed: frozenset[str], own: frozenset[str]) -> Response | None:
    if request.method in SAFE_METHODS:
        return None
    origin = request.headers.get("Origin")
    # The body is read as JSON whatever its Content-Type (the original curl line needs that), so a
    # page elsewhere could post a "simple" text/plain request with no preflight: browsers say who
    # sent it in Origin and Sec-Fetch-Site, which a page cannot forge.
    if origin is not None:
        if origin in allowed or "*" in allowed or _same_service(origin, own):
            return None
        why = f"the Origin {origin!r} is not allowed to write here (AIG_CORS_ORIGINS)"
    elif request.headers.get("Sec-Fetch-Site") == "cross-site":
        why = "a browser sent this write from another site"
    else:
        return None  # curl, a server-to-server caller, or a same-origin page
    log.info("refused a cross-site %s %s: %s", request.method, request.path, why)
    return problem(403, "Forbidden", f"{why}; cross-site writes from browsers are refused", "cross_site_refused")
