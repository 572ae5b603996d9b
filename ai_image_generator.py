"""The HTTP layer: the app factory, routes, request parsing and the mapping of errors to JSON answers."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from admin.jobs_cli import jobs as jobs_cli
from admin.keys_cli import keys as keys_cli
from admin.records_cli import records as records_cli
from backends.filesystem_store import IMAGE_SUFFIXES
from generation.errors import ServiceError
from generation.model_registry import EDIT_TASKS, TEXT_TO_IMAGE
from services import Services, build_services
from settings import Settings, unknown_names
from web.access import install_access
from web.checked_requests import checked_edit, checked_generation
from web.client_address import install_proxy_fix
from web.cors import install_cors
from web.cross_site import install_cross_site_guard
from web.idempotency import Replay, fingerprint
from web.jobs_routes import jobs_routes
from web.json_body import read_json_object
from web.logging_setup import install_logging
from web.manifest import render_manifest
from web.metrics import install_metrics
from web.model_catalog import (
    add_sunset_headers,
    lifecycle_json,
    models_document,
    profile_of,
    task_profiles,
)
from web.openai_api import openai_routes
from web.openapi import openapi_document
from web.problems import PROBLEM_JSON, json_response, problem, service_error_body
from web.rate_limits import install_rate_limits
from web.records_view import records_page
from web.request_schema import SEGMENT
from web.request_summary import install_request_timing
from web.ui import ui

log = logging.getLogger("ai_image_generator")
# An incoming X-Request-ID is kept only if it is short and plain, so it is safe in logs and headers.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
READINESS_CACHE_SECONDS = 5.0


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the app: settings from the environment unless given, adapters built once for this process."""
    settings = settings or Settings.from_env()
    services = services or build_services(settings)
    app = Flask(__name__)
    install_logging(app, settings)
    install_proxy_fix(app, settings)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # Keys are checked segment by segment; a merged '//' would hide an empty segment behind a redirect.
    app.url_map.merge_slashes = False
    # The OpenAI-compatible routes run requests the way the native ones do, through these.
    app.extensions["aig"] = {"settings": settings, "services": services, "ready": (0.0, None),
                             "respond": _respond, "image_url": image_url,
                             "read_body": _read_json_body}
    if settings.offline:
        log.warning("offline mode: the image model is the placeholder; every picture is a placeholder")
    for name in unknown_names():
        log.warning("%s is set but no setting has that name (misspelled? see the README's configuration table)",
                    name)
    app.before_request(_assign_request_id)
    app.after_request(_stamp_request_id)
    install_request_timing(app)
    install_cross_site_guard(app, settings)
    install_access(app, settings, services.signer)
    install_rate_limits(app, settings)
    install_cors(app, settings)
    install_metrics(app, settings)
    app.cli.add_command(keys_cli)
    app.cli.add_command(records_cli)
    app.cli.add_command(jobs_cli)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.add_url_rule("/", "health", health)
    app.add_url_rule("/healthz", "healthz", healthz)
    app.add_url_rule("/readyz", "readyz", readyz)
    app.add_url_rule("/generate_images", "generate_images", generate_images, methods=["POST"])
    app.add_url_rule("/edit_images", "edit_images", edit_images, methods=["POST"])
    app.add_url_rule("/images/<path:key>", "image", image)
    app.add_url_rule("/openapi.json", "openapi", openapi)
    app.add_url_rule("/models", "models", models)
    app.register_blueprint(openai_routes)
    app.register_blueprint(jobs_routes)
    app.register_blueprint(ui)
    app.add_url_rule("/records", "records", records)
    return app


def _settings() -> Settings:
    return current_app.extensions["aig"]["settings"]


def _services() -> Services:
    return current_app.extensions["aig"]["services"]


