"""The asynchronous routes: POST /jobs (202 at once), GET /jobs/<id>, DELETE /jobs/<id>, the webhook secret."""

from __future__ import annotations

import dataclasses
import threading

from flask import Blueprint, current_app, g, request

from generation.errors import InvalidRequest
from generation.model_registry import TEXT_TO_IMAGE
from jobs.service import JobService
from jobs.views import public_job
from jobs.webhooks import secret_for_owner, url_problem
from web.checked_requests import checked_edit, checked_generation
from web.idempotency import fingerprint
from web.problems import json_response, problem

jobs_routes = Blueprint("jobs", __name__)
_build_lock = threading.Lock()
ACCEPTED = 202


def job_service() -> JobService:
    """This process's job service, built on first use (the queue and table are only reached for /jobs)."""
    services = current_app.extensions["aig"]["services"]
    if services.jobs is None:
        with _build_lock:
            if services.jobs is None:
                from services import build_job_service

                services.jobs = build_job_service(current_app.extensions["aig"]["settings"], services.store)
    return services.jobs


def _owner() -> str:
    return g.get("api_key_id", "")


def _owner_filter() -> str | None:
    # With API keys on, a caller sees only its own jobs; with keys off there is no owner to tell apart.
    return _owner() if current_app.extensions["aig"]["settings"].api_keys_file else None


@jobs_routes.post("/jobs")
def submit():
    """Check the body as /generate_images (or /edit_images, with a `task`) would, queue it, answer 202."""
    aig = current_app.extensions["aig"]
    settings, services = aig["settings"], aig["services"]
    request.max_content_length = settings.max_edit_body_bytes  # a job may be an edit, with images in its body
    body = aig["read_body"]()
    webhook_url = None
    if "webhook_url" in body:
        webhook_url = body.pop("webhook_url")
        reason = url_problem(webhook_url, settings.webhook_networks) if isinstance(webhook_url, str) \
            else "must be a string (an http or https URL)"
        if reason:
            raise InvalidRequest([{"field": "webhook_url", "message": reason}])
    if body.get("task", TEXT_TO_IMAGE) != TEXT_TO_IMAGE:
        kind, generation = "edit", checked_edit(body, settings, services)
    else:
        body.pop("task", None)
        kind, generation = "generate", checked_generation(body, settings, services)
    generation = dataclasses.replace(generation, owner=_owner())
    idempotency_key = request.headers.get("Idempotency-Key")
    idempotency = None if idempotency_key is None else \
        (idempotency_key, fingerprint({**body, "webhook_url": webhook_url}))
    job, replayed = job_service().submit(generation, kind=kind, owner=_owner(), webhook_url=webhook_url,
                                         submitted_request_id=g.request_id, idempotency=idempotency)
    g.job_id = job["job_id"]
    response = json_response(_view(job), ACCEPTED)
    response.headers["Location"] = f"/jobs/{job['job_id']}"
    if replayed:
        g.replayed = True
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _view(job: dict) -> dict:
    aig = current_app.extensions["aig"]
    return public_job(job, aig["services"].store, aig["image_url"])


@jobs_routes.get("/jobs/<job_id>")
def status(job_id: str):
    """The job's state; once it ended, its manifest (or error) too."""
    job = job_service().get(job_id, _owner_filter())
    response = json_response(_view(job))
    response.headers["Cache-Control"] = "no-store"  # the state changes; every poll must see the current one
    return response


@jobs_routes.delete("/jobs/<job_id>")
def cancel(job_id: str):
    """Cancel a job that has not started; 409 once it has."""
    return json_response(_view(job_service().cancel(job_id, _owner_filter())))


@jobs_routes.get("/webhooks/secret")
def webhook_secret():
    """The calling API key's webhook secret (to verify signatures); with keys off, the operator holds it."""
    settings = current_app.extensions["aig"]["settings"]
    if not settings.api_keys_file:
        return problem(403, "Forbidden", "with API keys off the webhook secret is the operator's: "
                       "AIG_WEBHOOK_SECRET, or `flask --app wsgi jobs webhook-secret`", "webhook_secret_private")
    master = job_service().master_secret()
    response = json_response({"secret": secret_for_owner(master, _owner()),
                              "signature": "Standard Webhooks v1: HMAC-SHA256 over `<webhook-id>.<webhook-"
                                           "timestamp>.<body>`, base64, in the webhook-signature header"})
    response.headers["Cache-Control"] = "no-store"
    return response
