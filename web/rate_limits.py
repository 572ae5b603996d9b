"""Rate limits on image generation, per API key (or per client address), with Flask-Limiter."""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from urllib.parse import urlsplit

from flask import Flask, Response, g, request
from flask_limiter import Limit, Limiter, RateLimitExceeded

from settings import Settings, SettingsError
from web.problems import problem

log = logging.getLogger("ai_image_generator.rate_limits")
# The paid route; health, images and metrics are cheap and stay unlimited.
LIMITED_ENDPOINTS = frozenset({"generate_images", "edit_images", "openai.generations", "openai.edits",
                               "openai.variations", "jobs.submit"})
REDIS_SCHEMES = ("redis", "rediss", "redis+unix")
# A stuck Redis must not hold a request for long; past this the limiter falls back to memory.
REDIS_TIMEOUT_SECONDS = 1.0


def install_rate_limits(app: Flask, settings: Settings) -> Limiter | None:
    """Limit POST /generate_images to AIG_RATE_LIMIT per key; counters in Redis when AIG_REDIS_URL is set."""
    if not settings.rate_limit:
        return None
    options = {}
    if settings.redis_url:
        if urlsplit(settings.redis_url).scheme not in REDIS_SCHEMES:
            raise SettingsError(f"AIG_REDIS_URL must start with one of {', '.join(REDIS_SCHEMES)}://")
        options = {"socket_timeout": REDIS_TIMEOUT_SECONDS, "socket_connect_timeout": REDIS_TIMEOUT_SECONDS}
    limiter = Limiter(
        key_func=limit_key,
        app=app,
        # shared with one scope: every paid route spends one budget (else each route would count apart).
        default_limits=[Limit(limit_provider=settings.rate_limit, key_function=limit_key, exempt_when=_exempt,
                              shared=True, scope="paid")],
        storage_uri=settings.redis_url or "memory://",
        storage_options=options,
        # Exact over the last window, unlike a fixed window that lets twice the limit through at its edge.
        strategy="moving-window",
        key_prefix="aig",
        # If Redis goes away, keep limiting on this process alone rather than failing every request.
        in_memory_fallback_enabled=True,
    )
    app.register_error_handler(RateLimitExceeded, lambda error: _too_many(limiter, error))
    where = "Redis" if settings.redis_url else "this process's memory"
    log.info("rate limit %s on the paid routes together per %s, counted in %s", settings.rate_limit,
             "API key" if settings.api_keys_file else "client address", where)
    return limiter


def limit_key() -> str:
    """Whose budget a request spends: its API key's name, else its client address."""
    name = g.get("api_key_name")
    return f"key:{name}" if name else f"addr:{client_network(request.remote_addr or 'unknown')}"


def client_network(address: str) -> str:
    """An IPv4 address as it is; an IPv6 address as its /64, which one subscriber usually holds whole."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # ::ffff:192.0.2.1 is an IPv4 caller
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def _exempt() -> bool:
    # CORS preflights are free: a browser sends one before each real request it is about to make.
    return request.endpoint not in LIMITED_ENDPOINTS or request.method == "OPTIONS"


def _too_many(limiter: Limiter, error: RateLimitExceeded) -> Response:
    current = limiter.current_limit
    # window.reset_time: when the oldest hit in the window expires and a request fits again.
    retry_after = max(1, math.ceil(current.window.reset_time - time.time())) if current else 1
    response = problem(429, "Too many requests",
                       f"the rate limit of {error.description} is used up; retry in {retry_after} s",
                       "rate_limited")
    response.headers["Retry-After"] = str(retry_after)
    return response