def _assign_request_id() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def _stamp_request_id(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response


def _http_error(error: HTTPException) -> Response:
    detail = error.description or error.name
    if error.code == 413:
        detail = f"the request body is larger than {request.max_content_length} bytes"
    response = problem(error.code or 500, error.name, detail, error.name.lower().replace(" ", "_"))
    if error.code == 405 and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _service_error(error: ServiceError) -> Response:
    if error.result is not None:
        g.generation = error.result  # every image failed: logs and metrics still count each one
    body = service_error_body(error)
    if body["status"] >= 500:
        log.warning("request %s failed: %s: %s", g.get("request_id"), error.code, error.detail)
    g.problem_code = error.code
    response = json_response(body, body["status"], PROBLEM_JSON)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return response


def _unexpected_error(error: Exception) -> Response:
    log.exception("request %s failed unexpectedly", g.get("request_id"))
    return problem(500, "Internal error", "the service failed; the request id identifies it in the logs",
                   "internal_error")


def health():
    """The original health answer, kept for existing checks."""
    return json_response({"health": "true"})


def healthz():
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


def readyz():
    """Readiness: the store (and any backend with a check) answers; cached for a few seconds."""
    state = current_app.extensions["aig"]
    checked_at, failure = state["ready"]
    if time.monotonic() - checked_at > READINESS_CACHE_SECONDS:
        failure = None
        services = _services()
        for name, backend in (("store", services.store), ("model", services.model),
                              ("screener", services.screener)):
            check = getattr(backend, "check", None)
            try:
                if check:
                    check()
            except Exception as error:  # noqa: BLE001 - any failure means not ready
                # The details (paths, bucket names, endpoints) go to the log, not to an open route.
                log.warning("not ready: %s: %s", name, error)
                failure = f"the {name} is not ready; the service log says why"
                break
        state["ready"] = (time.monotonic(), failure)
    if failure:
        return problem(503, "Not ready", failure, "not_ready")
    chain = _services().models
    lifecycles = {m: lifecycle_json(chain.lifecycle(m), profile_of(chain, m)) for m in chain.offered()}
    return json_response({"status": "ready", "model_id": chain.default_id, "models": lifecycles})


def _read_json_body() -> dict:
    # Read as JSON whatever the Content-Type says: the original README's curl line sends
    # application/x-www-form-urlencoded, and those callers must keep working.
    raw = request.get_data(cache=False)
    if request.content_length is None and len(raw) >= request.max_content_length:
        # A chunked body is cut at the limit rather than refused: whatever was cut off, it was too large.
        raise RequestEntityTooLarge()
    return read_json_object(raw)


def generate_images():
    """Generate, screen and store the images; answer the manifest (or replay the first answer)."""
    body = _read_json_body()
    return _respond(body, checked_generation(body, _settings(), _services()))


def edit_images():
    """Edit an image (a task on a model that does it); the same manifest, screening, store and records."""
    settings = _settings()
    request.max_content_length = settings.max_edit_body_bytes  # this route (and /jobs) takes images in its body
    body = _read_json_body()
    return _respond(body, checked_edit(body, settings, _services()))


def _respond(body: dict, generation) -> Response:
    """Run a checked request and answer its manifest, or replay the first answer for its Idempotency-Key."""
    generation = dataclasses.replace(generation, owner=g.get("api_key_id", ""))
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is None:
        return _answer(_run(generation))
    keys = _services().idempotency
    # Scoped by the key itself, not its name: a name revoked and issued again is another caller.
    claim = keys.begin(idempotency_key, g.get("api_key_id", ""), fingerprint(body), g.request_id)
    if isinstance(claim, Replay):
        g.replayed = True
        response = json_response(claim.body, claim.status, "application/json" if claim.status == 200 else PROBLEM_JSON)
        response.headers["Idempotent-Replayed"] = "true"
        return response
    try:
        manifest = _run(generation)
    except ServiceError as error:
        answer = service_error_body(error)
        keys.finish(claim, answer["status"], answer)
        raise
    except Exception:
        keys.finish(claim, 500, {})
        raise
    keys.finish(claim, 200, manifest)
    return _answer(manifest)


def _answer(manifest: dict) -> Response:
    """The manifest's 200, with Deprecation and Sunset when a LEGACY model made an image."""
    response = json_response(manifest)
    result = g.get("generation")
    if result is not None:
        add_sunset_headers(response, result, _services().models)
    return response


def _run(generation) -> dict:
    """Run the pipeline and render its typed result once, as the manifest."""
    services = _services()
    result = services.pipeline.run(generation, g.request_id)
    g.generation = result  # the access log, metrics and Server-Timing read this, not the JSON
    return render_manifest(result, services.store, image_url)


def image_url(key: str) -> str:
    """This service's signed, expiring URL for an image it serves itself (offline mode)."""
    return _services().signer.url(_public_base_url(), key)


def _public_base_url() -> str:
    """Where this service is reached: AIG_PUBLIC_BASE_URL, else the request's host if it is an allowed one.

    A Host header is the caller's to write; reflected into URLs (and kept in idempotent replays) it
    would let anyone point another caller's links elsewhere. An unknown host gets a relative URL.
    """
    settings = _settings()
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    host = request.host if request.host.endswith("]") else request.host.rsplit(":", 1)[0]
    return request.host_url.rstrip("/") if host in settings.allowed_hosts else ""


def openapi():
    """The OpenAPI 3.1 document, with the limits of every model this service offers."""
    chain = _services().models
    profiles = task_profiles(chain, TEXT_TO_IMAGE)
    edits = [(profile, task) for task in EDIT_TASKS for profile in task_profiles(chain, task)]
    return json_response(openapi_document(profiles, api_keys=bool(_settings().api_keys_file), edits=edits))


def records():
    """The finished requests of a folder, newest first, ten a page, with their images' URLs."""
    # With API keys on, a caller sees only the records of its own requests.
    owner = g.get("api_key_id") if _settings().api_keys_file else None
    return json_response(records_page(_services().store, request.args.get("folder"), request.args.get("page"),
                                      image_url, owner))


def models():
    """The offered models: limits, tasks, price, lifecycle, and whether each can be used now."""
    return json_response(models_document(_services().models))


def image(key: str):
    """Serve a published image the store holds locally (offline mode); quarantined originals and hidden files never."""
    segments = key.split("/")
    data = None
    if not key.startswith(_settings().quarantine_prefix) \
            and all(SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
        data = _services().store.published(key)
    if data is None:
        return problem(404, "Not Found", "no such image", "not_found")
    response = Response(data, content_type=IMAGE_SUFFIXES.get("." + key.rsplit(".", 1)[-1], "image/png"))
    response.headers["X-Content-Type-Options"] = "nosniff"
    if _settings().api_keys_file:
        # Fetched with a key: no shared cache may keep it and hand it to callers without one.
        response.headers["Cache-Control"] = "private, max-age=31536000, immutable"
        response.headers["Vary"] = "Authorization, X-API-Key, Origin"
    else:
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        response.headers["Vary"] = "Origin"  # CORS headers differ by Origin
    return response
