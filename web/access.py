"""API-key access control: every route but health asks for a key when a keys file is configured."""

from __future__ import annotations

import logging
from functools import partial

from flask import Flask, Response, g, request

from admin.api_keys import KeyFileError, KeyRing, digest
from settings import Settings, SettingsError
from web.problems import problem

log = logging.getLogger("ai_image_generator.api_keys")
# Health answers load balancers and systemd; /metrics has its own guard (loopback or the metrics key).
# The picker page and its files are open too: the page itself asks for the key.
OPEN_ENDPOINTS = frozenset({"health", "healthz", "readyz", "metrics", "ui.page", "ui.static"})
REALM = 'Bearer realm="ai-image-generator"'


def install_access(app: Flask, settings: Settings, signer=None) -> None:
    """Ask for an API key on every request when AIG_API_KEYS_FILE is set; say loudly when it is not."""
    if not settings.api_keys_file:
        if settings.offline:
            log.warning("API keys are off (AIG_API_KEYS_FILE unset): offline mode, the API is open")
        else:
            log.warning("API keys are off (AIG_API_KEYS_FILE unset): anyone who reaches the service "
                        "can spend on %s", settings.model_id)
        return
    try:
        ring = KeyRing(settings.api_keys_file)
    except KeyFileError as error:
        raise SettingsError(f"AIG_API_KEYS_FILE: {error}") from None
    if ring.names():
        log.info("API keys are on: %d key(s) in %s", len(ring.names()), settings.api_keys_file)
    else:
        log.warning("API keys are on but %s holds none yet: every request but health gets a 401 until "
                    "`flask --app wsgi keys add NAME` adds one", settings.api_keys_file)
    app.before_request(partial(_require_key, ring, signer))


def presented_key() -> str:
    """The key the caller sent: `Authorization: Bearer <key>`, else `X-API-Key`; empty when none."""
    auth = request.authorization
    if auth is not None and auth.type == "bearer" and auth.token:
        return auth.token.strip()
    return request.headers.get("X-API-Key", "").strip()


def _require_key(ring: KeyRing, signer) -> Response | None:
    # CORS preflights carry no credentials by design; answering them reveals nothing.
    if request.method == "OPTIONS" or request.endpoint in OPEN_ENDPOINTS:
        return None
    if request.endpoint == "image" and signer.valid(request.view_args["key"], request.args.get("expires"),
                                                    request.args.get("signature")):
        return None  # a URL this service signed: an <img src> cannot send a key header
    try:
        ring.refresh()
    except KeyFileError as error:
        log.error("every API key is refused until the keys file is fixed: %s", error)
    key = presented_key()
    if not key:
        return _unauthorized("missing_api_key", "an API key is required: send `Authorization: Bearer <key>` "
                             "or `X-API-Key: <key>`", REALM)
    name = ring.match(key)
    if name is None:
        # Never log the key itself, not even a part of it.
        log.info("refused a request with an unknown API key")
        return _unauthorized("invalid_api_key", "the API key is not valid (unknown or revoked)",
                             REALM + ', error="invalid_token"')
    g.api_key_name = name
    g.api_key_id = digest(key)  # who the caller is, for scoping their Idempotency-Keys
    return None


def _unauthorized(code: str, detail: str, challenge: str) -> Response:
    response = problem(401, "Unauthorized", detail, code)
    response.headers["WWW-Authenticate"] = challenge
    return response
