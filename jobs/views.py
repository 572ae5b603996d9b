"""A job as callers see it (GET /jobs/<id> and webhooks): its state, times, and the manifest with fresh URLs."""

from __future__ import annotations

from datetime import UTC, datetime

from jobs.states import QUEUED

# Fields of the stored document callers never see: who holds it, where its request is kept, whose it is.
PRIVATE = frozenset({"owner", "worker", "lease_until", "request_key", "paid", "expires_at", "start_by",
                     "webhook_url", "webhook_state", "webhook_attempts", "created_at", "updated_at", "started_at",
                     "finished_at", "fingerprint", "last_error", "unqueued"})


def public_job(job: dict, store, image_url) -> dict:
    """The caller's view of a stored job; image URLs are made now, so they have not expired."""
    view = {name: value for name, value in job.items() if name not in PRIVATE}
    view["links"] = {"self": f"/jobs/{job['job_id']}"}
    for name in ("created_at", "updated_at", "started_at", "finished_at", "start_by"):
        if job.get(name):
            view[name] = _iso(job[name])
    if job["state"] == QUEUED:
        view["links"]["cancel"] = view["links"]["self"]
    if job.get("webhook_url"):
        view["webhook"] = {"url": job["webhook_url"], "state": job.get("webhook_state", "pending"),
                           "attempts": [{**attempt, "at": _iso(attempt["at"])}
                                        for attempt in job.get("webhook_attempts") or []]}
    if job.get("stored_images"):
        # The images stored so far, as they land (a running job's progress), each with a fresh URL.
        view["stored_images"] = [{**image, **store.address(image["key"], image_url)} for image in job["stored_images"]]
    manifest = job.get("manifest")
    if manifest:
        view["manifest"] = with_fresh_addresses(manifest, store, image_url)
    return view


def with_fresh_addresses(manifest: dict, store, image_url) -> dict:
    """The manifest with each image's `url` (and `s3_uri`) made again now."""
    fresh = dict(manifest)
    fresh["image_details"] = [{**detail, **store.address(detail["key"], image_url)}
                              for detail in manifest.get("image_details", [])]
    return fresh


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
